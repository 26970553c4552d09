"""`mode=sample` for VAR and BiGR: class-conditional batch sampling to PNGs, a grid and an `.npz`.

Output in `<workdir>/samples/`:
  grid.png                  the first images, `sample.grid_cols` per row
  images/<index>_c<class>.png   one PNG per image (when `sample.save_pngs`)
  samples.npz               arr_0 (N, H, W, 3) uint8, labels (N,), tokens (VAR: (N, L) ids;
                            BiGR: (N, 256, K) bits)
  parts/batch_<k>.npz       per-batch results; a restarted job skips finished batches
  job.json                  what the images depend on: the weights' checksums, the settings, the
                            seed, the labels and the batch size
Image i depends only on (sample.seed, i, settings), so a resumed or re-sharded job gives the same
tokens as an uninterrupted one (pixels within 1/255). A job with other settings or weights
refuses to write into these files; every file is written by rename (complete or absent), and a
part that does not load is sampled again, so two jobs on one directory cannot corrupt it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time

import ml_collections
import numpy as np
import tqdm

from bigvar import configs, parallel, params
from bigvar.errors import UserError
from bigvar.images import make_grid, save_png
from bigvar.sampling.bigr import BiGRSamplingSettings, BiGRSampler
from bigvar.sampling.var import SamplingSettings, VARSampler
from bigvar.train.checkpoints import array_checksums
from bigvar.utils import atomic_write

JOB_FILE = "job.json"


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


def job_identity(config: ml_collections.ConfigDict, labels: np.ndarray, batch: int, sampler,
                 weights_digest: str) -> dict:
    """What the job's images depend on: the weights (their array checksums), the model, the
    sampling settings, the seed, the labels and the batch boundaries."""
    return {"model": config.model, "weights": weights_digest, "seed": int(config.sample.seed),
            "settings": json.loads(json.dumps(dataclasses.asdict(sampler.settings))),
            "num_images": int(len(labels)), "batch_size": int(batch),
            "labels": hashlib.sha256(np.ascontiguousarray(labels, np.int32).tobytes()).hexdigest()}


def _digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def claim_samples_dir(out_dir: str, identity: dict) -> None:
    """Records the job's identity in `out_dir/job.json`, or checks it against the recorded one:
    a job with other settings or weights never mixes its images with these."""
    path = os.path.join(out_dir, JOB_FILE)
    if not os.path.exists(path):
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump(identity, f, indent=2, sort_keys=True)
        try:  # a hard link creates `path` complete and only if absent: of two jobs, one wins
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.remove(tmp)
    with open(path) as f:
        recorded = json.load(f)
    if recorded != identity:
        changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        raise UserError(
            f"{out_dir} holds samples made with other {', '.join(changed)} ({path}); nothing was "
            "changed. Sample into another --workdir, or delete that samples directory to replace "
            "its images.")


def _load_part(path: str, index: np.ndarray, digest: str):
    """(images, tokens) of a finished batch, or None when it must be (re)made."""
    try:
        with np.load(path) as done:
            if str(done["job"]) != digest or not np.array_equal(done["index"], index):
                logging.warning("%s was made by another job; sampling it again", path)
                return None
            return done["images"], done["tokens"]
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged file: zip, pickle or key errors
        logging.warning("%s does not load (%s: %s); sampling it again", path, type(e).__name__, e)
        return None


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    configs.validate(config)
    mesh = parallel.make_mesh(config.mesh)
    generator, tokenizer = params.build_models(config)
    gen_params, tok_params = params.load_params(config, generator, tokenizer, mesh)
    sampler = make_sampler_from_params(config, generator, tokenizer, gen_params, tok_params, mesh)
    s = config.sample
    labels = class_labels(config)
    n = len(labels)
    batch = min(s.batch_size, n)
    weights = _digest(array_checksums((gen_params, tok_params)))
    identity = job_identity(config, labels, batch, sampler, weights)
    digest = _digest(identity)

    out_dir = os.path.join(workdir, "samples")
    parts_dir, png_dir = os.path.join(out_dir, "parts"), os.path.join(out_dir, "images")
    os.makedirs(parts_dir, exist_ok=True)
    claim_samples_dir(out_dir, identity)
    if s.save_pngs:
        os.makedirs(png_dir, exist_ok=True)
    num_batches = -(-n // batch)
    images, tokens = [], []
    started = time.time()
    for k in tqdm.trange(num_batches, desc="sampling", unit="batch"):
        part = os.path.join(parts_dir, f"batch_{k:05d}.npz")
        index = np.arange(k * batch, min((k + 1) * batch, n))
        done = _load_part(part, index, digest)
        if done is not None:  # finished by an earlier run of this job
            images.append(done[0]), tokens.append(done[1])
            continue
        # A ragged last batch is padded to the full batch: one compiled shape for the whole job.
        padded = parallel.pad_to_multiple(labels[index], batch)
        out = sampler.generate(padded, seed=s.seed, first_index=int(index[0]))
        batch_images = out.images[:len(index)]
        batch_tokens = out.tokens[:len(index)].astype(np.int32 if config.model == "var" else np.uint8)
        if s.save_pngs:
            for i, img in zip(index, batch_images):
                save_png(os.path.join(png_dir, f"{i:06d}_c{labels[i]}.png"), img)
        with atomic_write(part) as tmp:  # written last: it marks the batch finished
            np.savez(tmp, images=batch_images, tokens=batch_tokens, index=index, job=digest)
        images.append(batch_images), tokens.append(batch_tokens)
    seconds = time.time() - started

    images, tokens = np.concatenate(images), np.concatenate(tokens)
    npz_path = os.path.join(out_dir, "samples.npz")
    with atomic_write(npz_path) as tmp:
        np.savez(tmp, arr_0=images, labels=labels, tokens=tokens)
    grid_path = os.path.join(out_dir, "grid.png")
    save_png(grid_path, make_grid(images[:max(s.grid_cols, 1) * 8], s.grid_cols))
    summary = dict(num_images=n, seconds=seconds, grid=grid_path, npz=npz_path,
                   pngs=png_dir if s.save_pngs else None)
    logging.info("wrote %d images in %.1fs: grid %s, npz %s", n, seconds, grid_path, npz_path)
    return summary
