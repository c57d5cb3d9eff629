"""Task suites and metrics; each suite module registers with ``benchmark.registry.SUITES``."""
