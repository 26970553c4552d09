"""The training input pipeline: grain, deterministic, shardable, exactly resumable, TF-free.

    it = make_train_iterator(config.data, image_size=256, global_batch=768, seed=0,
                             process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)  # {"image": float32 (768 // P, 256, 256, 3), "label": int32 (768 // P,)}
    blob = iterator_state_to_bytes(it)        # store next to the model checkpoint
    restore_iterator_state(fresh_it, blob)    # … later: continues with exactly the next batch
    skipped_count(it)                         # unreadable images skipped so far (this process)

Order. Think of one infinite global stream of positions 0, 1, 2, …: position q is record
perm_e(q mod n) of epoch e = q // n, where perm_e is a fixed pseudo-random permutation seeded
by (seed, e) — a fresh global shuffle each epoch, repeated forever. Global batch b is positions
[b·G, (b+1)·G). Process p of P reads, within every global batch, the contiguous block
[b·G + p·L, b·G + (p+1)·L) with L = G / P; concatenating the processes' local batches in
process order gives the 1-process global batch. Record q's augmentation is drawn from an RNG
seeded by (seed, q) only, so nothing depends on the number of processes, workers or threads.

Unreadable images (empty, truncated, corrupt, or beyond data.max_aspect_ratio / max_pixels)
are skipped: the process reads its next position instead, so batches stay full. Each process
then runs a little ahead in its own blocks — the processes' batches stay disjoint (each
position belongs to exactly one process), but are no longer exactly the 1-process batch. The
skip count is part of the iterator state, so it is checkpointed with it and `skipped_count(it)`
is exact across restarts. The first few skipped files are logged by name, with the reason.

Work split. Reading, decoding and cropping run per record in grain's read threads
(`num_threads`, PIL releases the GIL) and optionally in `num_workers` processes (grain's
`mp_prefetch` gives worker w the records w, w+W, … and interleaves them back in order, so the
stream is the same for any W); skipping, batching and the float conversion run in the main
process, followed by a `prefetch`-batch thread buffer.

Resume needs the same data config, seed, batch size, process layout and `num_workers` (the
saved state records per-worker positions when num_workers > 0).
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any

import grain
import ml_collections
import numpy as np

from bigvar.data import procedural, sources, transforms

SOURCES = ("procedural", "folder", "array_record", "tfds")

# Distinct SeedSequence words so the shuffle and the augmentation never share random streams.
_SHUFFLE_TAG = 0x5348_5546  # "SHUF"
_AUGMENT_TAG = 0x4155_474D  # "AUGM"
# Named warnings for the first few unreadable files, then one line every _LOG_EVERY.
_LOG_FIRST = 10
_LOG_EVERY = 1000
# This many unreadable records in a row means the data is not images at all: stop, loudly.
_MAX_CONSECUTIVE_UNREADABLE = 10_000
_STATE_FORMAT = "bigvar.data.pipeline/1"
_SKIPPED_KEY = "num_unreadable_skipped"


def data_section(**overrides) -> ml_collections.ConfigDict:
    """`config.data`: where training images come from. The defaults are the built-in procedural
    data (runs anywhere, no files); `_resolve_config` checks the values."""
    data = ml_collections.ConfigDict(dict(
        source="procedural",  # procedural | folder | array_record | tfds
        path="",  # folder: root/<class>/<files> (ImageNet layout); array_record: glob or list
        tfds_name="", tfds_split="train", tfds_data_dir="",  # a TFDS dataset prepared as array_record
        num_classes=10,  # classes of the model; labels must be < num_classes
        num_records=10_000, procedural_seed=0,  # procedural: records per epoch, which images
        transform="var",  # var: shorter side 1.125·R (Lanczos) + random crop; adm: BiGR's centre crop
        value_range="minus_one_one",  # the tokenizer's input range: minus_one_one | zero_one
        hflip=False,  # random flips for var and procedural; adm always flips (as BiGR)
        # Bounds on the work per image, checked from the file header and skipped (counted,
        # logged) beyond them; 0 = no limit. Longer:shorter side: a 1×20000 PNG would resize to
        # 288×5.76M px. Decoded pixels: 64 MP is 192 MB as RGB, above camera photos.
        max_aspect_ratio=transforms.DEFAULT_MAX_ASPECT_RATIO,
        max_pixels=transforms.DEFAULT_MAX_PIXELS,
        num_workers=0,  # grain worker processes; 0 = decode in this process
        num_threads=4,  # read/decode threads per process (PIL releases the GIL)
        prefetch=2,  # batches buffered ahead by a background thread; 0 = none
    ))
    data.update(overrides)
    return data


def _resolve_config(data_config) -> ml_collections.ConfigDict:
    """Defaults filled in for absent fields, values checked (messages say how to fix them)."""
    # Not type-safe: `path` may be a list of shards and `value_range` a (low, high) tuple.
    cfg = ml_collections.ConfigDict(data_section().to_dict(), type_safe=False)
    given = dict(data_config.items()) if data_config is not None else {}
    unknown = sorted(set(given) - set(cfg))
    if unknown:
        raise ValueError(f"data config has unknown fields {unknown}; known: {sorted(cfg)}")
    for k, v in given.items():
        cfg[k] = v if v is not None else cfg[k]
    if cfg.source not in SOURCES:
        raise ValueError(f"data.source={cfg.source!r} is unknown; use one of {list(SOURCES)}")
    if cfg.transform not in transforms.TRANSFORMS:
        raise ValueError(f"data.transform={cfg.transform!r} is unknown; use one of "
                         f"{list(transforms.TRANSFORMS)}")
    transforms.resolve_value_range(cfg.value_range)
    for k in ("num_workers", "num_threads", "prefetch"):
        if cfg[k] < 0:
            raise ValueError(f"data.{k}={cfg[k]} must be ≥ 0")
    if cfg.max_aspect_ratio and cfg.max_aspect_ratio < 1:
        raise ValueError(f"data.max_aspect_ratio={cfg.max_aspect_ratio} must be ≥ 1 (longer side "
                         "over shorter side), or 0 for no limit")
    if cfg.max_pixels < 0:
        raise ValueError(f"data.max_pixels={cfg.max_pixels} must be ≥ 1, or 0 for no limit")
    if cfg.num_classes < 1:
        raise ValueError(f"data.num_classes={cfg.num_classes} must be ≥ 1")
    if cfg.source in ("folder", "array_record") and not cfg.path:
        raise ValueError(f"data.source={cfg.source!r} needs data.path (an image-folder root for "
                         "'folder', a glob of .array_record shards for 'array_record')")
    if cfg.source == "tfds" and not cfg.tfds_name:
        raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'imagenet2012')")
    return cfg


def make_source(data_config, image_size: int):
    """The random-access source a data config names (procedural images are made at image_size)."""
    cfg = _resolve_config(data_config)
    if cfg.source == "procedural":
        src = procedural.ProceduralSource(cfg.num_classes, image_size, cfg.num_records,
                                          seed=cfg.procedural_seed)
    elif cfg.source == "folder":
        src = sources.ImageFolderSource(cfg.path)
    elif cfg.source == "array_record":
        src = sources.ArrayRecordSource(cfg.path)
    else:
        src = sources.TfdsSource(cfg.tfds_name, cfg.tfds_split, cfg.tfds_data_dir or None)
    names = getattr(src, "class_names", None)
    if names and len(names) > cfg.num_classes:
        raise ValueError(f"the {cfg.source} data has {len(names)} classes ({names[:3]}…) but "
                         f"data.num_classes={cfg.num_classes}; set data.num_classes to "
                         f"{len(names)} (and the model's class count to match)")
    return src


# ---------------------------------------------------------------------------------------------
# Positions → records (pure functions of the seed)


def global_position(k: int, local_batch: int, process_index: int, process_count: int) -> int:
    """Global stream position of this process's k-th local element (see the module docstring)."""
    block, offset = divmod(k, local_batch)
    return (block * process_count + process_index) * local_batch + offset


