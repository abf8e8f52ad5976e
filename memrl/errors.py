"""The one exception type users see: a clear, one-line message naming the problem."""


class MemrlError(Exception):
    """Bad input or a missing file, said plainly (the CLI prints it without a traceback)."""
