"""`mode=probe`: BiGR's linear probe (docs/official_behaviour.md), top-1 on a held-out split.

  python -m bigvar.main --config=configs/bigr_tiny.py --workdir=W --config.mode=probe
  python -m bigvar.main --config=configs/bigr.py:l_d24 --workdir=W --config.mode=probe \\
      --config.init_from=ckpt/bigr_l_d24 --config.data.path=/data/imagenet/train \\
      --config.probe.val_path=/data/imagenet/val --config.probe.train_images=0

1. Features: each image is centre-cropped (ADM's protocol, as BiGR's data), encoded by the B-AE
   into deterministic bits (p > 0.5), and run through the generator with the unconditional (null)
   class up to block `probe.layer` (inclusive), mean-pooled over the tokens: (D,) per image
   (`models.bigr.features`). Batches are sharded over every device and each finished batch is
   kept in `W/probe/features/` (resumable, like the eval's Inception features).
2. The classifier: the features standardised with the training split's mean and variance (the
   BN(affine=False) of the MAE-style probe BiGR compares with, without a running estimate), then
   one linear layer, trained with LARS (MAE's probe: base lr 0.1 · batch / 256, no weight decay,
   cosine with warm-up; BiGR released no probe recipe, so unverified), full-batch statistics,
   seeded shuffling.
3. `W/probe/result.json`: top-1 on the validation split (and on the training split), the layer,
   the counts, the settings; printed as a line.

The data: `config.data` is the training split. The validation split is `probe.val_path` (an
image folder or ArrayRecord glob of the same source kind); with the built-in procedural data it is
another procedural seed (images the training split never holds), so the probe runs offline.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigvar import models, multihost, parallel, result_keys
from bigvar.checksums import array_checksums
from bigvar.data import pipeline, transforms
from bigvar.errors import UserError, invalid
from bigvar.eval.job import cached_batches
from bigvar.storage import atomic_write

VAL_SEED_OFFSET = 3_000_017  # procedural validation images: a seed the training split never uses


def validate_probe_section(probe: ml_collections.ConfigDict, n_layer: int) -> None:
    if not -1 <= probe.layer < n_layer:
        invalid("probe.layer", probe.layer, f"a block index in [0, {n_layer}), or -1 for the "
                "middle block")
    for field in ("batch_size", "probe_batch_size", "epochs"):
        if probe[field] < 1:
            invalid(f"probe.{field}", probe[field], "≥ 1")
    if probe.train_images < 0 or probe.val_images < 0:
        invalid("probe.train_images/val_images", (probe.train_images, probe.val_images),
                "≥ 0 (0 = every record)")


def probe_layer(probe, n_layer: int) -> int:
    return n_layer // 2 if probe.layer == -1 else probe.layer


def _split_images(data, image_size: int, count: int, desc: str, chunk: int):
    """(number of images, iterator of (uint8 images, labels) chunks) of one split, in record
    order, centre-cropped; unreadable records are skipped."""
    source = pipeline.make_source(data, image_size)
    total = len(source) if count <= 0 else min(count, len(source))

    def chunks():
        images, labels, index, done = [], [], 0, 0
        while done < total and index < len(source):
            example = source[index]
            index += 1
            image, _ = transforms.try_decode(example, max_aspect_ratio=data.max_aspect_ratio,
                                             max_pixels=data.max_pixels)
            if image is None:
                continue
            if image.shape[:2] != (image_size, image_size):
                image = transforms.adm_center_crop(image, image_size)
            images.append(image), labels.append(int(example["label"]))
            done += 1
            if len(images) == chunk or done == total:
                yield np.stack(images), np.asarray(labels, np.int32)
                images, labels = [], []
        if done < total:
            raise UserError(f"the {desc} split has only {done} readable images of the {total} "
                            "asked for; lower --config.probe.train_images / val_images")
    return total, chunks()


class FeatureFn:
    """Images (uint8) → mean-pooled BiGR features at one layer (`BiGRSampler.features`:
    deterministic bits, the null class), data-parallel over the mesh."""

    def __init__(self, config, mesh, layer: int, params=None):
        """`params`: (generator, tokenizer) params; by default `config.init_from`'s."""
        from bigvar.sampling.job import load_params, make_sampler_from_params
        model, tokenizer = models.build(config)
        params = params if params is not None else load_params(config, model, tokenizer, mesh)
        self.sampler = make_sampler_from_params(config, model, tokenizer, *params, mesh)
        self.layer = layer
        self.digest = result_keys.digest(result_keys.probe_features_key(
            config, weights=result_keys.digest(array_checksums(params)), layer=layer))

    def __call__(self, images: np.ndarray) -> dict:
        return {"features": self.sampler.features(images, self.layer, deterministic=True)}


