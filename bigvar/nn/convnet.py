"""Convolutional building blocks shared by the two tokenizers (VAR's VQ-VAE and BiGR's B-AE),
both derived from the taming/LDM VQGAN: GroupNorm(32, eps 1e-6), SiLU, 3×3 convs, asymmetric-pad
stride-2 downsampling, nearest ×2 upsampling, single-head spatial attention. NHWC throughout.

Convs run at HIGHEST precision: on TPU the default would round inputs to bf16 and break parity.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvar.nn.resize import upsample_nearest_2x

HIGHEST = jax.lax.Precision.HIGHEST


def group_norm(name: str | None = None) -> nn.GroupNorm:
    # Two-pass variance like torch (the fast E[x²]−E[x]² variant loses digits).
    return nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False, name=name)


def conv(features: int, kernel: int, name: str | None = None, stride: int = 1, padding=None) -> nn.Conv:
    if padding is None:
        padding = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                   precision=HIGHEST, name=name)


def spatial_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Single-head attention over positions: q, k, v (B, HW, C) → (B, HW, C), scale C^−½."""
    w = jnp.einsum("bic,bjc->bij", q, k, precision=HIGHEST) * (q.shape[-1] ** -0.5)
    return jnp.einsum("bij,bjc->bic", jax.nn.softmax(w, axis=-1), v, precision=HIGHEST)


class Downsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        # Zero-pad right/bottom by one, then a stride-2 valid conv (the official F.pad + conv).
        return conv(x.shape[-1], 3, "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        return conv(x.shape[-1], 3, "conv")(upsample_nearest_2x(x))




class ResBlock(nn.Module):
    """GN → SiLU → conv3×3 → GN → SiLU → conv3×3, plus the input (1×1-projected when the width
    changes). The projection's name differs between the two code bases (`nin_shortcut` in VAR's
    VQ-VAE, `conv_out` in BiGR's B-AE)."""
    out_channels: int
    shortcut_name: str = "nin_shortcut"

    @nn.compact
    def __call__(self, x):
        h = conv(self.out_channels, 3, "conv1")(nn.silu(group_norm("norm1")(x)))
        h = conv(self.out_channels, 3, "conv2")(nn.silu(group_norm("norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.shortcut_name)(x)
        return x + h
