"""Random-access data sources (grain's RandomAccessDataSource protocol), all TensorFlow-free.

Every source returns per-record dicts that `transforms.try_decode` understands:

    {"image_bytes": bytes (encoded file), "label": int, "path": str}      image folder, ArrayRecord
    {"image_bytes": bytes or "image": uint8 (H, W, 3), "label": int, "path": str}      TFDS

Decoding is left to the transform so that a corrupt file is skipped (and counted) by the
pipeline instead of crashing a worker. The procedural source lives in `procedural.py`.

ArrayRecord record format ("BVR1"), written by `bigvar.data.write_array_record`:

    offset 0   4 bytes   magic b"BVR1"
    offset 4   int32 LE  label
    offset 8   uint32 LE n = length of the UTF-8 source path
    offset 12  n bytes   source path relative to the image-folder root (for error messages)
    offset 12+n …        the original encoded image file, byte for byte (no re-encoding)

Shards are written with `group_size:1` (required by ArrayRecord for random access) and no
compression (the payload is JPEG/PNG already). Class names live in `PREFIX.classes.json`.
"""
from __future__ import annotations

import glob as globlib
import json
import logging
import os
import re
import struct
import sys
from typing import NamedTuple, Sequence

import numpy as np

from bigvar import storage
from bigvar.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

RECORD_MAGIC = b"BVR1"
_HEADER = struct.Struct("<4siI")


# ---------------------------------------------------------------------------------------------
# Image folder


class ImageFolderScan(NamedTuple):
    class_names: list[str]  # sorted class-directory names; label = index
    files: list[tuple[str, int]]  # (path relative to root, label), sorted within a class
    skipped: list[tuple[str, str]]  # (path relative to root, reason) of unreadable entries


def scan_image_folder(root: str) -> ImageFolderScan:
    """Class names, image files and skipped entries of an ImageNet-style folder.

    Layout: root/<class_name>/<file>.{jpg,jpeg,png,webp,bmp} (extension case-insensitive).
    Class ids follow sorted class-directory names; files are sorted within a class.
    Entries that cannot be read — symlink loops, dangling links, permission errors — are
    skipped and listed with a reason (one warning names how many and an example), as the
    pipeline skips unreadable images. A class directory that cannot be listed keeps its class
    id (no label shifts) but contributes no files. Names without an image extension are ignored
    unexamined.
    """
    if storage.is_url(root):
        return _scan_bucket_folder(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    skipped = []
    class_names = []
    for entry in _scandir(root, "", skipped):
        if not entry.name.startswith(".") and _is_readable(entry, "dir", "", skipped):
            class_names.append(entry.name)
    class_names.sort()
    if not class_names:
        raise ValueError(f"image folder {root!r} has no class sub-directories; expected the "
                         "ImageNet layout root/<class_name>/<image files>"
                         + _skipped_note(skipped))
    files = []
    for label, name in enumerate(class_names):
        names = sorted(e.name for e in _scandir(os.path.join(root, name), name, skipped)
                       if e.name.lower().endswith(IMAGE_EXTENSIONS)
                       and _is_readable(e, "file", name, skipped))
        files.extend((f"{name}/{f}", label) for f in names)
    skipped.sort()
    if skipped:
        logging.warning("image folder %s: skipped %d unreadable entries (symlink loops, "
                        "dangling links, permission errors), e.g. %s (%s)", root, len(skipped),
                        *skipped[0])
    if not files:
        raise ValueError(f"image folder {root!r} has class directories {class_names[:5]}… but "
                         f"no image files with extensions {IMAGE_EXTENSIONS}"
                         + _skipped_note(skipped))
    return ImageFolderScan(class_names, files, skipped)


def _scan_bucket_folder(root: str) -> ImageFolderScan:
    """`scan_image_folder` of a URL (gs://bucket/imagenet/train): one listing of every object
    under it (a bucket has no symlinks or per-file permissions: nothing is skipped)."""
    fs = storage.filesystem(root)
    prefix = fs._strip_protocol(root).rstrip("/") + "/"
    by_class: dict[str, list[str]] = {}
    for path in fs.find(root):
        parts = path[len(prefix):].split("/")
        if len(parts) == 2 and not parts[0].startswith(".") and parts[1].lower().endswith(IMAGE_EXTENSIONS):
            by_class.setdefault(parts[0], []).append(parts[1])
    class_names = sorted(by_class)
    if not class_names:
        raise ValueError(f"image folder {root!r} has no image files in class folders; expected the "
                         "ImageNet layout root/<class_name>/<image files>")
    files = [(f"{name}/{f}", label) for label, name in enumerate(class_names)
             for f in sorted(by_class[name])]
    return ImageFolderScan(class_names, files, [])


def list_image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class names, [(path relative to root, label), …]); see `scan_image_folder`."""
    scan = scan_image_folder(root)
    return scan.class_names, scan.files


def _scandir(path: str, relative: str, skipped: list) -> list[os.DirEntry]:
    """The entries of a directory; none (and one skip recorded) if it cannot be listed."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as e:
        skipped.append((relative or ".", f"{type(e).__name__}: {e}"))
        return []


