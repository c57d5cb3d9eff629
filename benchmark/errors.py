"""User-facing errors: the CLI prints them on one line, exits non-zero, and shows no traceback."""
from benchmark.registry import RegistryError


class UserError(RegistryError):
    """A mistake in the user's input or environment (bad choice, missing checkpoint offline, ...)."""
