"""BiGR parity with the official implementation (golden fixtures from
tests/fixtures/make_bigr_fixtures.py: haoosz/BiGR with small random weights), the sampler's
invariants, the zero-shot apps and the converter's errors."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvar import config_lib, models, parallel
from bigvar.convert import __main__ as convert_cli
from bigvar.convert import bigr as convert_bigr
from bigvar.convert import torch_pickle
from bigvar.convert.common import ConversionError
from bigvar.errors import UserError
from bigvar.models import bigr_schedules
from bigvar.models.bigr import BiGR, features
from bigvar.sampling import bigr as sb
from bigvar.tokenizers.bae import BinaryAutoEncoder

from conftest import FIXTURES, perturbed

BIGR_FIXTURES = os.path.join(FIXTURES, "bigr")
VARIANTS = {"k24": ("bae_tiny_256_k24", "bigr_tiny_k24"), "k32_512": ("bae_tiny_512_k32", "bigr_tiny_k32_512")}


def path(name):
    return os.path.join(BIGR_FIXTURES, name)


def nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def assert_close(actual, expected, rel, max_rel=None):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    worst = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err < rel and worst < (max_rel or rel), f"norm-relative {err:.3g}, max-relative {worst:.3g}"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def converted(request):
    bae_name, gpt_name = VARIANTS[request.param]
    config, params = convert_bigr.convert(path(f"{bae_name}.th"), path(f"{gpt_name}.pt"))
    return (request.param, config, params, np.load(path(f"{bae_name}.npz")),
            np.load(path(f"{gpt_name}.npz")), np.load(path(f"{gpt_name}_trace.npz")))


def test_detected_architecture(converted):
    name, config, *_ = converted
    g, b = config.bigr, config.bae
    if name == "k24":
        assert (g.binary_size, g.seq_len, g.n_layer, g.num_block_mlp, g.denoise_hidden, g.num_classes) == (24, 256, 2, 2, 128, 1000)
        assert (b.img_size, b.codebook_size) == (256, 24)
    else:
        assert (g.binary_size, g.seq_len, g.n_layer, g.num_block_mlp, g.denoise_hidden, g.num_classes) == (32, 1024, 3, 3, 160, 10)
        assert (b.img_size, b.codebook_size) == (512, 32)
    assert (b.nf, b.emb_dim, tuple(b.ch_mult), b.res_blocks, b.norm_first) == (32, 32, (1, 1, 2, 2, 4), 2, True)


def test_binary_autoencoder(converted):
    _, config, params, fx, _, _ = converted
    bae = models.build_tokenizer(config)
    probs = bae.apply(params["bae"], jnp.asarray(nhwc(fx["img"])), method=BinaryAutoEncoder.encode_probs)
    assert_close(probs, nhwc(fx["probs"]), 1e-5)
    decided = np.abs(nhwc(fx["logits"])) > 1e-4  # a few logits sit within fp32 noise of 0
    np.testing.assert_array_equal(np.asarray(probs > 0.5)[decided], (nhwc(fx["bits_det"]) > 0.5)[decided])
    z_q = bae.apply(params["bae"], jnp.asarray(nhwc(fx["bits_det"])), method=BinaryAutoEncoder.bits_to_latent)
    assert_close(z_q, nhwc(fx["z_q_det"]), 1e-6)
    for bits, image in (("bits_det", "decoded_det"), ("bits_rand", "decoded_rand")):
        if bits not in fx:  # the 512 fixture holds only the deterministic bits (size)
            continue
        decoded = bae.apply(params["bae"], jnp.asarray(nhwc(fx[bits])), method=BinaryAutoEncoder.decode)
        assert_close(decoded, nhwc(fx[image]), 1e-5)


def test_transformer_condition_features_and_flip_logits(converted):
    _, config, params, _, fx, _ = converted
    model = models.build(config)[0]
    p = params["bigr"]
    tokens, mask, labels = jnp.asarray(fx["tokens"]), jnp.asarray(fx["mask"]), jnp.asarray(fx["labels"])
    assert_close(model.apply(p, tokens, mask, labels, method=BiGR.condition), fx["z"], 1e-5, 1e-4)
    z = jnp.asarray(fx["z"]).reshape(-1, model.dim)
    flips = model.apply(p, jnp.asarray(fx["flip_x"]), jnp.asarray(fx["flip_t"]), z, method=BiGR.flip_logits)
    assert_close(flips, fx["flip_logits"], 1e-5, 1e-4)
    null = jnp.full(labels.shape, model.num_classes)
    assert_close(features(model, p, tokens, null, 0), fx["features_l0"], 1e-5, 1e-4)
    assert_close(features(model, p, tokens, null, model.n_layer - 1), fx["features_last"], 1e-5, 1e-4)
    with pytest.raises(ValueError, match="layer_index must be in"):
        features(model, p, tokens, null, model.n_layer)


def test_bfloat16_transformer_stays_close_to_the_official_float32(converted):
    """`bigr.dtype=bfloat16` (matmuls in bf16, residual stream, norms and the transcoder's
    output in float32): the condition features stay within 1 % (relative norm) of the official
    fp32 ones."""
    _, config, params, _, fx, _ = converted
    config = config.copy_and_resolve_references()  # (the fixture is shared)
    config.bigr.dtype = "bfloat16"
    model = models.build(config)[0]
    z = model.apply(params["bigr"], jnp.asarray(fx["tokens"]), jnp.asarray(fx["mask"]),
                    jnp.asarray(fx["labels"]), method=BiGR.condition)
    assert z.dtype == jnp.float32
    assert_close(z, fx["z"], 1e-2, 5e-2)
    assert not np.allclose(np.asarray(z).reshape(-1), fx["z"].reshape(-1), rtol=1e-4, atol=0)  # (bf16 ran)


@pytest.mark.parametrize("prefix, steps", [("trace", 5), ("trace100", 100)])
def test_transcoder_sampling_replays_the_official_trace(converted, prefix, steps):
    """Given the official Bernoulli draws, every posterior the transcoder computes equals the
    official one, and so does the returned p0 (CFG 2.5 in logit space, temperature 1)."""
    _, config, params, _, _, tr = converted
    model = models.build(config)[0]
    cond = jnp.asarray(tr[f"{prefix}_cond"])
    m = cond.shape[0] // 2
    plan = bigr_schedules.transcoder_plan(256, steps)
    np.testing.assert_array_equal(plan.t_index + 1, tr[f"{prefix}_steps"])
    x = jnp.asarray(tr[f"{prefix}_bits_0"])
    for j in range(steps):
        t = jnp.full((m,), plan.t_index[j])
        lc = model.apply(params["bigr"], x, t, cond[:m], method=BiGR.flip_logits)
        lu = model.apply(params["bigr"], x, t, cond[m:], method=BiGR.flip_logits)
        assert_close(lc, tr[f"{prefix}_logits_c_{j}"], 1e-5, 1e-4)
        assert_close(lu, tr[f"{prefix}_logits_u_{j}"], 1e-5, 1e-4)
        q = jax.nn.sigmoid(lu + 2.5 * (lc - lu))
        p0 = x * (1 - q) + (1 - x) * q
        if j == steps - 1:
            np.testing.assert_allclose(p0, tr[f"{prefix}_return"], atol=1e-5)
        else:
            pi = sb.posterior_step(p0, x, plan.k_next[j], plan.b_next[j], plan.beta_prod[j])
            np.testing.assert_allclose(pi, tr[f"{prefix}_prob_{j + 1}"], atol=1e-5)
            x = jnp.asarray(tr[f"{prefix}_bits_{j + 1}"])


def test_schedules_equal_the_official_ones():
    fx = np.load(path("schedule.npz"))
    spec_tables = {  # the official `generate_with_cfg` (BiGR's llama/gpt.py)
        (256, 20): [1, 3, 4, 5, 7, 8, 10, 11, 13, 13, 15, 16, 17, 17, 19, 18, 20, 19, 20, 20],
        (256, 25): [1, 2, 2, 4, 4, 5, 7, 7, 8, 9, 10, 11, 11, 12, 13, 13, 14, 15, 14, 15, 16, 16, 15, 16, 16],
        (1024, 20): [4, 9, 16, 22, 27, 34, 39, 45, 50, 54, 59, 64, 66, 71, 73, 75, 77, 79, 80, 80],
    }
    for (n, i), table in spec_tables.items():
        counts = bigr_schedules.reveal_counts(n, i)
        assert counts.tolist() == table == fx[f"reveal_N{n}_I{i}"].tolist()
        assert counts.sum() == n
    for m, i in ((64, 20), (192, 25)):
        counts = bigr_schedules.reveal_counts(m, i, "linear")
        np.testing.assert_array_equal(counts, fx[f"inpaint_linear_M{m}_I{i}"])
        assert counts.sum() == m
    sched = bigr_schedules.diffusion_schedule(256)
    for name in ("k_final", "b_final", "beta", "cumbeta"):
        np.testing.assert_allclose(sched[name], fx[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.fixture(scope="module")
def tiny():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bigr_tiny", os.path.join(os.path.dirname(FIXTURES), "..", "configs", "bigr_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.bae.update(img_size=64, ch_mult=(1, 2, 2))  # 16×16 tokens from 64-px images: fast
    config.bae.attn_resolutions = (16,)
    from bigvar.models import init_params
    model, bae = models.build(config)
    params, bae_params = init_params(model, bae, 0)
    # Random weights away from the zero-ish init so that probabilities are informative.
    params = perturbed(params, 0.1)
    return model, bae, params, bae_params


def sampler_for(tiny, mesh=None, **settings):
    model, bae, params, bae_params = tiny
    base = dict(num_iter=6, transcoder_steps=4, cfg=2.5, gumbel=0.5)
    base.update(settings)
    return sb.BiGRSampler(model, bae, params, bae_params, sb.BiGRSamplingSettings(**base), mesh)


def test_every_token_is_sampled_exactly_once_and_sharding_changes_nothing(tiny):
    labels = np.array([0, 3, 5, 7, 1, 2, 9, 10])
    one = sampler_for(tiny, parallel.make_mesh({"data": 1}, jax.devices()[:1]))
    eight = sampler_for(tiny, parallel.make_mesh({"data": -1}))
    full = one.generate(labels, seed=3)
    assert (full.times_sampled == 1).all()
    assert set(np.unique(full.tokens)) <= {0.0, 1.0}
    assert full.images.shape == (8, 64, 64, 3) and full.images.dtype == np.uint8
    sharded = eight.generate(labels, seed=3)
    np.testing.assert_array_equal(full.tokens, sharded.tokens)
    # Pixels: within 1/255. XLA:CPU's convolutions pick their blocking by the per-device batch
    # (8 images vs 1), so the B-AE decoder's float rounding may differ (seen: 2 of 98,304 values).
    assert np.abs(full.images.astype(int) - sharded.images.astype(int)).max() <= 1
    alone = one.generate(labels[6:7], seed=3, first_index=6)
    np.testing.assert_array_equal(alone.tokens[0], full.tokens[6])
    assert not np.array_equal(one.generate(labels, seed=4).tokens, full.tokens)


@pytest.mark.slow
def test_transcoding_only_hidden_tokens_changes_nothing(tiny):
    model, bae, params, _ = tiny
    settings = sb.BiGRSamplingSettings(num_iter=6, transcoder_steps=3, cfg=2.0, gumbel=0.3)
    labels = jnp.asarray([1, 4])
    cond = model.apply(params, labels, method=BiGR.class_embedding)
    null = model.apply(params, jnp.asarray([10]), method=BiGR.class_embedding)[0]
    counts = np.tile(bigr_schedules.reveal_counts(256, 6), (2, 1))
    segments = sb.hidden_token_segments(counts, 256, None)
    # hidden before each step: 256, 247, 221, 181, 128, 66 → segments start at steps 0, 2, 3, 4
    assert segments == ((2, 256), (1, 224), (1, 184), (2, 128))
    run = lambda seg: sb.sample_tokens(model, settings, params, cond, null, jnp.uint32(5),  # noqa: E731
                                       jnp.arange(2), jnp.asarray(counts), segments=seg)
    full, segmented = run(None), run(segments)
    np.testing.assert_array_equal(full[0], segmented[0])
    np.testing.assert_array_equal(full[1], segmented[1])


@pytest.mark.slow
def test_guidance_at_most_one_is_handled(tiny):
    for cfg in (1.0, 0.5, 0.0):
        out = sampler_for(tiny, cfg=cfg, cfg_schedule="linear" if cfg == 0.5 else "constant").generate([1, 2])
        assert out.tokens.shape == (2, 256, 24) and (out.times_sampled == 1).all()
    assert not sb.BiGRSamplingSettings(cfg=1.0).uses_null_branch
    assert sb.BiGRSamplingSettings(cfg=0.5).uses_null_branch


def test_inpainting_keeps_known_tokens_and_flags_the_official_budget(tiny):
    sampler = sampler_for(tiny, gumbel=0.0)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    known_tokens = sampler.encode(images, seed=0)
    out = sampler.inpaint(images, box=(0.25, 0.25, 0.75, 0.75))
    from bigvar.sampling.edit import box_mask
    known = box_mask(16, (0.25, 0.25, 0.75, 0.75), inpainting=True).reshape(-1) > 0
    np.testing.assert_array_equal(out.tokens[:, known], known_tokens[:, known])
    assert (out.times_sampled[:, known] == 0).all() and (out.times_sampled[:, ~known] == 1).all()
    # Official budget: 192 known > 64 unknown tokens per step budget → some known are re-sampled.
    official = sampler.inpaint(images, box=(0.25, 0.25, 0.75, 0.75), official_budget=True)
    assert (official.times_sampled[:, ~known] >= 1).all()
    assert official.times_sampled[:, known].sum() > 0
    # Out-painting keeps the box; class-conditional editing takes a label.
    out = sampler.outpaint(images, box=(0.25, 0.25, 0.75, 0.75), labels=[3, 4])
    np.testing.assert_array_equal(out.tokens[:, ~known], known_tokens[:, ~known])
    with pytest.raises(ValueError, match="keep_mask must be"):
        sampler.edit(images, np.ones((8, 8)))
    with pytest.raises(ValueError, match="takes .* images"):
        sampler.edit(np.zeros((1, 32, 32, 3), np.uint8), np.ones((16, 16)))


@pytest.mark.slow
def test_enrichment_regenerates_every_token_once_per_round(tiny):
    sampler = sampler_for(tiny, num_iter=3)
    low = np.random.default_rng(2).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)  # half size
    out = sampler.enrich(low, downsample_rate=2, rounds=1)
    assert out.images.shape == (1, 64, 64, 3)
    # The last group regenerated one sub-position of every 2×2 block: 64 tokens, once each.
    assert out.times_sampled.sum() == 64 and out.times_sampled.max() == 1
    with pytest.raises(ValueError, match="must divide"):
        sampler.enrich(low, downsample_rate=3)


@pytest.mark.slow
def test_interpolation_and_features(tiny):
    sampler = sampler_for(tiny)
    out = sampler.interpolate(1, 2, [0.0, 0.5, 1.0], seed=0)
    assert out.images.shape == (3, 64, 64, 3)
    pure = sampler.generate([2], seed=0)  # r = 0 is class 2 alone, same noise (index 0)
    np.testing.assert_array_equal(out.tokens[0], pure.tokens[0])
    # New weights reach the compiled sampler, the null-class (guidance) embedding included.
    _, _, params, bae_params = tiny
    other_null = jax.tree_util.tree_map_with_path(
        lambda path, a: a.at[-1].add(1.0) if "cls_embedding" in jax.tree_util.keystr(path) else a, params)
    sampler.set_params(other_null, bae_params)
    assert not np.array_equal(sampler.generate([2], seed=0).tokens, pure.tokens)
    sampler.set_params(params, bae_params)
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    feats = sampler.features(images, layer_index=1)
    assert feats.shape == (3, 128) and np.isfinite(feats).all()


def test_mismatched_tokenizer_and_bad_labels_are_clear_errors(tiny):
    model, bae, params, bae_params = tiny
    with pytest.raises(ValueError, match="K=24 bits per token but the B-AE makes K=32"):
        sb.BiGRSampler(model, bae.clone(codebook_size=32), params, bae_params)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\) or 10"):
        sampler_for(tiny).generate([11])
    with pytest.raises(ValueError, match=r"config\.sample\.cfg_schedule = 'cosine' is invalid: "
                                         r"expected 'constant' or 'linear'"):
        sb.BiGRSamplingSettings(cfg_schedule="cosine")


def test_settings_come_from_the_config_and_name_a_bad_field():
    sample = config_lib.load_config_file("bigr.py", "l_d24").sample
    settings = sb.BiGRSamplingSettings.from_config(sample)
    assert settings == sb.BiGRSamplingSettings(
        num_iter=sample.num_iter, cfg=sample.cfg, cfg_schedule=sample.cfg_schedule, gumbel=sample.gumbel,
        gumbel_schedule=sample.gumbel_schedule, temperature=sample.temperature,
        diffusion_steps=sample.diffusion_steps, transcoder_steps=sample.transcoder_steps)
    for field, bad, expected in (("num_iter", 0, "≥ 1"),
                                 ("cfg_schedule", "cosine", "'constant' or 'linear'"),
                                 ("gumbel_schedule", "cosine", "'constant', 'down' or 'up'"),
                                 ("gumbel", -0.1, "≥ 0 (0 disables the confidence noise)"),
                                 ("temperature", 0.0, "> 0"),
                                 ("transcoder_steps", 257, "in [1, 256]")):
        wrong = sample.copy_and_resolve_references()
        wrong[field] = bad
        with pytest.raises(UserError, match=re.escape(f"config.sample.{field} = {bad!r} is invalid: "
                                                      f"expected {expected}.")):
            sb.BiGRSamplingSettings.from_config(wrong)


def test_converter_cli_and_wrong_files(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert convert_cli.main(["bigr", f"--bae={path('bae_tiny_256_k24.th')}",
                             f"--gpt={path('bigr_tiny_k24.pt')}", f"--out={out}"]) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["model"] == "bigr" and stored["bigr"]["binary_size"] == 24
    # K mismatch between the two files.
    assert convert_cli.main(["bigr", f"--bae={path('bae_tiny_512_k32.th')}",
                             f"--gpt={path('bigr_tiny_k24.pt')}", f"--out={tmp_path / 'x'}"]) == 2
    assert "K=24 bits per token but the B-AE produces K=32" in capsys.readouterr().err
    # A VAR file given as the generator.
    var_pth = os.path.join(FIXTURES, "var", "var_d2_256.pth")
    assert convert_cli.main(["bigr", f"--bae={path('bae_tiny_256_k24.th')}", f"--gpt={var_pth}",
                             f"--out={tmp_path / 'y'}"]) == 2
    assert "use `python -m bigvar.convert var`" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_duplicate_transcoder_must_match():
    sd = torch_pickle.load(path("bigr_tiny_k24.pt"))["ema"]
    assert any(k.startswith("diffusion_processor._denoise_fn.") for k in sd)
    broken = dict(sd)
    key = "diffusion_processor._denoise_fn.x_embedder.bias"
    broken[key] = broken[key] + 1
    with pytest.raises(ConversionError, match="differs from denoise_mlp.x_embedder.bias"):
        convert_bigr.dedupe_denoiser(broken, "f.pt")
    misshaped = convert_bigr.dedupe_denoiser(sd, "f.pt")
    misshaped["denoise_mlp.final_layer.linear.weight"] = np.zeros((24, 64), np.float32)
    bae_sd = torch_pickle.load(path("bae_tiny_256_k24.th"))
    with pytest.raises(ConversionError, match=r"denoise_mlp.final_layer.linear.weight: expected \(128, 24\), found \(64, 24\)"):
        convert_bigr.convert_state_dicts(misshaped, bae_sd)


@pytest.mark.slow
def test_sample_mode_for_bigr(tmp_path):
    import importlib.util
    from bigvar import main
    spec = importlib.util.spec_from_file_location("bigr_tiny", os.path.join(os.path.dirname(FIXTURES), "..", "configs", "bigr_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.sample.update(classes=(1, 2, 3), images_per_class=1, batch_size=2, num_iter=2, transcoder_steps=2)
    summary = main.run(config, str(tmp_path))
    with np.load(summary["npz"]) as npz:
        assert npz["arr_0"].shape == (3, 256, 256, 3) and npz["tokens"].shape == (3, 256, 24)
        np.testing.assert_array_equal(npz["labels"], [1, 2, 3])
    assert os.path.exists(summary["grid"]) and len(os.listdir(summary["pngs"])) == 3
