"""bigvar.data: procedural dataset, sources, transforms, and the grain pipeline's guarantees.

Everything is made in tmp_path; no network. The whole file runs in well under a minute on CPU.
"""
import io
import json
import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image

from bigvar import data
from bigvar.data import pipeline, procedural, sources, transforms, write_array_record

# ---------------------------------------------------------------------------------------------
# Helpers


def _cfg(**kw):
    cfg = data.data_section()
    cfg.update(kw)
    return cfg


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
            assert x[k].dtype == y[k].dtype


def _encode(image, fmt):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path):
    """3 classes × 4 readable PNG/JPEG images of various sizes, plus 3 unreadable files."""
    root = tmp_path / "images"
    src = procedural.ProceduralSource(3, 40, 100, seed=7)
    rng = np.random.default_rng(0)
    for i in range(12):
        label = i % 3
        d = root / f"class_{'abc'[label]}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(24, 60)), int(rng.integers(24, 60))
        image = np.asarray(Image.fromarray(src[label + 3 * i]["image"]).resize((w, h)))
        ext, fmt = [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG")][(i // 3) % 3]
        (d / f"img{i:02d}{ext}").write_bytes(_encode(image, fmt))
    good_png = (root / "class_a" / "img00.png").read_bytes()
    (root / "class_a" / "zero.png").write_bytes(b"")
    (root / "class_b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    (root / "class_c" / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "class_c" / "notes.txt").write_text("not an image extension: ignored")
    return str(root)


BAD_FILES = ("zero.png", "corrupt.jpg", "truncated.png")


# ---------------------------------------------------------------------------------------------
# Procedural dataset


def test_procedural_is_deterministic_and_balanced():
    a = procedural.ProceduralSource(10, 32, 200, seed=1)
    b = procedural.ProceduralSource(10, 32, 200, seed=1)
    order = [17, 3, 199, 0, 17]
    for i in order:  # record i does not depend on what was read before
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    ex = a[5]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["label"].dtype == np.int32 and int(ex["label"]) == 5
    other_seed = procedural.ProceduralSource(10, 32, 200, seed=2)
    assert not np.array_equal(a[5]["image"], other_seed[5]["image"])
    labels = np.array([a[i]["label"] for i in range(len(a))])
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 20))
    for size in (7, 96):  # any resolution
        assert procedural.ProceduralSource(3, size, 4)[1]["image"].shape == (size, size, 3)
    with pytest.raises(IndexError):
        a[200]


def test_procedural_class_names():
    assert procedural.class_names(3) == ["red disc", "orange square", "yellow triangle"]
    names = procedural.class_names(procedural.MAX_CLASSES)
    assert len(set(names)) == procedural.MAX_CLASSES  # every (shape, colour) pair used once
    with pytest.raises(ValueError, match="num_classes"):
        procedural.ProceduralSource(procedural.MAX_CLASSES + 1, 32, 10)


