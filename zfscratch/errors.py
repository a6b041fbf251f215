"""Errors that reach the user as one line (the CLI prints them and exits with status 2)."""


class UserError(Exception):
    """Bad user input: a missing or malformed file, an argument out of range, a mismatched model.

    The message names the file or argument and says what was expected; the CLI prints
    ``zfscratch: error: <message>`` and exits 2 without a traceback.
    """
