"""Multi-scale VQ-VAE parity with the official implementation (golden fixtures made by
tests/fixtures/make_var_fixtures.py from FoundationVision/VAR with small random weights).

Tolerances: token ids must be identical. Continuous outputs are compared norm-relative at 1e-5;
the max abs error is also bounded: official fp32 torch is itself ~1.3e-5 away from the float64
answer on the decoded image, so no fp32 port can be closer than that in every pixel.
"""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from bigvar.convert import torch_pickle
from bigvar.convert import var as convert_var
from bigvar.tokenizers.msvq import MultiScaleVQVAE, phi_indices

from conftest import FIXTURES

VAR_FIXTURES = os.path.join(FIXTURES, "var")
P256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
P512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def assert_close(actual, expected, rel=1e-5, max_abs=None):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert err < rel, f"norm-relative error {err:.3g} ≥ {rel}"
    if max_abs is not None:
        worst = np.abs(actual - expected).max()
        assert worst < max_abs, f"max abs error {worst:.3g} ≥ {max_abs}"


@pytest.fixture(scope="module")
def vae_params():
    sd = torch_pickle.load(os.path.join(VAR_FIXTURES, "vqvae_tiny.pth"))
    return {"params": convert_var.convert_vae_state_dict(sd, "vqvae_tiny.pth")}


def make_vae(patch_nums):
    return MultiScaleVQVAE(vocab_size=256, ch=32, patch_nums=patch_nums)


def assert_quantizer_matches(vae, vae_params, f, fx):
    """Indices (exact) and cumulative f̂ at every scale, then the teacher-forcing input."""
    idx, f_hats = vae.apply(vae_params, f, vae.spec,
                            method=lambda m, f, s: m.quantize.f_to_idx_or_fhat(f, s))
    for k in range(10):
        np.testing.assert_array_equal(np.asarray(idx[k]), fx[f"idx_{k}"], err_msg=f"scale {k}")
        assert_close(f_hats[k], nhwc(fx[f"fhat_{k}"]), max_abs=1e-4)
    gt = [jnp.asarray(fx[f"idx_{k}"]) for k in range(10)]
    assert_close(vae.apply(vae_params, gt, method=MultiScaleVQVAE.idx_to_var_input), fx["var_input"], max_abs=1e-5)
    return gt


def test_phi_table_is_the_float64_one():
    # docs/official_behaviour.md: float32 would give 2 at si=7.
    assert phi_indices(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    fx = np.load(os.path.join(VAR_FIXTURES, "vqvae_tiny_256.npz"))
    assert phi_indices(10, 4) == tuple(fx["phi_index"].tolist())


def test_encode_quantize_decode_256(vae_params):
    fx = np.load(os.path.join(VAR_FIXTURES, "vqvae_tiny_256.npz"))
    vae = make_vae(P256)
    img = jnp.asarray(nhwc(fx["img"]))
    f = vae.apply(vae_params, img, method=MultiScaleVQVAE.img_to_f)
    assert_close(f, nhwc(fx["f"]), max_abs=1e-4)

    gt = assert_quantizer_matches(vae, vae_params, f, fx)
    assert_close(vae.apply(vae_params, jnp.asarray(nhwc(fx["fhat_9"])), method=MultiScaleVQVAE.fhat_to_img),
                 nhwc(fx["img_fhat"]), max_abs=5e-5)
    assert_close(vae.apply(vae_params, gt, method=MultiScaleVQVAE.idx_to_img), nhwc(fx["img_from_idx"]), max_abs=5e-5)
    assert_close(vae.apply(vae_params, img, method=MultiScaleVQVAE.img_to_reconstructed_img),
                 nhwc(fx["img_recon"]), max_abs=5e-5)


def test_quantizer_512_patch_nums(vae_params):
    fx = np.load(os.path.join(VAR_FIXTURES, "vqvae_tiny_quant_512.npz"))
    vae = make_vae(P512)
    f = jnp.asarray(nhwc(fx["f"]))
    assert_quantizer_matches(vae, vae_params, f, fx)
    assert_close(vae.apply(vae_params, jnp.asarray(nhwc(fx["fhat_9"][:1])), method=MultiScaleVQVAE.fhat_to_img),
                 nhwc(fx["img_fhat"]), max_abs=5e-5)


def test_wrong_image_size_is_a_clear_error(vae_params):
    vae = make_vae(P256)
    with pytest.raises(ValueError, match="256 px"):
        vae.apply(vae_params, jnp.zeros((1, 128, 128, 3)), method=MultiScaleVQVAE.img_to_idx)
