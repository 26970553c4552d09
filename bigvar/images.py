"""Image I/O helpers: grids and PNGs from uint8 NHWC arrays."""
from __future__ import annotations

import numpy as np
from PIL import Image

from bigvar.storage import atomic_write


def make_grid(images: np.ndarray, cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """(N, H, W, 3) uint8 → one (rows·(H+pad)+pad, cols·(W+pad)+pad, 3) uint8 image."""
    n, h, w, c = images.shape
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid


def save_png(path: str, image: np.ndarray) -> None:
    """Writes a PNG atomically (a complete file or none under `path`)."""
    with atomic_write(path) as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")

