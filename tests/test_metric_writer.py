"""MetricWriter: JSONL + TensorBoard event files (tensorboardX), read back with TensorBoard's own
readers."""
import io
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator, event_file_loader
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from bigvar.train.metric_writer import FLUSH_SECS, MetricWriter, read_jsonl

_KEEP_ALL = {event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}


def _accumulator(path):
    """What TensorBoard's Python loader shows for a run directory (or one event file)."""
    acc = event_accumulator.EventAccumulator(str(path), size_guidance=_KEEP_ALL)
    acc.Reload()
    return acc


def _scalars(path):
    """{tag: [(step, value)]}, as TensorBoard's Python loader shows them."""
    acc = _accumulator(path)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _event_files(logdir):
    return sorted(os.path.join(logdir, f) for f in os.listdir(logdir) if ".tfevents." in f)


def _raw_events(path):
    """The Event protos of one file, as written."""
    return list(event_file_loader.LegacyEventFileLoader(str(path)).Load())


# -- scalars --------------------------------------------------------------------------------

def test_scalars_round_trip(tmp_path):
    values = [(0, {"loss": 2.5, "lr": 1e-4}), (10, {"loss": np.float32(0.1), "lr": 3e-4}),
              (20, {"loss": np.array(0.37, np.float64), "acc": 1})]
    with MetricWriter(str(tmp_path)) as writer:
        for step, scalars in values:
            writer.write_scalars(step, scalars)
    (event_path,) = _event_files(tmp_path)
    assert os.path.basename(event_path).startswith("events.out.tfevents.")
    events = _raw_events(event_path)
    assert events[0].file_version == "brain.Event:2"
    summaries = [e for e in events if e.HasField("summary")]
    assert [e.step for e in summaries] == [0, 10, 20]  # one event per write_scalars call
    for event, (_, expected) in zip(summaries, values):
        got = {v.tag: v.simple_value for v in event.summary.value}
        assert got == {name: float(np.float32(v)) for name, v in expected.items()}  # float32
    assert all(e.wall_time > 1e9 for e in events)
    # TensorBoard's loader shows the same series.
    assert _scalars(tmp_path) == {
        "loss": [(0, 2.5), (10, float(np.float32(0.1))), (20, float(np.float32(0.37)))],
        "lr": [(0, float(np.float32(1e-4))), (10, float(np.float32(3e-4)))],
        "acc": [(20, 1.0)]}


def test_jsonl_content(tmp_path):
    with MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write_scalars(1, {"loss": 0.5, "lr": np.float32(0.1)})
        writer.write_scalars(np.int64(2), {"loss": 0.25})
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]
    raw = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [list(r) for r in raw] == [["step", "time", "loss", "lr"], ["step", "time", "loss"]]
    assert raw[0]["step"] == 1 and raw[1]["step"] == 2
    assert raw[0]["loss"] == 0.5
    assert raw[0]["lr"] == float(np.float32(0.1))  # float32 inputs kept exactly
    assert all(isinstance(r["time"], float) and r["time"] > 1e9 for r in raw)
    assert read_jsonl(str(tmp_path)) == raw


