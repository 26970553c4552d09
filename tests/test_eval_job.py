"""`mode=eval` end to end (`bigvar.eval.job`): metrics.json and the table, 8 devices == 1 device,
resume without recomputing finished feature batches, the reference's precomputed statistics,
bad inputs as clear errors, the reference builder. (The CLI that samples, then evaluates, runs
in tests/test_multihost.py, as 1 process and as 2.)"""
import io
import json
import os
import zipfile

import jax
import numpy as np
import pytest

from bigvar import config_lib, main, parallel, weights
from bigvar.errors import UserError
from bigvar.eval import inception, job, metrics, reference


def smooth_images(seed: int, n: int, size: int = 32) -> np.ndarray:
    """Images with some structure (random low-frequency fields), so features vary."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3))
    x = np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)
    return np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    ref, samples = str(d / "ref.npz"), str(d / "samples.npz")
    np.savez(ref, arr_0=smooth_images(0, 14))
    np.savez(samples, arr_0=smooth_images(1, 11))
    return ref, samples


def eval_config(inception_dir, ref, samples, **eval_fields):
    config = config_lib.load_config_file("var_tiny.py")
    config.mode = "eval"
    config.eval.update(inception=inception_dir, reference=ref, samples=samples, batch_size=8,
                       **eval_fields)
    return config


@pytest.mark.slow
def test_eval_writes_metrics_and_resumes(inception_dir, data, tmp_path, capsys):
    ref, samples = data
    workdir = str(tmp_path / "w")
    summary = main.run(eval_config(inception_dir, ref, samples), workdir)
    out = capsys.readouterr().out
    result = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
    for name, key in (("Inception Score", "inception_score"), ("Precision", "precision"),
                      ("Recall", "recall")):
        assert f"{name:<16}{result[key]:>12.4f}" in out
    # 11 images in 2048 dimensions: singular covariances, no FID (ADM's evaluator would stop);
    # the reason is recorded and the rest is still reported.
    assert summary["fid"] is result["fid"] is None and f"{'FID':<16}{'n/a':>12}" in out
    assert any("fid: not computed: 11 images for 2048-dimensional features" in w for w in result["warnings"])
    assert 0 <= result["precision"] <= 1
    assert result["num_images"] == 11 and result["num_reference_images"] == 14
    assert result["feature_batches_computed"] == {"samples": 2, "reference": 2}

    # The same metrics from the features on ONE device (the job used all 8).
    one = parallel.make_mesh(devices=jax.devices()[:1])
    extractor = inception.FeatureExtractor(inception.load_inception(inception_dir), "adm", one, 8)
    feats = {}
    for name, path in (("sample", samples), ("ref", ref)):
        with np.load(path) as f:
            images = f["arr_0"]
        feats[name] = extractor(images)
        part = np.load(os.path.join(workdir, "eval", "features",
                                    "samples" if name == "sample" else "reference", "part_00000.npz"))
        np.testing.assert_allclose(part["pool"], feats[name]["pool"][:8], rtol=1e-4, atol=1e-5)
    for key, name in (("sample", samples), ("ref", ref)):  # the statistics the FID would use
        got = metrics.statistics(feats[key]["pool"], one)
        np.testing.assert_allclose(got.mu, feats[key]["pool"].astype(np.float64).mean(0), rtol=1e-6)
    radii = [metrics.manifold_radii(feats[k]["pool"], one) for k in ("ref", "sample")]
    precision, recall = metrics.precision_recall(feats["ref"]["pool"], radii[0],
                                                 feats["sample"]["pool"], radii[1], one)
    assert (result["precision"], result["recall"]) == (precision, recall)
    assert result["inception_score"] == pytest.approx(
        metrics.inception_score(feats["sample"]["logits"]), rel=1e-4)

    # Interrupted after one batch: only the missing batch is computed again, same numbers.
    os.remove(os.path.join(workdir, "eval", "features", "samples", "part_00001.npz"))
    main.run(eval_config(inception_dir, ref, samples), workdir)
    again = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
    assert again["feature_batches_computed"] == {"samples": 1, "reference": 0}
    for key in ("inception_score", "precision", "recall"):
        assert again[key] == pytest.approx(result[key], rel=1e-6)
    # Other images under the same names are never mixed with old features.
    np.savez(samples + ".other.npz", arr_0=smooth_images(2, 11))
    main.run(eval_config(inception_dir, ref, samples + ".other.npz"), workdir)
    other = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
    assert other["feature_batches_computed"] == {"samples": 2, "reference": 0}


def test_reference_with_precomputed_statistics(data):
    """The ADM evaluator's rule: a reference npz that holds mu/sigma/mu_s/sigma_s is used as is."""
    ref, _ = data
    with np.load(ref) as f:
        images = f["arr_0"]
    rng = np.random.default_rng(5)
    mu, mu_s = rng.normal(size=2048), rng.normal(size=2023)
    path = ref + ".stats.npz"
    np.savez(path, arr_0=images, mu=mu, sigma=np.eye(2048), mu_s=mu_s, sigma_s=np.eye(2023))
    pool, spatial, precomputed = job.reference_statistics(path, {})
    assert precomputed and np.array_equal(pool.mu, mu) and np.array_equal(spatial.mu, mu_s)
    np.savez(path, arr_0=images, mu=mu, sigma=np.eye(2048))
    with pytest.raises(UserError, match=r"has \['mu', 'sigma'\] but not \['mu_s', 'sigma_s'\]"):
        job.check_reference_statistics(path)


