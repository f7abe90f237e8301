"""Errors that are the user's to fix: printed as one clear line, never a traceback."""


class UserError(Exception):
    """A wrong path, an empty input, a bad setting: the message says what and where."""
