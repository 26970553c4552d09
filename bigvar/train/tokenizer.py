"""`mode=train` for the tokenizers — VAR's multi-scale VQ-VAE (`model=vqvae`) and BiGR's binary
autoencoder (`model=bae`) — read top to bottom:

  0. `validate_loss_section`: the checks of the config's `loss` section.
  1. `TokenizerTrainer`: the model, optional LPIPS and PatchGAN, the optimizers, the train-state
     shardings and the jitted step (one per phase: before and after the discriminator starts).
  2. `run`: restore-or-init and the step, handed to `loop.run_loop` (the generators' loop: data,
     progress bar, metrics, reconstruction grids, checkpoints, SIGTERM, non-finite stop).
  3. `export_tokenizer`: the newest checkpoint (its EMA when kept) → a weights directory that a
     generator config loads with `--config.tokenizer_from=DIR`.

One step: a single forward of the tokenizer under `jax.vjp`. The reconstruction terms
(L1/L2/LPIPS) and the adversarial term are functions of the reconstruction, so their gradients
w.r.t. it are cheap; the adaptive GAN weight needs them w.r.t. the last decoder conv only, which
the same vjp gives (XLA drops the rest of that backward pass); one full backward then carries
the weighted sum. The VQ loss (VQ-VAE) enters that backward as a second output.

The state is {step, params, opt_state[, ema]} (`train/state.py`) with [disc][, hit_ema] added;
everything is replicated and batches are split over data × fsdp (tokenizers are small; their
activations are not).
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.linen import unbox

from bigvar import config_lib, data as data_lib, models, multihost, parallel, weights
from bigvar.data import transforms
from bigvar.data.procedural import ProceduralSource
from bigvar.errors import invalid
from bigvar.models import run_init
from bigvar.tokenizers import discriminator as disc_lib, metrics as tok_metrics
from bigvar.tokenizers.bae import bernoulli_bits, deterministic_bits
from bigvar.train import loop, optim, state as state_lib


def validate_loss_section(loss: ml_collections.ConfigDict) -> None:
    """The `loss` section of a tokenizer config."""
    for field in ("l1", "l2", "beta", "lpips", "gan", "gan_max_weight"):
        if loss[field] < 0:
            invalid(f"loss.{field}", loss[field], "≥ 0")
    if loss.l1 == loss.l2 == loss.lpips == 0:
        invalid("loss.l2", loss.l2, "> 0, or loss.l1 / loss.lpips > 0 (nothing to reconstruct)")
    if loss.lpips > 0 and not loss.lpips_from:
        invalid("loss.lpips_from", loss.lpips_from, "a weights directory made by `python -m "
                "bigvar.convert lpips --vgg=vgg16-397923af.pth --lin=vgg.pth --out=DIR`, or "
                "loss.lpips=0")
    if loss.disc_init not in ("taming", "torch_default"):
        invalid("loss.disc_init", loss.disc_init, "'taming' or 'torch_default'")


def value_range(config) -> tuple[float, float]:
    """The pixel range the config's tokenizer works in."""
    return models.build_tokenizer(config).VALUE_RANGE


def reconstruct(model_name: str, tokenizer, variables, images):
    """Deterministic reconstruction in the tokenizer's range (VQ-VAE: the quantized path,
    clamped; B-AE: bits thresholded at ½, clipped to [0, 1]). `variables` = {"params": …}, as
    weights directories hold them."""
    if model_name == "vqvae":
        return tokenizer.apply(variables, images, method=tokenizer.img_to_reconstructed_img)
    probs = tokenizer.apply(variables, images, method=tokenizer.encode_probs)
    rec = tokenizer.apply(variables, deterministic_bits(probs), method=tokenizer.decode)
    return jnp.clip(rec, 0.0, 1.0)


def last_layer(model_name: str, tree):
    """The final decoder conv's kernel in a params-shaped tree (params or their gradients); its
    gradients set the adaptive GAN weight."""
    if model_name == "vqvae":
        return tree["decoder"]["conv_out"]["kernel"]
    last = max(int(k.split("_")[1]) for k in tree["generator"])
    return tree["generator"][f"blocks_{last}"]["kernel"]


