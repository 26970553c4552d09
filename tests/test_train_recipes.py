"""The official training recipes, pinned to golden values from the official code
(tests/fixtures/make_train_fixtures.py): no-decay groups, lr/wd schedules, progressive-training
stages and ramps, the VAR cross-entropy and metrics, BiGR's masked weighted BCE; plus the
official initialisation and stochastic depth."""
import functools
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import FIXTURES
from bigvar import models
from bigvar.convert.bigr import BIGR_NAMES
from bigvar.convert.var import VAR_NAMES
from bigvar.models.bigr import BiGR
from bigvar.models.var import VAR
from bigvar.train import losses, optim
from bigvar.train.init import bigr_official_init, var_official_init
from flax.linen import unbox

TRAIN = os.path.join(FIXTURES, "train")


def _load(name):
    with open(os.path.join(TRAIN, name)) as f:
        return json.load(f)


def _tiny_var(cfg, **kw):
    return VAR(vocab_size=cfg["V"], cvae=cfg["Cvae"], num_classes=cfg["num_classes"],
               depth=cfg["depth"], embed_dim=cfg["width"], num_heads=cfg["num_heads"],
               patch_nums=tuple(cfg["patch_nums"]), shared_aln=cfg["shared_aln"], **kw)


def _var_params(model):
    labels = jnp.zeros((1,), jnp.int32)
    x_in = jnp.zeros((1, model.seq_len - model.first_l, model.cvae))
    # Compiled as one program (as the trainers do): run eagerly, every op compiles on its own.
    return unbox(models.run_init(lambda key: model.init(key, labels, x_in), jax.random.PRNGKey(0)))


def _bigr_params(model):
    n, k = model.seq_len, model.binary_size
    args = (jnp.zeros((1, n, k)), jnp.zeros((1, n), bool), jnp.zeros((1,), jnp.int32),
            jnp.zeros((1, n, k)), jnp.zeros((1, n), jnp.int32))
    return unbox(models.run_init(lambda key: model.init(key, *args), jax.random.PRNGKey(0)))


def _groups(params, names, model_name, layer_prefix):
    """(decayed, not decayed) as official names, the layer index replaced by `*`."""
    mask = flatten_dict(optim.decay_mask(params["params"], model_name))
    groups = {True: set(), False: set()}
    for path, decay in mask.items():
        groups[bool(decay)].add(names.torch_name("/".join(path)))
    return groups[True], groups[False]


def _official(names, layer_prefix):
    return {re.sub(rf"^{layer_prefix}\.\d+\.", f"{layer_prefix}.*.", n) for n in names}


@pytest.mark.parametrize("variant", ["var_d2", "var_d2_saln"])
def test_var_no_decay_groups_are_the_official_lists(variant):
    fx = _load("var_param_groups.json")["variants"][variant]
    params = _var_params(_tiny_var(fx["config"]))
    decay, no_decay = _groups(params, VAR_NAMES, "var", "blocks")
    assert decay == _official(fx["decay"], "blocks")
    assert no_decay == _official(fx["no_decay"], "blocks")


def test_bigr_no_decay_groups_are_the_official_lists():
    fx = _load("bigr_param_groups.json")["variants"]["bigr_tiny_adaln"]
    c = fx["config"]
    model = BiGR(binary_size=c["binary_size"], num_classes=c["num_classes"], dim=c["dim"],
                 n_layer=c["n_layer"], n_head=c["n_head"], seq_len=c["seq_len"],
                 denoise_hidden=c["denoise_hidden_dim"], num_block_mlp=c["num_block_mlp"])
    n, k = model.seq_len, model.binary_size
    params = _bigr_params(model)
    decay, no_decay = _groups(params, BIGR_NAMES, "bigr", "layers")
    assert decay == _official(fx["decay"], "layers")
    assert no_decay == _official(fx["no_decay"], "layers")


