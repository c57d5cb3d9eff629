"""User-facing errors: the CLI prints them on one line, exits non-zero, and shows no traceback."""
from benchmark.registry import RegistryError


class UserError(RegistryError):
    """A mistake in the user's input or environment (bad choice, missing checkpoint offline, ...)."""


class StorageError(ValueError):
    """An artifact file that cannot be read back: truncated, corrupted, of an unknown format, or declaring more than
    the decode limit. Every codec and the container reader raise this type and no other on malformed input. It
    lives here, not in :mod:`benchmark.storage`, so that the CLI can catch it without importing torch."""