def test_written_before_close(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write_scalars(5, {"x": 1.0})
    # Not closed: another reader must already see the JSONL line, and the event within
    # FLUSH_SECS (tensorboardX's background thread).
    assert read_jsonl(str(tmp_path / "metrics.jsonl"))[0]["x"] == 1.0
    deadline = time.time() + FLUSH_SECS + 30  # generous: a loaded CI machine
    while _scalars(tmp_path) != {"x": [(5, 1.0)]} and time.time() < deadline:
        time.sleep(0.1)
    assert _scalars(tmp_path) == {"x": [(5, 1.0)]}
    writer.close()


def test_non_finite_values(tmp_path):
    with MetricWriter(str(tmp_path)) as writer:
        writer.write_scalars(3, {"a": float("nan"), "b": float("inf"), "c": -np.inf,
                                 "big": 1e40})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert '"a": "nan"' in text and '"b": "inf"' in text and '"c": "-inf"' in text
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    json.loads(text)  # parses with a strict parser too
    (record,) = read_jsonl(str(tmp_path))
    assert math.isnan(record["a"]) and record["b"] == math.inf and record["c"] == -math.inf
    assert record["big"] == 1e40  # float64 in JSONL
    scalars = _scalars(tmp_path)
    assert {tag: [step for step, _ in series] for tag, series in scalars.items()} == {
        "a": [3], "b": [3], "c": [3], "big": [3]}
    value = {tag: series[0][1] for tag, series in scalars.items()}
    assert math.isnan(value["a"]) and value["b"] == math.inf and value["c"] == -math.inf
    assert value["big"] == math.inf  # beyond float32 range


def test_bad_inputs_fail_with_a_message(tmp_path):
    with MetricWriter(str(tmp_path)) as writer:
        with pytest.raises(ValueError, match="single real number"):
            writer.write_scalars(0, {"loss": np.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            writer.write_scalars(0, {"step": 1.0})
        with pytest.raises(ValueError, match="step must be an integer"):
            writer.write_scalars(1.5, {"loss": 1.0})
        with pytest.raises(ValueError, match="uint8"):
            writer.write_images(0, {"img": np.zeros((4, 4, 3), np.float32)})
        with pytest.raises(ValueError, match="HWC"):
            writer.write_images(0, {"img": np.zeros((2, 4, 4, 3), np.uint8)})
    with pytest.raises(ValueError, match="closed"):
        writer.write_scalars(0, {"loss": 1.0})
    writer.close()  # idempotent


# -- images ---------------------------------------------------------------------------------

def test_image_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 56, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 3, 4), dtype=np.uint8)
    with MetricWriter(str(tmp_path)) as writer:
        writer.write_images(7, {"samples/grid": rgb, "gray": gray, "rgba": rgba})
    acc = _accumulator(tmp_path)
    assert sorted(acc.Tags()["images"]) == ["gray", "rgba", "samples/grid"]
    for tag, expected in [("samples/grid", rgb), ("gray", gray), ("rgba", rgba)]:
        (event,) = acc.Images(tag)
        assert event.step == 7 and (event.height, event.width) == expected.shape[:2]
        decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
        np.testing.assert_array_equal(decoded, expected)  # lossless, channels kept
    # One event for the call; colorspace = number of channels.
    (event,) = [e for e in _raw_events(_event_files(tmp_path)[0]) if e.HasField("summary")]
    assert {v.tag: v.image.colorspace for v in event.summary.value} == {
        "samples/grid": 3, "gray": 1, "rgba": 4}
    # Images go to the event file only (the trainers save grid PNGs under samples/).
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["metrics.jsonl", os.path.basename(_event_files(tmp_path)[0])])


def test_images_without_tensorboard_write_nothing(tmp_path):
    with MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write_images(3, {"x": np.zeros((2, 2, 3), np.uint8)})
        with pytest.raises(ValueError, match="uint8"):  # still checked
            writer.write_images(3, {"x": np.zeros((2, 2, 3), np.float32)})
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


# -- resume ---------------------------------------------------------------------------------

def _log(writer, steps):
    for step in steps:
        writer.write_scalars(step, {"loss": 1.0 / (step + 1), "lr": 0.01 * step})
        if step % 4 == 0:
            writer.write_images(step, {"s": np.full((2, 2, 3), step, np.uint8)})


def _without_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def _image_steps(path):
    acc = _accumulator(path)
    return [(e.step, e.encoded_image_string) for e in acc.Images("s")]


def _plugin_scalars(path):
    """{tag: [(step, value)]} as `tensorboard --load_fast=false` shows them."""
    acc = plugin_event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item())
                  for e in acc.Tensors(tag)] for tag in ("loss", "lr")}


