"""PyTorch-exact image resizes as separable matrices.

`jax.image.resize` uses a different cubic kernel (A = -0.5) and antialiases when shrinking, so it
does not reproduce `torch.nn.functional.interpolate`. Every resize VAR needs is separable and has a
fixed size, so we precompute the 1-D interpolation matrix in float64 NumPy (cached) and apply it to
rows and columns: y = M_h · x · M_wᵀ. The formulas follow PyTorch's kernels (see
docs/official_behaviour.md).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75  # PyTorch's Keys-kernel coefficient for mode='bicubic'.


@functools.lru_cache(maxsize=None)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of `mode='area'` (adaptive average pooling, uneven windows)."""
    if not 0 < n_out <= n_in:
        raise ValueError(f"area resize only shrinks: got {n_in} -> {n_out}")
    m = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        start = (o * n_in) // n_out
        end = -((-(o + 1) * n_in) // n_out)  # ceil((o+1)·n_in/n_out)
        m[o, start:end] = 1.0 / (end - start)
    return m


def _cubic_weight(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return ((_CUBIC_A + 2) * x - (_CUBIC_A + 3)) * x * x + 1
    if x < 2:
        return ((_CUBIC_A * x - 5 * _CUBIC_A) * x + 8 * _CUBIC_A) * x - 4 * _CUBIC_A
    return 0.0


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of `mode='bicubic', align_corners=False` (no antialias, clamped taps)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        src = (o + 0.5) * scale - 0.5
        i0 = math.floor(src)
        t = src - i0
        weights = (_cubic_weight(t + 1), _cubic_weight(t), _cubic_weight(1 - t), _cubic_weight(2 - t))
        for tap, w in zip(range(i0 - 1, i0 + 3), weights):
            m[o, min(max(tap, 0), n_in - 1)] += w
    return m


@functools.lru_cache(maxsize=None)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of `mode='bilinear', align_corners=False` (no antialias)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)  # PyTorch clamps negative source coords to 0.
        i0 = min(math.floor(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[o, i0] += 1.0 - frac
        m[o, i1] += frac
    return m


@functools.lru_cache(maxsize=None)
def bilinear_matrix_tf1(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of TensorFlow 1's `ResizeBilinear` (align_corners=False,
    half_pixel_centers=False): source x = o · (n_in / n_out), no centre offset, so the image
    shifts by half a pixel compared with PyTorch. The coordinates are computed in float32 as
    TF's kernel does: in float64 the weights would differ by up to 3e-5 at 512 px."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = np.float32(n_in) / np.float32(n_out)
    for o in range(n_out):
        src = np.float32(o) * scale
        i0 = int(np.floor(src))
        frac = float(src - np.float32(i0))
        m[o, i0] += 1.0 - frac
        m[o, min(i0 + 1, n_in - 1)] += frac
    return m


@functools.lru_cache(maxsize=None)
def bilinear_matrix_float32(n_in: int, n_out: int) -> np.ndarray:
    """`bilinear_matrix` with the source coordinates and weights computed in float32, as
    PyTorch's CPU kernel computes them for float32 images: pytorch-fid's exact 256/512 → 299."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = np.float32(n_in) / np.float32(n_out)
    for o in range(n_out):
        src = max(scale * (np.float32(o) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        i0 = min(int(src), n_in - 1)
        frac = np.float32(src - np.float32(i0))
        m[o, i0] += float(np.float32(1) - frac)
        m[o, min(i0 + 1, n_in - 1)] += float(frac)
    return m


_MATRICES = {"area": area_matrix, "bicubic": bicubic_matrix, "bilinear": bilinear_matrix,
             "bilinear_tf1": bilinear_matrix_tf1,
             "bilinear_float32": bilinear_matrix_float32}


def resize_matrix(mode: str, n_in: int, n_out: int) -> np.ndarray:
    if mode not in _MATRICES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {sorted(_MATRICES)}")
    if n_in == n_out:
        return np.eye(n_in)
    return _MATRICES[mode](n_in, n_out)


def resize_nhwc(x: jax.Array, size: int | tuple[int, int], mode: str) -> jax.Array:
    """Resizes the spatial axes of an NHWC array exactly like `F.interpolate` on NCHW.

    The matmuls run at HIGHEST precision: on TPU the default would round to bf16 and break parity.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    _, in_h, in_w, _ = x.shape
    if (in_h, in_w) == (out_h, out_w):
        return x
    mh = jnp.asarray(resize_matrix(mode, in_h, out_h), x.dtype)
    mw = jnp.asarray(resize_matrix(mode, in_w, out_w), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """`F.interpolate(scale_factor=2, mode='nearest')` on NHWC: y[i] = x[i // 2]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
