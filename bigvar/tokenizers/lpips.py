"""LPIPS-VGG perceptual distance (Zhang et al. 2018, v0.1 "linear" variant), NHWC.

The perceptual term of the VQGAN-style tokenizer losses: taming-transformers'
`taming.modules.losses.lpips.LPIPS` (also LlamaGen's tokenizer loss) and the `lpips` package's
`LPIPS(net="vgg")` that BinaryLatentDiffusion's BinaryGAN (BiGR's B-AE) uses compute the same
function:

    d(x, y) = Σ_k mean_hw( w_k · (n(φ_k(s(x))) − n(φ_k(s(y))))² )

- s: the scaling layer, (x − shift) / scale with shift (−.030, −.088, −.188), scale (.458, .448,
  .450); inputs are images in [−1, 1].
- φ_k: torchvision's VGG16 `features` (13 conv3×3 pad 1 + ReLU, 2×2 stride-2 max-pools) tapped
  after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512 channels).
- n: channel normalisation x / (‖x‖₂ + 1e-10) at every position.
- w_k: the `lin` layers, 1×1 convs without bias to one channel (learned, non-negative).

`LPIPS()(x, y)` returns the per-image distances, shape (B,), float32 (computed in float32 at
HIGHEST precision whatever the input dtype). It is differentiable w.r.t. both inputs; a trainer
keeps its params frozen (outside the optimised tree). Params mirror the official names:
`vgg/conv_0 … conv_12` ({kernel, bias}; conv i is torchvision's `features.{0,2,5,7,10,12,14,17,
19,21,24,26,28}`[i]) and `lin_0 … lin_4` ({kernel}, (1, 1, C, 1); official `lin{k}.model.1`).

Dropout: the official `lin` layers start with `nn.Dropout(0.5)` (`use_dropout=True`), active
whenever the module is in train mode. The default here is eval mode (deterministic=True, the
metric). Note that taming's VQLPIPSWithDiscriminator builds `LPIPS().eval()`, but it is a
submodule of the VQModel, whose `.train()` (called by Lightning) switches it back, so taming's
VQGAN training does see the dropout; check the recipe being reproduced, and pass
deterministic=False with a "dropout" rng to match it.

Weights: torchvision's VGG16 ImageNet weights plus the LPIPS linear layers, converted once with

    python -m bigvar.convert lpips --vgg=vgg16-397923af.pth --lin=vgg.pth --out=DIR

and loaded with `variables = load_lpips(DIR)`; then `LPIPS().apply(variables, x, y)`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvar import weights

HIGHEST = jax.lax.Precision.HIGHEST

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TAP_CHANNELS = tuple(stage[-1] for stage in VGG16_STAGES)  # relu1_2 … relu5_3
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
MIN_SIZE = 16  # four 2×2 pools before relu5_3

CONVERT_COMMAND = ("python -m bigvar.convert lpips --vgg=vgg16-397923af.pth --lin=vgg.pth "
                   "--out={out}")
HOW_TO_GET = (
    "Make it once with `" + CONVERT_COMMAND + "`: vgg16-397923af.pth is torchvision's VGG16 "
    "ImageNet weights (https://download.pytorch.org/models/vgg16-397923af.pth), vgg.pth the "
    "LPIPS v0.1 linear layers (lpips/weights/v0.1/vgg.pth of richzhang/PerceptualSimilarity, the "
    "same file taming-transformers downloads). Or convert the LPIPS inside a taming VQGAN "
    "checkpoint: `python -m bigvar.convert lpips --lpips=last.ckpt --out={out}`.")


def inverse_channel_norm(f: jax.Array) -> jax.Array:
    """1 / (‖f‖₂ over channels + 1e-10), shape (..., 1), with a finite gradient where a position
    is all zero (possible after ReLU; the plain sqrt would give 0·∞ there)."""
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return 1.0 / (norm + NORM_EPS)


def normalized_difference(fx: jax.Array, fy: jax.Array) -> jax.Array:
    """n(fx) − n(fy) for the channel normalisation n(f) = f / (‖f‖₂ + 1e-10), written as
    (fx − fy)·r_x + fy·(r_x − r_y) so that it is exactly 0 wherever fx = fy, whatever XLA fuses:
    the direct fx·r_x − fy·r_y may be contracted into an FMA that leaves the rounding error of
    fy·r_y behind (LPIPS(x, x) ≈ 1e-16 instead of 0, seen with jax 0.10 on the CPU). It is also
    the more accurate form when x ≈ y, which is where a reconstruction loss spends its time."""
    rx, ry = inverse_channel_norm(fx), inverse_channel_norm(fy)
    return (fx - fy) * rx + fy * (rx - ry)


class VGG16Features(nn.Module):
    """torchvision `vgg16().features` up to relu5_3 (the last max-pool is not needed);
    returns the five taps."""

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps, i = [], 0
        for stage, widths in enumerate(VGG16_STAGES):
            if stage:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for width in widths:
                x = nn.Conv(width, (3, 3), padding=1, precision=HIGHEST, name=f"conv_{i}")(x)
                x = nn.relu(x)
                i += 1
            taps.append(x)
        return taps


class LPIPS(nn.Module):
    """LPIPS-VGG distance between two NHWC image batches in [−1, 1]: (B,) float32.

    Each tap's term is also sown as `intermediates/tap_{k}` (shape (B,)) for inspection."""
    dropout_rate: float = 0.5  # the official nn.Dropout() in front of each lin; only when training

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, deterministic: bool = True) -> jax.Array:
        if x.ndim != 4 or x.shape != y.shape or x.shape[-1] != 3:
            raise ValueError(f"LPIPS expects two image batches of the same shape (B, H, W, 3) "
                             f"(NHWC, values in [-1, 1]); got {x.shape} and {y.shape}")
        if min(x.shape[1:3]) < MIN_SIZE:
            raise ValueError(f"LPIPS needs images of at least {MIN_SIZE}×{MIN_SIZE} (VGG16 pools "
                             f"four times before relu5_3); got {x.shape[1]}×{x.shape[2]}")
        shift, scale = jnp.asarray(SHIFT, jnp.float32), jnp.asarray(SCALE, jnp.float32)
        batch = x.shape[0]
        # One pass over x and y stacked (the official code runs two): both halves go through the
        # same compiled kernels, so identical images give identical features (two passes may be
        # fused differently by XLA and differ in the last bit), and there is one VGG to compile.
        both = jnp.concatenate([x, y]).astype(jnp.float32)
        taps = VGG16Features(name="vgg")((both - shift) / scale)
        total = jnp.zeros((batch,), jnp.float32)
        for k, f in enumerate(taps):
            diff = jnp.square(normalized_difference(f[:batch], f[batch:]))
            diff = nn.Dropout(self.dropout_rate, deterministic=deterministic)(diff)
            w = nn.Conv(1, (1, 1), use_bias=False, precision=HIGHEST, name=f"lin_{k}")(diff)
            term = jnp.mean(w, axis=(1, 2, 3))
            self.sow("intermediates", f"tap_{k}", term)
            total = total + term
        return total


def lpips_shapes() -> dict:
    """The variables of `LPIPS()` as ShapeDtypeStructs ({"params": …}); nothing is computed."""
    image = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
    return jax.eval_shape(LPIPS().init, jax.random.PRNGKey(0), image, image)


def load_lpips(weights_dir: str) -> dict:
    """Variables ({"params": …}, NumPy arrays) for `LPIPS().apply(variables, x, y)` from a
    directory written by `python -m bigvar.convert lpips`; shapes are checked key by key."""
    weights.require_model(weights_dir, "lpips", "LPIPS", HOW_TO_GET.format(out=weights_dir))
    return weights.load_weights(weights_dir, {"lpips": lpips_shapes()})["lpips"]
