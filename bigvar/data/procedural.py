"""A built-in procedural dataset: class-conditional shapes, no files, any resolution.

Record i of `ProceduralSource(num_classes, image_size, num_records, seed)` is a pure function of
(seed, i, num_classes, image_size): one coloured shape on a muted, smoothly varying background.
The label is `i % num_classes`, so classes are balanced and every epoch sees them equally.

Classes 0–9 (each has its own shape AND its own colour, so either cue alone identifies it):

    0 red disc        1 orange square     2 yellow triangle   3 green ring       4 cyan plus
    5 blue stripes    6 purple diamond    7 magenta x-cross   8 white frame      9 black half-disc

Class c ≥ 10 (up to 100) reuses shape `c % 10` with colour `(c % 10 + c // 10) % 10`, so every
(shape, colour) pair is used at most once; `class_names(n)` spells them out.

Per image, at random: centre, size (half-extent 0.35–0.6 of the half-width), rotation (±15°,
small enough that a square never looks like a diamond), colour jitter, and the background's
colour, gradient direction and frequency. Edges are anti-aliased with a one-pixel linear ramp
on a signed distance, which is as good as 4×4 supersampling for these shapes and much cheaper.
"""
from __future__ import annotations

import math

import numpy as np

SHAPES = ("disc", "square", "triangle", "ring", "plus",
          "stripes", "diamond", "x-cross", "frame", "half-disc")
COLOURS = {
    "red": (225, 35, 35), "orange": (250, 140, 20), "yellow": (245, 225, 40),
    "green": (35, 190, 60), "cyan": (40, 215, 225), "blue": (35, 75, 235),
    "purple": (125, 40, 210), "magenta": (230, 45, 190), "white": (250, 250, 250),
    "black": (15, 15, 15),
}
_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_VALUES = np.array(list(COLOURS.values()), np.float32)
MAX_CLASSES = len(SHAPES) * len(_COLOUR_NAMES)


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"procedural dataset: num_classes={num_classes} is out of range; it "
                         f"supports 1 to {MAX_CLASSES} classes ({len(SHAPES)} shapes × "
                         f"{len(_COLOUR_NAMES)} colours)")