@pytest.mark.parametrize("truncate_fresh", [False, True])  # True: as the trainer does
def test_truncate_after_resume_equals_uninterrupted(tmp_path, truncate_fresh):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    with MetricWriter(straight) as writer:
        if truncate_fresh:
            writer.truncate_after(0)
        _log(writer, range(0, 20))
    with MetricWriter(resumed) as writer:
        if truncate_fresh:
            writer.truncate_after(0)
        _log(writer, range(0, 15))  # preempted at step 14; last checkpoint at step 9
    with MetricWriter(resumed) as writer:
        writer.truncate_after(9)
        assert [r["step"] for r in read_jsonl(resumed)] == list(range(10))
        _log(writer, range(10, 20))
    assert _without_time(read_jsonl(resumed)) == _without_time(read_jsonl(straight))
    # No temp files left behind.
    assert not [f for f in os.listdir(resumed) if f.endswith(".tmp")]

    # TensorBoard: each writer its own file, in name order; the second starts with the
    # restart marker at step 10 (twice, see metric_writer's docstring).
    first, second = _event_files(resumed)
    starts = [e.step for e in _raw_events(second) if e.HasField("session_log")]
    assert starts == [10, 10]
    # TensorBoard's Python loaders drop the stale steps 10-14 of the first file and show
    # exactly the uninterrupted run's points, scalars and images.
    assert _scalars(first)["loss"][-1][0] == 14  # (the stale points are there)
    assert _scalars(resumed) == _scalars(straight)
    assert _image_steps(resumed) == _image_steps(straight)
    assert [s for s, _ in _image_steps(resumed)] == [0, 4, 8, 12, 16]
    assert _plugin_scalars(resumed) == _plugin_scalars(straight)
    assert [s for s, _ in _plugin_scalars(resumed)["loss"]] == list(range(20))


def test_truncate_after_on_fresh_run_and_partial_line(tmp_path):
    with MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.truncate_after(0)  # nothing logged yet: a no-op
        writer.write_scalars(0, {"x": 0.0})
        writer.write_scalars(1, {"x": 1.0})
    # A crash in the middle of a line leaves it unterminated.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "time": 1.0, "x"')
    assert [r["step"] for r in read_jsonl(str(tmp_path))] == [0, 1]
    with MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write_scalars(2, {"x": 2.0})
    assert [r["step"] for r in read_jsonl(str(tmp_path))] == [0, 1, 2]
    with MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.truncate_after(0)
        writer.write_scalars(1, {"x": 5.0})
    assert [(r["step"], r["x"]) for r in read_jsonl(str(tmp_path))] == [(0, 0.0), (1, 5.0)]


def test_two_writers_in_the_same_second_keep_separate_files(tmp_path):
    """tensorboardX names files after the second and host: the suffix keeps them apart."""
    a, b = MetricWriter(str(tmp_path / "a")), MetricWriter(str(tmp_path / "b"))
    c, d = MetricWriter(str(tmp_path)), MetricWriter(str(tmp_path))
    for step, writer in enumerate([a, b, c, d]):
        writer.write_scalars(step, {f"w{step}": float(step)})
    for writer in [a, b, c, d]:
        writer.close()
    files = _event_files(tmp_path)
    assert len(files) == 2
    assert [{v.tag for e in _raw_events(f) for v in e.summary.value}
            for f in files] == [{"w2"}, {"w3"}]  # name order = creation order
    assert _scalars(tmp_path) == {"w2": [(2, 2.0)], "w3": [(3, 3.0)]}
    assert _scalars(tmp_path / "a") == {"w0": [(0, 0.0)]}


# -- multi-host, imports ---------------------------------------------------------------------

def test_non_chief_writes_nothing(tmp_path):
    logdir = tmp_path / "run"
    with MetricWriter(str(logdir), is_chief=False) as writer:
        writer.write_scalars(0, {"loss": 1.0})
        writer.write_images(0, {"x": np.zeros((2, 2, 3), np.uint8)})
        writer.truncate_after(0)
        writer.flush()
    assert not logdir.exists()


def test_no_tensorflow_imported(tmp_path):
    """Neither importing the module nor writing event files imports TensorFlow (or
    TensorBoard, or JAX)."""
    code = ("import sys, numpy as np; from bigvar.train.metric_writer import MetricWriter\n"
            f"with MetricWriter({str(tmp_path)!r}) as w:\n"
            "    w.truncate_after(0); w.write_scalars(1, {'x': 1.0})\n"
            "    w.write_images(1, {'i': np.zeros((2, 2, 3), np.uint8)})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorboard', 'jax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert _scalars(tmp_path) == {"x": [(1, 1.0)]}