def test_var_lr_and_weight_decay_schedules_equal_the_official_formulas():
    fx = _load("var_schedules.json")
    for name, s in fx["settings"].items():
        for it, ratio, wd in zip(fx["its"], s["lr_ratio"], s["wd_group0"]):
            kw = dict(schedule=s["sche"], max_it=fx["max_it"], wp_it=fx["wp_it"], wp0=fx["wp0"],
                      wpe=s["wpe"])
            # Python floats: the official float64 arithmetic, to the last digits.
            assert optim.var_lr_ratio(it, **kw) == pytest.approx(ratio, rel=1e-12, abs=1e-15), (name, it)
            got_wd = optim.var_weight_decay(it, max_it=fx["max_it"], wd=s["twd"], wd_end=s["twde"])
            assert got_wd == pytest.approx(wd, rel=1e-12), (name, it)
            # Traced, as inside the train step: float32 (cancellation in 1 − pasd near the end).
            traced = jax.jit(lambda i: optim.var_lr_ratio(i, **kw))(jnp.int32(it))
            np.testing.assert_allclose(float(traced), ratio, rtol=1e-5, atol=1e-8)


def test_progressive_stages_and_ramps_equal_the_official_trainer():
    p = _load("var_schedules.json")["prog"]
    kw = dict(pg=p["pg"], pg0=p["pg0"], num_scales=p["K"], max_it=p["max_it"], wp_it=p["wp_it"])
    stages = [optim.progressive_stage(it, **kw) for it in p["g_it"]]
    assert stages == p["prog_si"]
    for run in p["runs"].values():
        wps = [optim.progressive_weight(it, stage_warmup_it=run["prog_wp_it"], **kw) for it in p["g_it"]]
        np.testing.assert_allclose(wps, run["prog_wp"], rtol=1e-12)
        assert len(set(stages)) > 3 and min(run["prog_wp"]) < 1  # the fixture exercises ramps


def test_var_cross_entropy_and_metrics_equal_the_official_trainer():
    fx = np.load(os.path.join(TRAIN, "var_loss_metrics.npz"))
    pns = tuple(int(p) for p in fx["patch_nums"])
    logits, targets = jnp.asarray(fx["logits"]), jnp.asarray(fx["targets"])
    full = len(pns) - 1
    loss, m = losses.var_loss_from_logits(logits, targets, pns, stage=full, prog_wp=1.0)
    for key in ("loss", "Lm", "Accm", "Lt", "Acct"):
        np.testing.assert_allclose(float(m[key]), float(fx[key]), rtol=2e-6, err_msg=key)
    grad = jax.grad(lambda lg: losses.var_loss_from_logits(lg, targets, pns, stage=full,
                                                           prog_wp=1.0)[0])(logits)
    np.testing.assert_allclose(grad, fx["grad_logits"], rtol=1e-5, atol=1e-9)

    stage, end = int(fx["prog_si"]), sum(p * p for p in pns[:int(fx["prog_si"]) + 1])
    loss, m = losses.var_loss_from_logits(logits[:, :end], targets[:, :end], pns, stage=stage,
                                          prog_wp=float(fx["prog_wp"]))
    np.testing.assert_allclose(float(loss), float(fx["prog_loss"]), rtol=2e-6)
    np.testing.assert_allclose(float(m["Lm"]), float(fx["prog_Lm"]), rtol=2e-6)
    np.testing.assert_allclose(float(m["Accm"]), float(fx["prog_Accm"]), rtol=2e-6)
    assert "Lt" not in m  # the official trainer logs −1 during progressive training


def test_var_label_smoothing_is_torch_cross_entropy_with_smoothing():
    rng = np.random.RandomState(0)
    logits = rng.randn(2, 5, 7).astype(np.float32)
    targets = rng.randint(0, 7, (2, 5))
    loss, _ = losses.var_loss_from_logits(jnp.asarray(logits), jnp.asarray(targets), (1, 2),
                                          stage=1, prog_wp=1.0, label_smoothing=0.1)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    ce = 0.9 * nll + 0.1 * (-logp.mean(-1))  # torch: (1 − ε)·NLL + ε·mean over classes
    np.testing.assert_allclose(float(loss), (ce / 5).sum(-1).mean(), rtol=1e-6)


