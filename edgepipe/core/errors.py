"""One exception type for problems the user can fix; the CLI prints it as one line, no traceback."""


class EdgepipeError(Exception):
    """A user-facing error: bad input, a missing file, a component not installed."""


class RecognizerUnavailable(EdgepipeError):
    """A recognizer server is not answering now: count the frames as unclassified and go on (it reconnects).

    Raised only after a successful start; the monitor counts it, never treats it as a loss.
    """
