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

from bigvar import checkpoint, configs
from bigvar.utils import atomic_write

STATE_FILE = "demo_state.json"


# ---- the configs -------------------------------------------------------------------------------
def demo_config(generator: str, quick: bool = False) -> ml_collections.ConfigDict:
    """The demo job for `generator` ('var' or 'bigr'); `quick` cuts every stage to a few steps
    (a smoke run of the whole pipeline, for tests)."""
    from bigvar.eval.shape_classifier import classifier_config
    config = ml_collections.ConfigDict()
    config.model = "demo"
    config.mode = "train"
    config.seed = 0
    config.samples_per_class = 10  # generated images per class, judged and shown in the grid
    config.heldout_images = 256  # real images for the tokenizer's held-out PSNR
    config.classifier = classifier_config(steps=300)
    if generator == "var":
        config.tokenizer, config.generator = _var_pair()
    elif generator == "bigr":
        config.tokenizer, config.generator = _bigr_pair()
    else:
        raise ValueError(f"demo generator {generator!r}: expected 'var' or 'bigr'")
    if quick:
        for section in (config.tokenizer.train, config.generator.train):
            section.update(steps=4, log_every=2, checkpoint_every=2, sample_every=0)
        config.classifier.update(steps=30, heldout_images=100)
        config.samples_per_class = 2
        config.heldout_images = 16
    return config


def _procedural(data: ml_collections.ConfigDict) -> None:
    data.update(source="procedural", num_classes=10, hflip=False)


def _var_pair():
    from bigvar.configs import var_config, var_model_config, vqvae_train_config
    patch_nums = (1, 2, 3, 4, 6, 8)  # 32 px with the 4× VQ-VAE below
    tok = vqvae_train_config(ch=32, vocab_size=256, patch_nums=patch_nums)
    tok.vae.update(ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16)
    tok.loss.update(l1=1.0, l2=1.0, lpips=0.0, gan=0.0, dead_code_every=50)
    tok.train.update(batch_size=32, steps=400, lr=2e-3, schedule="cos", b1=0.5, b2=0.9,
                     ema_decay=0.0, log_every=50, checkpoint_every=100, sample_every=200,
                     sample_images=16)
    _procedural(tok.data)

    gen = var_config(16)
    gen.var = var_model_config(3, embed_dim=128, num_heads=4, num_classes=10, patch_nums=patch_nums)
    gen.var.scan_unroll = gen.var.depth  # tiny: unrolled layers train ~20% faster on a CPU
    gen.vae = tok.vae.copy_and_resolve_references()
    del gen.vae["patch_nums"]
    gen.train.update(batch_size=32, steps=800, lr=2e-3, tblr=0.0, schedule="lin0",
                     warmup_epochs=0.0, wpe=0.1, twd=0.05, twde=0.05, log_every=50,
                     checkpoint_every=250, sample_every=500, sample_images=20)
    _procedural(gen.data)
    gen.sample.update(classes=(), images_per_class=10, batch_size=50, cfg=3.0, top_k=20,
                      top_p=0.9, grid_cols=10, save_pngs=False)
    return tok, gen


def _bigr_pair():
    from bigvar.configs import bae_train_config, bigr_config
    tok = bae_train_config(binary_size=16, img_size=32)
    tok.bae.update(nf=32, emb_dim=32, ch_mult=(1, 2, 2), res_blocks=1, attn_resolutions=(8,))
    tok.loss.update(l1=1.0, l2=1.0, lpips=0.0, gan=0.0)
    tok.train.update(batch_size=32, steps=300, lr=2e-3, schedule="cos", b1=0.5, b2=0.9,
                     ema_decay=0.0, log_every=50, checkpoint_every=100, sample_every=150,
                     sample_images=16)
    _procedural(tok.data)
    tok.data.transform = "bld"

    gen = bigr_config("L", binary_size=16)
    gen.bae = tok.bae.copy_and_resolve_references()
    # Width 96, not 128: the FFN width rounds up to a multiple of 256 (256 here, 512 at 128), so
    # a step costs ~55% as much, and 1750 steps of it beat 1500 of width 128 (88% vs 87% class
    # agreement; 11.5 vs 17.7 min for the whole demo).
    gen.bigr.update(num_classes=10, dim=96, n_layer=4, n_head=4, seq_len=64, denoise_hidden=128,
                    num_block_mlp=2, dropout=0.0, scan_unroll=4)
    gen.train.update(batch_size=32, steps=1750, lr=2e-3, schedule="constant", twd=0.02, twde=0.02,
                     clip=1.0, ema_decay=0.99, log_every=50, checkpoint_every=250,
                     sample_every=500, sample_images=20)
    _procedural(gen.data)
    gen.data.transform = "adm"
    gen.sample.update(classes=(), images_per_class=10, batch_size=50, num_iter=8, cfg=3.0,
                      gumbel=0.0, transcoder_steps=25, grid_cols=10, save_pngs=False)
    return tok, gen


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
        return int(checkpoint.load_config(export_dir)["source"]["step"])
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
    section = configs.TOKENIZERS[tok_cfg.model]
    for field in configs.ARCH_FIELDS[gen_model][section]:  # the generator loads this tokenizer
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
    image_size = configs.image_size(gen_cfg)
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
    tok_params = checkpoint.load_weights(tok_export)[section]
    psnr = recon.psnr(tok_params, heldout)
    recon_grid = os.path.join(workdir, "reconstructions.png")
    save_png(recon_grid, recon.grid(tok_params, heldout[:20], cols=10))
    times["report"] = time.time() - t

    from bigvar.data.procedural import class_names
    names = class_names(num_classes)
    summary = {
        "generator": gen_model, "tokenizer": tok_cfg.model,
        "class_agreement": round(agreement, 4),
        "class_agreement_per_class": {names[c]: round(v, 3) for c, v in per_class.items()},
        "judge_heldout_accuracy": round(judge_accuracy, 4),
        "tokenizer_heldout_psnr_db": round(psnr, 2),
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
            "tokenizer_heldout_psnr_db": summary["tokenizer_heldout_psnr_db"]}


def _print_summary(s: dict, workdir: str, names: list[str]) -> None:
    minutes = s["wall_seconds_this_run"] / 60
    stages = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in s["seconds"].items())
    print(f"""
==== bigvar demo ({s['tokenizer']} + {s['generator']}) finished in {minutes:.1f} min ====
stage minutes        {stages} (this run; a reused stage takes seconds)
class agreement      {100 * s['class_agreement']:.1f}% of {s['num_samples']} generated images are
                     classified as the class they were conditioned on
judge accuracy       {100 * s['judge_heldout_accuracy']:.1f}% on held-out real images (the judge
                     sees colour and shape; every class has its own of each)
tokenizer PSNR       {s['tokenizer_heldout_psnr_db']:.2f} dB on held-out real images
samples grid         {s['grid']}   (one row per class: {', '.join(names[:3])}, …)
reconstructions      {s['reconstructions']}   (real images above, reconstructions below)
logs                 {s['logs']['tokenizer']}
                     {s['logs']['generator']}
weights              {s['weights']['generator']}   (sample again: --config.init_from=…)
summary              {os.path.join(workdir, 'summary.json')}""", flush=True)
