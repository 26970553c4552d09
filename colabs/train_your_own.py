# ---
# jupyter:
#   accelerator: TPU
#   colab:
#     gpuType: V5E1
#     provenance: []
#     toc_visible: true
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Train your own: a tokenizer and a VAR from scratch, then sample and judge
#
# <a href="https://colab.research.google.com/github/bigvar/bigvar/blob/main/colabs/train_your_own.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# The built-in demo (`python -m bigvar.main --config=configs/demo.py`) as a notebook: a small
# multi-scale VQ-VAE learns to tokenize 32-px images, a small VAR learns to generate its tokens
# class by class, and a classifier trained on real images judges the samples. The data is the
# built-in procedural dataset (10 classes of coloured shapes, nothing to download), or an
# ImageNet-style folder of your own (`root/<class>/<images>`, e.g. on a mounted Drive). The loss
# curves and grids update while training runs; rerunning a cell resumes where it stopped.

# %%
# @title Install bigvar { display-mode: "form" }
# @markdown Installs bigvar from `BIGVAR_SOURCE` (any pip URL) unless it is installed already.
# @markdown Colab's TPU and GPU runtimes come with a JAX built for their chip: it is kept when it
# @markdown is new enough, otherwise JAX for the chip found here is installed with bigvar.
import glob
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys

BIGVAR_SOURCE = "git+https://github.com/bigvar/bigvar"  # @param {type:"string"}
JAX_MIN = "0.10.2"  # the oldest JAX bigvar runs on (its jax>= requirement)
# Set on TPU VMs (Colab's v5e-1/v6e-1 included). Colab sets COLAB_TPU_1VM="" on other runtimes.
TPU_VARIABLES = ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "COLAB_TPU_1VM", "COLAB_TPU_ADDR")
# What a JAX needs to run on the chip (bigvar's extra -> the packages that provide it).
JAX_BACKENDS = {"tpu": ("libtpu", "libtpu-nightly"), "cuda12": ("jax-cuda12-plugin",)}


def detect_runtime(environ, devices, nvidia_smi):
    """The runtime, "tpu", "cuda12" or None (CPU), from the environment variables, the device
    files and whether nvidia-smi is on the PATH."""
    def any_device(pattern):
        return any(re.fullmatch(pattern, path) for path in devices)
    if any(environ.get(name) for name in TPU_VARIABLES) or any_device(r"/dev/vfio/\d+"):
        return "tpu"  # v5e and newer chips are /dev/vfio/N (/dev/vfio/vfio is the control node)
    if nvidia_smi or any_device(r"/dev/nvidia\d+"):
        return "cuda12"
    if any_device(r"/dev/accel\d+"):
        return "tpu"  # v2-v4; checked after GPUs, whose recent drivers make /dev/accel* too
    return None


def release(version):
    """(0, 12, 1) for "0.12.1rc1": the numbers of a version, comparable."""
    return tuple(int(n) for n in re.match(r"\d+(\.\d+)*", version).group().split("."))


def pip_requirements(runtime, versions, source=BIGVAR_SOURCE, jax_min=JAX_MIN):
    """What to pip install for `runtime` given the installed `versions` (package -> version or
    None): bigvar, with JAX for the chip only if the installed JAX is missing, older than
    `jax_min` or lacks the chip's backend."""
    jax = versions.get("jax")
    jax_ok = jax is not None and release(jax) >= release(jax_min)
    backend_ok = runtime is None or any(versions.get(name) for name in JAX_BACKENDS[runtime])
    extras = ["colab"] + ([runtime] if runtime and not (jax_ok and backend_ok) else [])
    # A good JAX is pinned, so pip picks flax & co. to match it rather than replacing it.
    jax_requirement = f"jax=={jax}" if jax_ok else f"jax>={jax_min}"
    return [f"bigvar[{','.join(extras)}] @ {source}", jax_requirement]


def installed(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if importlib.util.find_spec("bigvar") is None:
    runtime = detect_runtime(os.environ, glob.glob("/dev/*") + glob.glob("/dev/vfio/*"),
                             shutil.which("nvidia-smi") is not None)
    packages = ["jax"] + [name for names in JAX_BACKENDS.values() for name in names]
    requirements = pip_requirements(runtime, {name: installed(name) for name in packages})
    print(f"{runtime or 'cpu'} runtime, JAX {installed('jax') or 'missing'}: pip install",
          *requirements)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements], check=True)
