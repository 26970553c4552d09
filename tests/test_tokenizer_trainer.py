"""The tokenizer trainer: a step on 8 devices equals one device (VQ-VAE and B-AE, with the
PatchGAN on), the single-backward adaptive GAN weight equals the two-gradient definition, dead
codes are re-seeded from the batch, a resumed run equals an uninterrupted one, export → a
generator config loads it, and a tiny VQ-VAE learns the procedural data (PSNR threshold)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvar import parallel, weights
from bigvar.tokenizers import discriminator as disc_lib
from bigvar.train import tokenizer as tok_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny(model: str, **train):
    """16-px tokenizers (4× down → 4×4 latents), with the discriminator on from step 0."""
    config = load_config("vqvae_tiny" if model == "vqvae" else "bae_tiny")
    if model == "vqvae":
        config.vae.patch_nums = (1, 2, 4)
        config.loss.update(dead_code_every=2)
    else:
        config.bae.update(img_size=16, attn_resolutions=(4,))
    config.loss.update(gan=0.5, gan_start=0, disc_ndf=8, disc_layers=1)
    config.data.update(num_records=64)
    config.train.update(batch_size=8, steps=3, log_every=1, checkpoint_every=2, sample_every=0,
                        async_checkpoints=False, schedule="constant", lr=1e-3)
    config.train.update(train)
    return config


def images(config, n=8, seed=0):
    lo, hi = tok_lib.value_range(config)
    r = 16
    return {"image": np.random.RandomState(seed).uniform(lo, hi, (n, r, r, 3)).astype(np.float32),
            "label": np.zeros((n,), np.int32)}


def run_steps(config, mesh_spec, steps=2):
    config = config.copy_and_resolve_references()
    n = int(np.prod(list(mesh_spec.values())))
    mesh = parallel.make_mesh(mesh_spec, jax.devices()[:n])
    trainer = tok_lib.TokenizerTrainer(config, mesh, dataset_size=64)
    state = trainer.init_state(config.seed)
    history = []
    for i in range(steps):
        state, metrics = trainer.step(state, parallel.global_batch(images(config, seed=i), mesh), i)
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vqvae", "bae"])
def test_a_step_on_eight_devices_equals_one_device(model):
    """Generator and discriminator updates, the adaptive weight, BatchNorm statistics over the
    global batch and (VQ-VAE) the dead-code restart are the same on a (4, 2) mesh."""
    config = tiny(model)
    # Adam's first step is lr·g/(|g| + eps): with the default eps 1e-8, float noise in a gradient
    # that is ~0 becomes a ±lr step. eps 1e-4 damps that noise; real gradients still move ~lr.
    config.train.eps = 1e-4
    if model == "vqvae":
        config.loss.dead_code_every = 1
    one, one_hist = run_steps(config, dict(data=1, fsdp=1, tensor=1), steps=1)
    eight, eight_hist = run_steps(config, dict(data=4, fsdp=2, tensor=1), steps=1)
    a, b = one_hist[0], eight_hist[0]
    for key in ("loss", "l1", "l2", "g_loss", "d_loss", "adaptive_weight", "psnr", "grad_norm"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
    assert a["adaptive_weight"] > 0 and np.isfinite(a["d_loss"])
    if model == "vqvae":
        assert a["restarted_codes"] == b["restarted_codes"] > 0
    # Parameters: the step's update Δ = new − initial must agree as a whole. Per element, float
    # noise in gradients that are exactly 0 in exact arithmetic (biases before a GroupNorm, the
    # attention key bias) becomes a visible Adam step, which is why no elementwise test is used.
    config0 = tiny(model)
    mesh = parallel.make_mesh(dict(data=1), jax.devices()[:1])
    initial = jax.device_get(tok_lib.TokenizerTrainer(config0, mesh, 64).init_state(config.seed))
    for part in ("params", "disc"):
        start = np.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(initial[part])])
        da, db = (np.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(st[part])]) - start
                  for st in (one, eight))
        assert np.linalg.norm(da - db) <= 1e-3 * np.linalg.norm(da), part
    assert int(eight["step"]) == 1


@pytest.mark.slow
def test_adaptive_weight_equals_the_two_gradient_definition():
    """λ = ‖∇_W L_rec‖ / (‖∇_W L_G‖ + 1e-4) at the last decoder conv W, computed here with two
    full jax.grad calls; the trainer gets it from one vjp (and lets XLA drop the rest)."""
    config = tiny("vqvae")
    mesh = parallel.make_mesh(dict(data=1), jax.devices()[:1])
    trainer = tok_lib.TokenizerTrainer(config, mesh, dataset_size=64)
    state = trainer.init_state(0)
    batch = jax.tree_util.tree_map(jnp.asarray, images(config))
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)

    def rec_of(p):
        return trainer.forward(p, batch["image"], rng)[0][0]

    def l_rec(p):
        return trainer.reconstruction_loss(rec_of(p), batch["image"], trainer.frozen)[0]

    def l_adv(p):
        logits, _ = trainer.disc_logits(state["disc"], rec_of(p), train=True)
        return disc_lib.generator_adv_loss(logits)

    g_rec = tok_lib.last_layer("vqvae", jax.jit(jax.grad(l_rec))(state["params"]))
    g_adv = tok_lib.last_layer("vqvae", jax.jit(jax.grad(l_adv))(state["params"]))
    expected = np.linalg.norm(g_rec) / (np.linalg.norm(g_adv) + 1e-4) * config.loss.gan
    _, metrics = jax.jit(lambda s, b: trainer.train_step(s, b, trainer.frozen, adversarial=True))(
        state, batch)
    np.testing.assert_allclose(metrics["adaptive_weight"], expected, rtol=1e-4)


def test_dead_codes_are_reseeded_from_the_batch_latents():
    config = tiny("vqvae")
    mesh = parallel.make_mesh(dict(data=1), jax.devices()[:1])
    trainer = tok_lib.TokenizerTrainer(config, mesh, dataset_size=64)
    params = jax.device_get(trainer.init_state(0)["params"])
    vocab = trainer.tokenizer.vocab_size
    latent = jnp.arange(8 * 4 * 4 * 16, dtype=jnp.float32).reshape(8, 4, 4, 16)
    margin = 8 * 16 / vocab * 0.08
    hit_ema = jnp.full((3, vocab), 2 * margin).at[:, :5].set(0.0).at[0, 3].set(margin)  # 3 is alive
    # Step 0: (0 + 1) % 2 != 0 → no restart yet.
    p0, h0, n0 = trainer.restart_dead_codes(params, hit_ema, latent, jnp.int32(0), jax.random.PRNGKey(1))
    assert int(n0) == 0 and np.array_equal(p0["quantize"]["embedding"], params["quantize"]["embedding"])
    p1, h1, n1 = trainer.restart_dead_codes(params, hit_ema, latent, jnp.int32(1), jax.random.PRNGKey(1))
    assert int(n1) == 4  # codes 0, 1, 2, 4
    table, old = np.asarray(p1["quantize"]["embedding"]), np.asarray(params["quantize"]["embedding"])
    rows = set(map(tuple, np.asarray(latent).reshape(-1, 16)))
    for code in (0, 1, 2, 4):
        assert tuple(table[code]) in rows  # a latent vector of the batch
        np.testing.assert_allclose(h1[:, code], margin)
    np.testing.assert_array_equal(table[3], old[3])
    np.testing.assert_array_equal(table[5:], old[5:])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vqvae"])  # the B-AE → BiGR path runs in test_demo's BiGR demo
def test_resumed_run_equals_an_uninterrupted_one_and_exports_for_the_generator(model, tmp_path):
    straight = tiny(model, steps=4, checkpoint_every=2)
    tok_lib.run(straight, str(tmp_path / "straight"))
    first = tiny(model, steps=2, checkpoint_every=2)
    tok_lib.run(first, str(tmp_path / "resumed"))
    summary = tok_lib.run(straight, str(tmp_path / "resumed"))
    assert summary["steps"] == 4
    a = tok_lib.export_tokenizer(straight, str(tmp_path / "straight"))
    b = tok_lib.export_tokenizer(straight, str(tmp_path / "resumed"))
    key = "vae" if model == "vqvae" else "bae"
    wa, wb = weights.load_weights(a)[key], weights.load_weights(b)[key]
    for x, y in zip(jax.tree_util.tree_leaves(wa), jax.tree_util.tree_leaves(wb)):
        np.testing.assert_array_equal(x, y)
    lines = [json.loads(l) for l in open(tmp_path / "resumed" / "logs" / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]
    assert "heldout_psnr" in lines[-1] and "d_loss" in lines[-1]
    assert ("usage_4x4" in lines[-1]) == (model == "vqvae")
    assert ("worst_bit_imbalance" in lines[-1]) == (model == "bae")

    # A generator config with the same tokenizer architecture loads the export.
    from bigvar.train.generator import Trainer, load_tokenizer
    gen = load_config("var_tiny" if model == "vqvae" else "bigr_tiny")
    if model == "vqvae":
        gen.var.patch_nums = (1, 2, 4)
        for f in ("vocab_size", "z_channels", "ch", "ch_mult", "num_res_blocks"):
            gen.vae[f] = straight.vae[f]
    else:
        gen.bae = straight.bae
        gen.bigr.update(binary_size=16, seq_len=16)
    gen.tokenizer_from, gen.allow_random_init = a, False
    mesh = parallel.make_mesh(dict(data=1), jax.devices()[:1])
    loaded = load_tokenizer(gen, Trainer(gen, mesh, dataset_size=64))
    for x, y in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(wa)):
        np.testing.assert_array_equal(np.asarray(x), y)


@pytest.mark.slow
def test_tiny_vqvae_learns_the_procedural_images(tmp_path):
    """150 steps of the tiny config at 32 px: held-out PSNR well above the start's (~13 dB)."""
    config = load_config("vqvae_tiny")
    config.train.update(steps=150, log_every=50, checkpoint_every=150, sample_every=150,
                        async_checkpoints=False)
    summary = tok_lib.run(config, str(tmp_path))
    lines = [json.loads(l) for l in open(summary["metrics"])]
    assert lines[0]["heldout_psnr"] < 16.0
    assert lines[-1]["heldout_psnr"] > 19.0, lines[-1]
    assert os.path.exists(tmp_path / "samples" / "reconstructions_00000150.png")


