"""The built-in end-to-end demo (`configs/demo.py`, `configs/demo_bigr.py`; model=demo).

    python -m bigvar.main --config=configs/demo.py --workdir=out/demo

On the built-in procedural dataset (10 classes of coloured shapes, no files), in order:
  1. train a small tokenizer (multi-scale VQ-VAE, or a binary autoencoder) and export it;
  2. train a small generator (VAR, or BiGR) on its tokens and export it (the EMA when kept);
  3. train a small classifier (the judge) on real procedural images, seconds;
  4. sample a class-conditional grid with the exported generator;
  5. report: the judge's accuracy on held-out real images, the fraction of generated images it
     assigns to their conditioning class (class agreement), the tokenizer's held-out PSNR, and
     where the images and logs are (also in <workdir>/summary.json).

Every stage resumes or reuses its finished work: re-running with the same workdir continues an
interrupted stage and skips finished ones. A stage whose input changed (a tokenizer trained
further, say) is redone, with a warning, rather than mixed with stale results.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import ml_collections
import numpy as np

from bigvar import config_lib, weights
from bigvar.models import TOKENIZER_SECTIONS
from bigvar.storage import atomic_write

STATE_FILE = "demo_state.json"


# ---- the config --------------------------------------------------------------------------------
def demo_config(tokenizer: ml_collections.ConfigDict, generator: ml_collections.ConfigDict,
                quick: bool = False) -> ml_collections.ConfigDict:
    """The demo job: train `tokenizer` then `generator` (training configs on the procedural
    data; `configs/demo.py` builds them from the tiny configs), then judge. `quick` cuts every
    stage to a few steps (a smoke run of the whole pipeline, for tests)."""
    from bigvar.eval.shape_classifier import classifier_config
    config = ml_collections.ConfigDict()
    config.model = "demo"
    config.mode = "train"
    config.seed = 0
    config.samples_per_class = 10  # generated images per class, judged and shown in the grid
    config.heldout_images = 256  # real images for the tokenizer's held-out PSNR
    config.classifier = classifier_config(steps=300)
    config.tokenizer, config.generator = tokenizer, generator
    if quick:
        for section in (config.tokenizer.train, config.generator.train):
            section.update(steps=4, log_every=2, checkpoint_every=2, sample_every=0)
        config.classifier.update(steps=30, heldout_images=100)
        config.samples_per_class = 2
        config.heldout_images = 16
    return config


# ---- the run -----------------------------------------------------------------------------------
def _stage(number: int, text: str) -> None:
    print(f"\n[{number}/5] {text}", flush=True)


def _load_state(workdir: str) -> dict:
    path = os.path.join(workdir, STATE_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _save_state(workdir: str, state: dict) -> None:
    with atomic_write(os.path.join(workdir, STATE_FILE)) as tmp, open(tmp, "w") as f:
        json.dump(state, f, indent=2)


def _redo_if_changed(state: dict, key: str, value, directory: str, what: str) -> None:
    """Removes `directory` when it was produced from a different `value` of input `key`."""
    if key in state and state[key] != value and os.path.exists(directory):
        logging.warning("%s was made from an earlier %s; redoing it", what, key.replace("_", " "))
        shutil.rmtree(directory)


def _export_step(export_dir: str) -> int | None:
    try:
        return int(weights.load_config(export_dir)["source"]["step"])
    except (FileNotFoundError, KeyError):
        return None


def _unlocked(section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(section.to_dict())


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from bigvar import rundir
    workdir = rundir.prepare(workdir)
    with rundir.exclusive(workdir, what="demo"):  # each stage's directory also checks its config
        return _run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from bigvar import parallel
    from bigvar.eval import shape_classifier
    from bigvar.sampling import job
    from bigvar.train import generator as gen_lib, tokenizer as tok_lib

    began = time.time()
    state = _load_state(workdir)
    tok_cfg, gen_cfg = _unlocked(config.tokenizer), _unlocked(config.generator)
    tok_cfg.mode = "train"
    gen_model = gen_cfg.model
    section = TOKENIZER_SECTIONS[tok_cfg.model]
    for field in weights.ARCH_FIELDS[section]:  # the generator loads this tokenizer
        gen_cfg[section][field] = tok_cfg[section][field]
    times = {}

    # 1. tokenizer
    _stage(1, f"tokenizer: {tok_cfg.model} on the procedural dataset "
              f"({tok_cfg.train.steps} steps, batch {tok_cfg.train.batch_size})")
    t = time.time()
    tok_dir = os.path.join(workdir, "tokenizer")
    tok_summary = tok_lib.run(tok_cfg, tok_dir)
    tok_export = os.path.join(tok_dir, "export")
    if _export_step(tok_export) != tok_summary["steps"]:
        tok_lib.export_tokenizer(tok_cfg, tok_dir, tok_export)
    times["tokenizer"] = time.time() - t

    # 2. generator
    _stage(2, f"generator: {gen_model} on the tokenizer's codes "
              f"({gen_cfg.train.steps} steps, batch {gen_cfg.train.batch_size})")
    t = time.time()
    gen_dir = os.path.join(workdir, "generator")
    _redo_if_changed(state, "tokenizer_step", tok_summary["steps"], gen_dir, "the generator")
    state["tokenizer_step"] = tok_summary["steps"]
    _save_state(workdir, state)
    gen_cfg.mode, gen_cfg.tokenizer_from = "train", tok_export
    gen_summary = gen_lib.run(gen_cfg, gen_dir)
    gen_export = os.path.join(gen_dir, "export")
    if _export_step(gen_export) != gen_summary["steps"]:
        gen_lib.export_weights(gen_cfg, gen_dir, gen_export)
    times["generator"] = time.time() - t

    # 3. the judge
    _stage(3, "judge: a small classifier of the procedural classes")
    t = time.time()
    image_size = config_lib.image_size(gen_cfg)
    num_classes = gen_cfg.data.num_classes
    judge, judge_accuracy = shape_classifier.train_or_load(
        config.classifier, num_classes=num_classes, image_size=image_size,
        workdir=os.path.join(workdir, "judge"), procedural_seed=gen_cfg.data.procedural_seed)
    times["judge"] = time.time() - t

    # 4. samples
    _stage(4, f"sampling {config.samples_per_class} images for each of the {num_classes} classes")
    t = time.time()
    samples_dir = os.path.join(workdir, "samples")
    _redo_if_changed(state, "generator_step", gen_summary["steps"], samples_dir, "the samples")
    _redo_if_changed(state, "tokenizer_step_of_samples", tok_summary["steps"], samples_dir,
                     "the samples")
    state.update(generator_step=gen_summary["steps"], tokenizer_step_of_samples=tok_summary["steps"])
    _save_state(workdir, state)
    sample_cfg = _unlocked(config.generator)
    sample_cfg.update(mode="sample", init_from=gen_export, tokenizer_from="")
    sample_cfg[section] = gen_cfg[section]
    sample_cfg.sample.update(classes=(), images_per_class=config.samples_per_class,
                             grid_cols=config.samples_per_class)
    settings = json.loads(sample_cfg.sample.to_json(sort_keys=True))  # the job refuses a change
    _redo_if_changed(state, "sample_settings", settings, samples_dir, "the samples")
    state["sample_settings"] = settings
    _save_state(workdir, state)
    sample_summary = job.run(sample_cfg, workdir)
    times["sampling"] = time.time() - t
    from bigvar.images import make_grid, save_png
    with np.load(sample_summary["npz"]) as f:
        images, labels = f["arr_0"], f["labels"]
    grid_path = os.path.join(workdir, "grid.png")  # every class, one row each
    save_png(grid_path, make_grid(images, cols=config.samples_per_class))

    # 5. report
    _stage(5, "judging the samples")
    t = time.time()
    predicted = judge.predict(images)
    agreement = float(np.mean(predicted == labels))
    per_class = {int(c): float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)}
    mesh = parallel.make_mesh(tok_cfg.mesh)
    recon = tok_lib.Reconstructor(tok_cfg, mesh)
    heldout, _ = tok_lib.heldout_images(tok_cfg, config.heldout_images)
    tok_params = weights.load_weights(tok_export)[section]
    psnr = recon.psnr(tok_params, heldout)
    recon_grid = os.path.join(workdir, "reconstructions.png")
    save_png(recon_grid, recon.grid(tok_params, heldout[:20], cols=10))
    # Fréchet distances in the judge's feature space, against the judge's held-out real images.
    # The floor is a real set as large as the samples (held-out tokenizer images): what a perfect
    # generator would score at this sample count.
    real_x, _ = shape_classifier.heldout_set(num_classes, image_size, config.classifier.heldout_images,
                                             gen_cfg.data.procedural_seed)
    real = np.round(real_x * 255.0).astype(np.uint8)
    heldout_uint8 = tok_lib.to_uint8(heldout, *recon.range)
    recon_uint8 = tok_lib.to_uint8(recon(tok_params, heldout), *recon.range)
    frechet = {"samples": judge.frechet_distance(images, real),
               "real_floor": judge.frechet_distance(heldout_uint8[:len(images)], real),
               "reconstructions": judge.frechet_distance(recon_uint8, real)}
    times["report"] = time.time() - t

    from bigvar.data.procedural import class_names
    names = class_names(num_classes)
    summary = {
        "generator": gen_model, "tokenizer": tok_cfg.model,
        "class_agreement": round(agreement, 4),
        "class_agreement_per_class": {names[c]: round(v, 3) for c, v in per_class.items()},
        "judge_heldout_accuracy": round(judge_accuracy, 4),
        "tokenizer_heldout_psnr_db": round(psnr, 2),
        "frechet_distance_judge": {k: None if v is None else round(v, 3) for k, v in frechet.items()},
        "num_samples": int(len(labels)),
        "grid": grid_path, "reconstructions": recon_grid,
        "samples_npz": sample_summary["npz"],
        "logs": {"tokenizer": tok_summary["metrics"], "generator": gen_summary["metrics"]},
        "weights": {"tokenizer": tok_export, "generator": gen_export},
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "wall_seconds_this_run": round(time.time() - began, 1),
    }
    with atomic_write(os.path.join(workdir, "summary.json")) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    _print_summary(summary, workdir, names)
    return {"summary": os.path.join(workdir, "summary.json"), "grid": summary["grid"],
            "class_agreement": summary["class_agreement"],
            "judge_heldout_accuracy": summary["judge_heldout_accuracy"],
            "tokenizer_heldout_psnr_db": summary["tokenizer_heldout_psnr_db"],
            "frechet_distance_judge": summary["frechet_distance_judge"]["samples"]}


def _fd(value) -> str:
    return "n/a (fewer images than feature dimensions)" if value is None else f"{value:.2f}"


def _print_summary(s: dict, workdir: str, names: list[str]) -> None:
    minutes = s["wall_seconds_this_run"] / 60
    stages = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in s["seconds"].items())
    fd = s["frechet_distance_judge"]
    print(f"""
==== bigvar demo ({s['tokenizer']} + {s['generator']}) finished in {minutes:.1f} min ====
stage minutes        {stages} (this run; a reused stage takes seconds)
class agreement      {100 * s['class_agreement']:.1f}% of {s['num_samples']} generated images are
                     classified as the class they were conditioned on
judge accuracy       {100 * s['judge_heldout_accuracy']:.1f}% on held-out real images (the judge
                     sees colour and shape; every class has its own of each)
tokenizer PSNR       {s['tokenizer_heldout_psnr_db']:.2f} dB on held-out real images
Fréchet distance     {_fd(fd['samples'])} generated vs real images, in the judge's feature space
                     (FID with the judge as the network; lower is better; {_fd(fd['real_floor'])} for
                     as many real images; tokenizer reconstructions: {_fd(fd['reconstructions'])})
samples grid         {s['grid']}   (one row per class: {', '.join(names[:3])}, …)
reconstructions      {s['reconstructions']}   (real images above, reconstructions below)
logs                 {s['logs']['tokenizer']}
                     {s['logs']['generator']}
weights              {s['weights']['generator']}   (sample again: --config.init_from=…)
summary              {os.path.join(workdir, 'summary.json')}""", flush=True)