@functools.lru_cache(maxsize=8)
def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, _SHUFFLE_TAG]).generate_state(1)[0])


def record_index(position: int, num_records: int, seed: int) -> int:
    """Record read at a global position: epoch-wise global shuffle, repeated forever."""
    epoch, i = divmod(position, num_records)
    if num_records == 1:
        return 0
    return int(grain.experimental.index_shuffle(
        i, max_index=num_records - 1, seed=_epoch_seed(seed, epoch), rounds=4))


def augment_rng(seed: int, position: int) -> np.random.Generator:
    return np.random.default_rng([seed, position, _AUGMENT_TAG])


class _LoadRecord:
    """Local element k → {"image": uint8 (R,R,3), "label": int32} or an "unreadable" marker.

    A class (not a closure) because grain pickles it into worker processes.
    """

    def __init__(self, source, *, seed, local_batch, process_index, process_count,
                 image_size, procedural_source, image_fn, hflip, num_classes,
                 max_aspect_ratio, max_pixels):
        self.source, self.seed = source, seed
        self.local_batch, self.process_index, self.process_count = (
            local_batch, process_index, process_count)
        self.image_size, self.procedural_source = image_size, procedural_source
        self.image_fn, self.hflip, self.num_classes = image_fn, hflip, num_classes
        self.num_records = len(source)
        self.decode_limits = dict(max_aspect_ratio=max_aspect_ratio, max_pixels=max_pixels)

    def __call__(self, k: int) -> dict:
        pos = global_position(int(k), self.local_batch, self.process_index, self.process_count)
        example = self.source[record_index(pos, self.num_records, self.seed)]
        label = int(example["label"])
        if not 0 <= label < self.num_classes:
            raise ValueError(f"record {example.get('path', '?')} has label {label}, outside "
                             f"[0, data.num_classes={self.num_classes}); fix data.num_classes")
        rng = augment_rng(self.seed, pos)
        if self.procedural_source:  # already R×R: only the optional flip applies
            image = example["image"]
            if self.hflip and rng.random() < 0.5:
                image = np.ascontiguousarray(image[:, ::-1])
        else:
            image, reason = transforms.try_decode(example, **self.decode_limits)
            if image is None:
                return {"unreadable": str(example.get("path", "?")), "reason": reason}
            image = self.image_fn(image, rng)
        return {"image": image, "label": np.int32(label)}


