"""A run's metrics: JSONL always, TensorBoard event files (through tensorboardX) optionally.

    with MetricWriter(os.path.join(workdir, "logs"), is_chief=jax.process_index() == 0) as writer:
        writer.truncate_after(restored_step)    # on resume; harmless on a fresh run
        writer.write_scalars(step, {"loss": loss, "lr": lr})
        writer.write_images(step, {"samples": grid_uint8_hwc})

What lands in `logdir`:

- `metrics.jsonl`: one JSON object per `write_scalars` call,
  `{"step": 120, "time": 1712345678.9, "loss": 2.31, "lr": 0.0001}`. Values are written as
  Python floats (float64, so float32 inputs round-trip exactly). Non-finite values are written
  as the strings "nan", "inf" and "-inf" (JSON has no literal for them, and null would lose
  which one it was); `read_jsonl` turns them back into floats. The file is flushed after every
  line, so a killed process loses nothing (a power cut may lose what the OS had not yet
  written: lines are not fsynced). A line cut short by a crash is dropped when the next writer
  opens the file.
- `events.out.tfevents.<unix time>.<host>.<unix time ns>.<pid>.<n>`: a TensorBoard event file
  per writer (only with `tensorboard=True`), opened at its first write or `truncate_after`,
  written by tensorboardX (no TensorFlow). Each `write_scalars` call is one event of float32
  `simple_value`s (the format has no float64 scalar; values beyond float32 range become +-inf
  there), each `write_images` call one event of PNG images. tensorboardX writes from a
  background thread that flushes (and fsyncs) at most `FLUSH_SECS` after a write, so a killed
  process may lose its last second of events (metrics.jsonl loses nothing); `close()` writes
  everything. The name's suffix keeps the files of writers opened in the same second apart
  and sorted in creation order, which the resume below relies on: TensorBoard reads a run's
  files in name order.

Images go to the event file only: the trainers save their grids as PNGs in `<workdir>/samples/`.

Exact resume: `truncate_after(step)` rewrites `metrics.jsonl` atomically (temp file, then
`os.replace`; uploaded whole to a URL logdir) without the lines of steps > `step`, so that after
resuming from the checkpoint at `step` it equals that of an uninterrupted run. Event files are
never rewritten: the resumed writer's new file starts with tensorboardX's `purge_step=step + 1`,
a `SessionLog{status: START}` event at `step + 1`, after which TensorBoard's Python loaders
(`tensorboard --load_fast=false`, `EventAccumulator`) drop the events with step > `step` read
from the older files. The marker is written twice, because `--load_fast=false` takes the first
START of a run for the initial session start and ignores it (a repeated marker purges nothing
more). TensorBoard's fast Rust loader (the default) ignores the marker but keeps only the
last-written point of a repeated step, so the resumed run's points replace the stale ones; a
stale point of a step that the resumed run does not log again (say an image at step 12 when
the resumed run logs images at other steps) stays visible there.

Multi-host: construct with `is_chief=(jax.process_index() == 0)`; on other hosts every method
is a no-op and nothing is created on disk.

`logdir` may be a URL (gs://bucket/run/logs): object stores cannot append, so the files are
written in a local folder and mirrored to `logdir` after every write, `flush()` and `close()`
(`storage.AppendMirror`): on GCS only the bytes written since the last upload are uploaded and
composed onto the objects server-side, so a run's logs cost the bytes written, not one whole
upload per write (other stores get whole uploads). A killed process loses at most the write in
flight, and the event file's last second (above).

`read_jsonl(path)` reads `metrics.jsonl` back (tests, notebooks, scripts); read event files
with TensorBoard's own readers, e.g.
`tensorboard.backend.event_processing.event_accumulator.EventAccumulator(logdir)`.
"""
from __future__ import annotations

import io
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Mapping

import numpy as np

from bigvar import storage

__all__ = ["MetricWriter", "read_jsonl", "METRICS_FILE", "FLUSH_SECS"]

METRICS_FILE = "metrics.jsonl"
FLUSH_SECS = 1  # tensorboardX's background thread flushes the event file at most this late
_RESERVED_KEYS = ("step", "time")
_STR_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_WRITER_NUMBERS = itertools.count()


# ---------------------------------------------------------------------------------------------
# metrics.jsonl reader.
# ---------------------------------------------------------------------------------------------

def _complete_lines(text: str) -> list[str]:
    """The non-empty lines of `text` that end in a newline (the last one may be cut short)."""
    return [line for line in text.split("\n")[:-1] if line.strip()]