def test_bad_inputs_are_clear_errors(inception_dir, data, tmp_path):
    ref, samples = data
    d = tmp_path
    np.savez(d / "no_arr0.npz", images=smooth_images(0, 4))
    np.savez(d / "float.npz", arr_0=smooth_images(0, 4).astype(np.float32))
    np.savez(d / "nchw.npz", arr_0=smooth_images(0, 4).transpose(0, 3, 1, 2))
    np.savez(d / "big.npz", arr_0=smooth_images(0, 4, size=64))
    np.savez(d / "three.npz", arr_0=smooth_images(0, 3))
    weights.save_weights(str(d / "lpips"), {"x": np.zeros(1)}, {"model": "lpips"})
    cases = [
        (dict(samples=str(d / "no_arr0.npz")), r"no_arr0.npz: .*has no 'arr_0' array .*np.savez\(path, arr_0=images\)"),
        (dict(samples=str(d / "float.npz")), r"float.npz: arr_0 is float32 .*uint8 images N×H×W×3"),
        (dict(samples=str(d / "nchw.npz")), r"nchw.npz: arr_0 is uint8 \(4, 3, 32, 32\)"),
        (dict(reference=str(d / "big.npz")), r"big.npz holds 64×64 images but the samples are 32×32: use the reference of that resolution"),
        (dict(samples=str(d / "three.npz")), r"three.npz holds 3 images; the metrics need at least 4"),
        (dict(inception=str(d / "lpips")), r"holds 'lpips' weights, not an FID InceptionV3"),
        (dict(inception=""), r"mode=eval needs --config.eval.inception"),
        (dict(reference=str(d / "missing.npz")), r"--config.eval.reference=.*missing.npz does not exist"),
        (dict(preprocessing="tf2"), r"eval.preprocessing = 'tf2' is invalid"),
    ]
    # Damaged or hostile files, each refused before any feature is computed (they were
    # tracebacks, the reference's only after all the features).
    (d / "text.npz").write_bytes(b"not a zip at all")
    whole = (d / "three.npz").read_bytes()
    (d / "half.npz").write_bytes(whole[:len(whole) // 2])
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (40, 32, 32, 3)})
    with zipfile.ZipFile(d / "short.npz", "w") as z:  # a header claiming more rows than held
        z.writestr("arr_0.npy", header.getvalue() + smooth_images(0, 4).tobytes())
    np.savez(d / "empty_images.npz", arr_0=np.zeros((4, 0, 0, 3), np.uint8))
    images = smooth_images(0, 14)
    stats = dict(sigma=np.eye(2048), mu_s=np.zeros(2023), sigma_s=np.eye(2023))
    np.savez(d / "mu_text.npz", arr_0=images, mu=np.array(["x"] * 2048), **stats)
    np.savez(d / "mu_object.npz", arr_0=images, mu=np.array([None] * 2048, object), **stats)
    np.savez(d / "mu_small.npz", arr_0=images, mu=np.zeros(64), **stats)
    np.savez(d / "mu_nan.npz", arr_0=images, mu=np.full(2048, np.nan), **stats)
    cases += [
        (dict(samples=str(d / "text.npz")), r"samples .*text.npz is not a readable .npz"),
        (dict(samples=str(d / "half.npz")), r"samples .*half.npz is not a readable .npz"),
        (dict(samples=str(d / "short.npz")), r"declares \(40, 32, 32, 3\) uint8 .* it is truncated"),
        (dict(samples=str(d / "empty_images.npz")), r"arr_0 is uint8 \(4, 0, 0, 3\)"),
        (dict(reference=str(d / "mu_text.npz")), r"mu is <U1 \(2048,\); .* floats of shape \(2048,\)"),
        (dict(reference=str(d / "mu_object.npz")), r"mu does not load .*holds Python objects"),
        (dict(reference=str(d / "mu_small.npz")), r"mu is float64 \(64,\); .* another network's"),
        (dict(reference=str(d / "mu_nan.npz")), r"mu has NaN or infinite values"),
    ]
    for fields, message in cases:
        config = eval_config(inception_dir, ref, samples)
        config.eval.update(**fields)
        with pytest.raises(ValueError, match=message):
            main.run(config, str(d / "w"))
        assert not (d / "w" / "eval" / "features").exists(), fields