class TokenizerTrainer:
    """Model, losses, optimizers, state shardings and the jitted train step of a config."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, dataset_size: int):
        self.config, self.mesh = config, mesh
        self.model_name = config.model
        self.key = models.TOKENIZER_SECTIONS[config.model]
        self.tokenizer = models.build_tokenizer(config)
        self.loss_cfg = config.loss
        self.range = self.tokenizer.VALUE_RANGE
        self.schedules = optim.Schedules(config, dataset_size)
        t = config.train
        self.tx = optim.adamw(learning_rate=self.schedules.lr,
                              weight_decay=self.schedules.weight_decay, mask=None, b1=t.b1,
                              b2=t.b2, eps=t.eps, clip=t.clip)
        self.ema_decay = float(t.ema_decay)
        self.gan = self.loss_cfg.gan > 0
        if self.gan:
            self.disc = disc_lib.PatchDiscriminator(ndf=self.loss_cfg.disc_ndf,
                                           n_layers=self.loss_cfg.disc_layers)
            disc_lr = self.loss_cfg.disc_lr or None
            self.disc_tx = optim.adamw(
                learning_rate=(lambda it: disc_lr) if disc_lr else self.schedules.lr,
                weight_decay=0.0, mask=None, b1=t.b1, b2=t.b2, eps=t.eps, clip=t.clip)
        self.lpips = None
        if self.loss_cfg.lpips > 0:
            from bigvar.tokenizers.lpips import LPIPS, load_lpips
            self.lpips = LPIPS()
            self.frozen = {"lpips": jax.device_put(load_lpips(self.loss_cfg.lpips_from),
                                                   parallel.replicated(mesh))}
        else:
            self.frozen = {}
        self.state_shardings = jax.tree_util.tree_map(
            lambda _: parallel.replicated(mesh), jax.eval_shape(self._new_state, jax.random.PRNGKey(0)))
        self._steps = {}

    # -- state --
    def _init_params(self, key):
        d = self.tokenizer.downsample
        return unbox(self.tokenizer.init(key, jnp.zeros((1, d, d, 3))))["params"]

    def _new_state(self, key, params=None):
        k_tok, k_disc = jax.random.split(key)
        params = self._init_params(k_tok) if params is None else params
        state = state_lib.new_state(params, self.tx, self.ema_decay)
        if self.gan:
            r = config_lib.image_size(self.config)
            variables = self.disc.init(k_disc, jnp.zeros((1, r, r, 3)), train=False)
            disc_params = disc_lib.discriminator_init(variables["params"], k_disc,
                                             scheme=self.loss_cfg.disc_init)
            state["disc"] = {"params": disc_params, "batch_stats": variables["batch_stats"],
                             "opt_state": self.disc_tx.init(disc_params)}
        if self.model_name == "vqvae":
            spec = self.tokenizer.spec
            state["hit_ema"] = jnp.zeros((spec.num_scales, self.tokenizer.vocab_size), jnp.float32)
        return state

    def init_state(self, seed: int, params=None):
        return run_init(self._new_state, jax.random.PRNGKey(seed), params,
                        out_shardings=self.state_shardings)

    def abstract_state(self):
        return state_lib.abstract_state(self._new_state, self.state_shardings)

    # -- the losses --
    def forward(self, params, images, rng):
        """(reconstruction, auxiliary loss), {extras}: the tokenizer's differentiable path."""
        if self.model_name == "vqvae":
            rec, vq_loss, hits, latent = self.tokenizer.apply(
                {"params": params}, images, self.loss_cfg.beta,
                method=self.tokenizer.training_forward)
            return (rec, vq_loss), {"hits": hits, "latent": jax.lax.stop_gradient(latent)}
        probs = self.tokenizer.apply({"params": params}, images, method=self.tokenizer.encode_probs)
        bits = bernoulli_bits(rng, jax.lax.stop_gradient(probs))
        codes = bits + probs - jax.lax.stop_gradient(probs)  # straight-through to p (BLD)
        rec = self.tokenizer.apply({"params": params}, codes, method=self.tokenizer.decode)
        return (rec, jnp.zeros((), jnp.float32)), {"bits": bits}

    def _to_lpips_range(self, x):
        lo, hi = self.range
        return (x - lo) * (2.0 / (hi - lo)) - 1.0

    def reconstruction_loss(self, rec, images, frozen):
        c = self.loss_cfg
        terms = {"l1": jnp.mean(jnp.abs(rec - images)), "l2": jnp.mean(jnp.square(rec - images))}
        total = c.l1 * terms["l1"] + c.l2 * terms["l2"]
        if self.lpips is not None:
            terms["lpips"] = jnp.mean(self.lpips.apply(
                frozen["lpips"], self._to_lpips_range(rec),
                self._to_lpips_range(images)))
            total = total + c.lpips * terms["lpips"]
        return total, terms

    def disc_logits(self, disc_state, images, *, train: bool):
        variables = {"params": disc_state["params"], "batch_stats": disc_state["batch_stats"]}
        if not train:
            return self.disc.apply(variables, images, train=False), disc_state["batch_stats"]
        logits, updated = self.disc.apply(variables, images, train=True, mutable=["batch_stats"])
        return logits, updated["batch_stats"]

    # -- the step --
    def train_step(self, state, batch, frozen, *, adversarial: bool):
        """One step; `frozen` holds the fixed LPIPS weights (an argument, not a constant)."""
        step, params = state["step"], state["params"]
        rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), step)
        images = batch["image"]
        (rec, aux_loss), vjp_fn, extras = jax.vjp(
            lambda p: self.forward(p, images, rng), params, has_aux=True)
        (nll, terms), rec_cot = jax.value_and_grad(self.reconstruction_loss, has_aux=True)(
            rec, images, frozen)
        metrics = dict(terms)
        total_cot, loss = rec_cot, nll + aux_loss
        if adversarial:
            def adv_loss(r):  # D in train mode (batch statistics), its stat updates dropped here
                logits, _ = self.disc_logits(state["disc"], r, train=True)
                return disc_lib.generator_adv_loss(logits)
            g_loss, adv_cot = jax.value_and_grad(adv_loss)(rec)
            zero_aux = jnp.zeros_like(aux_loss)
            last_rec = last_layer(self.model_name, vjp_fn((rec_cot, zero_aux))[0])
            last_adv = last_layer(self.model_name, vjp_fn((adv_cot, zero_aux))[0])
            weight = disc_lib.adaptive_weight(last_rec, last_adv, self.loss_cfg.gan_max_weight)
            weight = weight * self.loss_cfg.gan
            total_cot = rec_cot + weight * adv_cot
            loss = loss + weight * g_loss
            metrics.update(g_loss=g_loss, adaptive_weight=weight)
        grads = vjp_fn((total_cot, jnp.ones_like(aux_loss)))[0]
        new_params, opt_state, grad_norm = state_lib.apply_gradients(state, grads, self.tx)
        new = dict(state, step=step + 1, opt_state=opt_state)

        lo, hi = self.range
        metrics.update(loss=loss, psnr=jnp.mean(tok_metrics.psnr(rec, images, lo, hi)),
                       grad_norm=grad_norm, lr=self.schedules.lr(step))
        if self.model_name == "vqvae":
            metrics["vq_loss"] = aux_loss
            hit_ema = tok_metrics.update_hit_ema(state["hit_ema"], extras["hits"], step)
            new_params, hit_ema, restarted = self.restart_dead_codes(
                new_params, hit_ema, extras["latent"], step, jax.random.fold_in(rng, 1))
            new["hit_ema"] = hit_ema
            # The official margin: 8 % of a uniform share of the finest scale's B·h·w vectors.
            usage = tok_metrics.codebook_usage(hit_ema, self._latent_vectors(images.shape[0]))
            pns = self.tokenizer.spec.patch_nums
            metrics.update({f"usage_{pn}x{pn}": usage[i] for i, pn in enumerate(pns)})
            metrics["restarted_codes"] = restarted
        else:
            metrics.update(tok_metrics.bit_balance(extras["bits"]))
        new["params"] = new_params
        if adversarial:
            new["disc"], d_metrics = self._disc_update(state["disc"], images,
                                                      jax.lax.stop_gradient(rec))
            metrics.update(d_metrics)
        new, metrics["finite"] = state_lib.finish_step(state, new, loss=loss, grad_norm=grad_norm,
                                                       ema_decay=self.ema_decay)
        return new, metrics

    def _disc_update(self, disc_state, real, fake):
        """One hinge-loss step of D on real and (detached) fake images, each its own BatchNorm
        batch as in the official code; the running statistics of both passes are kept."""

        def d_loss(dp):
            ds = dict(disc_state, params=dp)
            logits_real, stats = self.disc_logits(ds, real, train=True)
            logits_fake, stats = self.disc_logits(dict(ds, batch_stats=stats), fake, train=True)
            loss = disc_lib.hinge_d_loss(logits_real, logits_fake)
            return loss, (stats, jnp.mean(logits_real), jnp.mean(logits_fake))

        (loss, (stats, real_mean, fake_mean)), grads = jax.value_and_grad(d_loss, has_aux=True)(
            disc_state["params"])
        updates, opt_state = self.disc_tx.update(grads, disc_state["opt_state"], disc_state["params"])
        new = {"params": optax.apply_updates(disc_state["params"], updates), "batch_stats": stats,
               "opt_state": opt_state}
        return new, {"d_loss": loss, "logits_real": real_mean, "logits_fake": fake_mean}

    def restart_dead_codes(self, params, hit_ema, latent, step, key):
        """Every `loss.dead_code_every` steps, codes that no scale uses (hit EMA below the usage
        margin on every scale) are replaced by random latent vectors of this batch, and their hit
        EMA is set to the margin so they get a fair chance before the next check."""
        every = int(self.loss_cfg.dead_code_every)
        if every <= 0:
            return params, hit_ema, jnp.zeros((), jnp.int32)
        vocab = hit_ema.shape[-1]
        margin = self._latent_vectors(latent.shape[0]) / vocab * 0.08
        dead = jnp.all(hit_ema < margin, axis=0) & ((step + 1) % every == 0)
        candidates = latent.reshape(-1, latent.shape[-1])
        picks = jax.random.randint(key, (vocab,), 0, candidates.shape[0])
        table = params["quantize"]["embedding"]
        table = jnp.where(dead[:, None], candidates[picks], table)
        params = dict(params, quantize=dict(params["quantize"], embedding=table))
        hit_ema = jnp.where(dead[None, :], margin, hit_ema)
        return params, hit_ema, jnp.sum(dead.astype(jnp.int32))

    def _latent_vectors(self, batch: int) -> int:
        return batch * self.tokenizer.spec.latent_size ** 2

    def step_fn(self, adversarial: bool):
        if adversarial not in self._steps:
            batch_sh = parallel.batch_sharding(self.mesh)
            self._steps[adversarial] = jax.jit(
                functools.partial(self.train_step, adversarial=adversarial),
                in_shardings=(self.state_shardings, {"image": batch_sh, "label": batch_sh},
                              jax.tree_util.tree_map(lambda _: parallel.replicated(self.mesh),
                                                     self.frozen)),
                out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
                donate_argnums=(0,))
        return self._steps[adversarial]

    def step(self, state, batch, i: int):
        adversarial = self.gan and i >= self.loss_cfg.gan_start
        return self.step_fn(adversarial)(state, batch, self.frozen)