def test_procedural_classes_are_distinct_and_learnable():
    # Sanity check that the classes are easy: a linear softmax classifier on raw 32×32 pixels,
    # trained for 150 full-batch steps, must generalise to held-out records.
    src = procedural.ProceduralSource(10, 32, 10_000)
    n, n_train = 2000, 1500
    images = np.stack([src[i]["image"] for i in range(n)])
    labels = np.array([src[i]["label"] for i in range(n)])
    x = images.reshape(n, -1).astype(np.float32) / 255.0 - 0.5
    means = np.stack([x[labels == c].mean(0) for c in range(10)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dist[~np.eye(10, dtype=bool)].min() > 1.0  # class means clearly apart

    w, b = np.zeros((x.shape[1], 10), np.float32), np.zeros(10, np.float32)
    xt, yt = x[:n_train], labels[:n_train]
    for _ in range(150):
        z = xt @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(n_train), yt] -= 1.0
        w -= 0.5 * xt.T @ p / n_train
        b -= 0.5 * p.mean(0)
    accuracy = ((x[n_train:] @ w + b).argmax(1) == labels[n_train:]).mean()
    assert accuracy >= 0.8, accuracy


# ---------------------------------------------------------------------------------------------
# Transforms


def _rand_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h,w", [(50, 73), (81, 40), (18, 18)])
def test_var_transform_matches_pil(h, w):
    r = 16
    image = _rand_image(h, w)
    mid = round(1.125 * r)  # 18
    short, long = min(h, w), max(h, w)
    size = (mid, int(mid * long / short)) if w <= h else (int(mid * long / short), mid)
    resized = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
    assert min(resized.shape[:2]) == mid

    top, left = round((resized.shape[0] - r) / 2), round((resized.shape[1] - r) / 2)
    np.testing.assert_array_equal(transforms.var_val(image, r), resized[top:top + r, left:left + r])

    windows = {(t, l) for t in range(resized.shape[0] - r + 1)
               for l in range(resized.shape[1] - r + 1)}
    seen = set()
    for seed in range(30):
        out = transforms.var_train(image, r, np.random.default_rng(seed))
        assert out.shape == (r, r, 3) and out.dtype == np.uint8
        hits = {(t, l) for t, l in windows
                if np.array_equal(out, resized[t:t + r, l:l + r])}
        assert hits, "a random crop must be a window of the resized image"
        seen |= hits
    if len(windows) > 1:
        assert len(seen) > 1  # the crop position is random


def test_var_hflip_option():
    image = _rand_image(40, 40)
    outs = [transforms.var_train(image, 36, np.random.default_rng(s), hflip=True)
            for s in range(20)]
    plain = transforms.var_resize(image, 36)
    flipped = sum(not any(np.array_equal(o, plain[t:t + 36, l:l + 36])
                          for t in range(plain.shape[0] - 35) for l in range(plain.shape[1] - 35))
                  for o in outs)
    assert 0 < flipped < 20


@pytest.mark.parametrize("h,w,r", [(200, 300, 64), (300, 97, 32), (20, 30, 16)])
def test_adm_center_crop_matches_rule(h, w, r):
    image = _rand_image(h, w, seed=1)
    pil = Image.fromarray(image)
    while min(pil.size) >= 2 * r:
        pil = pil.resize((pil.size[0] // 2, pil.size[1] // 2), resample=Image.BOX)
    scale = r / min(pil.size)
    pil = pil.resize((round(pil.size[0] * scale), round(pil.size[1] * scale)),
                     resample=Image.BICUBIC)
    arr = np.asarray(pil)
    top, left = (arr.shape[0] - r) // 2, (arr.shape[1] - r) // 2
    expected = arr[top:top + r, left:left + r]
    np.testing.assert_array_equal(transforms.adm_center_crop(image, r), expected)

    outs = [transforms.adm_train(image, r, np.random.default_rng(s)) for s in range(16)]
    n_flipped = sum(np.array_equal(o, expected[:, ::-1]) for o in outs)
    n_plain = sum(np.array_equal(o, expected) for o in outs)
    assert n_flipped + n_plain == 16 and 0 < n_flipped < 16


def test_value_ranges():
    x = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(transforms.to_float(x, "minus_one_one"), [-1.0, -0.6, 1.0],
                               atol=1e-6)
    np.testing.assert_allclose(transforms.to_float(x, "zero_one"), [0.0, 0.2, 1.0], atol=1e-6)
    np.testing.assert_allclose(transforms.to_float(x, (-2.0, 0.0)), [-2.0, -1.6, 0.0], atol=1e-6)
    assert transforms.to_float(x, "zero_one").dtype == np.float32
    with pytest.raises(ValueError, match="value_range"):
        transforms.to_float(x, "zero_255")


def test_decode():
    image = _rand_image(9, 13)
    png = _encode(image, "PNG")
    np.testing.assert_array_equal(transforms.decode({"image_bytes": png}), image)
    gray = io.BytesIO()
    Image.fromarray(image[..., 0]).save(gray, "PNG")
    assert transforms.decode({"image_bytes": gray.getvalue()}).shape == (9, 13, 3)
    assert transforms.decode({"image_bytes": _encode(image, "JPEG")}).shape == (9, 13, 3)
    for bad in (b"", b"garbage" * 20, png[: len(png) // 2]):
        assert transforms.decode({"image_bytes": bad, "path": "x"}) is None
    np.testing.assert_array_equal(transforms.decode({"image": image}), image)


# ---------------------------------------------------------------------------------------------
# Sources and the ArrayRecord writer


def test_image_folder_source(image_folder):
    src = sources.ImageFolderSource(image_folder)
    assert src.class_names == ["class_a", "class_b", "class_c"]
    assert len(src) == 15  # 12 images + 3 unreadable files; notes.txt is not listed
    paths = [src[i]["path"] for i in range(len(src))]
    labels = [src[i]["label"] for i in range(len(src))]
    assert labels == sorted(labels)  # class-major, files sorted within a class
    assert [os.path.basename(p) for p in paths[:5]] == [
        "img00.png", "img03.jpg", "img06.JPEG", "img09.png", "zero.png"]
    assert src[0]["image_bytes"] == open(paths[0], "rb").read()


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.ImageFolderSource(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no class sub-directories"):
        sources.ImageFolderSource(str(tmp_path))
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        sources.ImageFolderSource(str(tmp_path))


def test_array_record_round_trip(image_folder, tmp_path):
    prefix = str(tmp_path / "ar" / "train")
    write_array_record.main([f"--src={image_folder}", f"--out={prefix}", "--shards=4"])
    shards = sorted(os.listdir(tmp_path / "ar"))
    assert shards == [f"train-0000{k}-of-00004.array_record" for k in range(4)] + [
        "train.classes.json"]
    folder = sources.ImageFolderSource(image_folder)
    ar = sources.ArrayRecordSource(prefix + "-*.array_record")
    assert len(ar) == len(folder) and ar.class_names == folder.class_names
    for i in range(len(ar)):
        a, f = ar[i], folder[i]
        assert a["image_bytes"] == f["image_bytes"] and a["label"] == f["label"]
        assert f["path"].endswith(a["path"])
    with open(prefix + ".classes.json") as fh:
        assert json.load(fh) == folder.class_names
    with pytest.raises(ValueError, match="not a bigvar image record"):
        sources.decode_record(b"JUNKJUNKJUNKJUNK")
    with pytest.raises(FileNotFoundError, match="no ArrayRecord files"):
        sources.ArrayRecordSource(str(tmp_path / "nothing-*.array_record"))

    # The pipeline reads the same images, in the same order, from either source.
    common = dict(image_size=16, global_batch=4, seed=5)
    from_folder = _take(data.make_train_iterator(
        _cfg(source="folder", path=image_folder, num_classes=3), **common), 5)
    from_ar = _take(data.make_train_iterator(
        _cfg(source="array_record", path=prefix + "-*.array_record", num_classes=3), **common), 5)
    _assert_batches_equal(from_folder, from_ar)


def test_tfds_source_without_the_extra_is_one_line_naming_it(monkeypatch):
    from bigvar.errors import UserError
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    with pytest.raises(UserError, match=r"needs tensorflow-datasets, an extra of bigvar: "
                                        r"pip install 'bigvar\[tfds\]'"):
        sources.TfdsSource("imagenet2012", "train")


def test_tfds_source_reads_a_prepared_dataset_without_tensorflow(tmp_path):
    # A real (tiny) prepared TFDS dataset, built in array_record format with tfds itself: with
    # already-encoded image bytes, building needs no TensorFlow either. The builder class is not
    # registered, so reading goes through TFDS's files-only path, as for a dataset prepared
    # elsewhere.
    import tensorflow_datasets as tfds

    images = [procedural.ProceduralSource(2, 20, 10)[i]["image"] for i in range(6)]

    with tfds.core.registered.skip_registration():
        class BigvarTinyShapes(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["disc", "square"])}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples()}

            def _generate_examples(self):
                for i, image in enumerate(images):
                    yield i, {"image": io.BytesIO(_encode(image, "PNG")), "label": i % 2}

    data_dir = str(tmp_path / "tfds")
    BigvarTinyShapes(data_dir=data_dir, file_format="array_record").download_and_prepare()

    src = sources.TfdsSource("bigvar_tiny_shapes", "train", data_dir)
    assert len(src) == 6 and src.class_names == ["disc", "square"]
    decoded = sorted((int(src[i]["label"]), transforms.decode(src[i]).tobytes())
                     for i in range(6))
    assert decoded == sorted((i % 2, im.tobytes()) for i, im in enumerate(images))

    it = data.make_train_iterator(
        _cfg(source="tfds", tfds_name="bigvar_tiny_shapes", tfds_data_dir=data_dir,
             num_classes=2, transform="adm", value_range="zero_one"),
        image_size=16, global_batch=4, seed=0)
    batch = next(it)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].min() >= 0.0
    assert "tensorflow" not in sys.modules
    with pytest.raises(ValueError, match="cannot open TFDS dataset"):
        sources.TfdsSource("bigvar_no_such_dataset", "train", data_dir)


# ---------------------------------------------------------------------------------------------
# Pipeline


@pytest.mark.parametrize("value_range,lo,hi", [("minus_one_one", -1, 1), ("zero_one", 0, 1)])
def test_batches_shapes_dtypes_ranges(value_range, lo, hi):
    it = data.make_train_iterator(_cfg(value_range=value_range, num_records=50),
                                  image_size=24, global_batch=6, seed=0)
    for batch in _take(it, 3):
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (6, 24, 24, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (6,) and batch["label"].dtype == np.int32
        assert lo <= batch["image"].min() < batch["image"].max() <= hi
        assert ((0 <= batch["label"]) & (batch["label"] < 10)).all()
    # Procedural images come out exactly as the source made them (identity transform).
    src = procedural.ProceduralSource(10, 24, 50)
    first = next(data.make_train_iterator(_cfg(num_records=50), image_size=24,
                                          global_batch=6, seed=0))
    idx = pipeline.record_index(0, 50, seed=0)
    np.testing.assert_array_equal(first["image"][0],
                                  transforms.to_float(src[idx]["image"], "minus_one_one"))


def test_epochs_are_global_shuffles():
    n = 37
    epochs = [[pipeline.record_index(e * n + i, n, seed=3) for i in range(n)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != [pipeline.record_index(i, n, seed=4) for i in range(n)]


def test_resume_is_exact_across_epoch_boundaries():
    # 10 records, batches of 4: batch 3 straddles the first epoch boundary.
    cfg = _cfg(num_records=10, num_classes=3, hflip=True)
    kw = dict(image_size=16, global_batch=4, seed=11)
    reference = _take(data.make_train_iterator(cfg, **kw), 8)
    for k in (2, 5):
        it = data.make_train_iterator(cfg, **kw)
        _take(it, k)
        blob = data.iterator_state_to_bytes(it)
        json.loads(blob)  # checkpoint-friendly
        del it
        resumed = data.make_train_iterator(cfg, **kw)
        data.restore_iterator_state(resumed, blob)
        _assert_batches_equal(_take(resumed, 8 - k), reference[k:])
    # Native grain state works too.
    it = data.make_train_iterator(cfg, **kw)
    _take(it, 3)
    state = it.get_state()
    it2 = data.make_train_iterator(cfg, **kw)
    it2.set_state(state)
    _assert_batches_equal(_take(it2, 2), reference[3:5])
    with pytest.raises(ValueError, match="not a saved data-iterator state"):
        data.restore_iterator_state(it2, b"\x00garbage")


def test_unreadable_images_are_skipped_counted_and_resumed(image_folder, caplog):
    cfg = _cfg(source="folder", path=image_folder, num_classes=3, num_threads=2)
    kw = dict(image_size=16, global_batch=4, seed=0)
    src = sources.ImageFolderSource(image_folder)
    bad = {i for i in range(len(src)) if os.path.basename(src[i]["path"]) in BAD_FILES}

    def expected_skips(num_batches):  # walk the position stream like the pipeline does
        good = skipped = pos = 0
        while good < 4 * num_batches:
            if pipeline.record_index(pos, len(src), seed=0) in bad:
                skipped += 1
            else:
                good += 1
            pos += 1
        return skipped

    with caplog.at_level(logging.WARNING):
        it = data.make_train_iterator(cfg, **kw)
        reference = _take(it, 9)  # 36 readable images: more than 2 epochs of 15 records
    for batch in reference:
        assert batch["image"].shape == (4, 16, 16, 3)  # always full
    assert data.skipped_count(it) == expected_skips(9) >= 6
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(name in warned for name in BAD_FILES)

    it = data.make_train_iterator(cfg, **kw)
    _take(it, 4)
    blob = data.iterator_state_to_bytes(it)
    resumed = data.make_train_iterator(cfg, **kw)
    data.restore_iterator_state(resumed, blob)
    assert data.skipped_count(resumed) == expected_skips(4)
    _assert_batches_equal(_take(resumed, 5), reference[4:])
    assert data.skipped_count(resumed) == expected_skips(9)


def test_all_unreadable_fails_loudly(tmp_path, monkeypatch):
    (tmp_path / "c").mkdir()
    for i in range(3):
        (tmp_path / "c" / f"{i}.png").write_bytes(b"")
    monkeypatch.setattr(pipeline, "_MAX_CONSECUTIVE_UNREADABLE", 50)
    it = data.make_train_iterator(_cfg(source="folder", path=str(tmp_path), num_classes=1),
                                  image_size=8, global_batch=2, seed=0)
    with pytest.raises(RuntimeError, match="could not be decoded"):
        next(it)


def test_process_shards_concatenate_to_the_global_batch():
    cfg = _cfg(num_records=13, hflip=True)
    kw = dict(image_size=12, seed=2)
    full = _take(data.make_train_iterator(cfg, global_batch=6, **kw), 6)
    parts = [_take(data.make_train_iterator(cfg, global_batch=6, process_index=p,
                                            process_count=3, **kw), 6) for p in range(3)]
    for b in range(6):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([parts[p][b][key] for p in range(3)]), full[b][key])
            assert parts[0][b][key].shape[0] == 2


def test_iterators_started_at_a_global_batch_continue_the_stream_on_any_process_count():
    """How a checkpoint of P processes resumes on P' processes: from global batch b on."""
    cfg = _cfg(num_records=13, hflip=True)
    kw = dict(image_size=12, seed=2)
    full = _take(data.make_train_iterator(cfg, global_batch=6, **kw), 6)
    parts = [_take(data.make_train_iterator(cfg, global_batch=6, process_index=p, process_count=2,
                                            start_batch=4, **kw), 2) for p in range(2)]
    for b in range(2):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([parts[p][b][key] for p in range(2)]), full[4 + b][key])


def test_process_blocks_are_disjoint_and_covering():
    # What stays true when unreadable records make processes read ahead: every global position
    # belongs to exactly one process.
    local, count = 3, 4
    owned = [pipeline.global_position(k, local, p, count) for p in range(count)
             for k in range(50 * local)]
    assert sorted(owned) == list(range(50 * local * count))


def test_worker_processes_do_not_change_the_stream(image_folder):
    cfg = _cfg(source="folder", path=image_folder, num_classes=3, transform="adm",
               value_range="zero_one")
    kw = dict(image_size=16, global_batch=4, seed=1)
    reference = _take(data.make_train_iterator(cfg, **kw), 6)
    cfg.num_workers = 2
    it = data.make_train_iterator(cfg, **kw)
    try:
        _assert_batches_equal(_take(it, 3), reference[:3])
        blob = data.iterator_state_to_bytes(it)
        count = data.skipped_count(it)
    finally:
        it.close()
    resumed = data.make_train_iterator(cfg, **kw)
    try:
        data.restore_iterator_state(resumed, blob)
        assert data.skipped_count(resumed) == count
        _assert_batches_equal(_take(resumed, 3), reference[3:])
    finally:
        resumed.close()


def test_config_errors(image_folder):
    kw = dict(image_size=16, seed=0)
    with pytest.raises(ValueError, match="not divisible by process_count"):
        data.make_train_iterator(_cfg(), global_batch=6, process_count=4, **kw)
    with pytest.raises(ValueError, match="process_index"):
        data.make_train_iterator(_cfg(), global_batch=4, process_index=2, process_count=2, **kw)
    with pytest.raises(ValueError, match="data.source='imagenet'"):
        data.make_train_iterator(_cfg(source="imagenet"), global_batch=4, **kw)
    with pytest.raises(ValueError, match="unknown fields"):
        data.make_train_iterator({"source": "procedural", "batch": 3}, global_batch=4, **kw)
    with pytest.raises(ValueError, match="needs data.path"):
        data.make_train_iterator(_cfg(source="folder"), global_batch=4, **kw)
    with pytest.raises(ValueError, match="data.num_classes=2"):
        data.make_train_iterator(_cfg(source="folder", path=image_folder, num_classes=2),
                                 global_batch=4, **kw)
    with pytest.raises(ValueError, match="transform"):
        data.make_train_iterator(_cfg(transform="random_resized_crop"), global_batch=4, **kw)
    # Absent fields take their defaults (a plain dict works too).
    batch = next(data.make_train_iterator({"num_records": 20}, global_batch=2, **kw))
    assert batch["image"].shape == (2, 16, 16, 3)


def test_no_tensorflow_imported():
    assert "tensorflow" not in sys.modules
