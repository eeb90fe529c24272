"""The one exception users see: a one-line message naming the problem and the fix."""


class CompressError(Exception):
    """A problem with the user's input or environment; the CLI prints it on one line and exits 2."""