def _parse_line(line: str, number: int, path: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not valid JSON ({e}): {line[:200]!r}") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError(f"{path}:{number}: not a metrics record with an integer 'step': "
                         f"{line[:200]!r}")
    return record


def read_jsonl(path: str) -> list[dict]:
    """Reads `metrics.jsonl` (or `<logdir>/metrics.jsonl`) into a list of dicts.

    "nan", "inf" and "-inf" become floats again; an unterminated last line (a write cut short
    by a crash) is ignored.
    """
    if storage.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    lines = _complete_lines(storage.read_text(path))
    records = [_parse_line(line, i, path) for i, line in enumerate(lines, 1)]
    for record in records:
        for key, value in record.items():
            if isinstance(value, str) and value in _STR_TO_NONFINITE:
                record[key] = _STR_TO_NONFINITE[value]
    return records


# ---------------------------------------------------------------------------------------------
# The writer.
# ---------------------------------------------------------------------------------------------

def _as_step(step: Any) -> int:
    array = np.asarray(step)
    if array.size != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"step must be an integer, got {step!r} ({type(step).__name__})")
    return int(array.reshape(()).item())


def _as_float(name: str, value: Any) -> float:
    try:
        array = np.asarray(value)
        ok = array.size == 1 and array.dtype.kind in "biuf"
    except (TypeError, ValueError):
        ok = False
    if not ok:
        shape = getattr(value, "shape", None)
        raise ValueError(
            f"metric {name!r} must be a single real number, got {type(value).__name__}"
            + (f" of shape {shape}" if shape is not None else "")
            + "; reduce it first (e.g. .mean()) or log its elements under separate names")
    return float(array.reshape(()).item())


