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
# # BiGR with bigvar: generation, editing, interpolation, enrichment, features
#
# <a href="https://colab.research.google.com/github/bigvar/bigvar/blob/main/colabs/bigr_apps.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# BiGR (Hao et al., ICLR 2025) models images as binary codes: a masked bidirectional transformer
# reveals tokens over a few steps and a Bernoulli-diffusion transcoder turns each token's
# features into bits. The same model edits images zero-shot, interpolates between classes,
# enriches details, and its hidden states are image features. All of it below, from the
# official checkpoint.

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
# @title The checkpoint (downloaded and converted once) and the sampler
import numpy as np

from bigvar import models, notebook, weights
from bigvar.sampling.bigr import BiGRSampler, BiGRSamplingSettings

MODEL = "l_d24"  # @param ["l_d24", "xl_d24", "xxl_d24", "xxl_d32"]
CFG = 2.5  # @param {type:"slider", min:1, max:6, step:0.5}
STEPS = 20  # @param {type:"integer"}
config, weights_dir = notebook.bigr_model(MODEL)
model, bae = models.build(config)
params = weights.load_weights(weights_dir)
if notebook.offline():  # the tiny test model: fewer steps
    STEPS = 4
sampler = BiGRSampler(model, bae, params["bigr"], params["bae"],
                      BiGRSamplingSettings(cfg=CFG, num_iter=STEPS,
                                           transcoder_steps=5 if notebook.offline() else 100))
classes = model.num_classes
print("running on", notebook.accelerator(), f"- {bae.img_size}px, {classes} classes")

# %%
# @title Generation
CLASSES = "207, 360, 387, 974"  # @param {type:"string"}
labels = [int(c) % classes for c in CLASSES.split(",")]
generated = sampler.generate(labels, seed=0).images
print("generated", generated.shape)
notebook.grid_figure(generated, titles=[f"class {c}" for c in labels]).savefig("bigr_generated.png")

# %%
# @title In-painting and out-painting of the first sample
# @markdown The box in fractions of the side: top, left, bottom, right.
TOP = 0.25  # @param {type:"slider", min:0, max:1, step:0.05}
LEFT = 0.25  # @param {type:"slider", min:0, max:1, step:0.05}
BOTTOM = 0.75  # @param {type:"slider", min:0, max:1, step:0.05}
RIGHT = 0.75  # @param {type:"slider", min:0, max:1, step:0.05}
box = (TOP, LEFT, BOTTOM, RIGHT)
source = np.repeat(generated[:1], 3, axis=0)
inpainted = sampler.inpaint(source, box=box, seed=1).images
outpainted = sampler.outpaint(source, box=box, seed=1).images
shown = np.concatenate([notebook.draw_box(generated[0], box)[None], inpainted,
                        notebook.draw_box(generated[0], box)[None], outpainted])
notebook.grid_figure(shown, cols=4, titles=["input"] + ["in-painted"] * 3 + ["input"]
                     + ["out-painted"] * 3).savefig("bigr_editing.png")
print("edited", inpainted.shape, outpainted.shape)

# %%
# @title Class interpolation: one noise, the condition moving from class A to class B
CLASS_A = 207  # @param {type:"integer"}
CLASS_B = 360  # @param {type:"integer"}
ratios = np.linspace(1, 0, 6)  # weight of class A
interpolated = sampler.interpolate(CLASS_A % classes, CLASS_B % classes, ratios, seed=0).images
notebook.grid_figure(interpolated, titles=[f"{r:.1f}·A + {1 - r:.1f}·B" for r in ratios]).savefig(
    "bigr_interpolation.png")
print("interpolated", interpolated.shape)

# %%
# @title Detail enrichment: a blurred image (half the resolution, upsampled) gets its details back
size = bae.img_size
half = generated[:2, ::2, ::2].astype(np.float32)
blurred = np.repeat(np.repeat(half, 2, axis=1), 2, axis=2).astype(np.uint8)
enriched = sampler.enrich(blurred, downsample_rate=2, rounds=1 if notebook.offline() else 4).images
notebook.grid_figure(np.concatenate([blurred, enriched]), cols=2,
                     titles=["blurred", "blurred", "enriched", "enriched"]).savefig("bigr_enrich.png")
print("enriched", enriched.shape)

# %%
# @title Features: the residual stream at the middle layer, mean-pooled, for a few classes
FEATURE_CLASSES = "1, 207, 360, 980"  # @param {type:"string"}
PER_CLASS = 8  # @param {type:"integer"}
feature_classes = [int(c) % classes for c in FEATURE_CLASSES.split(",")]
feature_labels = np.repeat(feature_classes, PER_CLASS)
images = sampler.generate(feature_labels, seed=2).images
features = sampler.features(images, layer_index=config.bigr.n_layer // 2)
print("features", features.shape)
notebook.scatter_figure(notebook.pca_2d(features), feature_labels,
                        title="BiGR features (PCA)").savefig("bigr_features.png")
