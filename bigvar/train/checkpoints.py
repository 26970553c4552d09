"""Training checkpoints: a small facade over orbax's CheckpointManager.

A checkpoint at step s holds the whole train state (params, optimizer state, EMA, step) and the
data iterator's state, so a restarted run continues bit for bit. Saves are asynchronous
(training goes on while the arrays are written) and atomic (orbax writes to a temporary
directory and renames it when complete, so a run killed mid-save leaves only the earlier,
complete checkpoints). Restoring takes target shardings: a checkpoint written on one mesh
restores on another.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None) -> None:
        """Starts writing checkpoint `step` (returns before the write finishes when async)."""
        items = dict(state=ocp.args.StandardSave(state))
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_latest(self, abstract_state: Any, *, with_data: bool = True):
        """(step, state, data_state) from the newest checkpoint that restores, or None if there
        is none. A checkpoint that fails to restore (truncated or corrupt files) is reported and
        the previous one is tried: losing some steps beats losing the run."""
        for step in reversed(self.steps()):
            items = dict(state=ocp.args.StandardRestore(abstract_state))
            if with_data:
                items["data"] = ocp.args.JsonRestore()
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # orbax raises many types for damaged files
                logging.warning("checkpoint %d in %s could not be restored (%s: %s); trying the "
                                "previous one", step, self.directory, type(e).__name__,
                                str(e).splitlines()[0][:200] if str(e) else "")
                continue
            data = restored.get("data") if with_data else None
            return step, restored["state"], data
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionFlag:
    """Set by SIGTERM (what Cloud TPU, Kubernetes and SLURM send before taking a machine away)
    and SIGINT; the train loop checks it every step, saves and exits cleanly."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self._event = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        logging.warning("received signal %d: saving a checkpoint and stopping", signum)
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def agreed(self) -> bool:
        """True when any process got the signal. Every process must then save the same step
        (orbax saves are collective), so with several processes the flag is all-gathered."""
        local = self._event.is_set()
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
