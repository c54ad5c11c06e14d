"""The one exception type for bad user input (files, options, mismatched stores)."""


class UserError(ValueError):
    """Bad input: the CLI reports it as one line and exits 2, with no traceback."""