@pytest.mark.slow
def test_nan_features_are_an_error_not_a_metric(inception_dir, data, tmp_path):
    """A damaged feature part whose key still matches (NaN features) made inception_score NaN
    (metrics.json then not JSON) and precision 0.27; it is an error naming the cache."""
    ref, samples = data
    config = eval_config(inception_dir, ref, samples, precision_recall=False)
    main.run(config, str(tmp_path))
    part = tmp_path / "eval" / "features" / "samples" / "part_00000.npz"
    with np.load(part) as f:
        arrays = dict(f)
    arrays["logits"][0, 0] = np.nan
    np.savez(part, **arrays)
    with pytest.raises(UserError, match=r"samples Inception features \(logits\) have NaN .*"
                                        r"delete .*features/samples to compute them again"):
        main.run(config, str(tmp_path))
    json.loads((tmp_path / "eval" / "metrics.json").read_text())  # the first run's, still JSON


@pytest.mark.slow
def test_reference_builder_is_computed_once(inception_dir, tmp_path):
    data = config_lib.load_config_file("var_tiny.py").data
    data.update(source="procedural", num_records=40)
    out = str(tmp_path / "ref.npz")
    summary = reference.build(data, out, image_size=32, num_images=12, seed=1)
    assert summary == {"out": out, "reused": False, "num_images": 12, "skipped_unreadable": 0}
    with np.load(out) as f:
        images, labels = f["arr_0"], f["labels"]
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8 and len(set(labels)) > 1
    assert reference.build(data, out, image_size=32, num_images=12, seed=1)["reused"]
    with pytest.raises(ValueError, match="made from other arguments"):
        reference.build(data, out, image_size=32, num_images=12, seed=2)
    # With the Inception weights it also stores ADM's precomputed statistics of those images.
    with_stats = str(tmp_path / "ref_stats.npz")
    reference.build(data, with_stats, image_size=32, num_images=12, seed=1, inception_dir=inception_dir)
    one = parallel.make_mesh(devices=jax.devices()[:1])
    features = inception.FeatureExtractor(inception.load_inception(inception_dir), "adm", one, 12)(images)
    with np.load(with_stats) as f:
        assert np.array_equal(f["arr_0"], images)
        np.testing.assert_allclose(f["mu"], features["pool"].astype(np.float64).mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(f["sigma_s"], np.cov(features["spatial"], rowvar=False), rtol=1e-3, atol=1e-5)
