"""Storage codecs, one module each. Every module registers itself with ``benchmark.registry.CODECS``."""
