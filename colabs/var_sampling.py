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
# # VAR with bigvar: class-conditional sampling, coarse to fine
#
# <a href="https://colab.research.google.com/github/bigvar/bigvar/blob/main/colabs/var_sampling.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# VAR (Tian et al., NeurIPS 2024) generates an image scale by scale: 1×1 tokens, then 2×2, … up
# to 16×16, each scale predicted from all coarser ones. This notebook converts an official VAR
# checkpoint (no PyTorch needed), samples a grid of classes, shows the image after each of the
# ten scales, and times the sampler. It opens on a TPU runtime (v5e-1); Runtime → Change runtime
# type → a GPU works as well, and a CPU too (slowly for d16).

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
# @title The checkpoint: downloaded from the Hub and converted once (about 1.3 GB for d16)
from bigvar import models, notebook, weights
from bigvar.sampling.var import SamplingSettings, VARSampler

DEPTH = "d16"  # @param ["d16", "d20", "d24", "d30", "d36"]
print("running on", notebook.accelerator(), "(offline test mode)" if notebook.offline() else "")
config, weights_dir = notebook.var_model(DEPTH)
var, vae = models.build(config)
params = weights.load_weights(weights_dir)
print(f"VAR: {config.var.depth} blocks, width {config.var.embed_dim}, scales {tuple(config.var.patch_nums)}")

# %%
# @title Sample a class grid
# @markdown `CLASSES`: ImageNet class ids, comma-separated. `TOP_K` or `TOP_P` at 0 turns
# @markdown that filter off.
CFG = 4.0  # @param {type:"slider", min:0, max:8, step:0.5}
TOP_K = 900  # @param {type:"slider", min:0, max:4096, step:1}
TOP_P = 0.95  # @param {type:"slider", min:0, max:1, step:0.01}
SEED = 0  # @param {type:"integer"}
CLASSES = "207, 360, 387, 974, 88, 979, 417, 279"  # @param {type:"string"}

labels = [int(c) % config.var.num_classes for c in CLASSES.split(",")]
sampler = VARSampler(var, vae, params["var"], params["vae"],
                     SamplingSettings(cfg=CFG, top_k=TOP_K, top_p=TOP_P))
out = sampler.generate(labels, seed=SEED)
print("images", out.images.shape, out.images.dtype)
notebook.grid_figure(out.images, cols=4, titles=[f"class {c}" for c in labels]).savefig("var_samples.png")

# %%
# @title Coarse to fine: the image after each scale (decoded from that scale and all coarser ones)
steps = sampler.progression(out.tokens[:3])
print("progression", steps.shape)
notebook.progression_figure(steps, config.var.patch_nums).savefig("var_progression.png")

# %%
# @title Speed: the first call compiles, the next ones run
BATCH = 16  # @param {type:"integer"}
batch_labels = [c % config.var.num_classes for c in range(BATCH)]
timing = notebook.time_calls(lambda: sampler.generate(batch_labels, seed=1).images)
print(f"batch {BATCH}: compile + run {timing['first_call_s']:.1f} s, run {timing['run_s']:.2f} s "
      f"→ {BATCH / timing['run_s']:.1f} images/s on {notebook.accelerator()}")