else:
    print("bigvar is installed already")

# %%
# @title Settings
# @markdown `DATA_FOLDER`: empty for the procedural shapes, or a folder of `<class>/<images>`
# @markdown with `NUM_CLASSES` classes. Training resumes from `WORKDIR` when rerun.
import os

from bigvar import config_lib, notebook

WORKDIR = "runs/train_your_own"  # @param {type:"string"}
TOKENIZER_STEPS = 400  # @param {type:"integer"}
GENERATOR_STEPS = 800  # @param {type:"integer"}
DATA_FOLDER = ""  # @param {type:"string"}
NUM_CLASSES = 10  # @param {type:"integer"}

config = config_lib.load_config_file("demo.py", "quick" if notebook.offline() else None)
tok_cfg, gen_cfg = config.tokenizer, config.generator
if not notebook.offline():
    tok_cfg.train.steps, gen_cfg.train.steps = TOKENIZER_STEPS, GENERATOR_STEPS
if DATA_FOLDER:  # your images: root/<class name>/<image files>
    for section in (tok_cfg, gen_cfg):
        section.data.update(source="folder", path=DATA_FOLDER, num_classes=NUM_CLASSES)
    gen_cfg.var.num_classes = NUM_CLASSES
print("running on", notebook.accelerator(), "- data:", DATA_FOLDER or "procedural shapes")

# %%
# @title 1. The tokenizer: a multi-scale VQ-VAE (reconstruction grids in WORKDIR/tokenizer/samples)
from bigvar.train import tokenizer as tokenizer_training

tok_dir = os.path.join(WORKDIR, "tokenizer")
tok_cfg.mode = "train"
notebook.train_live(lambda: tokenizer_training.run(tok_cfg, tok_dir), tok_dir,
                    metrics=("loss", "heldout_psnr"), title="VQ-VAE")
tok_export = tokenizer_training.export_tokenizer(tok_cfg, tok_dir)
print("tokenizer exported to", tok_export)

# %%
# @title 2. The generator: VAR on the tokenizer's codes (sample grids in WORKDIR/generator/samples)
from bigvar.train import generator as generator_training

gen_dir = os.path.join(WORKDIR, "generator")
gen_cfg.update(mode="train", tokenizer_from=tok_export)
notebook.train_live(lambda: generator_training.run(gen_cfg, gen_dir), gen_dir,
                    metrics=("loss", "acc"), title="VAR")
gen_export = generator_training.export_weights(gen_cfg, gen_dir)
print("generator exported to", gen_export)

# %%
# @title 3. Sample every class
import numpy as np

from bigvar import models, weights
from bigvar.data.procedural import class_names
from bigvar.sampling.var import SamplingSettings, VARSampler

PER_CLASS = 8  # @param {type:"integer"}
CFG = 3.0  # @param {type:"slider", min:0, max:8, step:0.5}
var, vae = models.build(gen_cfg)
params = weights.load_weights(gen_export)
sampler = VARSampler(var, vae, params["var"], params["vae"], SamplingSettings(cfg=CFG, top_k=20, top_p=0.9))
num_classes = gen_cfg.data.num_classes
labels = np.repeat(np.arange(num_classes), PER_CLASS)
samples = sampler.generate(labels, seed=0).images
names = class_names(num_classes) if not DATA_FOLDER else [str(c) for c in range(num_classes)]
print("samples", samples.shape)
notebook.grid_figure(samples, cols=PER_CLASS, size=1.0,
                     titles=[names[c] if i % PER_CLASS == 0 else "" for i, c in enumerate(labels)]
                     ).savefig("train_your_own_samples.png")

# %%
# @title 4. The judge (procedural data): does a classifier of real images see the intended class?
if not DATA_FOLDER:
    from bigvar.eval import shape_classifier

    judge, judge_accuracy = shape_classifier.train_or_load(
        config.classifier, num_classes=num_classes, image_size=config_lib.image_size(gen_cfg),
        workdir=os.path.join(WORKDIR, "judge"), procedural_seed=gen_cfg.data.procedural_seed)
    agreement = float(np.mean(judge.predict(samples) == labels))
    print(f"class agreement: {100 * agreement:.1f}% of the samples "
          f"(the judge is right on {100 * judge_accuracy:.1f}% of held-out real images)")
