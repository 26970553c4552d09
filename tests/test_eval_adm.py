"""The metrics equal OpenAI's ADM evaluator (guided-diffusion `evaluations/evaluator.py`, run with
TensorFlow on the CPU by fixtures/make_adm_fixtures.py) on the same fixed feature arrays:
3000 reference and 5500 sample rows of pool (2048) and spatial (2023) features, rebuilt here from
the documented recipe (checked by sha256), so the fixture stays small.

Precision and recall match exactly, which needs the evaluator's float16 arithmetic, including
TensorFlow's float16 row sums: with exact distances they would be 0.314 / 0.303 instead of
0.355 / 0.358 on these features (`info_*` in the fixture)."""
import hashlib
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvar import parallel
from bigvar.eval import job, metrics

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _recipe():
    spec = importlib.util.spec_from_file_location(
        "make_adm_fixtures", os.path.join(FIXTURES, "make_adm_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # numpy only: TensorFlow is imported by its main() alone
    return module


@pytest.fixture(scope="module")
def adm():
    with np.load(os.path.join(FIXTURES, "eval", "adm_metrics.npz")) as f:
        golden = {k: f[k] for k in f.files}
    features = _recipe().make_features(int(golden["seed"]))
    for name, array in features.items():
        digest = hashlib.sha256(np.ascontiguousarray(array, "<f4").tobytes()).hexdigest()
        assert digest == str(golden[f"sha256_{name}"]), f"{name}: the recipe no longer rebuilds it"
    return golden, features


def test_fid_sfid_and_inception_score(adm):
    golden, f = adm
    stats = {}
    for num_devices in (8, 1):  # the sums sharded over 8 devices equal those of one
        mesh = parallel.make_mesh(devices=jax.devices()[:num_devices])
        stats[num_devices] = {k: metrics.statistics(f[k], mesh, batch_size=2000)
                              for k in ("ref_pool", "sample_pool", "ref_spatial", "sample_spatial")}
    for k in stats[1]:
        np.testing.assert_allclose(stats[8][k].mu, stats[1][k].mu, rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(stats[8][k].sigma, stats[1][k].sigma, rtol=1e-5, atol=1e-9)
    stats = stats[8]
    np.testing.assert_allclose(stats["ref_pool"].mu, golden["ref_mu"], rtol=1e-6)
    np.testing.assert_allclose(np.diag(stats["ref_pool"].sigma), golden["ref_sigma_diag"], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(stats["sample_spatial"].sigma[:4], golden["sample_spatial_sigma_rows"],
                               rtol=1e-5, atol=1e-9)
    fid = metrics.frechet_distance(stats["sample_pool"], stats["ref_pool"])
    sfid = metrics.frechet_distance(stats["sample_spatial"], stats["ref_spatial"])
    assert fid == pytest.approx(float(golden["fid"]), rel=1e-6)
    assert sfid == pytest.approx(float(golden["sfid"]), rel=1e-6)
    # IS over 5500 samples = two splits (5000 + 500), from pool @ W without bias.
    inception_score = metrics.inception_score(f["sample_pool"] @ f["softmax_w"])
    assert inception_score == pytest.approx(float(golden["inception_score"]), rel=1e-6)


def test_precision_recall_bit_for_bit(adm):
    golden, f = adm
    mesh = parallel.make_mesh()  # all 8 devices, each its block of rows
    norms = metrics.half_squared_norms(f["ref_pool"])
    np.testing.assert_array_equal(norms.astype(np.float32), golden["info_tf_norm16_ref"])
    np.testing.assert_array_equal(metrics.half_squared_norms(f["sample_pool"]).astype(np.float32),
                                  golden["info_tf_norm16_sample"])
    rows = np.asarray(metrics.squared_distances(jnp.asarray(f["ref_pool"][:8]), jnp.asarray(f["ref_pool"]),
                                                jnp.asarray(norms[:8]), jnp.asarray(norms)))
    np.testing.assert_array_equal(rows, golden["distance_rows"])
    ref_radii = metrics.manifold_radii(f["ref_pool"], mesh)
    sample_radii = metrics.manifold_radii(f["sample_pool"], mesh)
    np.testing.assert_array_equal(ref_radii, golden["radii_ref"][:, 0])
    np.testing.assert_array_equal(sample_radii, golden["radii_sample"][:, 0])
    precision, recall = metrics.precision_recall(f["ref_pool"], ref_radii, f["sample_pool"],
                                                 sample_radii, mesh)
    assert (precision, recall) == (float(golden["precision"]), float(golden["recall"]))


def test_float32_fallback_and_singular_fid(adm):
    golden, _ = adm
    u, v = golden["fallback_u"], golden["fallback_v"]  # float16 norms overflow: the float32 branch
    d = metrics.squared_distances(jnp.asarray(u), jnp.asarray(v), jnp.asarray(metrics.half_squared_norms(u)),
                                  jnp.asarray(metrics.half_squared_norms(v)))
    np.testing.assert_array_equal(np.asarray(d), golden["fallback_distances"])
    # Two 2-image sets: ADM adds 1e-6·I when the first root is not finite (SciPy dependent).
    fid = metrics.frechet_distance(metrics.Statistics(golden["singular_mu1"], golden["singular_sigma1"]),
                                   metrics.Statistics(golden["singular_mu2"], golden["singular_sigma2"]))
    assert fid == pytest.approx(float(golden["singular_fid"]), rel=1e-4)


def test_reference_batch_reading(adm, tmp_path):
    """ADM's `read_statistics`: the stored mu/sigma/mu_s/sigma_s when the npz has them (dtypes
    kept), else the statistics of the activations."""
    golden, _ = adm
    path = os.path.join(FIXTURES, "eval", "adm_ref_with_stats.npz")
    pool, spatial, precomputed = job.reference_statistics(path, {})
    assert precomputed
    for got, key in ((pool.mu, "mu"), (pool.sigma, "sigma"), (spatial.mu, "mu_s"), (spatial.sigma, "sigma_s")):
        want = golden[f"rs_with_stats_{key}"]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    images_only = str(tmp_path / "ref.npz")
    with np.load(path) as f:
        np.savez(images_only, arr_0=f["arr_0"])
    spatial_moments = metrics.MomentAccumulator(parallel.make_mesh())
    spatial_moments.add(golden["rs_acts_spatial"])
    pool, spatial, precomputed = job.reference_statistics(
        images_only, {"pool": golden["rs_acts_pool"], "spatial": spatial_moments})
    assert not precomputed
    for got, key in ((pool.mu, "mu"), (pool.sigma, "sigma"), (spatial.mu, "mu_s"), (spatial.sigma, "sigma_s")):
        np.testing.assert_allclose(got, golden[f"rs_no_stats_{key}"], rtol=1e-5, atol=1e-8)