def class_shape_colour(label: int) -> tuple[int, int]:
    """(shape index, colour index) of a class: distinct pairs for labels 0–99."""
    shape = label % len(SHAPES)
    return shape, (shape + label // len(SHAPES)) % len(_COLOUR_NAMES)


def class_names(num_classes: int) -> list[str]:
    """Human-readable names, e.g. ['red disc', 'orange square', …]."""
    _check_num_classes(num_classes)
    names = []
    for c in range(num_classes):
        shape, colour = class_shape_colour(c)
        names.append(f"{_COLOUR_NAMES[colour]} {SHAPES[shape]}")
    return names


def _box(u, v, hu, hv):
    # Signed distance to an axis-aligned box (exact outside, Chebyshev-like inside: fine for AA).
    du, dv = np.abs(u) - hu, np.abs(v) - hv
    outside = np.sqrt(np.maximum(du, 0) ** 2 + np.maximum(dv, 0) ** 2)
    return outside + np.minimum(np.maximum(du, dv), 0)


def _shape_distance(shape: int, u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    """Signed distance (negative inside) of shape `shape` with half-extent s, in local coords."""
    name = SHAPES[shape]
    if name == "disc":
        return np.sqrt(u * u + v * v) - s
    if name == "square":
        return _box(u, v, 0.8 * s, 0.8 * s)
    if name == "triangle":
        # Equilateral, pointing up (v grows downwards), circumradius s; centroid at the origin.
        d = v - 0.5 * s
        for ang in (math.radians(30.0), math.radians(150.0)):
            d = np.maximum(d, -(u * math.cos(ang) + v * math.sin(ang)) - 0.5 * s)
        return d
    if name == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.72 * s) - 0.24 * s
    if name in ("plus", "x-cross"):
        if name == "x-cross":
            u, v = (u + v) * math.sqrt(0.5), (v - u) * math.sqrt(0.5)
        return np.minimum(_box(u, v, s, 0.26 * s), _box(u, v, 0.26 * s, s))
    if name == "stripes":
        bars = np.abs(np.abs(v) - 0.62 * s)  # two outer bars …
        bars = np.minimum(bars, np.abs(v)) - 0.17 * s  # … and a middle one
        return np.maximum(bars, np.abs(u) - 0.85 * s)
    if name == "diamond":
        return (np.abs(u) + np.abs(v) - 1.05 * s) * math.sqrt(0.5)
    if name == "frame":
        return np.abs(_box(u, v, 0.62 * s, 0.62 * s)) - 0.2 * s
    if name == "half-disc":
        v = v + 0.25 * s  # moves the flat side so the shape's mass is centred
        return np.maximum(np.sqrt(u * u + v * v) - 1.05 * s, v)
    raise AssertionError(name)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render(label: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One (image_size, image_size, 3) uint8 image of class `label`, drawn with `rng`."""
    r = image_size
    shape, colour = class_shape_colour(label)
    # Pixel centres in [-1, 1]; y grows downwards like image rows.
    t = (np.arange(r, dtype=np.float32) * 2.0 + 1.0) / r - 1.0
    y, x = t[:, None], t[None, :]

    # Background: a muted random colour plus a smooth low-frequency wave tinted differently.
    base = _hsv_to_rgb(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.7)) * 255.0
    tint = rng.normal(0.0, 1.0, 3)
    tint *= rng.uniform(15.0, 35.0) / max(np.linalg.norm(tint), 1e-6)
    theta, freq, phase = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
    # cos(a·x + b·y + φ) as a rank-2 outer product: O(R) trig instead of O(R²).
    ax, by = freq * math.cos(theta) * x, freq * math.sin(theta) * y + phase
    wave = np.cos(by) * np.cos(ax) - np.sin(by) * np.sin(ax)  # (r, r)
    # Channel-planar (3, r, r) while drawing: numpy's inner loops are then r long, not 3.
    img = wave[None] * tint.astype(np.float32)[:, None, None]
    img += (base.astype(np.float32) + 0.5)[:, None, None]  # + 0.5: the uint8 cast then rounds
    # Value ≤ 0.7·255 + 35 and ≥ 0.3·0.7·255 − 35: the background needs no clipping.

    # Foreground shape, evaluated only on the pixels of its bounding square (every shape fits in
    # radius 1.3·s of its centre) — most of a large image is background.
    s = rng.uniform(0.35, 0.6)
    cx, cy = rng.uniform(-(0.95 - s), 0.95 - s, 2)
    rot = rng.uniform(-math.radians(15), math.radians(15))
    fg = _COLOUR_VALUES[colour] * rng.uniform(0.9, 1.05) + rng.uniform(-12, 12, 3)
    fg = fg.astype(np.float32)
    reach = 1.3 * s + 2.0 / r

    def span(c):  # pixel index range whose centres lie within `reach` of c
        lo = math.floor((c - reach + 1.0) * r / 2.0)
        return max(0, lo), min(r, math.ceil((c + reach + 1.0) * r / 2.0))

    (r0, r1), (c0, c1) = span(cy), span(cx)
    cos, sin = math.cos(rot), math.sin(rot)
    u0, v0 = x[:, c0:c1] - cx, y[r0:r1] - cy
    u, v = u0 * cos + v0 * sin, v0 * cos - u0 * sin
    dist = _shape_distance(shape, u, v, s)
    alpha = np.clip(0.5 - dist * (r / 2.0), 0.0, 1.0)  # one-pixel ramp = anti-aliased edge
    patch = img[:, r0:r1, c0:c1]
    patch += alpha * ((fg + 0.5)[:, None, None] - patch)
    np.clip(patch, 0.0, 255.0, out=patch)  # jittered white/black can leave [0, 255]
    return img.transpose(1, 2, 0).astype(np.uint8, order="C")


class ProceduralSource:
    """grain RandomAccessDataSource: `{"image": uint8 (R, R, 3), "label": int32 scalar}`.

    Record i is identical whatever the order or process it is read in (seeded by (seed, i)).
    """

    def __init__(self, num_classes: int, image_size: int, num_records: int, seed: int = 0):
        _check_num_classes(num_classes)
        if image_size < 4:
            raise ValueError(f"procedural dataset: image_size={image_size} is too small (≥ 4)")
        if num_records < 1:
            raise ValueError(f"procedural dataset: num_records={num_records} must be ≥ 1")
        self.num_classes = num_classes
        self.image_size = image_size
        self.num_records = num_records
        self.seed = seed
        self.class_names = class_names(num_classes)

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range [0, {self.num_records})")
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, index])
        return {"image": render(label, self.image_size, rng), "label": np.int32(label)}

    def __repr__(self) -> str:
        return (f"ProceduralSource(num_classes={self.num_classes}, image_size={self.image_size}, "
                f"num_records={self.num_records}, seed={self.seed})")
