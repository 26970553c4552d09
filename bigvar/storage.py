"""Paths that may be local or remote: `gs://bucket/run` (or any fsspec URL) as well as a folder.

The jobs keep their work directories, logs, exports, sample outputs and reference batches through
these functions, so a `--workdir=gs://bucket/run` is a bucket prefix (not the local folder
`./gs:/bucket/run` that `os.path` would make of it). Local paths go straight to `os`; URLs go to
fsspec (gcsfs for gs://, installed with bigvar). Checkpoints go through orbax/TensorStore, which
read and write gs:// themselves.

What object stores lack, and how it is made up for:
  - renames: `replace` of a URL is a copy then a delete, so writers of shared files write them
    whole in one upload (`atomic_write`): a reader sees the old object or the complete new one;
  - appends: files that grow (metrics.jsonl, event files) are written locally and uploaded
    whole after each write (`train/metric_writer.py`);
  - exclusive creation (the run lock): `create_exclusive` asks the store to create the object only
    if absent, and reads it back to know who won.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import os
import shutil
import tempfile
import threading
from typing import IO, Iterator

import numpy as np


def is_url(path: str) -> bool:
    return "://" in os.fspath(path)


def filesystem(path: str):
    import fsspec
    # No listing cache: the jobs poll for files other processes write.
    return fsspec.core.url_to_fs(path, use_listings_cache=False)[0]


def absolute(path: str) -> str:
    """`path` made absolute (a URL is returned as it is, without a trailing slash)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return filesystem(path).exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return filesystem(path).isdir(path) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return filesystem(path).isfile(path) if is_url(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
    """Creates the folder and its parents (an object store has no folders: nothing to do)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """The names in folder `path` (FileNotFoundError if there is none)."""
    if not is_url(path):
        return os.listdir(path)
    fs = filesystem(path)
    if not fs.isdir(path):
        raise FileNotFoundError(path)
    return sorted({entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)})


def remove(path: str) -> None:
    """Removes a file (FileNotFoundError if there is none)."""
    if not is_url(path):
        os.remove(path)
        return
    fs = filesystem(path)
    if not fs.isfile(path):
        raise FileNotFoundError(path)
    fs.rm_file(path)


def rmtree(path: str) -> None:
    if is_url(path):
        fs = filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace(source: str, target: str) -> None:
    """Moves a file or folder to `target`, replacing a file there. Atomic locally; for URLs a copy
    and a delete (object stores have no rename), so `target` must not be read meanwhile."""
    if not is_url(source):
        os.replace(source, target)
        return
    fs = filesystem(source)
    folder = fs.isdir(source)  # (not fs.mv: gcsfs first tries an API the emulator lacks)
    fs.copy(source, target, recursive=folder)
    fs.rm(source, recursive=folder)


def open(path: str, mode: str = "r", **kwargs) -> IO:  # noqa: A001 (mirrors the builtin)
    if is_url(path):
        return filesystem(path).open(path, mode, **kwargs)
    return builtins.open(path, mode, **kwargs)


def read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


def getmtime(path: str) -> float:
    if not is_url(path):
        return os.path.getmtime(path)
    modified = filesystem(path).modified(path)
    return modified.timestamp()


def touch(path: str) -> None:
    """Refreshes the modification time (for a URL: uploads the same bytes again)."""
    if not is_url(path):
        os.utime(path)
        return
    fs = filesystem(path)
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
    are unique per process and thread, so concurrent writers cannot interleave."""
    path = absolute(path)
    if is_url(path):
        with tempfile.TemporaryDirectory(prefix="bigvar-upload-") as folder:
            tmp = os.path.join(folder, _temporary_name(os.path.basename(path)))
            yield tmp
            filesystem(path).put_file(tmp, path)
        return
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, _temporary_name(name))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def upload(local_path: str, path: str) -> None:
    """Copies a local file to `path` (a URL or a local path) in one piece."""
    if is_url(path):
        filesystem(path).put_file(local_path, path)
    else:
        with atomic_write(path) as tmp:
            shutil.copyfile(local_path, tmp)


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates file `path` holding `data` if no file is there; True if this call created it.

    Locally the file is written whole under a temporary name and hard-linked to `path` (link
    fails if `path` exists), so a reader never sees it half-written. For a URL the store is asked
    to create the object only if absent, and the object is read back: the writer whose bytes are
    there won (also on stores or emulators that do not honour the precondition)."""
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
    if fs.exists(path):
        return False
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


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read whole (a URL is downloaded first)."""
    with open(path, "rb") as f:
        with np.load(io.BytesIO(f.read()) if is_url(path) else f) as data:
            return {key: data[key] for key in data.files}

