"""Run directories that protect their results.

A training run's workdir (`mode=train`, `mode=export`, the demo) guarantees:
  - one writer: `run.lock` names the process that writes here (host, pid, start time); a second
    writer is refused, a lock whose holder died is taken over (same host: its pid is gone; another
    host: its heartbeat, refreshed every minute, is older than `STALE_AFTER_S`);
  - the config it was created with: `config.json` holds the resolved config of the first run; a
    later run that changes what the checkpoints mean is refused with the differing fields listed
    (steps, logging, checkpointing, sampling and compute-only fields may change on resume);
  - integrity: checkpoints carry a checksum of every array (`train/checkpoints.py`).
Sampling jobs take no lock: their outputs are keyed by their settings and written by rename, so
two samplers on one directory cannot mix or corrupt each other's files (`sampling/job.py`).
With several processes the chief (process 0) takes the lock and writes `config.json` for the job,
in a workdir every process sees (`prepare` checks that it is shared).
"""
from __future__ import annotations

import contextlib
import datetime
import fnmatch
import json
import logging
import os
import socket
import tempfile
import threading
import time
from typing import Iterator

import jax
import ml_collections

from bigvar import multihost, storage
from bigvar.errors import UserError

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0

# Fields that may differ between the run that created a directory and a run that resumes it:
# how long to train, how to log, checkpoint and draw grids, how to shard, and compute-only model
# settings. Anything else changes what the checkpoints mean.
RESUMABLE_FIELDS = (
    "mode",
    "train.steps", "train.epochs", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.async_checkpoints", "train.sample_every",
    "train.sample_images",
    "sample.*", "eval.*", "probe.*", "mesh.*",
    "data.num_workers", "data.num_threads", "data.prefetch",
    "*.attn_impl", "*.remat", "*.remat_policy", "*.scan_unroll",
    "allow_random_init",
)


class RunDirectoryLocked(UserError):
    pass


class ConfigMismatch(UserError):
    pass


def prepare(workdir: str) -> str:
    """Creates `workdir` if needed and checks that it is a writable directory (with several
    processes: on every process, and the same directory for all); returns its absolute path (a
    URL such as gs://bucket/run is kept as it is)."""
    workdir = storage.absolute(workdir)
    try:
        problem = _unusable(workdir)
    except Exception as e:  # noqa: BLE001 (a bucket's errors are not OSErrors)
        if not storage.is_url(workdir):
            raise
        problem = (f"--workdir={workdir} cannot be used ({type(e).__name__}: {_first_line(e)}): "
                   "check the bucket's name and this machine's credentials")
    if not multihost.all_true(problem is None):
        raise UserError(problem or f"--workdir={workdir} is not usable on another process of "
                        "this job (its log says why)")
    if jax.process_count() > 1 and not storage.is_url(workdir):
        _check_shared(workdir)
    return workdir


@contextlib.contextmanager
def removed_if_refused(workdir: str) -> Iterator[None]:
    """Runs a job in `workdir`; if the job is refused (a `UserError`), the folders that its start
    created and left empty are removed again, so a mistyped flag leaves no run directory behind.
    Never removes a folder that existed before or holds anything."""
    created = []
    if not storage.is_url(workdir):  # an object store has no empty folders to leave behind
        folder = os.path.abspath(workdir)
        while not os.path.exists(folder):
            created.append(folder)
            folder = os.path.dirname(folder)
    try:
        yield
    except UserError:
        for folder in created:  # the deepest first
            with contextlib.suppress(OSError):  # not empty, or already removed by another process
                os.rmdir(folder)
        raise


def _unusable(workdir: str) -> str | None:
    """Why `workdir` cannot hold a run (None when it can): a file, or not writable."""
    if storage.isfile(workdir):
        return (f"--workdir={workdir} is a file, not a directory: give a directory (it is "
                "created if missing)")
    probe = os.path.join(workdir, f".write-test-{socket.gethostname()}-{os.getpid()}")
    try:
        storage.makedirs(workdir)
        with storage.open(probe, "wb"):
            pass
        storage.remove(probe)
    except OSError as e:
        fix = ("check the bucket's name, its permissions and this machine's credentials"
               if storage.is_url(workdir) else "choose another directory or fix its permissions")
        return f"--workdir={workdir} is not writable ({e.strerror or e}): {fix}"
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _check_shared(workdir: str) -> None:
    """Every process must see the files the chief writes (checkpoints and outputs are written
    once for the whole job): refuse host-local directories on several hosts."""
    def mark():
        fd, path = tempfile.mkstemp(dir=workdir, prefix=".shared-check-")
        os.close(fd)
        return os.path.basename(path)
    marker = os.path.join(workdir, multihost.chief_decides(mark))
    seen = multihost.all_true(os.path.exists(marker))
    if multihost.is_chief():
        os.remove(marker)
    if not seen:
        raise UserError(f"--workdir={workdir} is not the same directory on every host: some "
                        "processes do not see the files process 0 writes there. Give a directory "
                        "every host shares (a shared file system mounted at the same path).")


