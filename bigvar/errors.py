"""The user-error type: a mistake the user can fix (a bad flag, path, file or run directory).

The CLIs (`bigvar.main`, `bigvar.convert`) print its message as one line, `error: …`, and exit
with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Raised with a message that says what is wrong, where, and what to do."""


class MissingFile(UserError, FileNotFoundError):
    """A path the user gave (or a step they skipped) does not exist."""


def invalid(field: str, value, expected: str):
    """Raises the error for a bad config value: `config.<field> = <value> is invalid: expected …`.
    `field` is the dotted path under `config` (e.g. "sample.cfg") so the message names the flag."""
    raise UserError(f"config.{field} = {value!r} is invalid: expected {expected}.")