def test_bigr_weighted_bce_and_masked_mean_equal_the_official_loss():
    fx = np.load(os.path.join(TRAIN, "bigr_loss.npz"))
    b, n, k = fx["x0"].shape
    x0 = fx["x0"].reshape(b * n, k).astype(np.float32)
    x_t, logits = fx["x_t"].astype(np.float32), fx["logits"].astype(np.float32)
    ones = jnp.ones((b * n,), bool)
    np.testing.assert_allclose(float(losses.bigr_flip_loss(logits, x0, x_t, ones)),
                               float(fx["loss"]), rtol=1e-6)
    mask = fx["mask"].astype(bool)
    manual = (fx["loss_all"].reshape(b, n, k) * mask[..., None]).sum() / (k * mask.sum())
    got = losses.bigr_flip_loss(logits.reshape(b, n, k), x0.reshape(b, n, k),
                                x_t.reshape(b, n, k), jnp.asarray(mask))
    np.testing.assert_allclose(float(got), manual, rtol=1e-6)
    # Accuracy of the implied x0 prediction (logging only).
    x0_logit = np.where(x_t > 0.5, -logits, logits)
    np.testing.assert_allclose(((x0_logit > 0) == (x0 > 0.5)).mean(), float(fx["acc"]), rtol=1e-6)


@pytest.mark.parametrize("n", [256, 1024])
def test_bigr_mask_counts_equal_the_official_rule(n):
    fx = np.load(os.path.join(TRAIN, "bigr_loss.npz"))
    got = np.asarray(losses.bigr_mask_count(jnp.arange(n), n))
    np.testing.assert_array_equal(got, fx[f"mask_count_N{n}"])


def test_bigr_random_mask_has_the_drawn_count_in_every_row():
    mask = np.asarray(losses.bigr_random_mask(jax.random.PRNGKey(3), 5, 64))
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and 1 <= counts[0] <= 64
    assert len({tuple(r) for r in mask}) == 5  # different positions per sample


def test_bigr_noise_marginal_is_linear():
    x0 = jnp.ones((20000, 1, 4))
    t, x_t = losses.bigr_noise(jax.random.PRNGKey(0), x0, diffusion_steps=4)
    t, x_t = np.asarray(t)[:, 0], np.asarray(x_t)[:, 0]
    for step in range(1, 5):  # P(x_t = 1 | x0 = 1) = 1 − t/T + t/2T
        np.testing.assert_allclose(x_t[t == step].mean(), 1 - step / 8, atol=0.02)


def test_var_official_init_follows_the_spec():
    cfg = _load("var_param_groups.json")["variants"]["var_d2"]["config"]
    model = _tiny_var(cfg)
    c, depth = model.embed_dim, model.depth
    params = jax.jit(functools.partial(var_official_init, depth=depth, embed_dim=c, init_adaln=0.5,
                                       init_adaln_gamma=1e-5, init_head=0.02))(
        _var_params(model), jax.random.PRNGKey(1))
    p = params["params"]
    std = math.sqrt(1 / (3 * c))
    np.testing.assert_allclose(np.std(p["blocks"]["ffn"]["fc1"]["kernel"]), std, rtol=0.05)
    np.testing.assert_allclose(np.std(p["blocks"]["attn"]["proj"]["kernel"]),
                               std / math.sqrt(2 * depth), rtol=0.05)
    np.testing.assert_allclose(np.std(p["head"]["kernel"]), std * 0.02, rtol=0.05)
    ada = np.asarray(p["blocks"]["ada_lin"]["kernel"])  # (depth, C, 6C): columns γ1 γ2 s1 s2 b1 b2
    np.testing.assert_allclose(np.std(ada[..., :2 * c]), std * 1e-5, rtol=0.05)
    np.testing.assert_allclose(np.std(ada[..., 2 * c:]), std * 0.5, rtol=0.05)
    np.testing.assert_allclose(p["blocks"]["attn"]["scale_mul_1H11"], math.log(4.0))
    for leaf_path, leaf in flatten_dict(p).items():
        if leaf_path[-1].endswith("bias"):
            assert not np.any(np.asarray(leaf)), leaf_path

    shared = _tiny_var(dict(cfg, shared_aln=True))
    sp = jax.jit(functools.partial(var_official_init, depth=depth, embed_dim=c, init_adaln=0.5,
                                   init_adaln_gamma=1e-5))(_var_params(shared), jax.random.PRNGKey(1))["params"]
    gss = np.asarray(sp["blocks"]["ada_gss"])  # (depth, 1, 1, 6, C)
    np.testing.assert_allclose(np.std(gss[..., :2, :]), 1e-5 / math.sqrt(c), rtol=0.1)
    np.testing.assert_allclose(np.std(gss[..., 2:, :]), 0.5 / math.sqrt(c), rtol=0.1)