# ---------------------------------------------------------------------------------------------
# Skipping unreadable records (main process; its count is part of the iterator state)


class _SkipUnreadableIterDataset(grain.IterDataset):

    def __iter__(self):
        return _SkipUnreadableIterator(self._parent.__iter__())

    def __str__(self) -> str:
        return "SkipUnreadableIterDataset"


class _SkipUnreadableIterator(grain.DatasetIterator):

    def __init__(self, parent):
        super().__init__(parent)
        self._skipped = 0

    def __next__(self):
        run = 0
        while True:
            element = next(self._parent)
            if "unreadable" not in element:
                return element
            self._skipped += 1
            run += 1
            if self._skipped <= _LOG_FIRST:
                logging.warning("skipping unreadable image %s (%s)%s", element["unreadable"],
                                element["reason"],
                                "; further ones are counted, not named"
                                if self._skipped == _LOG_FIRST else "")
            elif self._skipped % _LOG_EVERY == 0:
                logging.warning("%d unreadable images skipped so far", self._skipped)
            if run >= _MAX_CONSECUTIVE_UNREADABLE:
                raise RuntimeError(
                    f"{run} records in a row could not be decoded (last: "
                    f"{element['unreadable']}: {element['reason']}); the data source does not "
                    "seem to hold images — check data.source / data.path")

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), _SKIPPED_KEY: self._skipped}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._skipped = int(state[_SKIPPED_KEY])


class _ToFloat:
    """uint8 batch → float32 in the configured value range (vectorised, main process)."""

    def __init__(self, value_range):
        self.value_range = value_range

    def __call__(self, batch: dict) -> dict:
        return {"image": transforms.to_float(batch["image"], self.value_range),
                "label": np.asarray(batch["label"], np.int32)}


# ---------------------------------------------------------------------------------------------
# Public API


