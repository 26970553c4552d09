"""Build a reference batch for `mode=eval` from a dataset, as the ADM reference batches were made:
each image centre-cropped by guided-diffusion's protocol (`transforms.adm_center_crop`: BOX-halve
while the shorter side is ≥ 2R, BICUBIC to R, centre crop), a seeded random subset of the
records, written as an ADM-format npz (`arr_0` uint8 N×R×R×3, `labels`).

  python -m bigvar.eval.reference --data.source=folder --data.path=/data/imagenet/train \\
      --image_size=256 --num_images=10000 --out=ref_imagenet256.npz
  python -m bigvar.eval.reference --data.source=array_record --data.path='/data/in1k/train-*' ...
  python -m bigvar.eval.reference --data.source=tfds --data.tfds_name=imagenet2012 ...

With `--inception=DIR` the npz also holds the statistics the ADM files carry (`mu`, `sigma` of
the pool features, `mu_s`, `sigma_s` of the spatial ones), so `mode=eval` reads them instead of
computing them. The npz records what it was made from (`source`); rerunning with the same
arguments finds it and does nothing (it is computed once), other arguments are refused.
Unreadable images are skipped (and counted), as in training.
"""
from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm.auto import tqdm

from bigvar import npz, storage
from bigvar.data import pipeline, transforms

_DATA = config_flags.DEFINE_config_dict("data", pipeline.data_section(source="folder"),
                                        "Where the images come from (as config.data).")
_OUT = flags.DEFINE_string("out", None, "The reference .npz to write.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 256, "Resolution R of the reference images.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 10_000, "Images in the batch (ADM's: 10 000); "
                                   "0 = every record.")
_SEED = flags.DEFINE_integer("seed", 0, "Which random subset of the records.")
_INCEPTION = flags.DEFINE_string("inception", "", "Optional: an Inception weights dir; the npz "
                                 "then also holds mu, sigma, mu_s, sigma_s.")
_PREPROCESSING = flags.DEFINE_string("preprocessing", "adm", "Inception preprocessing for the "
                                     "statistics: adm | pytorch-fid.")


def source_identity(data, image_size: int, num_images: int, seed: int, inception: str,
                    preprocessing: str) -> dict:
    return {"data": json.loads(data.to_json()), "image_size": image_size,
            "num_images": num_images, "seed": seed,
            "inception": storage.absolute(inception) if inception else "",
            "preprocessing": preprocessing if inception else ""}


def reference_chunks(data, image_size: int, num_images: int, seed: int, chunk: int = 256):
    """(number of images, iterator of (uint8 (n, R, R, 3) images, labels) chunks, skip counter):
    a seeded subset of the records, centre-cropped; an unreadable record is replaced by the
    next one in the order. Chunks keep memory flat (10k images at 512 px are 7.9 GB)."""
    source = pipeline.make_source(data, image_size)
    order = np.random.default_rng(seed).permutation(len(source))
    wanted = len(source) if num_images <= 0 else min(num_images, len(source))
    skipped = [0]

    def chunks():
        images, labels, done = [], [], 0
        progress = tqdm(total=wanted, desc="reference images", unit="img")
        for index in order:
            if done == wanted:
                break
            example = source[int(index)]
            image, _ = transforms.try_decode(example, max_aspect_ratio=data.max_aspect_ratio,
                                             max_pixels=data.max_pixels)
            if image is None:
                skipped[0] += 1
                continue
            if image.shape[:2] != (image_size, image_size):
                image = transforms.adm_center_crop(image, image_size)
            images.append(image), labels.append(int(example.get("label", -1)))
            done += 1
            progress.update()
            if len(images) == chunk or done == wanted:
                yield np.stack(images), np.asarray(labels, np.int64)
                images, labels = [], []
        progress.close()
        if done < wanted:
            raise ValueError(f"only {done} of the {wanted} records are readable images "
                             f"({skipped[0]} skipped); lower --num_images")
    return wanted, chunks(), skipped


def build(data, out: str, image_size: int = 256, num_images: int = 10_000, seed: int = 0,
          inception_dir: str = "", preprocessing: str = "adm") -> dict:
    """Writes the reference npz (or finds it made already); returns a summary."""
    identity = source_identity(data, image_size, num_images, seed, inception_dir, preprocessing)
    if storage.exists(out):
        try:
            with storage.open(out, "rb") as raw, np.load(raw) as done:
                recorded = json.loads(str(done["source"])) if "source" in done.files else None
        except Exception as e:  # not an npz
            raise ValueError(f"{out} exists and is not a reference npz ({e}); choose another --out") from None
        if recorded != identity:
            raise ValueError(f"{out} exists and was made from other arguments ({recorded}); choose "
                             "another --out or delete it")
        return {"out": out, "reused": True}
    count, chunks, skipped = reference_chunks(data, image_size, num_images, seed)
    extractor = stats = None
    if inception_dir:
        from bigvar.eval import inception, metrics
        extractor = inception.FeatureExtractor(inception.load_inception(inception_dir), preprocessing)
        stats = {k: metrics.MomentAccumulator(extractor.mesh) for k in ("pool", "spatial")}
    labels = []

    def images():  # streamed into arr_0; gathers the labels and statistics on the way
        for chunk_images, chunk_labels in chunks:
            labels.append(chunk_labels)
            if extractor is not None:
                features = extractor(chunk_images)
                stats["pool"].add(features["pool"]), stats["spatial"].add(features["spatial"])
            yield chunk_images

    arrays = {"arr_0": ((count, image_size, image_size, 3), np.uint8, images()),
              "labels": lambda: np.concatenate(labels),
              "source": np.asarray(json.dumps(identity, sort_keys=True))}
    if stats is not None:  # written after arr_0, so the statistics are complete
        for key, name, field in (("mu", "pool", "mu"), ("sigma", "pool", "sigma"),
                                 ("mu_s", "spatial", "mu"), ("sigma_s", "spatial", "sigma")):
            arrays[key] = lambda name=name, field=field: getattr(stats[name].statistics(), field)
    npz.write(out, arrays)
    return {"out": out, "reused": False, "num_images": count, "skipped_unreadable": skipped[0]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _OUT.value:
        raise app.UsageError("--out=REF.npz is required")
    try:
        summary = build(_DATA.value, _OUT.value, _IMAGE_SIZE.value, _NUM_IMAGES.value, _SEED.value,
                        _INCEPTION.value, _PREPROCESSING.value)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    app.run(main)
