"""`mode=sample` for VAR and BiGR: class-conditional batch sampling to PNGs, a grid and an `.npz`.

Output in `<workdir>/samples/`:
  grid.png                  the first images, `sample.grid_cols` per row
  images/<index>_c<class>.png   one PNG per image (when `sample.save_pngs`)
  samples.npz               arr_0 (N, H, W, 3) uint8, labels (N,), tokens (VAR: (N, L) ids;
                            BiGR: (N, 256, K) bits)
  parts/batch_<k>.npz       per-batch results; a restarted job skips finished batches
Image i depends only on (sample.seed, i, settings), so a resumed or re-sharded job gives the same
images as an uninterrupted one.
"""
from __future__ import annotations

import logging
import os
import time

import ml_collections
import numpy as np
import tqdm

from bigvar import configs, parallel, params
from bigvar.images import make_grid, save_png
from bigvar.sampling.bigr import BiGRSamplingSettings, BiGRSampler
from bigvar.sampling.var import SamplingSettings, VARSampler


def make_sampler(config: ml_collections.ConfigDict, mesh):
    """The model's sampler (VARSampler or BiGRSampler) with the config's weights and settings."""
    generator, tokenizer = params.build_models(config)
    gen_params, tok_params = params.load_params(config, generator, tokenizer, mesh)
    return make_sampler_from_params(config, generator, tokenizer, gen_params, tok_params, mesh)


def make_sampler_from_params(config: ml_collections.ConfigDict, generator, tokenizer, gen_params,
                             tok_params, mesh):
    """The sampler for models and params already at hand (e.g. the trainer's sample grids)."""
    s = config.sample
    if config.model == "bigr":
        settings = BiGRSamplingSettings(
            num_iter=s.num_iter, cfg=s.cfg, cfg_schedule=s.cfg_schedule, gumbel=s.gumbel,
            gumbel_schedule=s.gumbel_schedule, temperature=s.temperature,
            diffusion_steps=s.diffusion_steps, transcoder_steps=s.transcoder_steps)
        return BiGRSampler(generator, tokenizer, gen_params, tok_params, settings, mesh)
    settings = SamplingSettings(cfg=s.cfg, top_k=s.top_k, top_p=s.top_p, more_smooth=s.more_smooth)
    return VARSampler(generator, tokenizer, gen_params, tok_params, settings, mesh)


def class_labels(config: ml_collections.ConfigDict) -> np.ndarray:
    """Class-major labels: every class in `sample.classes` (() = all), `images_per_class` each."""
    num_classes = config[config.model].num_classes
    classes = tuple(config.sample.classes) or tuple(range(num_classes))
    return np.repeat(np.asarray(classes, np.int32), config.sample.images_per_class)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    configs.validate(config)
    mesh = parallel.make_mesh(config.mesh)
    sampler = make_sampler(config, mesh)
    s = config.sample
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
        batch_images = out.images[:len(index)]
        batch_tokens = out.tokens[:len(index)].astype(np.int32 if config.model == "var" else np.uint8)
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