def make_train_iterator(data_config, *, image_size: int, global_batch: int, seed: int,
                        process_index: int = 0, process_count: int = 1, start_batch: int = 0):
    """An endless grain iterator of this process's training batches (see the module docstring),
    from global batch `start_batch` on (how a run resumes on another number of processes: exact
    unless unreadable images were skipped before, whose count only the saved state knows).

    Yields {"image": float32 (global_batch // process_count, R, R, 3) in data.value_range,
    "label": int32 (global_batch // process_count,)}. Supports get_state()/set_state();
    call `close()` when done if data.num_workers > 0.
    """
    cfg = _resolve_config(data_config)
    if image_size < 1:
        raise ValueError(f"image_size={image_size} must be positive")
    if global_batch < 1:
        raise ValueError(f"global_batch={global_batch} must be positive")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count="
                         f"{process_count})")
    if global_batch % process_count:
        raise ValueError(f"global_batch={global_batch} is not divisible by process_count="
                         f"{process_count}; choose a batch size that is a multiple of it")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed} must be a non-negative integer")
    local_batch = global_batch // process_count

    source = make_source(cfg, image_size)
    load = _LoadRecord(
        source, seed=seed, local_batch=local_batch, process_index=process_index,
        process_count=process_count, image_size=image_size,
        procedural_source=cfg.source == "procedural",
        image_fn=transforms.make_image_transform(cfg.transform, image_size, hflip=cfg.hflip),
        hflip=cfg.hflip, num_classes=cfg.num_classes,
        max_aspect_ratio=cfg.max_aspect_ratio, max_pixels=cfg.max_pixels)

    # Element k of this map is this process's k-th record; no None ever comes out of it, so
    # grain's worker interleaving keeps the exact order (unreadable ones are markers).
    ds = grain.MapDataset.range(start_batch * local_batch, sys.maxsize).map(load)
    # Procedural rendering is GIL-bound numpy: read threads would only add contention.
    num_threads = 0 if cfg.source == "procedural" else cfg.num_threads
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=max(2 * local_batch, 16)))
    if cfg.num_workers > 0:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=max(local_batch, 1)))
    ds = _SkipUnreadableIterDataset(ds)
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.map(_ToFloat(cfg.value_range))
    if cfg.prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.prefetch)
    return iter(ds)


def _ensure_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside an absl app (pytest, notebooks, plain
    # scripts) nothing parsed them and grain would raise UnparsedFlagAccessError. Defaults are
    # what such callers want. (Worker processes also need the caller's `if __name__ ==
    # "__main__":` guard, as with any multiprocessing.)
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def skipped_count(iterator) -> int:
    """Unreadable images this process has skipped since the start of training.

    Read from the iterator's state, so it counts what was consumed (not what prefetching ran
    ahead to) and survives checkpoint/restore.
    """
    found = _find_key(iterator.get_state(), _SKIPPED_KEY)
    if found is None:
        raise ValueError("this iterator was not made by bigvar.data.make_train_iterator")
    return found


def _find_key(tree: Any, key: str):
    if isinstance(tree, dict):
        if key in tree:
            return int(tree[key])
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        for v in tree:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def iterator_state_to_bytes(iterator) -> bytes:
    """The iterator's position as JSON bytes, to store in a checkpoint."""
    state = {"format": _STATE_FORMAT, "grain_state": iterator.get_state()}
    return json.dumps(state, sort_keys=True).encode("utf-8")


def restore_iterator_state(iterator, data: bytes) -> None:
    """Moves a fresh iterator (same config) to the position saved by iterator_state_to_bytes."""
    try:
        state = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a saved data-iterator state: {e}") from e
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ValueError(f"not a {_STATE_FORMAT} data-iterator state (format "
                         f"{state.get('format') if isinstance(state, dict) else None!r})")
    try:
        iterator.set_state(state["grain_state"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(
            "the saved data-iterator state does not fit this pipeline; restore with the same "
            "data config, batch size, process count and data.num_workers it was saved with "
            f"({type(e).__name__}: {e})") from e
