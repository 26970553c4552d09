"""VAR transformer parity with the official implementation: teacher-forced logits of three tiny
random-weight models (non-shared AdaLN at 256 px, shared AdaLN at 512 px, no L2-norm attention),
loaded through the converter from real `torch.save` files. fp32, within 1e-4."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from bigvar import models
from bigvar.convert import var as convert_var

from conftest import FIXTURES

VAR_FIXTURES = os.path.join(FIXTURES, "var")
VAE_PTH = os.path.join(VAR_FIXTURES, "vqvae_tiny.pth")


def load_variant(name):
    config, params = convert_var.convert(VAE_PTH, os.path.join(VAR_FIXTURES, f"var_{name}.pth"))
    return config, params, np.load(os.path.join(VAR_FIXTURES, f"var_{name}.npz"))


def assert_close(actual, expected, tol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    rel = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    worst = np.abs(actual - expected).max() / np.abs(expected).max()
    assert rel < tol and worst < tol, f"norm-relative {rel:.3g}, max-relative {worst:.3g} (tol {tol})"


@pytest.mark.parametrize("name, depth, shared_aln, l2, num_classes", [
    ("d2_256", 2, False, True, 1000),
    ("d3_512_saln", 3, True, True, 10),
    ("d2_256_nol2", 2, False, False, 10),
])
def test_teacher_forced_logits(name, depth, shared_aln, l2, num_classes):
    config, params, fx = load_variant(name)
    v = config.var
    assert (v.depth, v.shared_aln, v.attn_l2_norm, v.num_classes) == (depth, shared_aln, l2, num_classes)
    model = models.build(config)[0]
    vae = models.build_tokenizer(config)

    gt = [jnp.asarray(fx["gt_idx"][:, a:b]) for a, b in vae.spec.begin_ends]
    x_in = vae.apply(params["vae"], gt, method=type(vae).idx_to_var_input)
    assert_close(x_in, fx["x_in"], 1e-5)

    logits = model.apply(params["var"], jnp.asarray(fx["labels"]), jnp.asarray(fx["x_in"]))
    assert_close(logits, fx["logits"], 1e-4)
    null = jnp.full_like(jnp.asarray(fx["labels"]), v.num_classes)
    assert_close(model.apply(params["var"], null, jnp.asarray(fx["x_in"])), fx["logits_null"], 1e-4)


def test_label_dropout_only_in_training():
    config, params, fx = load_variant("d2_256")
    model = models.build(config)[0]
    import jax
    labels, x_in = jnp.asarray(fx["labels"]), jnp.asarray(fx["x_in"])
    eval_logits = model.apply(params["var"], labels, x_in)
    # cond_drop_rate = 1 in training: every label becomes the null class.
    dropped = model.clone(cond_drop_rate=1.0, drop_path_rate=0.0).apply(
        params["var"], labels, x_in, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    assert_close(dropped, fx["logits_null"], 1e-4)
    assert not np.allclose(eval_logits, dropped)
