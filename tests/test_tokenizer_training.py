"""Multi-scale VQ-VAE training forward (official VAR `models/quant.py`): the reconstruction, the
multi-scale VQ loss, codebook hits and the gradients of one L2 + VQ step equal the official
`VQVAE.forward` + backward (golden fixture from tests/fixtures/make_vqvae_train_fixture.py); the
VQ loss and the straight-through estimator also match hand computations."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import FIXTURES
from bigvar import models
from bigvar.convert import torch_pickle
from bigvar.convert import var as convert_var
from bigvar.convert.common import convert_conv_net
from bigvar.tokenizers.msvq import MultiScaleVQVAE, QuantizerSpec, phi_indices

VAR_FIXTURES = os.path.join(FIXTURES, "var")
P256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.fixture(scope="module")
def official_step():
    sd = torch_pickle.load(os.path.join(VAR_FIXTURES, "vqvae_tiny.pth"))
    params = {"params": convert_var.convert_vae_state_dict(sd, "vqvae_tiny.pth")}
    with np.load(os.path.join(VAR_FIXTURES, "vqvae_train_step.npz")) as f:
        fx = {k: f[k] for k in f.files}
    return MultiScaleVQVAE(vocab_size=256, ch=32, patch_nums=P256), params, fx


def _loss(vae, params, img, beta):
    rec, vq_loss, hits, _ = vae.apply(params, img, beta, method=MultiScaleVQVAE.training_forward)
    mse = jnp.mean(jnp.square(rec - img))
    return mse + vq_loss, (rec, vq_loss, mse, hits)


def test_training_forward_and_gradients_equal_the_official_step(official_step):
    vae, params, fx = official_step
    img = jnp.asarray(fx["img"])
    beta = float(fx["beta"])  # (one compiled program: run eagerly, every op compiles on its own)
    (loss, (rec, vq_loss, mse, hits)), grads = jax.jit(
        jax.value_and_grad(lambda p, x: _loss(vae, p, x, beta), has_aux=True))(params, img)
    assert _rel(rec, fx["rec"]) < 1e-5
    np.testing.assert_allclose(float(vq_loss), float(fx["vq_loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(mse), float(fx["mse"]), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(hits), fx["hits"])

    # The official gradients, renamed and laid out like params by the converter's own rules.
    official = {k[len("grad/"):]: v for k, v in fx.items() if k.startswith("grad/")}
    expected = flatten_dict(convert_conv_net(official, convert_var.VAE_RULES))
    ours = flatten_dict(grads["params"])
    assert len(expected) >= 8
    for path, want in expected.items():
        assert _rel(ours[path], want) < 1e-4, ("/".join(path), _rel(ours[path], want))


def test_vq_loss_and_straight_through_gradient_by_hand():
    """One scale (pn = latent size, so no resizing), φ off (ratio 0 gives h exactly): the VQ
    loss is (1 + β)·mean((e_idx − f)²) and d(decoder input)/df is the identity."""
    spec = QuantizerSpec((2,), phi_indices(1, 1))
    vae = MultiScaleVQVAE(vocab_size=4, z_channels=3, ch=32, patch_nums=(2,), quant_resi=0.0,
                          share_quant_resi=1)
    f = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 2, 3))
    params = models.run_init(lambda key: vae.init(key, jnp.zeros((1, 16, 16, 3))), jax.random.PRNGKey(1))
    codebook = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
    params = jax.tree_util.tree_map(lambda x: x, params)
    params["params"]["quantize"]["embedding"] = codebook

    @jax.jit
    def quantize(p, f):
        return vae.apply(p, f, spec, 0.25, method=lambda m, f, s, b: m.quantize.training_forward(f, s, b))

    f_st, vq_loss, hits = quantize(params, f)
    d = ((f.reshape(-1, 1, 3) - codebook[None]) ** 2).sum(-1)
    nearest = codebook[jnp.argmin(d, -1)].reshape(f.shape)
    np.testing.assert_allclose(f_st, nearest, rtol=1e-6, atol=1e-6)  # forward value: the codes
    np.testing.assert_allclose(vq_loss, 1.25 * jnp.mean((nearest - f) ** 2), rtol=1e-6)
    assert int(hits.sum()) == 4
    w = jax.random.normal(jax.random.PRNGKey(3), f.shape)
    np.testing.assert_allclose(jax.grad(lambda f: jnp.sum(quantize(params, f)[0] * w))(f), w, rtol=1e-6)
    # Commitment: d vq_loss / df = 2β(f − e)/n; codebook: d vq_loss / de gathers 2(e − f)/n.
    n = f.size
    np.testing.assert_allclose(jax.grad(lambda f: quantize(params, f)[1])(f),
                               2 * 0.25 * (f - nearest) / n, rtol=1e-5, atol=1e-7)


def test_tokenizer_metrics_by_hand():
    from bigvar.tokenizers.metrics import bit_balance, codebook_usage, psnr, update_hit_ema
    target = jnp.zeros((2, 4, 4, 3))
    rec = target.at[0].set(0.1).at[1].set(5.0)  # image 1 is clipped to 1 before scoring
    np.testing.assert_allclose(psnr(rec, target), [10 * np.log10(4 / 0.01), 10 * np.log10(4.0)],
                               rtol=1e-6)
    np.testing.assert_allclose(psnr(rec[..., :1] * 0 + 0.5, target[..., :1], 0.0, 1.0),
                               [10 * np.log10(1 / 0.25)] * 2, rtol=1e-6)

    hits = jnp.asarray([[4.0, 0.0, 2.0, 2.0]])
    ema = update_hit_ema(jnp.full((1, 4), 7.0), hits, jnp.int32(0))
    np.testing.assert_array_equal(ema, hits)  # the first record is copied
    ema = update_hit_ema(ema, jnp.zeros((1, 4)), jnp.int32(1))
    np.testing.assert_allclose(ema, 0.9 * hits)
    np.testing.assert_allclose(update_hit_ema(ema, hits, jnp.int32(100)), 0.99 * 0.9 * hits + 0.01 * hits)
    # margin = 8 vectors / 4 codes · 0.08 = 0.16: three of four codes are used.
    np.testing.assert_allclose(codebook_usage(hits, vectors_per_step=8), [75.0])

    bits = jnp.asarray([[1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 0]])
    balance = bit_balance(bits)
    np.testing.assert_allclose(balance["ones"], (1 + 0.5 + 0.5) / 3, rtol=1e-6)
    np.testing.assert_allclose(balance["worst_bit_imbalance"], 0.5)
