"""`mode=sample` for VAR: class-conditional batch sampling to PNGs, a grid and an `.npz`.

Output in `<workdir>/samples/`:
  grid.png                  the first images, `sample.grid_cols` per row
  images/<index>_c<class>.png   one PNG per image (when `sample.save_pngs`)
  samples.npz               arr_0 (N, H, W, 3) uint8, labels (N,), tokens (N, L)
  parts/batch_<k>.npz       per-batch results; a restarted job skips finished batches
Image i depends only on (sample.seed, i, settings), so a resumed or re-sharded job gives the same
images as an uninterrupted one.
"""
from __future__ import annotations

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from bigvar import checkpoint, configs, parallel
from bigvar.images import make_grid, save_png
from bigvar.models.var import VAR
from bigvar.sampling.var import SamplingSettings, VARSampler
from bigvar.tokenizers.msvq import MultiScaleVQVAE
from bigvar.utils import run_init, unbox

def class_labels(config: ml_collections.ConfigDict) -> np.ndarray:
    """Class-major labels: every class in `sample.classes` (() = all), `images_per_class` each."""
    classes = tuple(config.sample.classes) or tuple(range(config.var.num_classes))
    return np.repeat(np.asarray(classes, np.int32), config.sample.images_per_class)


def _init_inputs(var: VAR, vae: MultiScaleVQVAE):
    tiny_image = jnp.zeros((1, vae.downsample, vae.downsample, 3))  # params don't depend on size
    labels = jnp.zeros((1,), jnp.int32)
    x_in = jnp.zeros((1, var.seq_len - var.first_l, vae.z_channels))
    return tiny_image, (labels, x_in)


def init_params(var: VAR, vae: MultiScaleVQVAE, seed: int):
    """Random (var_params, vae_params), unboxed."""
    image, var_inputs = _init_inputs(var, vae)
    vae_params = run_init(vae.init, jax.random.PRNGKey(seed), image)
    var_params = run_init(functools.partial(var.init, train=False), jax.random.PRNGKey(seed + 1),
                          *var_inputs)
    return unbox(var_params), unbox(vae_params)


def param_shapes(var: VAR, vae: MultiScaleVQVAE):
    """(var, vae) params as ShapeDtypeStructs, without computing anything."""
    image, var_inputs = _init_inputs(var, vae)
    key = jax.random.PRNGKey(0)
    return (unbox(jax.eval_shape(functools.partial(var.init, train=False), key, *var_inputs)),
            unbox(jax.eval_shape(vae.init, key, image)))


def load_params(config: ml_collections.ConfigDict, var: VAR, vae: MultiScaleVQVAE, mesh):
    """Params from `config.init_from`, replicated on the mesh, or random ones for smoke tests."""
    if config.init_from:
        configs.check_architecture(config, checkpoint.load_config(config.init_from),
                                   f"--config.init_from={config.init_from}")
        shapes = param_shapes(var, vae)
        target = {"var": shapes[0], "vae": shapes[1]}
        target = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), target)
        params = checkpoint.load_weights(config.init_from, target)
        return params["var"], params["vae"]
    if not config.allow_random_init:
        raise ValueError(
            "no weights: set --config.init_from=DIR to a directory written by "
            "`python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d16.pth --out=DIR` "
            "(or --config.allow_random_init=True for a smoke test with random weights)")
    logging.warning("sampling from RANDOM weights (config.allow_random_init): images are noise")
    return jax.device_put(init_params(var, vae, config.seed), parallel.replicated(mesh))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    configs.validate(config)
    mesh = parallel.make_mesh(config.mesh)
    var, vae = configs.build_var(config), configs.build_vae(config)
    var_params, vae_params = load_params(config, var, vae, mesh)
    s = config.sample
    settings = SamplingSettings(cfg=s.cfg, top_k=s.top_k, top_p=s.top_p, more_smooth=s.more_smooth)
    sampler = VARSampler(var, vae, var_params, vae_params, settings, mesh)
    labels = class_labels(config)
    n = len(labels)
    batch = min(s.batch_size, n)

    out_dir = os.path.join(workdir, "samples")
    parts_dir, png_dir = os.path.join(out_dir, "parts"), os.path.join(out_dir, "images")
    os.makedirs(parts_dir, exist_ok=True)
    if s.save_pngs:
        os.makedirs(png_dir, exist_ok=True)
    num_batches = -(-n // batch)
    images, tokens = [], []
    started = time.time()
    for k in tqdm.trange(num_batches, desc="sampling", unit="batch"):
        part = os.path.join(parts_dir, f"batch_{k:05d}.npz")
        index = np.arange(k * batch, min((k + 1) * batch, n))
        if os.path.exists(part):  # finished by an earlier run of this job
            with np.load(part) as done:
                if np.array_equal(done["index"], index):
                    images.append(done["images"]), tokens.append(done["tokens"])
                    continue
        # A ragged last batch is padded to the full batch: one compiled shape for the whole job.
        padded = parallel.pad_to_multiple(labels[index], batch)
        out = sampler.generate(padded, seed=s.seed, first_index=int(index[0]))
        batch_images, batch_tokens = out.images[:len(index)], out.tokens[:len(index)]
        if s.save_pngs:
            for i, img in zip(index, batch_images):
                save_png(os.path.join(png_dir, f"{i:06d}_c{labels[i]}.png"), img)
        np.savez(part + ".tmp.npz", images=batch_images, tokens=batch_tokens, index=index)
        os.replace(part + ".tmp.npz", part)
        images.append(batch_images), tokens.append(batch_tokens)
    seconds = time.time() - started

    images, tokens = np.concatenate(images), np.concatenate(tokens)
    np.savez(os.path.join(out_dir, "samples.npz"), arr_0=images, labels=labels, tokens=tokens)
    grid_path = os.path.join(out_dir, "grid.png")
    save_png(grid_path, make_grid(images[:max(s.grid_cols, 1) * 8], s.grid_cols))
    summary = dict(num_images=n, seconds=seconds, grid=grid_path,
                   npz=os.path.join(out_dir, "samples.npz"), pngs=png_dir if s.save_pngs else None)
    logging.info("wrote %d images in %.1fs: grid %s, npz %s", n, seconds, grid_path, summary["npz"])
    return summary
