"""One exception type for bad input: the CLI prints its message on one line and exits 2."""


class MathrlError(Exception):
    """A user-facing error whose message names the culprit (file and line, option, value)."""
