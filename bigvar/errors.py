"""The user-error type: a mistake the user can fix (a bad flag, path, file or run directory).

The CLIs (`bigvar.main`, `bigvar.convert`) print its message as one line, `error: …`, and exit
with status 2; anything else is a bug and keeps its traceback. Also here: `Preempted`, training
that stopped on a signal after saving its checkpoint (`bigvar.main` exits with status 75).
"""


class UserError(ValueError):
    """Raised with a message that says what is wrong, where, and what to do."""


class MissingFile(UserError, FileNotFoundError):
    """A path the user gave (or a step they skipped) does not exist."""


def invalid(field: str, value, expected: str):
    """Raises the error for a bad config value: `config.<field> = <value> is invalid: expected …`.
    `field` is the dotted path under `config` (e.g. "sample.cfg") so the message names the flag."""
    raise UserError(f"config.{field} = {value!r} is invalid: expected {expected}.")


# sysexits.h's EX_TEMPFAIL ("temporary failure, retry"): launchers restart a job that exits with it.
PREEMPTED_EXIT_STATUS = 75


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving the checkpoint of `step`. The CLIs exit
    with PREEMPTED_EXIT_STATUS, so that XPK/JobSet, SLURM or `launch/tpu_vm.sh` run the same
    command again, which resumes from that checkpoint."""

    def __init__(self, step: int, checkpoints: str, summary: dict | None = None):
        self.step, self.checkpoints, self.summary = step, checkpoints, summary or {}
        super().__init__(f"stopped on request at step {step}: its checkpoint is saved in "
                         f"{checkpoints}; rerun the same command to resume")
