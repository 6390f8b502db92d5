"""The base of every error the command line reports as a clean message instead of a traceback."""


class RecsysError(Exception):
    """A problem the user can act on; the message says what is wrong and where."""
