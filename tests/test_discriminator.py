"""PatchGAN discriminator and adversarial-loss pieces (bigvar/tokenizers/discriminator.py) against
the official taming-transformers / BinaryLatentDiffusion code: logits in train and eval mode, the
updated BatchNorm running stats, the d/g losses, the adaptive weight and adopt_weight (golden fixture
from tests/fixtures/make_discriminator_fixture.py); plus the init statistics and last_layer_grads ==
jax.grad of the composition."""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES
from bigvar.tokenizers.discriminator import (PatchDiscriminator, adaptive_weight, conv2d,
                                             discriminator_init, disc_factor, generator_adv_loss,
                                             hinge_d_loss, last_layer_grads, output_size,
                                             vanilla_d_loss)

FIXTURE = os.path.join(FIXTURES, "discriminator", "discriminator.npz")
RTOL = 1e-5

# torch state-dict leaf (name, ndim) → (flax collection, flax leaf, layout change).
# Keys are `main.<i>.<leaf>`; the flax module is `main_<i>`.
TORCH_TO_FLAX = {
    ("weight", 4): ("params", "kernel", lambda w: w.transpose(2, 3, 1, 0)),   # OIHW → HWIO
    ("weight", 1): ("params", "scale", lambda w: w),                          # BatchNorm
    ("bias", 1): ("params", "bias", lambda w: w),
    ("running_mean", 1): ("batch_stats", "mean", lambda w: w),
    ("running_var", 1): ("batch_stats", "var", lambda w: w),
}


def to_flax(arrays: dict) -> dict:
    out = {}
    for key, v in arrays.items():
        seq, idx, leaf = key.split(".")
        assert seq == "main", key
        coll, name, fn = TORCH_TO_FLAX[(leaf, v.ndim)]
        out.setdefault(coll, {}).setdefault(f"main_{idx}", {})[name] = jnp.asarray(fn(v.astype(np.float32)))
    return out


def nhwc(x):
    return jnp.asarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _group(fx, prefix):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in fx.items() if k.startswith(prefix + "/")}


def variables(fx, model, stats="stats0"):
    return {"params": to_flax(_group(fx, f"{model}/sd"))["params"],
            "batch_stats": to_flax(_group(fx, f"{model}/{stats}"))["batch_stats"]}


def stats_of(fx, model, stats):
    return to_flax(_group(fx, f"{model}/{stats}"))["batch_stats"]


D_A = PatchDiscriminator(ndf=8, n_layers=3)     # taming NLayerDiscriminator + weights_init
D_B = PatchDiscriminator(ndf=8, n_layers=2)     # BLD Discriminator, torch default init


@functools.partial(jax.jit, static_argnums=(0, 3))
def apply(d, vs, x, train):
    if train:
        return d.apply(vs, x, train=True, mutable=["batch_stats"])
    return d.apply(vs, x, train=False), None


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def assert_close(actual, expected, rtol=RTOL):
    """Max abs error relative to the largest |expected| (logits near 0 make elementwise rtol noisy)."""
    err = _max_rel(actual, expected)
    assert err < rtol, f"max error {err:.2e} (relative to max |expected|) > {rtol}"


def assert_tree_close(actual, expected, rtol=RTOL):
    jax.tree_util.tree_map(lambda a, e: assert_close(a, e, rtol), actual, expected)


def test_param_tree_mirrors_the_official_state_dict(fx):
    for d, model in ((D_A, "A"), (D_B, "B")):
        ours = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))
        shapes = lambda t: jax.tree_util.tree_map(jnp.shape, t)  # noqa: E731
        assert shapes(ours) == shapes(variables(fx, model))


def test_eval_logits_use_the_running_stats(fx):
    vs_a, vs_b = variables(fx, "A"), variables(fx, "B")
    assert_close(apply(D_A, vs_a, nhwc(fx["x32_real"]), False)[0], nhwc(fx["A/eval32"]))
    assert_close(apply(D_A, vs_a, nhwc(fx["x64"]), False)[0], nhwc(fx["A/eval64"]))
    assert_close(apply(D_B, vs_b, nhwc(fx["x32_real"]), False)[0], nhwc(fx["B/eval32"]))
    assert apply(D_A, vs_a, nhwc(fx["x64"]), False)[0].shape == (1, 6, 6, 1) == (1,) + (output_size(64, 3),) * 2 + (1,)


