"""Masks for zero-shot editing (the rule of the official VAR `demo_zero_shot_edit.ipynb`).

A keep-mask is 1 where the input image's token is kept and 0 where VAR generates. It is given at
the last scale's token grid; each scale receives it bilinearly resized (align_corners=False) and
thresholded at > 0.5, and scales of at most 3 tokens (the 1×1 scale) always keep the image's
tokens.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bigvar.nn.resize import resize_matrix


def box_mask(grid: int, box: tuple[float, float, float, float], inpainting: bool) -> np.ndarray:
    """(grid, grid) float mask for the box (y0, x0, y1, x1) in [0, 1] fractions of the side.

    Inpainting keeps everything but the box; outpainting keeps only the box. The box edges are
    rounded like the official `get_edit_mask` (Python `round`)."""
    y0, x0, y1, x1 = box
    if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
        raise ValueError(f"box must be (y0, x0, y1, x1) with 0 ≤ y0 < y1 ≤ 1 and 0 ≤ x0 < x1 ≤ 1; got {box}")
    inside = np.zeros((grid, grid), np.float32)
    inside[round(y0 * grid):round(y1 * grid), round(x0 * grid):round(x1 * grid)] = 1
    return 1 - inside if inpainting else inside


def scale_keep_masks(keep_mask, patch_nums: Sequence[int], batch: int,
                     image_size: int | None = None) -> list[np.ndarray]:
    """Per-scale boolean keep-masks, each (batch, pn²) row-major."""
    mask = np.asarray(keep_mask, np.float64)
    grid = patch_nums[-1]
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (batch,) + mask.shape)
    sizes = {grid} | ({image_size} if image_size else set())
    if mask.ndim != 3 or mask.shape[0] != batch or mask.shape[1] != mask.shape[2] or mask.shape[1] not in sizes:
        raise ValueError(
            f"keep_mask must be the last scale's token grid ({grid}, {grid}) or ({batch}, {grid}, {grid})"
            + (f", or a pixel mask ({image_size}, {image_size})" if image_size else "")
            + f"; got shape {np.shape(keep_mask)}")
    if mask.shape[1] != grid:  # pixel mask → token grid by area averaging
        m = resize_matrix("area", mask.shape[1], grid)
        mask = np.einsum("oh,bhw,pw->bop", m, mask, m)
    out = []
    for pn in patch_nums:
        if pn * pn <= 3:
            keep = np.ones((batch, pn, pn), bool)
        else:
            m = resize_matrix("bilinear", grid, pn)
            keep = np.einsum("oh,bhw,pw->bop", m, mask, m) > 0.5
        out.append(keep.reshape(batch, pn * pn))
    return out
