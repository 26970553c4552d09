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
# # VAR zero-shot editing: in-painting, out-painting, class-conditional editing
#
# <a href="https://colab.research.google.com/github/bigvar/bigvar/blob/main/colabs/var_zero_shot_editing.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# VAR edits without any training for it: the image is tokenized at every scale, the tokens
# outside the region to change are kept (teacher-forced) and the rest are generated scale by
# scale. Upload an image (or use the bundled one), draw a box with the form fields, and compare.

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
from bigvar.sampling.var import SamplingSettings, VARSampler

DEPTH = "d16"  # @param ["d16", "d20", "d24", "d30"]
config, weights_dir = notebook.var_model(DEPTH)
var, vae = models.build(config)
params = weights.load_weights(weights_dir)
sampler = VARSampler(var, vae, params["var"], params["vae"], SamplingSettings(cfg=3.0, top_k=900, top_p=0.96))
size = sampler.image_size
print("running on", notebook.accelerator(), f"- images are {size}×{size}")

# %%
# @title The image: upload one (Colab), or use the bundled one
UPLOAD = False  # @param {type:"boolean"}
image = notebook.uploaded_image(size) if UPLOAD else None
if image is None:
    image = notebook.sample_image(size)
print("image", image.shape, image.dtype)

# %%
# @title The box and the edits
# @markdown The box in fractions of the side (top, left, bottom, right); `CLASS` is what the box
# @markdown becomes in the class-conditional edit; `SEEDS` variations of each edit.
TOP = 0.25  # @param {type:"slider", min:0, max:1, step:0.05}
LEFT = 0.25  # @param {type:"slider", min:0, max:1, step:0.05}
BOTTOM = 0.75  # @param {type:"slider", min:0, max:1, step:0.05}
RIGHT = 0.75  # @param {type:"slider", min:0, max:1, step:0.05}
CLASS = 207  # @param {type:"integer"}
SEEDS = 3  # @param {type:"integer"}
box = (TOP, LEFT, BOTTOM, RIGHT)
images = np.repeat(image[None], SEEDS, axis=0)  # one row of variations per edit

# %%
# @title In-painting: regenerate the box, keep the rest
inpainted = sampler.inpaint(images, box=box, seed=0).images

# %%
# @title Out-painting: keep the box, regenerate around it
outpainted = sampler.outpaint(images, box=box, seed=0).images

# %%
# @title Class-conditional editing: the box regenerated as class CLASS
edited = sampler.inpaint(images, box=box, labels=CLASS % config.var.num_classes, seed=0).images

# %%
# @title Before and after
rows = [("in-painting", inpainted), ("out-painting", outpainted), (f"class {CLASS}", edited)]
shown = np.concatenate([np.stack([notebook.draw_box(image, box)] + list(done)) for _, done in rows])
titles = [t for name, _ in rows for t in [f"input ({name})"] + [f"variation {s + 1}" for s in range(SEEDS)]]
print("edited", inpainted.shape, outpainted.shape, edited.shape)
notebook.grid_figure(shown, cols=SEEDS + 1, titles=titles).savefig("var_editing.png")
