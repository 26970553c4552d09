"""`mode=eval`: FID, sFID, Inception Score, Precision and Recall of a generator, as the ADM
evaluator reports them.

  python -m bigvar.main --config=configs/var_d16.py:fid --workdir=W --config.mode=eval \\
      --config.init_from=ckpt/var_d16 --config.eval.inception=ckpt/inception \\
      --config.eval.reference=VIRTUAL_imagenet256_labeled.npz

1. samples: the resumable sampling job (`sample.*`, e.g. 50 per class with `:fid`) writes
   `W/samples/samples.npz`; or `--config.eval.samples=some.npz` evaluates an existing ADM-format
   npz (`arr_0`: uint8 N×H×W×3, e.g. one made by the official PyTorch code) without sampling;
2. Inception features of the samples and of the reference batch's `arr_0`, streamed in batches of
   `eval.batch_size` over every device; each finished batch is kept in `W/eval/features/` (with
   the checksum of its images and the network's), so an interrupted eval resumes without
   recomputing it;
3. the metrics (`bigvar.eval.metrics`); the reference's statistics are its precomputed `mu`,
   `sigma`, `mu_s`, `sigma_s` when the npz holds them (as the ADM evaluator does), else computed.

Writes `W/eval/metrics.json` (the metrics, the number of images, the settings, seconds) and
prints a table.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import zipfile
from typing import Iterable, Iterator

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from bigvar import multihost, npz, parallel, result_keys, storage
from bigvar.checksums import array_checksums
from bigvar.errors import UserError, invalid
from bigvar.eval import inception, metrics
from bigvar.storage import atomic_write


def validate_eval_section(section: ml_collections.ConfigDict) -> None:
    if section.preprocessing not in inception.PREPROCESSING:
        invalid("eval.preprocessing", section.preprocessing, f"one of {inception.PREPROCESSING}")
    if section.batch_size < 1:
        invalid("eval.batch_size", section.batch_size, "≥ 1")
    for field, example in (("inception", "ckpt/inception (python -m bigvar.convert inception "
                            "--pth=pt_inception-2015-12-05-6726825d.pth --out=ckpt/inception)"),
                           ("reference", "VIRTUAL_imagenet256_labeled.npz (the ADM reference batch) "
                            "or one made by python -m bigvar.eval.reference")):
        if not section[field]:
            raise UserError(f"mode=eval needs --config.eval.{field}: e.g. {example}")
    for field in ("inception", "reference", "samples"):
        if section[field] and not storage.exists(section[field]):
            raise UserError(f"--config.eval.{field}={section[field]} does not exist")


def check_image_npz(path: str, what: str) -> tuple[int, ...]:
    """The shape of `arr_0`, after checking that it is uint8 N×H×W×3 (ADM's layout)."""
    try:
        shape, dtype = npz.shape_and_dtype(path, "arr_0")
    except KeyError as e:
        raise UserError(f"{what} {path}: {e.args[0]}; an ADM-format npz keeps its images in "
                        "arr_0 (np.savez(path, arr_0=images))") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not a zip, damaged
        raise UserError(f"{what} {path} is not a readable .npz ({e})") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or min(shape[1:3]) < 1:
        raise UserError(f"{what} {path}: arr_0 is {dtype} {shape}; the evaluator needs uint8 images "
                        "N×H×W×3 (channels last, 0–255): np.savez(path, arr_0=images.astype(np.uint8))")
    return shape


REFERENCE_STATISTICS = {"mu": (inception.POOL_DIM,), "sigma": (inception.POOL_DIM,) * 2,
                        "mu_s": (inception.SPATIAL_DIM,), "sigma_s": (inception.SPATIAL_DIM,) * 2}


def check_reference_statistics(path: str) -> None:
    """A reference's precomputed statistics (ADM's `mu`, `sigma`, `mu_s`, `sigma_s`), checked
    before any feature is computed: all four or none, float arrays of the Inception's feature
    sizes, finite."""
    with storage.open(path, "rb") as raw, np.load(raw) as ref:
        present = [k for k in REFERENCE_STATISTICS if k in ref.files]
    if not present:
        return
    missing = [k for k in REFERENCE_STATISTICS if k not in present]
    if missing:
        raise UserError(f"reference {path} has {present} but not {missing}; an ADM reference "
                        "batch holds all four (or none: they are then computed)")
    for key, expected in REFERENCE_STATISTICS.items():
        try:
            shape, dtype = npz.shape_and_dtype(path, key)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"reference {path}: {key} does not load ({e})") from None
        if not np.issubdtype(dtype, np.floating) or tuple(shape) != expected:
            raise UserError(f"reference {path}: {key} is {dtype} {tuple(shape)}; the Inception's "
                            f"statistics are floats of shape {expected} (is it another network's?)")
        with storage.open(path, "rb") as raw, np.load(raw) as ref:
            if not np.isfinite(ref[key]).all():
                raise UserError(f"reference {path}: {key} has NaN or infinite values")


