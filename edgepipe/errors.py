"""One exception type for problems the user can fix; the CLI prints it as one line, no traceback."""


class EdgepipeError(Exception):
    """A user-facing error: bad input, a missing file, a component not installed."""
