"""merge-bench: an open benchmark suite for model merging (accuracy against measured storage)."""

__version__ = "0.1.0"
