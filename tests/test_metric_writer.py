"""MetricWriter: JSONL + TF-free TensorBoard event files + PNG images."""
import io
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bigvar.train import metric_writer as mw
from bigvar.train.metric_writer import MetricWriter, read_events, read_jsonl


def _scalar_events(events):
    return [(e["step"], e["scalars"]) for e in events if e["scalars"]]


# -- CRC32C and framing ---------------------------------------------------------------------

def test_crc32c_known_vectors():
    assert mw.crc32c(b"123456789") == 0xE3069283
    assert mw.crc32c(b"") == 0
    assert mw.crc32c(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 B.4 test vectors
    assert mw.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert mw.crc32c(bytes(range(32))) == 0x46DD794E
    assert mw._crc32c_py(b"123456789") == 0xE3069283


@pytest.mark.parametrize("size", [8192, 65536, 65536 + 17, 300_001])
def test_crc32c_vectorised_matches_byte_loop(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert mw._crc32c_numpy(data) == mw._crc32c_py(data)
    assert mw.crc32c(data) == mw._crc32c_py(data)


def test_masked_crc32c_formula():
    for data in [b"123456789", b"", b"\x00" * 8, b"event"]:
        crc = mw.crc32c(data)
        rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
        assert mw.masked_crc32c(data) == (rotated + 0xA282EAD8) % 2**32
    assert mw.masked_crc32c(b"123456789") == (
        (((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xA282EAD8) % 2**32) & 0xFFFFFFFF


def test_record_framing_layout():
    record = mw._frame_record(b"hello")
    assert len(record) == 8 + 4 + 5 + 4
    assert struct.unpack("<Q", record[:8])[0] == 5
    assert struct.unpack("<I", record[8:12])[0] == mw.masked_crc32c(record[:8])
    assert record[12:17] == b"hello"
    assert struct.unpack("<I", record[17:])[0] == mw.masked_crc32c(b"hello")


def test_varint_encoding():
    assert mw._varint(0) == b"\x00"
    assert mw._varint(1) == b"\x01"
    assert mw._varint(300) == b"\xac\x02"
    assert mw._varint(-1) == b"\xff" * 9 + b"\x01"  # int64 two's complement, 10 bytes
    event = mw._decode_event(mw._encode_event(1.5, -3))
    assert event["step"] == -3 and event["wall_time"] == 1.5


# -- scalars --------------------------------------------------------------------------------

def test_scalars_round_trip(tmp_path):
    values = [(0, {"loss": 2.5, "lr": 1e-4}), (10, {"loss": np.float32(0.1), "lr": 3e-4}),
              (20, {"loss": np.array(0.37, np.float64), "acc": 1})]
    with MetricWriter(str(tmp_path)) as writer:
        for step, scalars in values:
            writer.write_scalars(step, scalars)
        event_path = writer.event_path
    assert os.path.basename(event_path).startswith("events.out.tfevents.")
    events = read_events(event_path)
    assert events[0]["file_version"] == "brain.Event:2"
    assert not events[0]["scalars"]
    got = _scalar_events(events)
    assert [step for step, _ in got] == [0, 10, 20]
    for (_, scalars), (_, expected) in zip(got, values):
        assert set(scalars) == set(expected)
        for name, value in expected.items():
            assert scalars[name] == float(np.float32(value))  # stored as float32
    assert all(e["wall_time"] > 1e9 for e in events)
    # A whole-directory read gives the same events.
    assert read_events(str(tmp_path)) == events


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


def test_jsonl_flushed_after_each_write(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write_scalars(5, {"x": 1.0})
    # Not closed: another reader must already see everything.
    assert read_jsonl(str(tmp_path / "metrics.jsonl"))[0]["x"] == 1.0
    assert _scalar_events(read_events(writer.event_path)) == [(5, {"x": 1.0})]
    writer.close()


def test_non_finite_values(tmp_path):
    with MetricWriter(str(tmp_path)) as writer:
        writer.write_scalars(3, {"a": float("nan"), "b": float("inf"), "c": -np.inf,
                                 "big": 1e40})
        event_path = writer.event_path
    text = (tmp_path / "metrics.jsonl").read_text()
    assert '"a": "nan"' in text and '"b": "inf"' in text and '"c": "-inf"' in text
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    json.loads(text)  # parses with a strict parser too
    (record,) = read_jsonl(str(tmp_path))
    assert math.isnan(record["a"]) and record["b"] == math.inf and record["c"] == -math.inf
    assert record["big"] == 1e40  # float64 in JSONL
    (_, scalars), = _scalar_events(read_events(event_path))
    assert math.isnan(scalars["a"]) and scalars["b"] == math.inf and scalars["c"] == -math.inf
    assert scalars["big"] == math.inf  # beyond float32 range


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
    rgb = rng.integers(0, 256, (64, 56, 3), dtype=np.uint8)  # noise: PNG > 8 KiB, NumPy CRC
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 3, 4), dtype=np.uint8)
    with MetricWriter(str(tmp_path)) as writer:
        writer.write_images(7, {"samples/grid": rgb, "gray": gray, "rgba": rgba})
        event_path = writer.event_path
    (event,) = [e for e in read_events(event_path) if e["images"]]
    assert event["step"] == 7
    for tag, expected in [("samples/grid", rgb), ("gray", gray), ("rgba", rgba)]:
        height, width, png = event["images"][tag]
        assert (height, width) == expected.shape[:2]
        decoded = np.asarray(Image.open(io.BytesIO(png)))
        np.testing.assert_array_equal(decoded, expected)
    assert len(event["images"]["samples/grid"][2]) > mw._NUMPY_MIN_BYTES
    # Colorspace field = number of channels.
    image_value = mw._encode_image_value("t", 5, 7, 1, b"x")
    assert mw._parse_message(mw._parse_message(image_value, "v")[1][2], "i")[2][2] == 1
    files = sorted(os.listdir(tmp_path / "images"))
    assert files == ["gray_00000007.png", "rgba_00000007.png", "samples_grid_00000007.png"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "images" / "samples_grid_00000007.png")), rgb)


def test_images_without_tensorboard(tmp_path):
    with MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write_images(3, {"x": np.zeros((2, 2, 3), np.uint8)})
    assert not [f for f in os.listdir(tmp_path) if "tfevents" in f]
    assert os.listdir(tmp_path / "images") == ["x_00000003.png"]


# -- resume ---------------------------------------------------------------------------------

def _log(writer, steps):
    for step in steps:
        writer.write_scalars(step, {"loss": 1.0 / (step + 1), "lr": 0.01 * step})
        if step % 4 == 0:
            writer.write_images(step, {"s": np.full((2, 2, 3), step, np.uint8)})


def _without_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_truncate_after_resume_equals_uninterrupted(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    with MetricWriter(straight) as writer:
        _log(writer, range(0, 20))
    with MetricWriter(resumed) as writer:
        _log(writer, range(0, 15))  # preempted at step 14; last checkpoint at step 9
    with MetricWriter(resumed) as writer:
        writer.truncate_after(9)
        assert [r["step"] for r in read_jsonl(resumed)] == list(range(10))
        _log(writer, range(10, 20))
    assert _without_time(read_jsonl(resumed)) == _without_time(read_jsonl(straight))
    assert sorted(os.listdir(os.path.join(resumed, "images"))) == sorted(
        os.listdir(os.path.join(straight, "images")))
    # No temp files left behind.
    assert not [f for f in os.listdir(resumed) if f.endswith(".tmp")]

    # TensorBoard: a second event file with the restart marker at step 10 (twice, see
    # metric_writer's docstring).
    files = sorted(f for f in os.listdir(resumed) if "tfevents" in f)
    assert len(files) == 2
    second = read_events(os.path.join(resumed, files[1]))
    starts = [e["step"] for e in second if e["session_start"]]
    assert starts == [10, 10]
    # Applying TensorBoard's purge rule (drop seen events with step >= marker) gives the
    # uninterrupted run's scalar series.
    kept = []
    for event in read_events(resumed):
        if event["session_start"]:
            kept = [e for e in kept if e["step"] < event["step"]]
        elif event["scalars"]:
            kept.append(event)
    assert [(e["step"], e["scalars"]) for e in kept] == _scalar_events(read_events(straight))


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


# -- multi-host, corruption -----------------------------------------------------------------

def test_non_chief_writes_nothing(tmp_path):
    logdir = tmp_path / "run"
    with MetricWriter(str(logdir), is_chief=False) as writer:
        writer.write_scalars(0, {"loss": 1.0})
        writer.write_images(0, {"x": np.zeros((2, 2, 3), np.uint8)})
        writer.truncate_after(0)
        writer.flush()
    assert not logdir.exists()
    assert writer.event_path is None


def test_read_events_detects_corruption(tmp_path):
    with MetricWriter(str(tmp_path)) as writer:
        writer.write_scalars(1, {"loss": 1.0})
        event_path = writer.event_path
    blob = open(event_path, "rb").read()
    second = len(mw._frame_record(mw._encode_event(0.0, 0, file_version="brain.Event:2")))
    for offset, message in [(second + 20, "corrupt record data"),   # a byte of the data
                            (second + 2, "corrupt record length")]:  # a byte of the length
        bad = bytearray(blob)
        bad[offset] ^= 0x01
        path = tmp_path / "bad.tfevents"
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match=message):
            read_events(str(path))
    path.write_bytes(blob[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_events(str(path))


def test_no_tensorflow_imported():
    code = ("import sys, bigvar.train.metric_writer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorboard', 'jax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