def _is_readable(entry: os.DirEntry, kind: str, parent: str, skipped: list) -> bool:
    """Whether `entry` is a `kind` ("dir" | "file"), following symlinks; records broken ones.

    DirEntry.is_dir/is_file raise OSError for symlink loops (ELOOP) and permission errors, and
    return False for dangling links: both are recorded in `skipped`. Plain entries cost no
    system call on Linux (the type comes with the directory listing).
    """
    relative = f"{parent}/{entry.name}" if parent else entry.name
    try:
        if entry.is_dir() if kind == "dir" else entry.is_file():
            return True
        if entry.is_symlink() and not os.path.exists(entry.path):
            skipped.append((relative, "dangling symbolic link"))
    except OSError as e:
        skipped.append((relative, f"{type(e).__name__}: {e}"))
    return False


def _skipped_note(skipped: list) -> str:
    if not skipped:
        return ""
    path, reason = min(skipped)
    return f" ({len(skipped)} unreadable entries skipped, e.g. {path}: {reason})"


class ImageFolderSource:
    """Encoded image files of an ImageNet-style folder: `{"image_bytes", "label", "path"}`.

    `skipped_entries`: (relative path, reason) of the entries the scan could not read.
    """

    def __init__(self, root: str):
        self.root = storage.absolute(root)
        self.class_names, files, self.skipped_entries = scan_image_folder(self.root)
        self._paths = [f for f, _ in files]  # relative: shorter to pickle into grain workers
        self._labels = np.array([label for _, label in files], np.int32)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict:
        path = os.path.join(self.root, self._paths[index])
        example = {"label": int(self._labels[index]), "path": path}
        try:
            with storage.open(path, "rb") as f:
                example["image_bytes"] = f.read()
        except OSError as e:  # vanished / unreadable file: let the pipeline skip and count it
            example["image_bytes"], example["read_error"] = b"", f"{type(e).__name__}: {e}"
        return example

    def __repr__(self) -> str:
        return (f"ImageFolderSource({self.root!r}, {len(self)} images, "
                f"{len(self.class_names)} classes)")


# ---------------------------------------------------------------------------------------------
# ArrayRecord


def encode_record(label: int, image_bytes: bytes, path: str = "") -> bytes:
    """One "BVR1" record (see the module docstring)."""
    p = path.encode("utf-8")
    return _HEADER.pack(RECORD_MAGIC, int(label), len(p)) + p + bytes(image_bytes)


def decode_record(record: bytes) -> dict:
    """"BVR1" record → {"image_bytes", "label", "path"}; ValueError if it is not one."""
    if len(record) < _HEADER.size or record[:4] != RECORD_MAGIC:
        raise ValueError(f"not a bigvar image record (magic {bytes(record[:4])!r}, expected "
                         f"{RECORD_MAGIC!r}); was this file written by "
                         "bigvar.data.write_array_record?")
    _, label, n = _HEADER.unpack_from(record)
    start = _HEADER.size
    path = bytes(record[start:start + n]).decode("utf-8")
    return {"image_bytes": bytes(record[start + n:]), "label": label, "path": path}