def _check_finite(features: dict, what: str, cache: str) -> None:
    bad = [name for name in ("pool", "logits") if not np.isfinite(features[name]).all()]
    if bad:
        raise UserError(f"the {what} Inception features ({', '.join(bad)}) have NaN or infinite "
                        f"values: a damaged feature cache or Inception weights; delete {cache} to "
                        "compute them again, or convert the Inception weights again")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def cached_batches(batches: Iterable[np.ndarray], compute, out_dir: str, digest: str,
                   desc: str, total: int) -> Iterator[tuple[dict, bool]]:
    """(features, computed) for each image batch: `compute(images)` → {name: array}, kept in
    `out_dir/part_<k>.npz` with the checksum of its images and `digest` (what computed it); a
    part made from the same images with the same digest is read instead (resume). With several
    processes, `compute` is collective: a batch is read from its part only when every process
    could, and the chief writes the parts."""
    storage.makedirs(out_dir)
    for k, images in enumerate(tqdm(batches, total=total, desc=desc, unit="batch",
                                    disable=not multihost.is_chief())):
        part = os.path.join(out_dir, f"part_{k:05d}.npz")
        key = f"{digest}:{_sha(np.ascontiguousarray(images).tobytes())}"
        features = _load_part(part, key)
        if multihost.all_true(features is not None):
            yield features, False
            continue
        features = compute(images)
        if multihost.is_chief():
            with atomic_write(part) as tmp:
                np.savez(tmp, key=key, **features)
        yield features, True


def _load_part(path: str, key: str) -> dict | None:
    try:
        part = storage.load_npz(path)
        if str(part.pop("key")) != key:
            return None
        return part
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged part is computed again
        logging.warning("%s does not load (%s: %s); computing it again", path, type(e).__name__, e)
        return None