def test_bigr_official_init_zeroes_the_adaln_and_transcoder_output():
    model = BiGR(binary_size=8, num_classes=10, dim=64, n_layer=2, n_head=2, seq_len=16,
                 denoise_hidden=64, num_block_mlp=2)
    n, k = 16, 8
    params = _bigr_params(model)
    p = jax.jit(bigr_official_init)(params, jax.random.PRNGKey(0))["params"]
    d = p["denoise_mlp"]
    zero = [p["adaLN"]["kernel"], d["final_layer"]["linear"]["kernel"],
            d["final_layer"]["adaLN_modulation"]["kernel"], d["blocks_0"]["adaLN_modulation"]["kernel"],
            d["blocks_1"]["adaLN_modulation"]["kernel"]]
    assert all(not np.any(np.asarray(z)) for z in zero)
    np.testing.assert_allclose(np.std(p["layers"]["attention"]["wqkv"]["kernel"]), 0.02, rtol=0.05)
    np.testing.assert_allclose(np.std(p["mask_tok"]), 1.0, rtol=0.3)
    # Zero transcoder output: every flip logit is 0 at the start.
    _, logits = model.apply({"params": p}, jnp.ones((2, n, k)), jnp.zeros((2, n), bool),
                            jnp.zeros((2,), jnp.int32), jnp.ones((2, n, k)), jnp.zeros((2, n), jnp.int32))
    assert not np.any(np.asarray(logits))


def test_var_drop_path_only_in_training_and_identity_at_rate_zero():
    cfg = _load("var_param_groups.json")["variants"]["var_d2"]["config"]
    model = _tiny_var(cfg, cond_drop_rate=0.0, drop_path_rate=0.0)
    params = _var_params(model)
    labels = jnp.asarray([1, 2, 3, 4])
    x_in = jax.random.normal(jax.random.PRNGKey(2), (4, model.seq_len - 1, model.cvae))
    rngs = {"dropout": jax.random.PRNGKey(5)}
    eval_logits = model.apply(params, labels, x_in)
    np.testing.assert_allclose(model.apply(params, labels, x_in, train=True, rngs=rngs), eval_logits,
                               rtol=1e-6, atol=1e-6)
    dropping = model.clone(drop_path_rate=0.9)
    np.testing.assert_allclose(dropping.apply(params, labels, x_in), eval_logits, rtol=1e-6, atol=1e-6)
    trained = np.asarray(dropping.apply(params, labels, x_in, train=True, rngs=rngs))
    assert not np.allclose(trained, eval_logits, atol=1e-4)


def test_adamw_matches_torch_adamw_update_rule():
    """One step by hand: p ← p − lr·(m̂/(√v̂ + ε) + wd·p) for decayed leaves, no wd elsewhere,
    after clipping the global norm."""
    params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 0.0]]), "b": jnp.asarray([0.3, -0.1])}
    grads = {"w": jnp.asarray([[3.0, 0.0], [-4.0, 1.0]]), "b": jnp.asarray([0.0, 2.0])}
    tx = optim.adamw(learning_rate=0.1, weight_decay=0.05, mask={"w": True, "b": False},
                     b1=0.9, b2=0.95, clip=2.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    norm = math.sqrt(9 + 16 + 1 + 4)
    for k in params:
        g = np.asarray(grads[k]) * 2.0 / norm
        m_hat, v_hat = g, g * g  # first step: bias-corrected moments equal g and g²
        step = m_hat / (np.sqrt(v_hat) + 1e-8) + (0.05 * np.asarray(params[k]) if k == "w" else 0)
        np.testing.assert_allclose(updates[k], -0.1 * step, rtol=1e-6, atol=1e-7)
