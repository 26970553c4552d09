"""Paths that may be local or remote: `gs://bucket/run` (or any fsspec URL) as well as a folder.

The jobs keep their work directories, logs, exports, sample outputs and reference batches through
these functions, so a `--workdir=gs://bucket/run` is a bucket prefix (not the local folder
`./gs:/bucket/run` that `os.path` would make of it). They are `etils.epath` underneath (local
paths through `os`, gs:// through fsspec and gcsfs, installed with bigvar); checkpoints go
through orbax/TensorStore, which read and write gs:// themselves.

Two process-wide settings are made here, before epath first picks a backend: epath uses its
fsspec backend even where TensorFlow is installed (`EPATH_USE_TF=false`: bigvar never imports
TF), and gcsfs keeps no listings cache (the jobs poll for files that other processes write).

What object stores lack, and how it is made up for:
  - renames: `replace` of a URL is a copy then a delete, so writers of shared files write them
    whole in one upload (`atomic_write`): a reader sees the old object or the complete new one;
  - appends: files that grow (metrics.jsonl, event files) are written locally and mirrored by
    `AppendMirror`, which uploads only the new bytes and has GCS concatenate them onto the
    object (compose), so a run's logs cost the bytes written, not one whole upload per write;
  - exclusive creation (the run lock): `create_exclusive` asks the store to create the object only
    if absent, and reads it back to know who won;
  - outages: an operation on a URL that fails with a transient error (no connection, a timeout,
    a 5xx answer, after gcsfs's own retries) is tried again with backoff, reporting what waits
    and since when, for up to `--storage_timeout` seconds (`set_outage_limit`); then it raises
    `StorageUnavailable` (one line, exit 2). Writes are whole uploads, so nothing is left
    half-written: rerunning the command continues.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from typing import IO, Callable, Iterator, TypeVar

os.environ.setdefault("EPATH_USE_TF", "false")  # read once, at epath's first gs:// path

import fsspec.config  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from bigvar.errors import UserError  # noqa: E402

fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)

T = TypeVar("T")
_outage_limit_s = 600.0
_REPORT_EVERY_S = 30.0
_SLOW_S = 10.0  # an operation that has not returned by then is reported, then every _REPORT_EVERY_S
# The errors that mean "the store did not answer", not "the answer is no".
_ANSWERS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError)


class StorageUnavailable(UserError):
    """A store did not answer for longer than the outage limit."""


_gave_up: str | None = None  # why an operation gave up: the job is stopping, the rest fail at once


def set_outage_limit(seconds: float) -> None:
    """How long operations on URLs keep retrying through an outage (`--storage_timeout`)."""
    global _outage_limit_s, _gave_up
    _outage_limit_s, _gave_up = float(seconds), None


def is_transient(error: BaseException) -> bool:
    """True when `error` means the store did not answer (worth retrying), not that it said no."""
    if isinstance(error, _ANSWERS):
        return False
    text = str(error)  # TensorStore (orbax's array writes) raises ValueError with a status code
    if isinstance(error, ValueError) and (text.startswith(("UNAVAILABLE:", "DEADLINE_EXCEEDED:"))
                                          or "retry attempts failed" in text):
        return True
    gcsfs_retry = sys.modules.get("gcsfs.retry")
    if gcsfs_retry is not None and gcsfs_retry.is_retriable(error):
        return True
    return isinstance(error, OSError) or type(error).__module__.startswith("aiohttp")


def _retried(operation: Callable[..., T]) -> Callable[..., T]:
    """`operation(path, …)` retried through outages when `path` is a URL (see the module's
    docstring). Each operation waits on its own; a report names the path and the first error."""
    def retried(path, *args, **kwargs):
        if not is_url(path):
            remote = [a for a in args if isinstance(a, str) and is_url(a)]  # upload(local, url)
            if not remote:
                return operation(path, *args, **kwargs)
            return retried_call(operation, remote[0], path, *args, **kwargs)
        return retried_call(operation, path, path, *args, **kwargs)
    retried.__name__, retried.__doc__ = operation.__name__, operation.__doc__
    retried.__wrapped__ = operation
    return retried


@contextlib.contextmanager
def still_waiting(what: str) -> Iterator[None]:
    """Logs `still waiting for storage: <what> (since HH:MM:SS)` when the block has run for 10 s,
    and every 30 s after (gcsfs retries a failed request for ~30 s before it raises)."""
    began = time.strftime("%H:%M:%S")
    done = threading.Event()

    def report():
        delay = _SLOW_S
        while not done.wait(delay):
            logging.warning("still waiting for storage: %s (since %s)", what, began)
            delay = _REPORT_EVERY_S
    reporter = threading.Thread(target=report, daemon=True, name="storage-wait")
    reporter.start()
    try:
        yield
    finally:
        done.set()


def retried_call(operation: Callable[..., T], url: str, *args, since: float | None = None,
                 what: str | None = None, **kwargs) -> T:
    """`operation(*args, **kwargs)`, which reads or writes `url`, through outages; `since`: when
    the outage began, if an earlier operation already met it (the limit counts from then);
    `what`: how reports name the operation (`<what> <url>`; by default its function's name)."""
    _stop_if_given_up()
    start, last_report = since, None
    what = what or operation.__name__
    attempt = 0
    while True:
        began = time.time()
        try:
            with still_waiting(f"{what} {url}"):
                result = operation(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 (classified below)
            if not is_transient(error):
                raise
            now = time.time()
            start = start or began  # (gcsfs retried for ~30 s before giving up)
            waited = now - start
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            if waited >= _outage_limit_s:
                _give_up(f"{url}: storage did not answer for {waited:.0f} s ({reason}); stopped "
                         "with every finished file in place: rerun the same command when it is "
                         f"back (or raise --storage_timeout, now {_outage_limit_s:g} s)")
            if last_report is None or now - last_report >= _REPORT_EVERY_S:
                logging.warning(
                    "storage did not answer %s %s since %s (%s); retrying until %s "
                    "(--storage_timeout=%g s)", what, url,
                    time.strftime("%H:%M:%S", time.localtime(start)), reason,
                    time.strftime("%H:%M:%S", time.localtime(start + _outage_limit_s)),
                    _outage_limit_s)
                last_report = now
            time.sleep(min(2.0 ** attempt, 30.0, max(start + _outage_limit_s - now, 0.1)))
            attempt += 1
            continue
        if start is not None:
            logging.warning("storage answers again (%s %s, after %.0f s)", what, url,
                        time.time() - start)
        return result


def _give_up(reason: str) -> None:
    """Raises StorageUnavailable(reason), as every later operation on a URL will at once: the job
    stops, and its cleanup (closing logs, releasing the lock) must not wait out another outage;
    the error the user reads names the first operation that gave up."""
    global _gave_up
    _gave_up = _gave_up or reason
    raise StorageUnavailable(_gave_up)


def _stop_if_given_up() -> None:
    if _gave_up is not None:
        raise StorageUnavailable(_gave_up)


def is_url(path: str) -> bool:
    return "://" in os.fspath(path)


def filesystem(path: str):
    """The fsspec filesystem of a URL, for what epath does not offer (find, compose)."""
    return fsspec.core.url_to_fs(path, use_listings_cache=False)[0]


def absolute(path: str) -> str:
    """`path` made absolute (a URL is returned as it is, without a trailing slash)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


@_retried
def exists(path: str) -> bool:
    return epath.Path(path).exists()


@_retried
def isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


@_retried
def isfile(path: str) -> bool:
    return epath.Path(path).is_file()


@_retried
def makedirs(path: str) -> None:
    """Creates the folder and its parents (an object store has no folders: nothing is done, and
    no bucket is created)."""
    epath.Path(path).mkdir(parents=True, exist_ok=True)


@_retried
def listdir(path: str) -> list[str]:
    """The sorted names in folder `path` (FileNotFoundError if there is none)."""
    if is_url(path) and not isdir(path):  # (epath would list a file as a folder holding itself)
        raise FileNotFoundError(path)
    return sorted(child.name for child in epath.Path(path).iterdir())


@_retried
def remove(path: str) -> None:
    """Removes a file (FileNotFoundError if there is none)."""
    epath.Path(path).unlink()


@_retried
def rmtree(path: str) -> None:
    """Removes a folder and everything in it (nothing if there is none)."""
    epath.Path(path).rmtree(missing_ok=True)


@_retried
def replace(source: str, target: str) -> None:
    """Moves a file or folder to `target`, replacing a file there. Atomic locally; for URLs a copy
    and a delete (object stores have no rename), so `target` must not be read meanwhile."""
    if not is_url(source):
        epath.Path(source).replace(target)
        return
    # Not epath's replace: gcsfs's move first tries objects.move, which the emulator lacks.
    fs = filesystem(source)
    folder = fs.isdir(source)
    fs.copy(source, target, recursive=folder)
    fs.rm(source, recursive=folder)


def open(path: str, mode: str = "r", **kwargs) -> IO:  # noqa: A001 (mirrors the builtin)
    """Opens a file; text is UTF-8 (and only `encoding="utf-8"` may be passed)."""
    if "b" in mode or not is_url(path):
        return epath.Path(path).open(mode, **kwargs)
    # epath's gs:// text files use the locale's encoding: decode here instead.
    return io.TextIOWrapper(epath.Path(path).open(mode + "b"), **{"encoding": "utf-8", **kwargs})


@_retried
def read_text(path: str) -> str:
    return epath.Path(path).read_bytes().decode("utf-8")


@_retried
def getmtime(path: str) -> float:
    if not is_url(path):  # (epath's local stat looks up the owner's name: fails for unnamed uids)
        return os.path.getmtime(path)
    return float(epath.Path(path).stat().mtime)


@_retried
def touch(path: str) -> None:
    """Refreshes the modification time (for a URL: uploads the same bytes again)."""
    if not is_url(path):
        os.utime(path)
        return
    fs = filesystem(path)  # (epath's touch leaves an existing file as it is)
    fs.pipe_file(path, fs.cat_file(path))


def _temporary_name(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return f".{stem}.tmp-{os.getpid()}-{threading.get_ident()}{ext}"


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """Yields a local temporary path to write; when the block succeeds it becomes `path` at
    once: readers see the old file or the complete new one, never a truncated one.

    Locally the temporary sits next to `path` and is renamed (a crash leaves at most a hidden
    temporary, removed here when possible); for a URL it is uploaded in one request. Temporaries
    are unique per process and thread, so concurrent writers cannot interleave. (Not epath's
    open(url, "wb"): a block that raises would still upload what it had written.)"""
    path = absolute(path)
    if is_url(path):
        with tempfile.TemporaryDirectory(prefix="bigvar-upload-") as folder:
            tmp = os.path.join(folder, _temporary_name(os.path.basename(path)))
            yield tmp
            upload(tmp, path)
        return
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, _temporary_name(name))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@_retried
def upload(local_path: str, path: str) -> None:
    """Copies a local file to `path` (a URL or a local path) in one piece."""
    if is_url(path):
        filesystem(path).put_file(local_path, path)
    else:
        with atomic_write(path) as tmp:
            shutil.copyfile(local_path, tmp)


@_retried
def create_exclusive(path: str, data: bytes) -> bool:
    """Creates file `path` holding `data` if no file is there; True if this call created it.

    Locally the file is written whole under a temporary name and hard-linked to `path` (link
    fails if `path` exists), so a reader never sees it half-written. For a URL the store is asked
    to create the object only if absent, and the object is read back: the writer whose bytes are
    there won (also on stores or emulators that do not honour the precondition). epath has no
    exclusive mode ("x")."""
    if not is_url(path):
        directory, name = os.path.split(os.path.abspath(path))
        tmp = os.path.join(directory, _temporary_name(name))
        try:
            with builtins.open(tmp, "wb") as f:
                f.write(data)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    fs = filesystem(path)
    if fs.exists(path):  # (ours, when a retry follows an answer that was lost)
        return fs.cat_file(path) == data
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
    except (FileExistsError, ValueError, NotImplementedError):  # exists, or no "x" mode here
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    try:
        return fs.cat_file(path) == data
    except FileNotFoundError:
        return False


@_retried
def load_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read whole (a URL is downloaded first: np.load's many small
    seeks would each be a request)."""
    with open(path, "rb") as f:
        with np.load(io.BytesIO(f.read()) if is_url(path) else f) as data:
            return {key: data[key] for key in data.files}


# ---------------------------------------------------------------------------------------------
# Append-only local files mirrored to a URL at the cost of the bytes appended.
# ---------------------------------------------------------------------------------------------

def _can_compose(fs) -> bool:
    """GCS concatenates objects server-side (compose); other stores get whole uploads (S3's
    multipart copy needs 5 MiB parts, and most stores have nothing of the kind)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "gs" in protocols or "gcs" in protocols


class AppendMirror:
    """Keeps the object at `url` a copy of the local file `local`, which grows by appends.

    Each `sync()` uploads what was appended since the last one as a temporary object and has GCS
    compose (concatenate) it onto the object, server-side: a file written in N appends costs its
    size in uploads, not N whole uploads. The compose is atomic, so readers see the object before
    or after an append, and it is conditional on the object's generation, so a retried request
    cannot append twice. The object is uploaded whole instead on the first sync, when the file
    was replaced (a new file under the name: `os.replace`) or shortened, when an append fails,
    and on stores without compose. A file rewritten in place must be synced before it grows
    again. It may be appended to while `sync()` runs (a writer thread): the object is always a
    prefix of the file.
    """

    def __init__(self, local: str, url: str):
        self.local, self.url = local, url
        self._fs = filesystem(url)
        self._compose = _can_compose(self._fs)
        # What the object holds: ((st_dev, st_ino) of the file, size, generation); None: unknown.
        self._synced: tuple[tuple[int, int], int, str] | None = None
        self._warned = False

    def pull(self) -> bool:
        """Makes the local file a copy of the object, if there is one; True if there was."""
        def download():
            return self._fs.info(self.url), self._fs.cat_file(self.url)
        try:
            info, data = retried_call(download, self.url)
        except FileNotFoundError:
            return False
        with builtins.open(self.local, "wb") as f:
            f.write(data)
        stat = os.stat(self.local)
        if len(data) == int(info["size"]):  # (else rewritten meanwhile: the next sync is whole)
            self._synced = ((stat.st_dev, stat.st_ino), len(data), info.get("generation"))
        return True

    def sync(self) -> None:
        """Makes the object a copy of the local file as it is now."""
        _stop_if_given_up()
        stat = os.stat(self.local)
        file, size = (stat.st_dev, stat.st_ino), stat.st_size
        if self._synced is not None and self._synced[0] == file:
            synced, generation = self._synced[1:]
            if synced == size:
                return
            if self._compose and 0 < synced < size:
                try:
                    self._append(file, synced, size, generation)
                    return
                except Exception as e:  # noqa: BLE001 (the whole upload below repairs any failure)
                    if not self._warned:
                        logging.warning("appending to %s failed (%s: %s); uploading it whole",
                                        self.url, type(e).__name__, e)
                        self._warned = True
        self._synced = None
        with builtins.open(self.local, "rb") as f:
            data = f.read(size)  # (exactly `size` bytes: a writer thread may be appending)

        def upload():
            self._fs.pipe_file(self.url, data)
            return self._fs.info(self.url)
        info = retried_call(upload, self.url)  # (through outages, as every operation on a URL)
        if int(info["size"]) == size:
            self._synced = (file, size, info.get("generation"))

    def _append(self, file: tuple[int, int], start: int, end: int, generation: str) -> None:
        with builtins.open(self.local, "rb") as f:
            f.seek(start)
            tail = f.read(end - start)
        bucket, key, _ = self._fs.split_path(self.url)
        folder = key.rpartition("/")[0]
        tail_key = (folder + "/" if folder else "") + f".append-{uuid.uuid4().hex}"
        self._fs.pipe_file(f"{bucket}/{tail_key}", tail)
        try:
            # (not fs.merge: it cannot pass the precondition, and returns no size to check)
            composed = self._fs.call(
                "POST", "b/{}/o/{}/compose", bucket, key, ifGenerationMatch=generation,
                json={"kind": "storage#composeRequest", "destination": {"name": key},
                      "sourceObjects": [{"name": key}, {"name": tail_key}]},
                json_out=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm_file(f"{bucket}/{tail_key}")
        if int(composed["size"]) != end:
            raise OSError(f"the composed object holds {composed['size']} bytes, not {end}")
        self._synced = (file, end, composed.get("generation"))