# ---- evaluation images and grids -------------------------------------------------------------
def heldout_images(config, count: int, *, seed_offset: int = 1_000_003):
    """(images in the tokenizer's range, labels): procedural images the training never sees (another
    procedural seed), or the first `count` records of a file source, centre-cropped."""
    size, d = config_lib.image_size(config), config.data
    if d.source == "procedural":
        src = ProceduralSource(d.num_classes, size, count, seed=d.procedural_seed + seed_offset)
        records = [src[i] for i in range(count)]
        images = np.stack([r["image"] for r in records])
    else:
        src = data_lib.make_source(d, size)
        val = transforms.make_image_transform(d.transform, size, train=False)
        records, images = [], []
        for i in range(min(count * 2, len(src))):
            record = src[i]
            decoded = transforms.decode(record)
            if decoded is not None:
                records.append(record)
                images.append(val(decoded, None))
            if len(images) == count:
                break
        if not images:
            raise ValueError(f"none of the first {min(count * 2, len(src))} records of {d.path!r} "
                             "decode as images: check --config.data.path")
        images = np.stack(images)
    labels = np.asarray([int(r["label"]) for r in records], np.int32)
    return transforms.to_float(images, d.value_range), labels


def to_uint8(images, lo: float, hi: float) -> np.ndarray:
    x = (np.asarray(images, np.float32) - lo) / (hi - lo)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


