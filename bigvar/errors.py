"""The user-error type: a mistake the user can fix (a bad flag, path, file or run directory).

The CLIs (`bigvar.main`, `bigvar.convert`) print its message as one line, `error: …`, and exit
with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Raised with a message that says what is wrong, where, and what to do."""


class MissingFile(UserError, FileNotFoundError):
    """A path the user gave (or a step they skipped) does not exist."""
