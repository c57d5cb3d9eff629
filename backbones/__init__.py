"""Backbone adapters, one module per backbone family; each registers with ``benchmark.registry.BACKBONES``."""
