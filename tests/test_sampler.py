"""VAR sampler: the cached loop equals the teacher-forced forward, filtering and editing masks
equal the official ones, and sampling is reproducible per sample (batch size, sharding)."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvar import config_lib, models, parallel
from bigvar.models.var import PATCH_NUMS_256, PATCH_NUMS_512, config_section as var_section
from bigvar.tokenizers.msvq import config_section as vae_section
from bigvar.convert import var as convert_var
from bigvar.errors import UserError
from bigvar.sampling.edit import box_mask, scale_keep_masks
from bigvar.sampling.var import EditGuide, SamplingSettings, VARSampler, filter_top_k_top_p, sample

from conftest import FIXTURES, perturbed

VAR_FIXTURES = os.path.join(FIXTURES, "var")


# The 512-px shared-AdaLN model's sampler tests are end-to-end tier (its teacher-forced logits
# stay in the fast tier: tests/test_var_parity.py).
@pytest.fixture(scope="module", params=["d2_256", pytest.param("d3_512_saln", marks=pytest.mark.slow)])
def converted(request):
    config, params = convert_var.convert(os.path.join(VAR_FIXTURES, "vqvae_tiny.pth"),
                                         os.path.join(VAR_FIXTURES, f"var_{request.param}.pth"))
    fx = np.load(os.path.join(VAR_FIXTURES, f"var_{request.param}.npz"))
    return config, params, fx


def test_cached_sampler_logits_equal_teacher_forced(converted):
    """Feeding the ground-truth tokens through the KV-cached loop (an all-keep edit guide) gives
    the official teacher-forced logits, scale by scale."""
    config, params, fx = converted
    var, vae = models.build(config)
    labels, gt = jnp.asarray(fx["labels"]), jnp.asarray(fx["gt_idx"])
    gt_list = [gt[:, a:b] for a, b in vae.spec.begin_ends]
    guide = EditGuide(gt_list, [jnp.ones(g.shape, bool) for g in gt_list])
    out = jax.jit(lambda vp, qp: sample(var, vae, SamplingSettings(cfg=1.5, top_k=5, top_p=0.9), vp, qp,
                                        labels, jnp.uint32(0), jnp.arange(len(labels)), guide,
                                        return_logits=True))(params["var"], params["vae"])
    np.testing.assert_array_equal(np.asarray(out.tokens), fx["gt_idx"])
    ref = fx["logits"]
    rel = np.linalg.norm(np.asarray(out.logits) - ref) / np.linalg.norm(ref)
    assert rel < 1e-5, rel
    np.testing.assert_allclose(out.logits, ref, atol=1e-4 * np.abs(ref).max())


def test_bfloat16_sampling_stays_close_to_the_official_float32_logits(converted):
    """bf16 weights, KV cache and matmuls (logits and sampling in float32): the teacher-forced
    logits of the cached loop stay within 1 % (relative norm) of the official fp32 ones, and the
    most likely token agrees at ≥ 98 % of the positions."""
    config, params, fx = converted
    config = config.copy_and_resolve_references()  # (the fixture is shared)
    config.var.dtype = "bfloat16"
    var, vae = models.build(config)
    sampler = VARSampler(var, vae, params["var"], params["vae"], SamplingSettings(cfg=1.5, top_k=5, top_p=0.9))
    assert {x.dtype for x in jax.tree_util.tree_leaves(sampler.gen_params)} == {jnp.dtype(jnp.bfloat16)}
    gt = np.asarray(fx["gt_idx"])
    guide = [gt[:, a:b] for a, b in vae.spec.begin_ends]
    out = sampler._run(sampler.check_labels(fx["labels"]), 0, 0,
                       EditGuide(guide, [np.ones(g.shape, bool) for g in guide]), True)
    np.testing.assert_array_equal(out.tokens, gt)
    ref, got = fx["logits"], np.asarray(out.logits)
    assert got.dtype == np.float32
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 1e-2, rel
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.98
    assert sampler.generate([1, 2], seed=0).images.dtype == np.uint8


@pytest.mark.parametrize("k, p", [(0, 0.96), (10, 0.0), (10, 0.5), (50, 0.9), (1, 0.0), (256, 0.95), (0, 1.0)])
def test_top_k_top_p_equal_official(k, p):
    fx = np.load(os.path.join(VAR_FIXTURES, "top_k_top_p.npz"))
    kept = np.isfinite(np.asarray(filter_top_k_top_p(jnp.asarray(fx["logits"]), k, p)))
    np.testing.assert_array_equal(kept, fx[f"kept_k{k}_p{p}"])


def test_edit_scale_masks_equal_official():
    fx = np.load(os.path.join(VAR_FIXTURES, "edit_masks.npz"))
    for grid, pns in ((16, PATCH_NUMS_256), (32, PATCH_NUMS_512)):
        for j in range(4):  # j = 3 is the notebook's default box (exact 0.5 ties at 32 → 24)
            masks = scale_keep_masks(fx[f"mask_{grid}_{j}"], pns, batch=2)
            for pn, m in zip(pns, masks):
                want = fx[f"scale_mask_{grid}_{j}_{pn}"].reshape(-1).astype(bool)
                np.testing.assert_array_equal(m[0], want, err_msg=f"grid {grid} mask {j} scale {pn}")
                np.testing.assert_array_equal(m[1], want)


def test_box_mask_follows_official_rounding():
    m = box_mask(16, (0.1, 0.1, 0.8, 0.8), inpainting=True)
    assert m[2:13, 2:13].sum() == 0 and m.sum() == 256 - 11 * 11  # round(1.6)=2, round(12.8)=13
    np.testing.assert_array_equal(box_mask(16, (0.1, 0.1, 0.8, 0.8), inpainting=False), 1 - m)


@pytest.fixture(scope="module")
def tiny():
    config = config_lib.load_config_file("var.py", "d16")
    config.var = var_section(2, embed_dim=64, num_heads=2, num_classes=10,
                                          patch_nums=(1, 2, 3, 4))
    config.vae = vae_section(ch=32, vocab_size=64)
    config.vae.ch_mult = (1, 2)  # 2× downsampling: 8-px images, fast
    from bigvar.models import init_params
    var, vae = models.build(config)
    var_params, vae_params = init_params(var, vae, 0)
    # Non-trivial weights: the random init makes every block almost the identity.
    var_params = perturbed(var_params, 0.2)
    return var, vae, var_params, vae_params


def test_same_image_whatever_the_batch_and_devices(tiny):
    var, vae, var_params, vae_params = tiny
    settings = SamplingSettings(cfg=2.0, top_k=20, top_p=0.9)
    labels = np.array([0, 3, 5, 7, 1, 2, 9, 4])
    one = VARSampler(var, vae, var_params, vae_params, settings, parallel.make_mesh({"data": 1}, jax.devices()[:1]))
    eight = VARSampler(var, vae, var_params, vae_params, settings, parallel.make_mesh({"data": -1}))
    assert len(eight.mesh.devices.flat) == 8
    full = one.generate(labels, seed=7)
    sharded = eight.generate(labels, seed=7)
    np.testing.assert_array_equal(full.tokens, sharded.tokens)
    np.testing.assert_array_equal(full.images, sharded.images)
    # Sample 5 alone (global index 5) is the same image as in the batch of 8.
    alone = one.generate(labels[5:6], seed=7, first_index=5)
    np.testing.assert_array_equal(alone.tokens[0], full.tokens[5])
    np.testing.assert_array_equal(alone.images[0], full.images[5])
    # Different seeds give different samples.
    assert not np.array_equal(one.generate(labels, seed=8).tokens, full.tokens)


def test_more_smooth_and_no_cfg_run(tiny):
    var, vae, var_params, vae_params = tiny
    out = VARSampler(var, vae, var_params, vae_params,
                     SamplingSettings(cfg=0.0, top_k=0, top_p=0.0, more_smooth=True)).generate([1, 2])
    assert out.images.shape == (2, 8, 8, 3) and out.images.dtype == np.uint8
    assert out.tokens.shape == (2, 1 + 4 + 9 + 16)


def test_scale_progression_ends_at_the_sample_and_each_step_sees_only_coarser_scales(tiny):
    var, vae, var_params, vae_params = tiny
    sampler = VARSampler(var, vae, var_params, vae_params, SamplingSettings(cfg=1.0, top_k=10))
    out = sampler.generate([1, 2, 3], seed=0)
    steps = sampler.progression(out.tokens)
    assert steps.shape == (3, 4, 8, 8, 3) and steps.dtype == np.uint8
    assert np.abs(steps[:, -1].astype(int) - out.images).max() <= 1  # (another XLA program)
    # Changing the finest scale's tokens changes only the last image.
    changed = out.tokens.copy()
    changed[:, 14:] = (changed[:, 14:] + 1) % 64
    other = sampler.progression(changed)
    np.testing.assert_array_equal(other[:, :3], steps[:, :3])
    assert not np.array_equal(other[:, 3], steps[:, 3])


def test_inpaint_keeps_the_tokens_outside_the_box(tiny):
    var, vae, var_params, vae_params = tiny
    sampler = VARSampler(var, vae, var_params, vae_params, SamplingSettings(cfg=1.0, top_k=10, top_p=0.9))
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    gt = np.concatenate([np.asarray(g) for g in vae.apply(
        vae_params, jnp.asarray(images / 127.5 - 1, jnp.float32), method=type(vae).img_to_idx)], axis=1)
    out = sampler.inpaint(images, box=(0.25, 0.25, 0.75, 0.75))
    keep = np.concatenate(scale_keep_masks(box_mask(4, (0.25, 0.25, 0.75, 0.75), True), (1, 2, 3, 4), 2), axis=1)
    np.testing.assert_array_equal(out.tokens[keep], gt[keep])
    assert out.images.shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="keep_mask must be"):
        sampler.edit(images, np.ones((5, 5)))


def test_bad_inputs_are_clear_errors(tiny):
    var, vae, var_params, vae_params = tiny
    sampler = VARSampler(var, vae, var_params, vae_params, SamplingSettings(top_k=5))
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\) or 10"):
        sampler.generate([3, 11])
    with pytest.raises(ValueError, match="class ids"):
        sampler.generate([-1])
    sampler.generate([10])  # the null class is allowed (unconditional)
    for bad_p in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"config\.sample\.top_p = .* is invalid: expected a value in \(0, 1\]"):
            SamplingSettings(top_p=bad_p)
    with pytest.raises(ValueError, match="takes .* images"):
        sampler.inpaint(np.zeros((1, 16, 16, 3), np.uint8), box=(0, 0, 0.5, 0.5))
    with pytest.raises(ValueError, match="box must be"):
        sampler.inpaint(np.zeros((1, 8, 8, 3), np.uint8), box=(0.5, 0, 0.2, 1))


def test_settings_come_from_the_config_and_name_a_bad_field():
    sample = config_lib.load_config_file("var.py", "d16").sample
    assert SamplingSettings.from_config(sample) == SamplingSettings(
        cfg=sample.cfg, top_k=sample.top_k, top_p=sample.top_p, more_smooth=sample.more_smooth)
    for field, bad, expected in (("cfg", -1.0, "≥ 0 (0 disables guidance)"),
                                 ("top_k", -1, "≥ 0 (0 disables top-k)"),
                                 ("top_p", 1.5, "a value in (0, 1], or 0 to disable top-p")):
        wrong = sample.copy_and_resolve_references()
        wrong[field] = bad
        with pytest.raises(UserError, match=re.escape(f"config.sample.{field} = {bad!r} is invalid: "
                                                      f"expected {expected}.")):
            SamplingSettings.from_config(wrong)


def test_inverse_cdf_sampling_has_the_right_distribution():
    from bigvar.sampling.var import sample_from_logits
    probs = np.array([0.1, 0.2, 0.0, 0.05, 0.65])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (100_000, 5))
    idx = np.asarray(sample_from_logits(jax.random.PRNGKey(0), logits))
    freq = np.bincount(idx, minlength=5) / len(idx)
    assert freq[2] == 0  # excluded (−inf) entries are never drawn
    np.testing.assert_allclose(freq, probs, atol=0.006)  # ~4σ at n = 1e5
    # Only the last entry allowed: always chosen, even at the u → 1 rounding edge.
    only_last = jnp.array([[-jnp.inf, -jnp.inf, 0.0]] * 1000)
    assert (np.asarray(sample_from_logits(jax.random.PRNGKey(1), only_last)) == 2).all()
