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

import json
import logging
import numbers
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from bigvar import config_lib, models, multihost, npz, parallel, result_keys, storage, weights
from bigvar.convert import hub
from bigvar.errors import UserError, invalid
from bigvar.images import make_grid, save_png
from bigvar.storage import atomic_write
from bigvar.sampling import memory
from bigvar.sampling.bigr import BiGRSamplingSettings, BiGRSampler
from bigvar.sampling.var import SamplingSettings, VARSampler
from bigvar.checksums import array_checksums

JOB_FILE = "job.json"


def validate_sample_section(sample: ml_collections.ConfigDict, num_classes: int) -> None:
    """The job's fields of `config.sample` (the sampler's settings check themselves)."""
    ids = sample.classes
    if isinstance(ids, str) or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool)
                                       for c in ids):
        invalid("sample.classes", ids, "a tuple of integer class ids, e.g. '(207, 360)'")
    bad = [c for c in sample.classes if not 0 <= c < num_classes]
    if bad:
        invalid("sample.classes", tuple(sample.classes),
                f"class ids in [0, {num_classes}) (got {bad}); use () for every class")
    if sample.images_per_class < 1:
        invalid("sample.images_per_class", sample.images_per_class, "≥ 1")
    if sample.batch_size < 0:
        invalid("sample.batch_size", sample.batch_size,
                "≥ 1 images over all devices, or 0 for the largest batch that fits")
    if sample.memory_gib < 0:
        invalid("sample.memory_gib", sample.memory_gib, "≥ 0 GiB (0: the device's free memory)")


def load_params(config: ml_collections.ConfigDict, generator, tokenizer, mesh):
    """(generator, tokenizer) params from `config.init_from`, replicated on the mesh, or random
    ones for smoke tests (`allow_random_init`)."""
    gen_key, tok_key = models.SECTIONS[config.model]
    if config.init_from:
        weights.check_architecture(config, weights.load_config(config.init_from),
                                   f"--config.init_from={config.init_from}")
        shapes = dict(zip((gen_key, tok_key), models.param_shapes(generator, tokenizer)))
        target = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), shapes)
        params = weights.load_weights(config.init_from, target)
        return params[gen_key], params[tok_key]
    if not config.allow_random_init:
        raise UserError(f"no weights: {hub.missing_weights_hint(config)}")
    logging.warning("sampling from RANDOM weights (config.allow_random_init): images are noise")
    return jax.device_put(models.init_params(generator, tokenizer, config.seed),
                          parallel.replicated(mesh))


def make_sampler_from_params(config: ml_collections.ConfigDict, generator, tokenizer, gen_params,
                             tok_params, mesh):
    """The sampler for models and params already at hand (e.g. the trainer's sample grids)."""
    if config.model == "bigr":
        settings = BiGRSamplingSettings.from_config(config.sample)
        return BiGRSampler(generator, tokenizer, gen_params, tok_params, settings, mesh)
    settings = SamplingSettings.from_config(config.sample)
    return VARSampler(generator, tokenizer, gen_params, tok_params, settings, mesh)


def class_labels(config: ml_collections.ConfigDict) -> np.ndarray:
    """Class-major labels: every class in `sample.classes` (() = all), `images_per_class` each."""
    num_classes = config[config.model].num_classes
    classes = tuple(config.sample.classes) or tuple(range(num_classes))
    return np.repeat(np.asarray(classes, np.int32), config.sample.images_per_class)


def claim_samples_dir(out_dir: str, identity: dict) -> None:
    """Records the job's identity in `out_dir/job.json`, or checks it against the recorded one:
    a job with other settings or weights never mixes its images with these."""
    path = os.path.join(out_dir, JOB_FILE)
    text = json.dumps(identity, indent=2, sort_keys=True)
    if not storage.exists(path):  # created complete and only if absent: of two jobs, one wins
        storage.create_exclusive(path, text.encode())
    recorded = _read_job_file(path)
    if recorded is None:
        # Like a damaged part: rebuilt. Each part records the digest of the job that made it,
        # so only the parts of this job are kept; the others are sampled again.
        logging.warning("%s is damaged; recording this job's identity again (finished batches "
                        "of this job are kept, any others sampled again)", path)
        with atomic_write(path) as tmp, open(tmp, "w") as f:
            f.write(text)
        recorded = identity
    if recorded != identity:
        changed = result_keys.differences(recorded, identity)
        raise UserError(
            f"{out_dir} holds samples made with other {', '.join(changed)} ({path}); nothing was "
            "changed. Sample into another --workdir, or delete that samples directory to replace "
            "its images.")


