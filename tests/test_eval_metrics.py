"""The metrics of `bigvar.eval.metrics` and the streaming npz of `bigvar.npz`: closed forms,
brute force, sharded == unsharded. (Parity with the ADM evaluator's own code: test_eval_adm.py.)"""
import jax
import numpy as np
import pytest

from bigvar import npz, parallel
from bigvar.eval import metrics


def one_device_mesh():
    return parallel.make_mesh(devices=jax.devices()[:1])


def test_npz_streamed_equals_savez(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 5, 4, 3), dtype=np.uint8)
    path = str(tmp_path / "s.npz")
    npz.write(path, {"arr_0": (images.shape, np.uint8, [images[:4], images[4:9], images[9:]]),
                     "labels": np.arange(11), "note": np.asarray("x")})
    with np.load(path) as f:  # what np.load (and the ADM evaluator) sees
        assert np.array_equal(f["arr_0"], images) and np.array_equal(f["labels"], np.arange(11))
        assert str(f["note"]) == "x"
    assert npz.shape_and_dtype(path, "arr_0") == (images.shape, np.dtype(np.uint8))
    chunks = list(npz.iter_rows(path, "arr_0", 4, start=2))
    assert [len(c) for c in chunks] == [4, 4, 1]
    assert np.array_equal(np.concatenate(chunks), images[2:])
    with pytest.raises(ValueError, match="got 4 rows, expected 11"):
        npz.write(path, {"arr_0": (images.shape, np.uint8, [images[:4]])})
    with np.load(path) as f:  # the failed write left the old file whole
        assert np.array_equal(f["arr_0"], images)
    with pytest.raises(KeyError, match="has no 'images' array"):
        npz.shape_and_dtype(path, "images")


@pytest.mark.parametrize("num_devices", [1, 8])
def test_statistics_are_numpy_mean_and_cov(num_devices):
    rng = np.random.default_rng(1)
    # A large common offset: float32 sums without the shift would lose the covariance.
    features = (rng.normal(size=(203, 24)) * 0.1 + 500.0).astype(np.float32)
    mesh = parallel.make_mesh(devices=jax.devices()[:num_devices])
    acc = metrics.MomentAccumulator(mesh)
    for start in range(0, len(features), 50):  # streamed batches, the last one ragged
        acc.add(features[start:start + 50])
    stats = acc.statistics()
    np.testing.assert_allclose(stats.mu, features.astype(np.float64).mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.statistics(features[:1], mesh)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = metrics.frechet_distance(metrics.Statistics(mu1, np.diag(var1)),
                                   metrics.Statistics(mu2, np.diag(var2)))
    assert got == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="differ in size"):
        metrics.frechet_distance(metrics.Statistics(mu1, np.diag(var1)),
                                 metrics.Statistics(mu2[:5], np.diag(var2[:5])))


def test_inception_score_extremes():
    n, classes = 40, 10
    assert metrics.inception_score(np.zeros((n, 1008), np.float32)) == pytest.approx(1.0)
    confident = np.full((n, classes), -50.0, np.float32)
    confident[np.arange(n), np.arange(n) % classes] = 50.0  # every class equally often
    assert metrics.inception_score(confident) == pytest.approx(classes, rel=1e-5)
    # Splits: two halves of which each holds one class only score 1 each.
    halves = np.full((n, classes), -50.0, np.float32)
    halves[: n // 2, 0] = halves[n // 2:, 1] = 50.0
    assert metrics.inception_score(halves, split_size=n // 2) == pytest.approx(1.0, abs=1e-5)
    assert metrics.inception_score(halves, split_size=n) == pytest.approx(2.0, rel=1e-5)


def _brute_radii(x, k=3):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k]


@pytest.mark.parametrize("num_devices", [1, 8])
def test_precision_recall_brute_force(num_devices):
    # Small integers: float16 distances are exact, so ADM's float16 block equals float64 here.
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, (37, 6)).astype(np.float32)
    sample = rng.integers(1, 3, (29, 6)).astype(np.float32)  # a narrower set …
    sample[:5] += 4  # … with a few points outside the reference
    mesh = parallel.make_mesh(devices=jax.devices()[:num_devices])
    ref_radii = metrics.manifold_radii(ref, mesh, row_block=4)
    sample_radii = metrics.manifold_radii(sample, mesh, row_block=4)
    np.testing.assert_array_equal(ref_radii, _brute_radii(ref))
    np.testing.assert_array_equal(sample_radii, _brute_radii(sample))
    d = ((ref[:, None, :] - sample[None, :, :]) ** 2).sum(-1)
    precision = np.mean(np.any(d <= ref_radii[:, None], axis=0))
    recall = np.mean(np.any(d <= sample_radii[None, :], axis=1))
    assert 0 < precision < 1 and 0 < recall < 1
    got = metrics.precision_recall(ref, ref_radii, sample, sample_radii, mesh, row_block=4)
    assert got == (pytest.approx(precision), pytest.approx(recall))


def test_radii_need_more_than_k_points():
    with pytest.raises(ValueError, match="more than k=3 images"):
        metrics.manifold_radii(np.zeros((3, 4), np.float32), one_device_mesh())