@pytest.mark.slow
def test_lpips_term_from_a_converted_weights_dir_enters_the_loss(tmp_path):
    """LPIPS weights converted from .pth files (the committed random-weight fixtures) → the
    trainer adds `lpips`·LPIPS(rec, x) (x mapped to [−1, 1]) to the loss."""
    from bigvar.convert import __main__ as convert_cli
    from bigvar.tokenizers.lpips import LPIPS, load_lpips
    fixtures = os.path.join(ROOT, "tests", "fixtures", "lpips")
    out = tmp_path / "lpips"
    assert convert_cli.main(["lpips", f"--vgg={fixtures}/vgg16.pth", f"--lin={fixtures}/vgg_lin.pth",
                             f"--out={out}"]) == 0
    config = tiny("bae")
    config.loss.update(gan=0.0, lpips=0.5, lpips_from=str(out))
    mesh = parallel.make_mesh(dict(data=1), jax.devices()[:1])
    trainer = tok_lib.TokenizerTrainer(config, mesh, dataset_size=64)
    state = trainer.init_state(0)
    batch = jax.tree_util.tree_map(jnp.asarray, images(config))
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    rec = trainer.forward(state["params"], batch["image"], rng)[0][0]
    _, metrics = trainer.step(state, batch, 0)
    expected = float(jnp.mean(LPIPS().apply(load_lpips(str(out)), rec * 2 - 1, batch["image"] * 2 - 1)))
    assert expected > 0
    np.testing.assert_allclose(metrics["lpips"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], metrics["l1"] + metrics["l2"] + 0.5 * expected, rtol=1e-5)


def test_heldout_images_from_a_folder_skip_unreadable_files_and_keep_labels(tmp_path):
    from PIL import Image
    config = load_config("vqvae_tiny")
    size = 32
    for label, name in enumerate(("a", "b")):
        d = tmp_path / name
        d.mkdir()
        (d / "0_broken.png").write_bytes(b"not an image")
        Image.fromarray(np.full((40, 48, 3), 60 + 100 * label, np.uint8)).save(d / "1.png")
    config.data.update(source="folder", path=str(tmp_path))
    images, labels = tok_lib.heldout_images(config, 2)
    lo, hi = tok_lib.value_range(config)
    assert images.shape == (2, size, size, 3) and labels.tolist() == [0, 1]
    np.testing.assert_allclose(images[:, 0, 0, 0], lo + (hi - lo) * np.array([60, 160]) / 255, atol=1e-6)

    for name in ("a", "b"):
        (tmp_path / name / "1.png").write_bytes(b"not an image either")
    with pytest.raises(ValueError, match="decode as images"):
        tok_lib.heldout_images(config, 2)