def split_features(fn: FeatureFn, data, image_size: int, count: int, out_dir: str, desc: str,
                   batch: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(features (N, D), labels (N,), batches computed) of one split."""
    total, chunks = _split_images(data, image_size, count, desc, batch)
    labels, features, computed = [], [], 0

    def images():
        for chunk_images, chunk_labels in chunks:
            labels.append(chunk_labels)
            yield chunk_images
    for out, fresh in cached_batches(images(), fn, out_dir, fn.digest, f"BiGR features ({desc})",
                                     -(-total // batch)):
        features.append(out["features"])
        computed += fresh
    return np.concatenate(features), np.concatenate(labels), computed


def train_linear_probe(train_x, train_y, num_classes: int, probe, seed: int = 0):
    """Standardise with the training statistics, then a linear layer trained with LARS; returns
    a function features → logits."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = (train_x - mean) / std
    n, d = x.shape
    batch = min(probe.probe_batch_size, n)
    steps_per_epoch = max(n // batch, 1)
    steps = probe.epochs * steps_per_epoch
    lr = probe.blr * batch / 256
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(probe.warmup_epochs * steps_per_epoch,
                                                               steps // 2), steps)
    tx = optax.lars(schedule, weight_decay=probe.weight_decay, momentum=0.9)
    key = jax.random.key(seed)
    params = {"kernel": 0.01 * jax.random.truncated_normal(key, -2, 2, (d, num_classes)),
              "bias": jnp.zeros((num_classes,))}
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            logits = xb @ p["kernel"] + p["bias"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for _ in range(probe.epochs):
        order = rng.permutation(n)
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            params, opt_state, _ = step(params, opt_state, jnp.asarray(x[idx]), jnp.asarray(train_y[idx]))
    return lambda feats: np.asarray(((feats - mean) / std) @ params["kernel"] + params["bias"])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from bigvar import config_lib
    config_lib.validate(config)
    if config.model != "bigr":
        raise UserError(f"mode=probe probes BiGR's features; config.model is {config.model!r}")
    started = time.time()
    probe = config.probe
    mesh = parallel.make_mesh(config.mesh)
    layer = probe_layer(probe, config.bigr.n_layer)
    size = config_lib.image_size(config)
    val_data = ml_collections.ConfigDict(config.data.to_dict())
    if probe.val_path:
        val_data.path = probe.val_path
    elif config.data.source == "procedural":
        val_data.procedural_seed = config.data.procedural_seed + VAL_SEED_OFFSET
    else:
        raise UserError("mode=probe needs --config.probe.val_path (the validation images, e.g. "
                        "/data/imagenet/val) for a non-procedural data source")
    fn = FeatureFn(config, mesh, layer)
    out = os.path.join(workdir, "probe")
    train_x, train_y, computed_t = split_features(fn, config.data, size, probe.train_images,
                                                  os.path.join(out, "features", "train"), "train",
                                                  probe.batch_size)
    val_x, val_y, computed_v = split_features(fn, val_data, size, probe.val_images,
                                              os.path.join(out, "features", "val"), "val",
                                              probe.batch_size)
    classify = train_linear_probe(train_x, train_y, config.bigr.num_classes, probe, probe.seed)
    result = {
        "top1": float(np.mean(np.argmax(classify(val_x), -1) == val_y)),
        "train_top1": float(np.mean(np.argmax(classify(train_x), -1) == train_y)),
        "layer": layer, "n_layer": config.bigr.n_layer, "feature_dim": int(train_x.shape[1]),
        "train_images": int(len(train_y)), "val_images": int(len(val_y)),
        "chance": 1.0 / config.bigr.num_classes,
        "feature_batches_computed": {"train": computed_t, "val": computed_v},
        "settings": json.loads(probe.to_json()), "seconds": round(time.time() - started, 1),
    }
    path = os.path.join(out, "result.json")
    if multihost.is_chief():
        with atomic_write(path) as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        print(f"linear probe, block {layer} of {config.bigr.n_layer}: top-1 {100 * result['top1']:.1f}% "
              f"on {result['val_images']} validation images (train {100 * result['train_top1']:.1f}%, "
              f"chance {100 * result['chance']:.1f}%)")
    multihost.sync("probe: result written")
    return {"result": path, "top1": result["top1"]}
