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
# # BiGR with bigvar: generation, editing, interpolation, enrichment, features
#
# <a href="https://colab.research.google.com/github/bigvar/bigvar/blob/main/colabs/bigr_apps.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# BiGR (Hao et al., ICLR 2025) models images as binary codes: a masked bidirectional transformer
# reveals tokens over a few steps and a Bernoulli-diffusion transcoder turns each token's
# features into bits. The same model edits images zero-shot, interpolates between classes,
# enriches details, and its hidden states are image features. All of it below, from the
# official checkpoint.

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

# %% The checkpoint (downloaded and converted once) and the sampler
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

# %% Generation
CLASSES = "207, 360, 387, 974"  # @param {type:"string"}
labels = [int(c) % classes for c in CLASSES.split(",")]
generated = sampler.generate(labels, seed=0).images
print("generated", generated.shape)
notebook.grid_figure(generated, titles=[f"class {c}" for c in labels]).savefig("bigr_generated.png")

# %% In-painting and out-painting of the first sample (box: top, left, bottom, right)
TOP, LEFT, BOTTOM, RIGHT = 0.25, 0.25, 0.75, 0.75  # @param
box = (TOP, LEFT, BOTTOM, RIGHT)
source = np.repeat(generated[:1], 3, axis=0)
inpainted = sampler.inpaint(source, box=box, seed=1).images
outpainted = sampler.outpaint(source, box=box, seed=1).images
shown = np.concatenate([notebook.draw_box(generated[0], box)[None], inpainted,
                        notebook.draw_box(generated[0], box)[None], outpainted])
notebook.grid_figure(shown, cols=4, titles=["input"] + ["in-painted"] * 3 + ["input"]
                     + ["out-painted"] * 3).savefig("bigr_editing.png")
print("edited", inpainted.shape, outpainted.shape)

# %% Class interpolation: one noise, the condition moving from class A to class B
CLASS_A = 207  # @param {type:"integer"}
CLASS_B = 360  # @param {type:"integer"}
ratios = np.linspace(1, 0, 6)  # weight of class A
interpolated = sampler.interpolate(CLASS_A % classes, CLASS_B % classes, ratios, seed=0).images
notebook.grid_figure(interpolated, titles=[f"{r:.1f}·A + {1 - r:.1f}·B" for r in ratios]).savefig(
    "bigr_interpolation.png")
print("interpolated", interpolated.shape)

# %% Detail enrichment: a blurred image (half the resolution, upsampled) gets its details back
size = bae.img_size
half = generated[:2, ::2, ::2].astype(np.float32)
blurred = np.repeat(np.repeat(half, 2, axis=1), 2, axis=2).astype(np.uint8)
enriched = sampler.enrich(blurred, downsample_rate=2, rounds=1 if notebook.offline() else 4).images
notebook.grid_figure(np.concatenate([blurred, enriched]), cols=2,
                     titles=["blurred", "blurred", "enriched", "enriched"]).savefig("bigr_enrich.png")
print("enriched", enriched.shape)

# %% Features: the residual stream at the middle layer, mean-pooled, for a few classes
FEATURE_CLASSES = "1, 207, 360, 980"  # @param {type:"string"}
PER_CLASS = 8  # @param {type:"integer"}
feature_classes = [int(c) % classes for c in FEATURE_CLASSES.split(",")]
feature_labels = np.repeat(feature_classes, PER_CLASS)
images = sampler.generate(feature_labels, seed=2).images
features = sampler.features(images, layer_index=config.bigr.n_layer // 2)
print("features", features.shape)
notebook.scatter_figure(notebook.pca_2d(features), feature_labels,
                        title="BiGR features (PCA)").savefig("bigr_features.png")