# ---------------------------------------------------------------------------------------------
# The lock


def _holder_text(holder: dict) -> str:
    started = holder.get("started", 0)
    when = datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds") if started else "?"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {when}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _read_holder(path: str) -> dict | None:
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written right now, or garbage: treat as held
        return {}


def _is_stale(path: str, holder: dict) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _pid_alive(holder["pid"])
    try:
        return time.time() - storage.getmtime(path) > STALE_AFTER_S
    except FileNotFoundError:
        return True


class RunLock:
    """An exclusive, stale-aware lock on a run directory (see the module docstring)."""

    def __init__(self, workdir: str, what: str):
        self.path = os.path.join(storage.absolute(workdir), LOCK_FILE)
        self.what = what
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "what": self.what}
        for _ in range(10):
            if not storage.create_exclusive(self.path, json.dumps(me).encode()):
                holder = _read_holder(self.path)
                if holder is None:
                    continue  # released just now
                if not _is_stale(self.path, holder):
                    raise RunDirectoryLocked(
                        f"{os.path.dirname(self.path)} is in use by another run "
                        f"({_holder_text(holder)}, {holder.get('what', '?')}); wait for it to "
                        f"finish or use another --workdir. If that process is gone, delete "
                        f"{self.path}.")
                if _read_holder(self.path) != holder:
                    continue  # someone else took it over meanwhile: look again
                logging.warning("taking over the lock of a run that is gone (%s)", _holder_text(holder))
                with contextlib.suppress(FileNotFoundError):
                    storage.remove(self.path)  # then create_exclusive lets one taker win
                continue
            self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="run-lock")
            self._heartbeat.start()
            return
        raise RunDirectoryLocked(f"could not take the lock {self.path}: it keeps changing hands")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # (a missed beat only ages the lock: one try,
                storage.touch.__wrapped__(self.path)  # so that release() never waits an outage out)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        holder = _read_holder(self.path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            storage.remove(self.path)


@contextlib.contextmanager
def exclusive(workdir: str, what: str, config: ml_collections.ConfigDict | None = None
              ) -> Iterator[None]:
    """Holds the run directory's lock for the block, and checks (or records) `config` when given.
    With several processes the chief does both for the job; its refusal stops every process."""
    lock = RunLock(workdir, what)

    def take():
        lock.acquire()
        try:
            if config is not None:
                check_config(workdir, config)
        except BaseException:
            lock.release()
            raise
    multihost.chief_decides(take)
    try:
        yield
    finally:
        if multihost.is_chief():
            lock.release()


# ---------------------------------------------------------------------------------------------
# The recorded config


def _flatten(tree, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _as_plain(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _resumable(field: str) -> bool:
    return any(fnmatch.fnmatchcase(field, pattern) for pattern in RESUMABLE_FIELDS)


def config_differences(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
    """(fields that change what the checkpoints mean, fields that may change on resume), each
    as 'field: recorded → current'."""
    old, new = _flatten(recorded), _flatten(current)
    breaking, allowed = [], []
    for field in sorted(set(old) | set(new)):
        a, b = old.get(field, "(absent)"), new.get(field, "(absent)")
        if a != b:
            (allowed if _resumable(field) else breaking).append(f"{field}: {a!r} → {b!r}")
    return breaking, allowed


def check_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Records `config` in a new run directory, or checks it against the recorded one."""
    path = os.path.join(workdir, CONFIG_FILE)
    current = _as_plain(config)
    if not storage.exists(path):
        with storage.atomic_write(path) as tmp, open(tmp, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        return
    recorded = json.loads(storage.read_text(path))
    breaking, allowed = config_differences(recorded, current)
    if breaking:
        shown = "\n  ".join(breaking[:20]) + (f"\n  … and {len(breaking) - 20} more"
                                               if len(breaking) > 20 else "")
        raise ConfigMismatch(
            f"{workdir} was created with another config ({path}); these fields differ and would "
            f"change what its checkpoints mean:\n  {shown}\n"
            "Nothing was changed. Resume with the recorded values, or start a fresh run in "
            "another --workdir. To fine-tune from this run: export it (--config.mode=export "
            f"--workdir={workdir}), then train in a new --workdir with "
            f"--config.init_from={os.path.join(workdir, 'export')}.")
    for change in allowed:
        logging.info("resuming %s with a changed setting: %s", workdir, change)


@contextlib.contextmanager
def writing(workdir: str, config: ml_collections.ConfigDict, what: str) -> Iterator[str]:
    """The run directory for a job that writes checkpoints or exports: created, locked and its
    config checked for the block. Yields the absolute path."""
    workdir = prepare(workdir)
    with exclusive(workdir, what, config):
        yield workdir