def extract_features(path: str, out_dir: str, extractor: inception.FeatureExtractor,
                     network_digest: str, desc: str) -> tuple[dict, int]:
    """Inception features of `arr_0` of `path`, in batches (resumable, see `cached_batches`).
    Returns ({"pool", "logits": (N, D) arrays, "spatial": a MomentAccumulator (only the spatial
    features' moments are needed)}, the number of batches computed)."""
    shape = check_image_npz(path, desc)
    batch = extractor.batch_size
    pool, logits, spatial = [], [], metrics.MomentAccumulator(extractor.mesh)
    computed = 0
    for features, fresh in cached_batches(npz.iter_rows(path, "arr_0", batch), extractor, out_dir,
                                          network_digest, f"Inception features ({desc})",
                                          -(-shape[0] // batch)):
        pool.append(features["pool"]), logits.append(features["logits"])
        spatial.add(features["spatial"])
        computed += fresh
    features = {"pool": np.concatenate(pool), "logits": np.concatenate(logits), "spatial": spatial}
    _check_finite(features, desc, out_dir)
    return features, computed


def reference_statistics(path: str, features: dict) -> tuple[metrics.Statistics, metrics.Statistics, bool]:
    """(pool, spatial) statistics of the reference: the npz's own `mu`, `sigma`, `mu_s`,
    `sigma_s` when it has them (the ADM evaluator's rule; `check_reference_statistics` has
    checked them), else from the features."""
    with storage.open(path, "rb") as raw, np.load(raw) as ref:
        if "mu" in ref.files:
            return (metrics.Statistics(ref["mu"], ref["sigma"]),
                    metrics.Statistics(ref["mu_s"], ref["sigma_s"]), True)
    return (metrics.statistics(features["pool"]), features["spatial"].statistics(), False)


def compute_metrics(sample: dict, reference: dict, ref_path: str, mesh,
                    precision_recall: bool = True) -> dict:
    """The metrics of the sample features against the reference features. A Fréchet distance
    needs more images than feature dimensions (else the covariance is singular, the matrix root
    may turn complex, where ADM's evaluator stops, and the figure means nothing): it is then
    None, with the reason in `warnings`; P/R and IS are still reported."""
    ref_pool, ref_spatial, precomputed = reference_statistics(ref_path, reference)
    result, notes = {"inception_score": metrics.inception_score(sample["logits"])}, []
    n = len(sample["pool"])
    for key, ours, theirs in (("fid", lambda: metrics.statistics(sample["pool"], mesh), ref_pool),
                              ("sfid", lambda: sample["spatial"].statistics(), ref_spatial)):
        dims = len(theirs.mu)
        if n <= dims:
            result[key] = None
            notes.append(f"{key}: not computed: {n} images for {dims}-dimensional features give a "
                         "singular covariance; evaluate more images than that (papers use 50 000)")
            continue
        try:
            result[key] = metrics.frechet_distance(ours(), theirs)
        except ValueError as e:
            result[key] = None
            notes.append(f"{key}: not computed: {e}")
    if precision_recall:
        ref_radii = metrics.manifold_radii(reference["pool"], mesh)
        sample_radii = metrics.manifold_radii(sample["pool"], mesh)
        result["precision"], result["recall"] = metrics.precision_recall(
            reference["pool"], ref_radii, sample["pool"], sample_radii, mesh)
    result["reference_statistics"] = "from the reference npz" if precomputed else "computed"
    result["warnings"] = notes
    for note in notes:
        logging.warning("%s", note)
    return result


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from bigvar import config_lib
    config_lib.validate(config)
    started = time.time()
    section = config.eval
    mesh = parallel.make_mesh(config.mesh)
    try:
        variables = inception.load_inception(section.inception)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    ref_shape = check_image_npz(section.reference, "reference batch")
    check_reference_statistics(section.reference)
    if section.samples:
        samples_path = section.samples
    else:
        from bigvar.sampling import job
        size = config_lib.image_size(config)
        if ref_shape[1:3] != (size, size):
            raise UserError(_resolution_mismatch(section.reference, ref_shape, (size, size)))
        samples_path = job.run(config, workdir)["npz"]
    sample_shape = check_image_npz(samples_path, "samples")
    if sample_shape[1:3] != ref_shape[1:3]:
        raise UserError(_resolution_mismatch(section.reference, ref_shape, sample_shape[1:3]))
    fewest = metrics.NEIGHBOURHOOD + 1 if section.precision_recall else 2
    for path, shape in ((samples_path, sample_shape), (section.reference, ref_shape)):
        if shape[0] < fewest:
            raise UserError(f"{path} holds {shape[0]} images; the metrics need at least {fewest} "
                            f"(precision/recall: the distance to the {metrics.NEIGHBOURHOOD}rd "
                            "nearest neighbour), and published figures use 50 000 samples")

    extractor = inception.FeatureExtractor(variables, section.preprocessing, mesh, section.batch_size)
    network_digest = result_keys.digest(result_keys.eval_features_key(
        config, network=result_keys.digest(array_checksums(variables))))
    eval_dir = os.path.join(workdir, "eval")
    sample_features, computed_s = extract_features(
        samples_path, os.path.join(eval_dir, "features", "samples"), extractor, network_digest, "samples")
    ref_features, computed_r = extract_features(
        section.reference, os.path.join(eval_dir, "features", "reference"), extractor,
        network_digest, "reference")
    result = compute_metrics(sample_features, ref_features, section.reference, mesh,
                             section.precision_recall)
    result.update(
        num_images=int(sample_shape[0]), num_reference_images=int(ref_shape[0]),
        resolution=list(sample_shape[1:3]), samples=storage.absolute(samples_path),
        reference=storage.absolute(section.reference), inception=storage.absolute(section.inception),
        preprocessing=section.preprocessing,
        sampling=None if section.samples else json.loads(config.sample.to_json()),
        feature_batches_computed={"samples": computed_s, "reference": computed_r},
        seconds=round(time.time() - started, 1))
    not_finite = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    if not_finite:  # (finite features and statistics give finite metrics: a bug if reached)
        raise RuntimeError(f"{', '.join(not_finite)} came out NaN or infinite; not written")
    path = os.path.join(eval_dir, "metrics.json")
    if multihost.is_chief():
        with atomic_write(path) as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=2, allow_nan=False)  # always valid JSON
        print(format_table(result))
    multihost.sync("eval: metrics written")
    return {"metrics": path, **{k: result[k] for k in ("fid", "sfid", "inception_score")}}


def _resolution_mismatch(ref_path: str, ref_shape, sample_hw) -> str:
    return (f"reference batch {ref_path} holds {ref_shape[1]}×{ref_shape[2]} images but the samples "
            f"are {sample_hw[0]}×{sample_hw[1]}: use the reference of that resolution (ADM's "
            f"VIRTUAL_imagenet{sample_hw[0]}_labeled.npz / VIRTUAL_imagenet512.npz, or build one with "
            "python -m bigvar.eval.reference --image_size=…)")


def format_table(result: dict) -> str:
    rows = [("Inception Score", "inception_score"), ("FID", "fid"), ("sFID", "sfid"),
            ("Precision", "precision"), ("Recall", "recall")]
    lines = [f"{'metric':<16}{'value':>12}", "-" * 28]
    lines += [f"{name:<16}{result[key]:>12.4f}" if result[key] is not None else f"{name:<16}{'n/a':>12}"
              for name, key in rows if key in result]
    lines.append(f"({result['num_images']} samples vs {result['num_reference_images']} reference "
                 f"images, {result['preprocessing']} preprocessing, {result['seconds']} s)")
    return "\n".join(lines)