def test_train_logits_use_batch_stats_and_update_running_stats(fx):
    vs = variables(fx, "A")
    logits, new = apply(D_A, vs, nhwc(fx["x32_real"]), True)
    assert_close(logits, nhwc(fx["A/train_real"]))
    assert_tree_close(new["batch_stats"], stats_of(fx, "A", "stats1"))
    # a second, separate call on the fake batch (as the official d-step does)
    logits, new = apply(D_A, {"params": vs["params"], **new}, nhwc(fx["x32_fake"]), True)
    assert_close(logits, nhwc(fx["A/train_fake"]))
    assert_tree_close(new["batch_stats"], stats_of(fx, "A", "stats2"))
    logits, new = apply(D_A, vs, nhwc(fx["x64"]), True)
    assert_close(logits, nhwc(fx["A/train64"]))
    assert_tree_close(new["batch_stats"], stats_of(fx, "A", "stats64"))
    logits, new = apply(D_B, variables(fx, "B"), nhwc(fx["x32_real"]), True)
    assert_close(logits, nhwc(fx["B/train_real"]))
    assert_tree_close(new["batch_stats"], stats_of(fx, "B", "stats1"))


def test_losses_equal_the_official_ones(fx):
    real, fake = jnp.asarray(fx["A/train_real"]), jnp.asarray(fx["A/train_fake"])
    np.testing.assert_allclose(hinge_d_loss(real, fake), fx["hinge_d_loss"], rtol=1e-6)
    np.testing.assert_allclose(hinge_d_loss(real, fake), fx["hinge_d_loss_bld"], rtol=1e-6)
    np.testing.assert_allclose(vanilla_d_loss(real, fake), fx["vanilla_d_loss"], rtol=1e-6)
    np.testing.assert_allclose(generator_adv_loss(fake), fx["g_loss"], rtol=1e-6)
    # the hinge saturates: confident correct logits give 0
    assert float(hinge_d_loss(jnp.full((2, 3, 3, 1), 2.0), jnp.full((2, 3, 3, 1), -2.0))) == 0.0


@pytest.fixture(scope="module")
def toy(fx):
    """The fixture's adaptive-weight setup: x̂ = conv3x3(h) + b, nll = L1 + MSE, g = −mean D_A(x̂)."""
    h, x = nhwc(fx["toy/h"]), nhwc(fx["toy/x"])
    kernel = jnp.asarray(fx["toy/conv_w"].astype(np.float32).transpose(2, 3, 1, 0))
    bias = jnp.asarray(fx["toy/conv_b"].astype(np.float32))
    vs = variables(fx, "A")

    def nll_of(x_hat):
        return jnp.mean(jnp.abs(x - x_hat)) + jnp.mean(jnp.square(x - x_hat))

    def g_of(x_hat):
        return generator_adv_loss(D_A.apply(vs, x_hat, train=True, mutable=["batch_stats"])[0])

    def x_hat_of(k):
        return conv2d(h, k, padding=1) + bias

    @jax.jit
    def run(kernel):
        nll, rec_grad = jax.value_and_grad(lambda k: nll_of(x_hat_of(k)))(kernel)
        g, adv_grad = jax.value_and_grad(lambda k: g_of(x_hat_of(k)))(kernel)
        x_hat = x_hat_of(kernel)
        cts = (jax.grad(nll_of)(x_hat), jax.grad(g_of)(x_hat))
        vjp_grads = last_layer_grads(functools.partial(conv2d, padding=1), h, kernel, cts)
        return dict(nll=nll, g=g, rec_grad=rec_grad, adv_grad=adv_grad, cts=cts, vjp_grads=vjp_grads)

    return dict(h=h, kernel=kernel, **run(kernel))


def test_adaptive_weight_equals_the_official_one(fx, toy):
    rec_grad, adv_grad = toy["rec_grad"], toy["adv_grad"]
    np.testing.assert_allclose(toy["nll"], fx["toy/nll"], rtol=RTOL)
    np.testing.assert_allclose(toy["g"], fx["toy/g"], rtol=RTOL)
    oihw = lambda w: np.asarray(w).transpose(3, 2, 0, 1)  # noqa: E731
    assert_close(oihw(rec_grad), fx["toy/rec_grad"])
    assert_close(oihw(adv_grad), fx["toy/adv_grad"])
    # taming: clamp to [0, 1e4], then × disc_weight
    np.testing.assert_allclose(adaptive_weight(rec_grad, adv_grad, 1e4), fx["toy/w_taming_dw1"], rtol=RTOL)
    np.testing.assert_allclose(adaptive_weight(rec_grad, adv_grad, 1e4, disc_weight=0.8),
                               fx["toy/w_taming_dw08"], rtol=RTOL)
    # BLD: clamp to [0, disc_weight_max]; the ratio here is ~5, so both of these clamp
    np.testing.assert_allclose(adaptive_weight(rec_grad, adv_grad, 1.0), fx["toy/w_bld_max1"], rtol=RTOL)
    small = float(fx["toy/bld_max_small"])
    np.testing.assert_allclose(adaptive_weight(rec_grad, adv_grad, small), fx["toy/w_bld_maxsmall"], rtol=RTOL)
    # no gradient flows through the weight
    assert float(jax.grad(lambda k: adaptive_weight(k, adv_grad, 1e4))(rec_grad).sum()) == 0.0


