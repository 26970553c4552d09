"""Training checkpoints: a small facade over orbax's CheckpointManager.

A checkpoint at step s holds the whole train state (params, optimizer state, EMA, step) and the
data iterator's state, so a restarted run continues bit for bit. Saves are asynchronous
(training goes on while the arrays are written) and atomic (orbax writes to a temporary
directory and renames it when complete, so a run killed mid-save leaves only the earlier,
complete checkpoints). Restoring takes target shardings: a checkpoint written on one mesh
restores on another. Every array's checksum is stored with it and verified on restore
(bit rot in an array file would otherwise restore silently, e.g. as NaNs in the optimizer state).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from bigvar import multihost, storage
from bigvar.checksums import array_checksums
from bigvar.errors import UserError


_failed_saves = 0  # saves that storage failed in this process (see `saves_left_threads`)


def saves_left_threads() -> bool:
    """True when a save that storage failed left orbax's threads of that save waiting (up to
    orbax's 300 s barrier) for a step directory that was never made; the interpreter's exit would
    wait for them. Everything that was to be written has been written or given up by then, so
    the entry point may leave at once."""
    return _failed_saves > 0


def _count_failed_save(error: BaseException) -> None:
    global _failed_saves
    if storage.is_transient(error):
        _failed_saves += 1


class CheckpointsUnrestorable(UserError):
    pass


class DamagedCheckpoint(RuntimeError):
    pass


@contextlib.contextmanager
def _quiet_orbax():
    """orbax/TensorStore log whole array specs (hundreds of lines) when a file is damaged; our
    one-line report says what matters."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:limit]}"