def _read_job_file(path: str) -> dict | None:
    """The recorded identity, or None when the file is empty or not a JSON object."""
    try:
        recorded = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def auto_batch_size(sampler, num_images: int, memory_gib: float = 0.0) -> int:
    """The largest global batch whose sampling fits in each device's free memory (or in
    `memory_gib` per device), at most the job's images (`memory.plan_batch`: the bytes per image
    come from the compiled sampler). Every process plans for its own devices; the smallest
    batch wins, so all agree."""
    shards = parallel.data_parallel_size(sampler.mesh)
    fit = memory.plan_batch(sampler, cap=-(-num_images // shards), memory_gib=memory_gib)
    per_device = min(multihost.gather_json(fit.per_device))
    if per_device < 1:
        raise UserError(
            f"sampling one image needs {(fit.fixed + fit.per_image) / memory.GIB:.2f} GiB per "
            f"device beyond the weights, and {fit.free / memory.GIB:.2f} GiB is free: use bfloat16 "
            f"weights (--config.{sampler_section(sampler)}.dtype=bfloat16), more devices, or set "
            "--config.sample.memory_gib if the free memory is misread")
    batch = min(per_device * shards, num_images)
    logging.info("sample.batch_size=0: %.1f MiB per image and %.1f MiB fixed per device, %.1f GiB "
                 "free → %d images per device, a batch of %d", fit.per_image / 2 ** 20,
                 fit.fixed / 2 ** 20, fit.free / memory.GIB, per_device, batch)
    return batch


def sampler_section(sampler) -> str:
    return "bigr" if isinstance(sampler, BiGRSampler) else "var"


def recorded_batch_size(out_dir: str) -> int | None:
    """The batch size in `out_dir/job.json`, when an earlier run of a job recorded one."""
    path = os.path.join(out_dir, JOB_FILE)
    if not storage.exists(path):
        return None
    return (_read_job_file(path) or {}).get("batch_size")


def _load_part(path: str, index: np.ndarray, digest: str):
    """(images, tokens) of a finished batch, or None when it must be (re)made."""
    try:
        done = storage.load_npz(path)
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
    config_lib.validate(config)
    mesh = parallel.make_mesh(config.mesh)
    generator, tokenizer = models.build(config)
    gen_params, tok_params = load_params(config, generator, tokenizer, mesh)
    sampler = make_sampler_from_params(config, generator, tokenizer, gen_params, tok_params, mesh)
    s = config.sample
    labels = class_labels(config)
    n = len(labels)
    out_dir = os.path.join(workdir, "samples")
    if s.batch_size:
        batch = min(s.batch_size, n)
    else:  # a resumed job keeps its batches, whatever memory this machine has free now
        batch = multihost.chief_decides(lambda: recorded_batch_size(out_dir))
        if batch is None:
            batch = auto_batch_size(sampler, n, s.memory_gib)
        else:
            logging.info("sample.batch_size=0: %d, as recorded by this job's earlier run", batch)
    weights_digest = result_keys.digest(array_checksums((gen_params, tok_params)))
    identity = result_keys.samples_key(config, weights=weights_digest, batch_size=batch)
    digest = result_keys.digest(identity)

    parts_dir, png_dir = os.path.join(out_dir, "parts"), os.path.join(out_dir, "images")
    num_batches = -(-n // batch)
    parts = [os.path.join(parts_dir, f"batch_{k:05d}.npz") for k in range(num_batches)]
    grid_count = max(s.grid_cols, 1) * 8
    token_dtype = np.int32 if config.model == "var" else np.uint8

    def claim():  # the chief's: the directory, its identity and which batches are finished
        storage.makedirs(parts_dir)
        claim_samples_dir(out_dir, identity)
        if s.save_pngs:
            storage.makedirs(png_dir)
            # (an empty folder does not exist in a bucket)
            pngs = set(storage.listdir(png_dir)) if storage.isdir(png_dir) else set()
        done, pngs_missing = [], 0
        for k in range(num_batches):  # (one part in memory at a time: 50k images do not fit)
            part = _load_part(parts[k], _batch_index(k, batch, n), digest)
            if part is not None:
                done.append(k)
                if s.save_pngs:  # an earlier run without PNGs, or PNGs removed since
                    pngs_missing += _write_missing_pngs(png_dir, pngs, _batch_index(k, batch, n),
                                                        part[0], labels)
        if pngs_missing:
            logging.info("wrote %d PNGs of batches finished without them", pngs_missing)
        return done
    finished = set(multihost.chief_decides(claim))
    if finished:
        logging.info("%d of %d batches were finished by an earlier run of this job",
                     len(finished), num_batches)

    # Every process takes part in every batch (each device makes its rows); the chief writes the
    # part files, and each process the PNGs of its own rows.
    me, processes = jax.process_index(), jax.process_count()
    started, pngs_written = time.time(), 0
    for k in tqdm(sorted(set(range(num_batches)) - finished), desc="sampling", unit="batch",
                  disable=not multihost.is_chief()):
        index = _batch_index(k, batch, n)
        # A ragged last batch is padded to the full batch: one compiled shape for the whole job.
        padded = parallel.pad_to_multiple(labels[index], batch)
        out = sampler.generate(padded, seed=s.seed, first_index=int(index[0]))
        batch_images = out.images[:len(index)]
        batch_tokens = out.tokens[:len(index)].astype(token_dtype)
        if s.save_pngs:
            for row in range(me, len(index), processes):
                i = index[row]
                save_png(os.path.join(png_dir, png_name(i, labels[i])), batch_images[row])
                pngs_written += 1
            multihost.sync(f"sampling job: PNGs of batch {k}")  # before the part marks them done
        if multihost.is_chief():
            with atomic_write(parts[k]) as tmp:  # written last: it marks the batch finished
                np.savez(tmp, images=batch_images, tokens=batch_tokens, index=index, job=digest)
    seconds = time.time() - started
    multihost.sync("sampling job: every batch written")

    npz_path, grid_path = os.path.join(out_dir, "samples.npz"), os.path.join(out_dir, "grid.png")
    if multihost.is_chief():
        write_outputs(parts, labels, token_dtype, npz_path, grid_path, grid_count, s.grid_cols)
    multihost.sync("sampling job: outputs written")
    summary = dict(num_images=n, seconds=seconds, grid=grid_path, npz=npz_path,
                   pngs=png_dir if s.save_pngs else None)
    if processes > 1:
        logging.info("process %d of %d: its devices sampled %d rows, it wrote %d PNGs", me,
                     processes, _local_rows(mesh, batch) * (num_batches - len(finished)), pngs_written)
    logging.info("wrote %d images in %.1fs: grid %s, npz %s", n, seconds, grid_path, npz_path)
    return summary


def png_name(index: int, label: int) -> str:
    return f"{index:06d}_c{label}.png"


def _write_missing_pngs(png_dir: str, present: set, index: np.ndarray, images: np.ndarray,
                        labels: np.ndarray) -> int:
    """Writes the PNGs of a finished batch (global `index`, its `images`) not among the `present`
    names; returns how many."""
    missing = [row for row, i in enumerate(index) if png_name(i, labels[i]) not in present]
    for row in missing:
        save_png(os.path.join(png_dir, png_name(index[row], labels[index[row]])), images[row])
    return len(missing)


def _batch_index(k: int, batch: int, n: int) -> np.ndarray:
    """Global sample indices of batch k."""
    return np.arange(k * batch, min((k + 1) * batch, n))


def _local_rows(mesh, batch: int) -> int:
    """How many rows of each (padded) batch this process's devices make."""
    padded = -(-batch // parallel.data_parallel_size(mesh)) * parallel.data_parallel_size(mesh)
    rows = set()
    for index, *_ in parallel.batch_sharding(mesh).addressable_devices_indices_map((padded,)).values():
        rows.update(range(*index.indices(padded)))
    return len(rows)


def write_outputs(parts: list[str], labels: np.ndarray, token_dtype, npz_path: str, grid_path: str,
                  grid_count: int, grid_cols: int) -> None:
    """`samples.npz` and the grid from the finished parts. The npz is assembled part by part: the
    images of a 50k job never sit in memory at once."""
    def column(key):
        for part in parts:
            yield storage.load_npz(part)[key]
    first = storage.load_npz(parts[0])
    image_shape, token_shape = first["images"].shape[1:], first["tokens"].shape[1:]
    n = len(labels)
    npz.write(npz_path, {"arr_0": ((n,) + image_shape, np.uint8, column("images")),
                         "labels": labels,
                         "tokens": ((n,) + token_shape, token_dtype, column("tokens"))})
    grid_images = []
    for images in column("images"):
        if sum(map(len, grid_images)) >= grid_count:
            break
        grid_images.append(images)
    save_png(grid_path, make_grid(np.concatenate(grid_images)[:grid_count], grid_cols))