def _json_number(value: float) -> float | str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _as_image(name: str, image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or 0 in array.shape:
        raise ValueError(f"image {name!r} must be a non-empty HWC array with 1, 2, 3 or 4 "
                         f"channels (or HW grayscale), got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"image {name!r} must be uint8, got {array.dtype}; convert [0, 1] "
                         f"floats with np.clip(np.round(x * 255), 0, 255).astype(np.uint8)")
    return array


def _encode_png(array: np.ndarray) -> bytes:
    from PIL import Image  # Pillow is a dependency; imported here to keep imports light

    pixels = array[:, :, 0] if array.shape[-1] == 1 else array
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


class MetricWriter:
    """Writes a run's scalars and images to `logdir` (see the module docstring for the files).

    Args:
      logdir: directory to write into; created if missing.
      tensorboard: also write a TensorBoard event file (opened at the first write or
        `truncate_after`, which has to pass the resume step to it).
      is_chief: False makes every method a no-op (pass `jax.process_index() == 0`).
    """

    def __init__(self, logdir: str, *, tensorboard: bool = True, is_chief: bool = True):
        self.logdir = os.fspath(logdir)
        self.is_chief = bool(is_chief)
        self.tensorboard = bool(tensorboard)
        self.metrics_path = os.path.join(self.logdir, METRICS_FILE)
        # The folder the files are written in: logdir itself, or a local one mirrored to it.
        self._local = self.logdir
        self._mirrors: dict[str, storage.AppendMirror] = {}  # file name: its mirror
        self._jsonl = None
        self._tb = None  # tensorboardX.SummaryWriter
        self._closed = False
        if not self.is_chief:
            return
        if storage.is_url(self.logdir):
            self._local = tempfile.mkdtemp(prefix="bigvar-logs-")
            self._mirror(METRICS_FILE).pull()
        os.makedirs(self._local, exist_ok=True)
        if self._drop_partial_last_line() and self._local != self.logdir:
            self._mirror(METRICS_FILE).sync()  # cut in the bucket too, before appends follow
        self._jsonl = open(self._metrics_file, "a", encoding="utf-8")

    @property
    def _metrics_file(self) -> str:
        return os.path.join(self._local, METRICS_FILE)

    def _mirror(self, name: str) -> storage.AppendMirror:
        if name not in self._mirrors:
            self._mirrors[name] = storage.AppendMirror(os.path.join(self._local, name),
                                                       os.path.join(self.logdir, name))
        return self._mirrors[name]

    def _upload(self) -> None:
        """With a URL logdir: the local files mirrored to it (a no-op for a local logdir)."""
        if self._local == self.logdir:
            return
        if self._tb is not None:
            self._tb.flush()
        for name in sorted(os.listdir(self._local)):
            self._mirror(name).sync()

    # -- files -----------------------------------------------------------------------------

    def _drop_partial_last_line(self) -> bool:
        """Cuts off a line left unterminated by a crash, or the next line would be glued to it;
        True if there was one."""
        if not os.path.exists(self._metrics_file) or os.path.getsize(self._metrics_file) == 0:
            return False
        with open(self._metrics_file, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return False
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
            return True

    def _open_event_file(self, purge_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter  # imported here to keep imports light
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        # tensorboardX names the file after the second and the host only; the nanosecond time
        # sorts same-second files in creation order, the pid and counter make the name unique.
        suffix = f".{time.time_ns()}.{os.getpid()}.{next(_WRITER_NUMBERS)}"
        self._tb = SummaryWriter(self._local, purge_step=purge_step, flush_secs=FLUSH_SECS,
                                 filename_suffix=suffix)
        if purge_step is not None:  # a second START: `--load_fast=false` skips a run's first
            start = Event(session_log=SessionLog(status=SessionLog.START))
            self._tb.file_writer.add_event(start, step=purge_step)

    def _write_summary(self, step: int, wall_time: float, summary) -> None:
        if self._tb is None:
            self._open_event_file()
        self._tb.file_writer.add_summary(summary, step, wall_time)

    def _active(self) -> bool:
        """True when this writer should write; raises if it was closed."""
        if not self.is_chief:
            return False
        if self._closed:
            raise ValueError(f"MetricWriter({self.logdir!r}) is closed")
        return True

    # -- public API ------------------------------------------------------------------------

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Appends {"step", "time", **scalars} to metrics.jsonl, and an event to TensorBoard.

        Values may be Python, NumPy or JAX scalars (or size-1 arrays); they are logged as
        floats. The names "step" and "time" are reserved.
        """
        if not self._active():
            return
        step = _as_step(step)
        values = {}
        for name, value in scalars.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"metric names must be non-empty strings, got {name!r}")
            if name in _RESERVED_KEYS:
                raise ValueError(f"metric name {name!r} is reserved (every {METRICS_FILE} line "
                                 f"has its own {name!r}); rename it, e.g. 'train/{name}'")
            values[name] = _as_float(name, value)
        now = time.time()
        record: dict[str, Any] = {"step": step, "time": now}
        record.update((name, _json_number(v)) for name, v in values.items())
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        if self.tensorboard and values:
            from tensorboardX.proto.summary_pb2 import Summary

            self._write_summary(step, now, Summary(value=[
                Summary.Value(tag=name, simple_value=v) for name, v in values.items()]))
        self._upload()

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Adds uint8 HWC (or HW) images to TensorBoard as PNGs (nothing without TensorBoard)."""
        if not self._active():
            return
        step = _as_step(step)
        arrays = {name: _as_image(name, image) for name, image in images.items()}
        if not arrays or not self.tensorboard:
            return
        from tensorboardX.proto.summary_pb2 import Summary

        # Encoded here rather than with tensorboardX's add_image, which stores grayscale as RGB.
        self._write_summary(step, time.time(), Summary(value=[
            Summary.Value(tag=name, image=Summary.Image(
                height=array.shape[0], width=array.shape[1], colorspace=array.shape[2],
                encoded_image_string=_encode_png(array)))
            for name, array in arrays.items()]))
        self._upload()

    def truncate_after(self, step: int) -> None:
        """Forgets what was logged after `step`; call it when resuming from a checkpoint at `step`.

        metrics.jsonl is rewritten atomically without the lines of later steps, and a new event
        file whose START markers at `step + 1` make TensorBoard drop the older files' later
        events is opened (closing this writer's previous one, if any).
        """
        if not self._active():
            return
        step = _as_step(step)
        self._jsonl.close()
        with open(self._metrics_file, "r", encoding="utf-8") as f:
            lines = _complete_lines(f.read())
        kept = [line for i, line in enumerate(lines, 1)
                if _parse_line(line, i, self.metrics_path)["step"] <= step]
        tmp = self._metrics_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._metrics_file)
        self._jsonl = open(self._metrics_file, "a", encoding="utf-8")
        if self.tensorboard:
            if self._tb is not None:
                self._tb.close()
            self._open_event_file(purge_step=step + 1)
        self._upload()

    def flush(self) -> None:
        """Flushes what tensorboardX's thread has written so far (and mirrors it to a URL
        logdir); metrics.jsonl is flushed at every write. Only `close()` waits for events still
        queued."""
        if not self._active():
            return
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()
        self._upload()

    def close(self) -> None:
        """Writes everything and closes the files. Idempotent; writing afterwards raises."""
        if self._closed:
            return
        self._closed = True
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl = self._tb = None
        if self.is_chief and self._local != self.logdir:
            self._upload()
            shutil.rmtree(self._local, ignore_errors=True)

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