class Reconstructor:
    """Jitted deterministic reconstruction, held-out PSNR and an originals-over-reconstructions
    grid, for the training loop and the demo."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.model_name = config.model
        self.tokenizer = models.build_tokenizer(config)
        self.range = self.tokenizer.VALUE_RANGE
        self._fn = jax.jit(functools.partial(reconstruct, self.model_name, self.tokenizer))

    def __call__(self, variables, images, batch: int = 64) -> np.ndarray:
        outs = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            n = len(chunk)
            padded = parallel.pad_to_multiple(chunk, parallel.data_parallel_size(self.mesh))
            batch_on_mesh = jax.device_put(padded, parallel.batch_sharding(self.mesh))
            outs.append(multihost.to_host(self._fn(variables, batch_on_mesh))[:n])
        return np.concatenate(outs)

    def psnr(self, variables, images) -> float:
        rec = self(variables, images)
        return float(np.mean(tok_metrics.psnr(jnp.asarray(rec), jnp.asarray(images), *self.range)))

    def grid(self, variables, images, cols: int) -> np.ndarray:
        """Rows of `cols` originals, each followed by a row of their reconstructions."""
        from bigvar.images import make_grid
        rec = self(variables, images)
        rows = []
        for i in range(0, len(images), cols):
            rows += [to_uint8(images[i:i + cols], *self.range), to_uint8(rec[i:i + cols], *self.range)]
        return make_grid(np.concatenate(rows), cols=cols)


# ---- weights in and out ------------------------------------------------------------------------
def load_init_params(config, trainer: TokenizerTrainer):
    """Tokenizer params from `init_from` (a converted official checkpoint or an export)."""
    section = trainer.key
    weights.check_architecture(config, weights.load_config(config.init_from),
                               f"--config.init_from={config.init_from}", (section,))
    target = {"params": jax.eval_shape(trainer._init_params, jax.random.PRNGKey(0))}
    return weights.load_weights(config.init_from, {section: target}, partial=True)[section]["params"]


def export_tokenizer(config, workdir: str, out_dir: str | None = None) -> str:
    """The newest checkpoint's tokenizer (its EMA when kept) as a weights directory holding
    `vae` or `bae`, which generator configs load with `--config.tokenizer_from=DIR`."""
    return loop.export_newest(config, workdir, out_dir, TokenizerTrainer,
                              lambda trainer, params: {trainer.key: {"params": params}})


# ---- the loop ----------------------------------------------------------------------------------
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the tokenizer until `train.steps`/`train.epochs` are done, or until SIGTERM."""
    from bigvar import data as data_lib
    config_lib.validate(config)
    mesh = parallel.make_mesh(config.mesh)
    loop.check_batch(config, mesh)
    size = config_lib.image_size(config)
    trainer = TokenizerTrainer(config, mesh, len(data_lib.make_source(config.data, size)))
    if config.loss.gan > 0:
        logging.info("the discriminator starts at step %d", config.loss.gan_start)
    recon = Reconstructor(config, mesh)
    grid_images, _ = heldout_images(config, config.train.sample_images)
    cols = min(config.sample.grid_cols, len(grid_images))

    def init_state():
        params = load_init_params(config, trainer) if config.init_from else None
        return trainer.init_state(config.seed, params)

    def shown(state):  # as variables
        return {"params": state_lib.shown_params(state)}

    def grids(state):
        return {"reconstructions": recon.grid(shown(state), grid_images, cols)}

    spec = loop.LoopSpec(
        name=f"train {config.model}", steps=trainer.schedules.max_it, image_size=size,
        abstract_state=trainer.abstract_state(), init_state=init_state, step=trainer.step,
        grids=grids, grid_every=config.train.sample_every,
        on_log=lambda state, _: {"heldout_psnr": recon.psnr(shown(state), grid_images)})
    summary, _ = loop.run_loop(config, workdir, mesh, spec)
    return summary