class Checkpoints:
    """Storage outages (`bigvar.storage`): every operation is retried while storage does not
    answer, up to `--storage_timeout` counted from the first failure, then `StorageUnavailable`.
    A checkpoint counts only once orbax has marked it complete, so one that storage failed is
    never restored; the next save replaces it (the last one is retried at once: its state is at
    hand)."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = storage.absolute(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = storage.retried_call(ocp.CheckpointManager, self.directory, self.directory,
                                            options=options, what="opening checkpoints in")
        self._running: int | None = None  # the step whose asynchronous save may be running
        self._outage_since: float | None = None  # when a save that storage failed began

    def steps(self) -> list[int]:
        return sorted(storage.retried_call(self.manager.all_steps, self.directory,
                                           what="listing checkpoints in"))

    def save(self, step: int, state: Any, data_state: dict | None, *, last: bool = False) -> None:
        """Starts writing checkpoint `step` (returns before the write finishes when async), with
        a checksum of every array; `last`: waits until it has landed."""
        self._settle()
        items = dict(state=ocp.args.StandardSave(state),
                     integrity=ocp.args.JsonSave({"checksums": array_checksums(state)}))
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)

        def write():
            try:
                self.manager.save(step, args=ocp.args.Composite(**items), force=True)
                self._running = step
                if last:
                    self._settle(retry=True)
            except Exception as error:
                _count_failed_save(error)
                raise
        storage.retried_call(write, self.directory, since=self._outage_since,
                             what=f"writing checkpoint {step} to")

    def _settle(self, *, retry: bool = False) -> None:
        """Waits for the asynchronous save that is running, if any. One that storage failed is
        reported and left to the next save to replace (`retry`: raised, for it to be retried)."""
        if self._running is None:
            return
        step, self._running = self._running, None
        try:
            with storage.still_waiting(f"writing checkpoint {step} to {self.directory}"):
                self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 (classified below)
            if retry or not storage.is_transient(error):
                raise
            _count_failed_save(error)
            self._outage_since = self._outage_since or time.time()
            logging.warning("checkpoint %d was not written: storage did not answer (%s); the "
                            "next checkpoint replaces it", step, _first_line(error))
            return
        self._outage_since = None

    def _restore(self, step: int, abstract_state: Any, with_data: bool) -> dict:
        """Reads checkpoint `step` (this process's shards: no collective)."""
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        if with_data:
            items["data"] = ocp.args.JsonRestore()
        if storage.isdir(os.path.join(self.directory, str(step), "integrity")):
            items["integrity"] = ocp.args.JsonRestore()
        with _quiet_orbax():
            return storage.retried_call(self.manager.restore, self.directory, step,
                                        args=ocp.args.Composite(**items),
                                        what=f"reading checkpoint {step} from")

    @staticmethod
    def _verify(restored: dict) -> None:
        """Raises DamagedCheckpoint when an array's checksum differs from the stored one (a
        collective: every process computes the same checksums of the global arrays)."""
        if "integrity" not in restored:
            return
        stored = restored["integrity"]["checksums"]
        found = array_checksums(restored["state"])
        bad = sorted(k for k in stored if found.get(k) != stored[k])
        if bad or set(found) != set(stored):
            raise DamagedCheckpoint(f"{len(bad)} arrays fail their checksum ({', '.join(bad[:3])}"
                                    f"{', …' if len(bad) > 3 else ''})")

    def restore_latest(self, abstract_state: Any, *, with_data: bool = True):
        """(step, state, data_state) from the newest checkpoint that restores and verifies, or
        None when there is no checkpoint at all.

        A newer checkpoint that fails (truncated files, a checksum mismatch) is reported in one
        line and moved aside to `corrupt-<step>` (kept for a look; it would otherwise block the
        next save of that step), and the previous one is used: losing some steps beats losing
        the run. If checkpoints exist but none restores, nothing is touched and
        `CheckpointsUnrestorable` says why: a silent fresh start would overwrite the run.

        With several processes every decision is the job's: the chief lists the checkpoints, and
        a checkpoint that one process cannot read is skipped by all (before the checksums, which
        are collective), so the processes never part ways."""
        failures = []
        for step in reversed(multihost.chief_decides(self.steps)):
            restored, error = None, None
            try:
                restored = self._restore(step, abstract_state, with_data)
            except storage.StorageUnavailable:
                raise  # (not a damaged checkpoint)
            except Exception as e:  # orbax raises many types for damaged files
                error = e
            if not multihost.all_true(error is None):
                error = error or DamagedCheckpoint("another process could not read it (its log "
                                                   "says why)")
            else:
                try:
                    self._verify(restored)
                except DamagedCheckpoint as e:
                    error = e
            if error is not None:
                logging.warning("checkpoint %d in %s could not be restored (%s)", step,
                                self.directory, _first_line(error))
                failures.append((step, error))
                continue
            if failures:
                self._move_aside([s for s, _ in failures])
            data = restored.get("data") if with_data else None
            return step, restored["state"], data
        if failures:
            step, error = failures[0]
            raise CheckpointsUnrestorable(
                f"none of the {len(failures)} checkpoints in {self.directory} (steps "
                f"{sorted(s for s, _ in failures)}) could be restored; the newest, {step}, failed "
                f"with {_first_line(error)}. Nothing was changed. If the files are damaged, move "
                f"that directory aside to start over; if the model changed, use the config the run "
                f"was made with.")
        return None

    def _move_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            for step in steps:
                target = os.path.join(self.directory, f"corrupt-{step}")
                if storage.exists(target):
                    target = f"{target}-{int(time.time())}"
                storage.replace(os.path.join(self.directory, str(step)), target)
                logging.warning("moved the damaged checkpoint %d to %s", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("bigvar: damaged checkpoints moved aside")
        self.manager.reload()

    def wait(self) -> None:
        self._settle()

    def close(self) -> None:
        """Waits for a save that is running (one that storage fails is reported) and closes."""
        self._settle()
        self.manager.close()


class PreemptionFlag:
    """Stops training cleanly on SIGTERM (what Cloud TPU, Kubernetes and SLURM send before taking
    a machine away) or SIGINT: the loop asks `reached(step)` after every step and, when it is
    True, saves a checkpoint of that step and exits.

    One process: a Python handler sets a flag, so the step that is running when the signal
    arrives is the last one.
    N processes (`jax.distributed.initialize` ran): every process must save the same step (orbax
    saves are collective), whichever of them got the signal. JAX's preemption sync manager agrees
    on it without a collective per step: `jax.distributed.initialize` installed its own SIGTERM
    handler, which tells the coordination service; every process then reports the last step it
    passed to `reached`, and `multihost_utils.reached_preemption_sync_point` turns True on every
    process at the step after the furthest one. So no Python SIGTERM handler is installed here
    (it would replace JAX's), and SIGINT is passed on as a SIGTERM to this process so that
    Ctrl-C stops every process at the same step too. (orbax's `CheckpointManager.
    reached_preemption` makes the same call but treats a disabled preemption service as "no
    preemption", which would ignore SIGTERM; JAX's raises.)
    """

    def __init__(self, step: int, signals=(signal.SIGTERM, signal.SIGINT)):
        """`step`: the step training starts from (the same on every process)."""
        self._multiprocess = jax.process_count() > 1
        self._event = threading.Event()
        self._previous = {}
        if self._multiprocess:
            # Reports the starting step, so that a signal before the first `reached` stops after
            # one step; raises if JAX's preemption service is off (signals would be ignored).
            self.reached(step)
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                if not (self._multiprocess and sig == signal.SIGTERM):
                    self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        logging.warning("received signal %d: saving a checkpoint and stopping", signum)
        if self._multiprocess:
            signal.raise_signal(signal.SIGTERM)  # to JAX's handler, which tells the other processes
        else:
            self._event.set()

    def reached(self, step: int) -> bool:
        """True when training should save `step` and stop; with several processes, True at the
        same step on all of them. Call it after every step, with consecutive steps."""
        if self._multiprocess:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                self._event.set()
        return self._event.is_set()

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
