"""`.npz` files written and read in row chunks, so 50 000 images at 512 px (39 GB as uint8) never
sit in host memory at once. The files are ordinary `np.savez` archives (uncompressed zip members
`<key>.npy`): `np.load` and the ADM evaluator read them as usual.
"""
from __future__ import annotations

import contextlib
import zipfile
from typing import Iterator

import numpy as np

from bigvar import storage
from bigvar.storage import atomic_write


def write(path: str, arrays: dict) -> None:
    """Writes an npz atomically, entries in order. Each value is an array; or (shape, dtype,
    chunks): row chunks whose concatenation has that shape (checked); or a function returning
    an array, called when its turn comes (so it may hold what an earlier stream gathered)."""
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            if callable(value):
                value = np.asarray(value())
            if isinstance(value, np.ndarray):
                with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, value, allow_pickle=False)
                continue
            shape, dtype, chunks = value
            dtype = np.dtype(dtype)
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                        "shape": tuple(shape)})
                rows = 0
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype)
                    if chunk.shape[1:] != tuple(shape[1:]):
                        raise ValueError(f"{path}: a chunk of {key} has shape {chunk.shape}, "
                                         f"expected rows of {tuple(shape[1:])}")
                    f.write(chunk.tobytes())
                    rows += len(chunk)
                if rows != shape[0]:
                    raise ValueError(f"{path}: {key} got {rows} rows, expected {shape[0]}")


@contextlib.contextmanager
def _member(path: str, key: str) -> Iterator[tuple[object, tuple[int, ...], np.dtype]]:
    with storage.open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        name = f"{key}.npy"
        if name not in zf.namelist():
            keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
            raise KeyError(f"{path} has no {key!r} array (it holds {keys})")
        with zf.open(name) as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"{path}: {key} uses .npy format {version}; re-save it with np.savez")
            shape, fortran, dtype = read_header(f)
            if fortran:
                raise ValueError(f"{path}: {key} is stored in Fortran order; re-save it with np.savez")
            if dtype.hasobject:
                raise ValueError(f"{path}: {key} holds Python objects ({dtype}), not numbers")
            declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            held = zf.getinfo(name).file_size - f.tell()
            if held < declared:
                raise ValueError(f"{path}: {key}'s header declares {shape} {dtype} ({declared} "
                                 f"bytes) but the file holds {held}: it is truncated")
            yield f, shape, dtype


def shape_and_dtype(path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of one array, from its header alone."""
    with _member(path, key) as (_, shape, dtype):
        return shape, dtype


def iter_rows(path: str, key: str, batch: int, start: int = 0) -> Iterator[np.ndarray]:
    """Row chunks of `batch` rows (the last may be shorter), from row `start` on."""
    with _member(path, key) as (f, shape, dtype):
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        if start:
            f.seek(f.tell() + start * row_bytes)
        for first in range(start, shape[0], batch):
            count = min(batch, shape[0] - first)
            data = f.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"{path}: {key} is truncated at row {first} (damaged file?)")
            yield np.frombuffer(data, dtype).reshape((count,) + tuple(shape[1:]))
