# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
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
# ten scales, and times the sampler. Runtime → Change runtime type → TPU or GPU makes it fast; a
# CPU works too (slowly for d16).

# %% Install bigvar (and the JAX build for this runtime)
import importlib.util
import os
import subprocess
import sys

BIGVAR_SOURCE = "git+https://github.com/bigvar/bigvar"  # @param {type:"string"}
if importlib.util.find_spec("bigvar") is None:
    runtime = ("tpu" if os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ
               else "cuda12" if os.path.exists("/dev/nvidia0") else None)
    extras = ",".join(filter(None, ["colab", runtime]))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"bigvar[{extras}] @ {BIGVAR_SOURCE}"],
                   check=True)

# %% The checkpoint: downloaded from the Hub and converted once (about 1.3 GB for d16)
from bigvar import models, notebook, weights
from bigvar.sampling.var import SamplingSettings, VARSampler

DEPTH = "d16"  # @param ["d16", "d20", "d24", "d30", "d36"]
print("running on", notebook.accelerator(), "(offline test mode)" if notebook.offline() else "")
config, weights_dir = notebook.var_model(DEPTH)
var, vae = models.build(config)
params = weights.load_weights(weights_dir)
print(f"VAR: {config.var.depth} blocks, width {config.var.embed_dim}, scales {tuple(config.var.patch_nums)}")

# %% Sample a class grid
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

# %% Coarse to fine: the image after each scale (decoded from that scale and all coarser ones)
steps = sampler.progression(out.tokens[:3])
print("progression", steps.shape)
notebook.progression_figure(steps, config.var.patch_nums).savefig("var_progression.png")

# %% Speed: the first call compiles, the next ones run
BATCH = 16  # @param {type:"integer"}
batch_labels = [c % config.var.num_classes for c in range(BATCH)]
timing = notebook.time_calls(lambda: sampler.generate(batch_labels, seed=1).images)
print(f"batch {BATCH}: compile + run {timing['first_call_s']:.1f} s, run {timing['run_s']:.2f} s "
      f"→ {BATCH / timing['run_s']:.1f} images/s on {notebook.accelerator()}")
