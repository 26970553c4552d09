"""bigvar.data against hostile inputs: symlink loops in a folder scan, extreme image sizes, and
image modes that `convert("RGB")` alone gets wrong (16-bit, 32-bit integer, float).

Everything is made in tmp_path or in memory; no network; runs in a few seconds on CPU.
"""
import inspect
import io
import logging
import os
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from bigvar import data
from bigvar.data import sources, transforms


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _noise(h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _decode(data_bytes: bytes, **limits):
    return transforms.try_decode({"image_bytes": data_bytes, "path": "x"}, **limits)


# ---------------------------------------------------------------------------------------------
# Folder scan: symlink loops, dangling links, unlistable directories


@pytest.fixture
def hostile_folder(tmp_path):
    """root/cls_a: a good image, loops with and without an image name, a dangling link;
    root/cls_b: a good image; root/loop_class: a symlink loop where a class directory could be."""
    root = tmp_path / "images"
    for name in ("cls_a", "cls_b"):
        (root / name).mkdir(parents=True)
        (root / name / "good.png").write_bytes(_png(Image.fromarray(_noise(20, 24))))
    os.symlink("loop.png", root / "cls_a" / "loop.png")  # ELOOP, image name
    os.symlink("loop", root / "cls_a" / "loop")  # ELOOP, not an image name: ignored
    os.symlink("missing.png", root / "cls_a" / "dangling.png")  # ENOENT through the link
    os.symlink("loop_class", root / "loop_class")  # ELOOP among the class directories
    return root


def test_folder_scan_skips_symlink_loops_and_dangling_links(hostile_folder, caplog):
    with caplog.at_level(logging.WARNING):
        class_names, files = sources.list_image_folder(str(hostile_folder))
    assert class_names == ["cls_a", "cls_b"]
    assert files == [("cls_a/good.png", 0), ("cls_b/good.png", 1)]
    lines = [r.getMessage() for r in caplog.records if "skipped 3 " in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert str(hostile_folder) in lines[0]

    src = sources.ImageFolderSource(str(hostile_folder))
    assert len(src) == 2 and src.class_names == ["cls_a", "cls_b"]
    skipped = dict(src.skipped_entries)
    assert sorted(skipped) == ["cls_a/dangling.png", "cls_a/loop.png", "loop_class"]
    assert "symbolic link" in skipped["cls_a/loop.png"]  # OSError: Too many levels of …
    assert "dangling" in skipped["cls_a/dangling.png"]
    assert src[0]["image_bytes"] and src[1]["label"] == 1


def test_folder_scan_keeps_an_unlistable_class_and_its_label(hostile_folder, monkeypatch):
    (hostile_folder / "cls_c").mkdir()
    (hostile_folder / "cls_c" / "good.png").write_bytes(_png(Image.fromarray(_noise(9, 9))))
    real_scandir = os.scandir

    def scandir(path):  # chmod 000 would not stop root, who runs these tests in CI
        if os.path.basename(os.fspath(path)) == "cls_b":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    scan = sources.scan_image_folder(str(hostile_folder))
    assert scan.class_names == ["cls_a", "cls_b", "cls_c"]  # labels do not shift
    assert scan.files == [("cls_a/good.png", 0), ("cls_c/good.png", 2)]
    assert "PermissionError" in dict(scan.skipped)["cls_b"]


def test_folder_scan_with_only_unreadable_entries_says_so(tmp_path):
    (tmp_path / "cls").mkdir()
    os.symlink("x.png", tmp_path / "cls" / "x.png")
    with pytest.raises(ValueError, match="1 unreadable entries skipped"):
        sources.list_image_folder(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Size limits: aspect ratio, pixel count, PIL's decompression-bomb guard


def test_config_defaults_match_try_decode_defaults():
    params = inspect.signature(transforms.try_decode).parameters
    section = data.data_section()
    assert section.max_aspect_ratio == params["max_aspect_ratio"].default == 10.0
    assert section.max_pixels == params["max_pixels"].default
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        data.make_train_iterator(data.data_section(max_aspect_ratio=0.5), image_size=8,
                                 global_batch=2, seed=0)
    with pytest.raises(ValueError, match="max_pixels"):
        data.make_train_iterator(data.data_section(max_pixels=-1), image_size=8,
                                 global_batch=2, seed=0)


def test_extreme_aspect_ratio_is_rejected_from_the_header():
    line = _png(Image.new("L", (20000, 1), 128))  # ~140 bytes; 288 × 5.76M after var_resize
    assert len(line) < 1000
    start = time.perf_counter()
    image, reason = _decode(line)
    assert time.perf_counter() - start < 0.5
    assert image is None and "aspect ratio 20000" in reason and "max_aspect_ratio=10" in reason
    tall = _png(Image.fromarray(_noise(110, 10)))
    assert _decode(tall)[0] is None and "aspect ratio 11" in _decode(tall)[1]
    ok = _png(Image.fromarray(_noise(100, 10)))  # exactly 10:1 passes
    assert _decode(ok)[0].shape == (100, 10, 3)
    assert _decode(line, max_aspect_ratio=0)[0].shape == (1, 20000, 3)  # 0 = no limit


def test_max_pixels_is_checked_before_decoding():
    encoded = _png(Image.fromarray(_noise(100, 100)))
    image, reason = _decode(encoded)
    assert reason is None and image.shape == (100, 100, 3)
    assert _decode(encoded, max_pixels=10_000)[1] is None  # the limit is inclusive
    truncated = encoded[: len(encoded) // 2]  # pixels cannot be decoded; the header can
    assert "truncated" in _decode(truncated)[1].lower()
    image, reason = _decode(truncated, max_pixels=5000)
    assert image is None and "10000 pixels" in reason and "max_pixels=5000" in reason


def test_decompression_bombs_are_skipped_not_raised_or_decoded(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warn_size = _png(Image.fromarray(_noise(40, 40)))  # 1600 > 1000: PIL only warns
    error_size = _png(Image.fromarray(_noise(50, 50)))  # 2500 > 2·1000: PIL raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        for encoded in (warn_size, error_size):
            image, reason = _decode(encoded, max_pixels=0)
            assert image is None and "decompression bomb" in reason.lower(), reason


def test_pipeline_skips_extreme_images_with_the_configured_limits(tmp_path, caplog):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    for i in range(4):
        (root / "a" / f"ok{i}.png").write_bytes(_png(Image.fromarray(_noise(20, 30, seed=i))))
    (root / "a" / "wide.png").write_bytes(_png(Image.new("RGB", (2000, 1), (9, 9, 9))))
    kw = dict(image_size=8, global_batch=4, seed=0)
    cfg = data.data_section(source="folder", path=str(root), num_classes=1, prefetch=0)
    with caplog.at_level(logging.WARNING):
        it = data.make_train_iterator(cfg, **kw)
        batches = [next(it) for _ in range(3)]  # 12 readable of 5 records: wide.png met ≥ 2×
    assert all(b["image"].shape == (4, 8, 8, 3) for b in batches)
    assert data.skipped_count(it) >= 2
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "wide.png" in warned and "aspect ratio 2000" in warned

    cfg.max_aspect_ratio = 5000.0  # the config reaches try_decode: now nothing is skipped
    it = data.make_train_iterator(cfg, **kw)
    [next(it) for _ in range(3)]
    assert data.skipped_count(it) == 0
    cfg.max_aspect_ratio, cfg.max_pixels = 5000.0, 1000  # 20×30 = 600 passes, 2000 does not
    it = data.make_train_iterator(cfg, **kw)
    [next(it) for _ in range(3)]
    assert data.skipped_count(it) >= 2


# ---------------------------------------------------------------------------------------------
# Image modes


def _expected_via_pil(encoded: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as img:
        return np.asarray(img.convert("RGB"))


def _eight_bit_images():
    rgba = np.concatenate([_noise(6, 7, 1), _noise(6, 7, 2)[..., :1]], -1)
    p = Image.fromarray(_noise(6, 7, 3)).quantize(16)
    p_transparent = p.copy()
    p_transparent.info["transparency"] = 3
    pa = p.convert("PA")
    pa.putalpha(Image.fromarray(_noise(6, 7, 4)[..., 0]))
    return {
        "1": (Image.fromarray(_noise(6, 7, 5)[..., 0] > 127), "PNG"),
        "L": (Image.fromarray(_noise(6, 7, 6)[..., 0]), "PNG"),
        "LA": (Image.fromarray(_noise(6, 7, 7)[..., :2], "LA"), "PNG"),
        "P": (p, "PNG"),
        "P+transparency": (p_transparent, "PNG"),
        "PA": (pa, "TIFF"),  # PNG cannot hold PA
        "RGBA": (Image.fromarray(rgba, "RGBA"), "PNG"),
        "CMYK": (Image.fromarray(np.concatenate([_noise(6, 7, 8), _noise(6, 7, 9)[..., :1]], -1),
                                 "CMYK"), "TIFF"),
        "CMYK-JPEG": (Image.fromarray(np.concatenate([_noise(6, 7, 8), _noise(6, 7, 9)[..., :1]],
                                                     -1), "CMYK"), "JPEG"),
    }


@pytest.mark.parametrize("name", sorted(_eight_bit_images()))
def test_eight_bit_modes_decode_like_pil_convert_rgb(name):
    image, fmt = _eight_bit_images()[name]
    encoded = _encode(image, fmt)
    with Image.open(io.BytesIO(encoded)) as opened:
        assert opened.mode == name.split("+")[0].split("-")[0]  # the mode survived encoding
    decoded, reason = _decode(encoded)
    assert reason is None and decoded.dtype == np.uint8 and decoded.shape == (6, 7, 3)
    np.testing.assert_array_equal(decoded, _expected_via_pil(encoded))  # alpha dropped


GRADIENT_16 = np.array([[0, 1, 255, 256, 257, 32767, 32768],
                        [32895, 32896, 33023, 40000, 65279, 65280, 65535]], np.uint16)


def _png_16(values: np.ndarray, channels: int) -> bytes:
    """A 16-bit grayscale (colour type 0) or RGB (colour type 2) PNG, written by hand: PIL
    cannot write 16-bit RGB."""
    h, w = values.shape
    pixels = np.repeat(values[..., None], channels, -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = struct.pack(">IIBBBBB", w, h, 16, 0 if channels == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _assert_gray(decoded, expected):
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(decoded[..., c], expected)


def test_sixteen_bit_gray_scales_to_eight_bits_like_pil_does_for_16_bit_rgb():
    expected = (GRADIENT_16 >> 8).astype(np.uint8)
    assert expected[0, 0] == 0 and expected[-1, -1] == 255 and expected[1, 1] == 128
    gray_png = _png_16(GRADIENT_16, 1)
    with Image.open(io.BytesIO(gray_png)) as img:
        assert img.mode in ("I;16", "I")  # older Pillow opened 16-bit PNGs as "I"
    decoded, reason = _decode(gray_png)
    assert reason is None
    _assert_gray(decoded, expected)
    assert np.all(np.diff(decoded[..., 0].ravel().astype(int)) >= 0)  # monotonic, not clipped
    # Pillow itself decodes 16-bit RGB PNGs to their high bytes: a gray image decodes alike.
    rgb_png = _png_16(GRADIENT_16, 3)
    np.testing.assert_array_equal(_decode(rgb_png)[0], decoded)
    np.testing.assert_array_equal(_expected_via_pil(rgb_png), decoded)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_tiff_both_byte_orders(mode):
    dtype = "<u2" if mode == "I;16" else ">u2"
    img = Image.frombytes(mode, GRADIENT_16.shape[::-1], GRADIENT_16.astype(dtype).tobytes())
    encoded = _encode(img, "TIFF")
    with Image.open(io.BytesIO(encoded)) as opened:
        assert opened.mode == mode
    _assert_gray(_decode(encoded)[0], (GRADIENT_16 >> 8).astype(np.uint8))


def test_thirty_two_bit_integer_images():
    in_range = Image.fromarray(GRADIENT_16.astype(np.int32), "I")
    _assert_gray(_decode(_encode(in_range, "TIFF"))[0], (GRADIENT_16 >> 8).astype(np.uint8))
    out_of_range = Image.fromarray(np.array([[-5, 0], [70000, 3]], np.int32), "I")
    image, reason = _decode(_encode(out_of_range, "TIFF"))
    assert image is None and "[0, 65535]" in reason and "-5" in reason and "70000" in reason


def test_float_images_are_read_as_zero_to_one():
    values = np.array([[0.0, 0.6 / 255, 0.25, 0.5], [0.75, 1.0, 1.5, -0.5]], np.float32)
    decoded, reason = _decode(_encode(Image.fromarray(values, "F"), "TIFF"))
    assert reason is None
    _assert_gray(decoded, np.array([[0, 1, 64, 128], [191, 255, 255, 0]], np.uint8))
    nan = np.array([[np.nan, 1.0]], np.float32)
    _assert_gray(_decode(_encode(Image.fromarray(nan, "F"), "TIFF"))[0],
                 np.array([[0, 255]], np.uint8))
