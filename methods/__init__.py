"""Merging methods, one module each. Every module registers itself with ``benchmark.registry.METHODS``."""