def test_last_layer_grads_equal_jax_grad_of_the_composition(toy):
    for a, b in zip(toy["vjp_grads"], (toy["rec_grad"], toy["adv_grad"])):
        assert_close(a, b, 1e-6)
    h, kernel, cts = toy["h"], toy["kernel"], toy["cts"]
    # conv2d is the bias-free flax nn.Conv(padding=1) the decoders use
    flax_conv = nn.Conv(3, (3, 3), padding=1, use_bias=False, precision=jax.lax.Precision.HIGHEST)
    assert_close(flax_conv.apply({"params": {"kernel": kernel}}, h), conv2d(h, kernel, padding=1), 1e-6)
    # one backward with ct_rec + λ·ct_g gives the gradient of nll + λ·g
    lam = adaptive_weight(*toy["vjp_grads"], max_weight=1e4)
    total = last_layer_grads(functools.partial(conv2d, padding=1), h, kernel, (cts[0] + lam * cts[1],))[0]
    assert_close(total, toy["rec_grad"] + lam * toy["adv_grad"], 1e-6)
    with pytest.raises(ValueError, match="does not match"):
        last_layer_grads(functools.partial(conv2d, padding=1), h, kernel, (cts[0][:1],))


def test_disc_factor_matches_adopt_weight(fx):
    steps = fx["adopt/steps"]
    np.testing.assert_array_equal(fx["adopt/taming"], fx["adopt/bld"])
    got = np.array([float(disc_factor(int(s), 5)) for s in steps])
    np.testing.assert_array_equal(got, fx["adopt/taming"])
    traced = jax.jit(lambda s: disc_factor(s, 5, 0.5))(jnp.asarray(steps))
    np.testing.assert_array_equal(np.asarray(traced), 0.5 * fx["adopt/taming"])


def _check_normal(x, mean, std, n_sigma=6):
    x = np.asarray(x, np.float64).ravel()
    n = x.size
    assert abs(x.mean() - mean) < n_sigma * std / np.sqrt(n), (x.mean(), mean)
    assert abs(x.std() - std) < n_sigma * std / np.sqrt(2 * n), (x.std(), std)


def _check_uniform(x, bound):
    x = np.asarray(x, np.float64).ravel()
    assert np.abs(x).max() <= bound
    if x.size >= 32:
        assert abs(x.std() - bound / np.sqrt(3)) < 6 * bound / np.sqrt(3) / np.sqrt(2 * x.size) * 1.2


def test_init_statistics():
    big = jax.eval_shape(lambda: PatchDiscriminator(ndf=64, n_layers=3).init(
        jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))
    assert big["params"]["main_8"]["kernel"].shape == (4, 4, 256, 512)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(big["params"]))
    assert n_params == 2_765_633   # the official ndf=64, n_layers=3 NLayerDiscriminator (BLD's `disc.`)

    # statistics on a small tree (every kind of leaf; random draws compile slowly on a CPU)
    d = PatchDiscriminator(ndf=16, n_layers=1)
    vs = jax.jit(lambda k: d.init(k, jnp.zeros((2, 12, 12, 3)), train=True))(jax.random.key(0))
    # init must not move the running stats, even with train=True
    for s in vs["batch_stats"].values():
        np.testing.assert_array_equal(s["mean"], 0.0)
        np.testing.assert_array_equal(s["var"], 1.0)
    for params in (vs["params"], discriminator_init(vs["params"], jax.random.key(1))):
        for name, leaves in params.items():
            if "kernel" in leaves:
                _check_normal(leaves["kernel"], 0.0, 0.02)
                if "bias" in leaves:
                    _check_uniform(leaves["bias"], 1 / np.sqrt(np.prod(leaves["kernel"].shape[:3])))
            else:
                _check_normal(leaves["scale"], 1.0, 0.02)
                np.testing.assert_array_equal(leaves["bias"], 0.0)
    default = discriminator_init(vs["params"], jax.random.key(2), scheme="torch_default")
    for name, leaves in default.items():
        if "kernel" in leaves:
            _check_uniform(leaves["kernel"], 1 / np.sqrt(np.prod(leaves["kernel"].shape[:3])))
        else:
            np.testing.assert_array_equal(leaves["scale"], 1.0)
            np.testing.assert_array_equal(leaves["bias"], 0.0)
    assert not np.allclose(default["main_0"]["kernel"],
                           discriminator_init(vs["params"], jax.random.key(3), "torch_default")["main_0"]["kernel"])


def test_errors_name_the_problem():
    d = PatchDiscriminator(ndf=4, n_layers=3)
    with pytest.raises(ValueError, match="too small"):
        d.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)), train=False)
    with pytest.raises(ValueError, match="NHWC"):
        d.init(jax.random.key(0), jnp.zeros((2, 3, 32, 32)), train=False)
    vs = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((1, 24, 24, 3)), train=False))  # smallest
    with pytest.raises(ValueError, match="params"):
        discriminator_init(vs, jax.random.key(0))
    with pytest.raises(ValueError, match="scheme"):
        discriminator_init(vs["params"], jax.random.key(0), scheme="xavier")
