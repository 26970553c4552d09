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
# # VAR zero-shot editing: in-painting, out-painting, class-conditional editing
#
# <a href="https://colab.research.google.com/github/bigvar/bigvar/blob/main/colabs/var_zero_shot_editing.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# VAR edits without any training for it: the image is tokenized at every scale, the tokens
# outside the region to change are kept (teacher-forced) and the rest are generated scale by
# scale. Upload an image (or use the bundled one), draw a box with the form fields, and compare.

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
from bigvar.sampling.var import SamplingSettings, VARSampler

DEPTH = "d16"  # @param ["d16", "d20", "d24", "d30"]
config, weights_dir = notebook.var_model(DEPTH)
var, vae = models.build(config)
params = weights.load_weights(weights_dir)
sampler = VARSampler(var, vae, params["var"], params["vae"], SamplingSettings(cfg=3.0, top_k=900, top_p=0.96))
size = sampler.image_size
print("running on", notebook.accelerator(), f"- images are {size}×{size}")

# %% The image: upload one (Colab), or use the bundled one
UPLOAD = False  # @param {type:"boolean"}
image = notebook.uploaded_image(size) if UPLOAD else None
if image is None:
    image = notebook.sample_image(size)
print("image", image.shape, image.dtype)

# %% The box (fractions of the side: top, left, bottom, right)
TOP = 0.25  # @param {type:"slider", min:0, max:1, step:0.05}
LEFT = 0.25  # @param {type:"slider", min:0, max:1, step:0.05}
BOTTOM = 0.75  # @param {type:"slider", min:0, max:1, step:0.05}
RIGHT = 0.75  # @param {type:"slider", min:0, max:1, step:0.05}
CLASS = 207  # @param {type:"integer"}
SEEDS = 3  # @param {type:"integer"}
box = (TOP, LEFT, BOTTOM, RIGHT)
images = np.repeat(image[None], SEEDS, axis=0)  # one row of variations per edit

# %% In-painting: regenerate the box, keep the rest
inpainted = sampler.inpaint(images, box=box, seed=0).images
# %% Out-painting: keep the box, regenerate around it
outpainted = sampler.outpaint(images, box=box, seed=0).images
# %% Class-conditional editing: the box regenerated as class CLASS
edited = sampler.inpaint(images, box=box, labels=CLASS % config.var.num_classes, seed=0).images

# %% Before and after
rows = [("in-painting", inpainted), ("out-painting", outpainted), (f"class {CLASS}", edited)]
shown = np.concatenate([np.stack([notebook.draw_box(image, box)] + list(done)) for _, done in rows])
titles = [t for name, _ in rows for t in [f"input ({name})"] + [f"variation {s + 1}" for s in range(SEEDS)]]
print("edited", inpainted.shape, outpainted.shape, edited.shape)
notebook.grid_figure(shown, cols=SEEDS + 1, titles=titles).savefig("var_editing.png")