def expand_paths(paths_or_glob: str | Sequence[str]) -> list[str]:
    """A glob, a comma-separated list or a list of paths/globs → sorted existing file paths."""
    if isinstance(paths_or_glob, str):
        paths_or_glob = [p for p in paths_or_glob.split(",") if p]
    out = []
    for pattern in paths_or_glob:
        if storage.is_url(pattern):
            raise ValueError(f"{pattern}: ArrayRecord shards are read from local or mounted "
                             "paths (ArrayRecord's reader opens files itself); copy them to local "
                             "disk, mount the bucket (gcsfuse), or use an image folder, which may "
                             "be a gs:// URL")
        matches = sorted(globlib.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"no ArrayRecord files match {pattern!r}")
        out.extend(matches)
    return out


class ArrayRecordSource:
    """"BVR1" ArrayRecord shards (sorted by name) as `{"image_bytes", "label", "path"}`."""

    def __init__(self, paths_or_glob: str | Sequence[str]):
        from array_record.python import array_record_data_source  # heavy import: only if used

        self.paths = expand_paths(paths_or_glob)
        self._source = array_record_data_source.ArrayRecordDataSource(self.paths)
        self.class_names = _read_class_names(self.paths[0])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        example = decode_record(self._source[int(index)])
        example["path"] = example["path"] or f"record {int(index)}"
        return example

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.paths)} shards, {len(self)} records)"


def shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}.array_record"


def _read_class_names(shard_path: str) -> list[str] | None:
    """PREFIX-00000-of-00004.array_record → the list in PREFIX.classes.json, if there is one."""
    m = re.fullmatch(r"(.*)-\d{5}-of-\d{5}\.array_record", shard_path)
    candidate = (m.group(1) if m else shard_path) + ".classes.json"
    if os.path.exists(candidate):
        with open(candidate) as f:
            return json.load(f)
    return None


# ---------------------------------------------------------------------------------------------
# TFDS (reader only)


class TfdsSource:
    """A prepared TFDS dataset read with `tfds.data_source` (ArrayRecord format), TF-free.

    Images come back as encoded bytes (`SkipDecoding`) so that decoding, and skipping of
    unreadable images, happens in the transform like for the other sources. The dataset must
    already be prepared in `data_dir` in the array_record file format (e.g. by
    `tfds build --file_format=array_record` on a machine with TensorFlow); reading it needs
    no TensorFlow. Only the "image" and "label" features are used.
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None,
                 image_key: str = "image", label_key: str = "label"):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise UserError("data.source=tfds needs tensorflow-datasets, an extra of bigvar: "
                            "pip install 'bigvar[tfds]'") from None

        self.name, self.split, self.image_key, self.label_key = name, split, image_key, label_key
        try:
            self._source = tfds.data_source(
                name, split=split, data_dir=data_dir, download=False,
                decoders={image_key: tfds.decode.SkipDecoding()})
        except Exception as e:  # tfds raises assorted types for "not prepared here"
            raise ValueError(
                f"cannot open TFDS dataset {name!r} split {split!r} in data_dir={data_dir!r}: "
                f"{type(e).__name__}: {e}. The dataset must be prepared beforehand in the "
                "array_record file format (`tfds build {name} --file_format=array_record`), "
                "which needs TensorFlow; reading it here does not.") from e
        if "tensorflow" in sys.modules:  # DESIGN: no TensorFlow at runtime; tell whoever broke it
            raise RuntimeError("tfds.data_source imported TensorFlow; bigvar must stay TF-free "
                               "(check the tensorflow-datasets version)")
        info = getattr(self._source, "dataset_info", None)
        label_feature = None
        if info is not None:
            label_feature = info.features[label_key] if label_key in info.features else None
            if image_key not in info.features:
                raise ValueError(f"TFDS dataset {name!r} has no {image_key!r} feature; features: "
                                 f"{list(info.features)}")
        self.class_names = list(getattr(label_feature, "names", None) or []) or None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        example = self._source[index]
        image = example[self.image_key]
        out = {"label": int(example[self.label_key]),
               "path": f"tfds:{self.name}/{self.split}[{index}]"}
        if isinstance(image, (bytes, bytearray, np.bytes_)):
            out["image_bytes"] = bytes(image)
        else:  # an already-decoded uint8 array (datasets stored as raw tensors)
            out["image"] = np.asarray(image)
        return out

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} records)"
