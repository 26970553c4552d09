"""Per-example image transforms: decode, the official VAR and BiGR (ADM) crops, value ranges.

Pure numpy/PIL functions; every random choice comes from the `np.random.Generator` passed in,
so an example's augmentation is a function of that generator's seed only.

- VAR (FoundationVision/VAR `utils/data.py`): resize the shorter side to round(1.125·R) with
  LANCZOS (the longer side to int(mid·long/short), torchvision's `Resize(int)` rule), then a
  random R×R crop for training or torchvision's `CenterCrop` for validation; optional hflip
  (off in every official recipe). Output range [−1, 1].
- ADM / BiGR (`center_crop_arr` of guided-diffusion): halve with BOX while the shorter side is
  ≥ 2R, BICUBIC-resize the shorter side to R, centre-crop, then flip with p = 0.5.
  Output range [0, 1].
- BLD / B-AE training (BinaryLatentDiffusion's "random" loader): shorter side to int(1.05·R)
  with BILINEAR, random R×R crop, flip with p = 0.5. Output range [0, 1].
"""
from __future__ import annotations

import io
import warnings
import functools
from typing import Callable

import numpy as np
from PIL import Image

VALUE_RANGES = {"minus_one_one": (-1.0, 1.0), "zero_one": (0.0, 1.0)}
TRANSFORMS = ("var", "adm", "bld")

# Defaults of config.data.max_aspect_ratio / max_pixels (bigvar.data.pipeline.data_section).
DEFAULT_MAX_ASPECT_RATIO = 10.0
DEFAULT_MAX_PIXELS = 64_000_000


def decode(example: dict, **limits) -> np.ndarray | None:
    """uint8 (H, W, 3) RGB from an example's "image" array or "image_bytes"; None if unusable.

    Unusable = empty, truncated, corrupt, not an image, or beyond the size `limits` of
    `try_decode`: the pipeline skips such records.
    """
    return try_decode(example, **limits)[0]


def try_decode(example: dict, *, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray | None, str | None]:
    """Like `decode`, but also returns why an image could not be used (None when it could).

    Images whose longer:shorter side ratio exceeds `max_aspect_ratio` or that have more than
    `max_pixels` pixels (0 = no limit) are rejected from the file header, before any pixel is
    decoded: a 138-byte 1×20000 PNG would otherwise become a 288×5.76M array in `var_resize`.
    PIL's own decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) also rejects, never raises.
    Pixel values are mapped to 8 bits per mode as `to_rgb8` documents.
    """
    if "image" in example:
        image = np.asarray(example["image"])
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) image array, got {image.dtype} "
                             f"{image.shape} (record {example.get('path', '?')})")
        problem = _size_problem(image.shape[1], image.shape[0], max_aspect_ratio, max_pixels)
        if problem:
            return None, problem
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        return image[..., :3], None
    data = example.get("image_bytes")
    if data is None:
        raise ValueError(f"example has neither 'image' nor 'image_bytes': keys {sorted(example)}")
    if len(data) == 0:
        return None, example.get("read_error", "empty file")
    try:
        with warnings.catch_warnings():
            # Palette-with-transparency notices, and DecompressionBombWarning: the size check
            # below rejects those images itself (a warnings filter is process-global, so it
            # would not reliably turn the warning into an error across grain's read threads).
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
                problem = _size_problem(*img.size, max_aspect_ratio, max_pixels)
                if problem:
                    return None, problem
                img.load()  # decode now: a truncated file fails here, not later
                return to_rgb8(img)
    except Exception as e:  # noqa: BLE001 — PIL's ~40 format plugins raise OSError, ValueError,
        # SyntaxError, struct.error, IndexError, DecompressionBombError… on malformed input;
        # whatever the type, these bytes are not a usable image.
        return None, f"{type(e).__name__}: {e}"


def _size_problem(width: int, height: int, max_aspect_ratio: float,
                  max_pixels: int) -> str | None:
    """Why a width×height image is beyond the limits (0 = no limit), or None."""
    if width < 1 or height < 1:
        return f"empty {width}×{height} image"
    aspect = max(width, height) / min(width, height)
    if max_aspect_ratio and aspect > max_aspect_ratio:
        return (f"{width}×{height} image: aspect ratio {aspect:.1f}:1 exceeds "
                f"data.max_aspect_ratio={max_aspect_ratio:g}")
    pixels = width * height
    if max_pixels and pixels > max_pixels:
        return f"{width}×{height} image: {pixels} pixels exceed data.max_pixels={max_pixels}"
    bomb_limit = Image.MAX_IMAGE_PIXELS
    if bomb_limit and pixels > bomb_limit:
        return (f"{width}×{height} image: {pixels} pixels exceed PIL's decompression bomb limit "
                f"Image.MAX_IMAGE_PIXELS={bomb_limit}")
    return None


def to_rgb8(img: Image.Image) -> tuple[np.ndarray | None, str | None]:
    """uint8 (H, W, 3) pixels of a loaded PIL image, with a defined 8-bit mapping per mode.

    - 8-bit modes (1, L, P, LA, PA, RGBA, CMYK, YCbCr, …): PIL's `convert("RGB")`, as in
      torchvision's ImageFolder and the official VAR / BiGR loaders; alpha is dropped, not
      composited.
    - 16-bit gray (I;16, I;16B, I;16L, I;16N): the high byte, v >> 8 (0 → 0, 32896 → 128,
      65535 → 255). Pillow itself reads 16-bit RGB(A) PNGs this way (rawmode RGB;16B), so a
      16-bit gray image decodes like the same image stored as 16-bit colour. (round(v / 257)
      differs by at most one level.) `convert("RGB")` would clip everything above 255 to white.
    - I (32-bit signed): older Pillow opened 16-bit PNGs as I, 32-bit TIFFs open as I. Values
      within [0, 65535] are read as 16-bit (above); other values have no agreed 8-bit meaning,
      so the image is rejected with a reason.
    - F (32-bit float): values in [0, 1], the float-image convention (torchvision, scikit-image,
      float TIFF / EXR pipelines): round(255·v), clipped to [0, 255]; NaN → 0.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            return None, (f"32-bit integer image with values in [{values.min()}, "
                          f"{values.max()}], outside [0, 65535]: no defined 8-bit mapping")
        gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
    elif mode == "F":
        values = np.nan_to_num(np.asarray(img, np.float32), nan=0.0)
        gray = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        return np.asarray(img.convert("RGB"), np.uint8), None
    return np.repeat(gray[..., None], 3, axis=-1), None


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(image, np.uint8), "RGB")


def var_resize(image: np.ndarray, image_size: int) -> np.ndarray:
    """Shorter side → round(1.125·R) with LANCZOS; longer side as torchvision's Resize(int)."""
    return resize_shorter(image, round(1.125 * image_size), Image.LANCZOS)


def resize_shorter(image: np.ndarray, mid: int, resample) -> np.ndarray:
    """torchvision's `Resize(int)`: shorter side → mid, longer side truncated proportionally."""
    h, w = image.shape[:2]
    short, long = min(h, w), max(h, w)
    new_long = int(mid * long / short)  # torchvision truncates, it does not round
    new_w, new_h = (mid, new_long) if w <= h else (new_long, mid)
    if (new_w, new_h) == (w, h):
        return image
    return np.asarray(_pil(image).resize((new_w, new_h), resample))


def var_train(image: np.ndarray, image_size: int, rng: np.random.Generator,
              hflip: bool = False) -> np.ndarray:
    """VAR training crop: var_resize, uniform random R×R crop, optional horizontal flip."""
    return _random_crop(var_resize(image, image_size), image_size, rng, hflip)


def bld_train(image: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """B-AE training crop (BLD): shorter side int(1.05·R) bilinear, random crop, flip p = 0.5."""
    resized = resize_shorter(image, int(1.05 * image_size), Image.BILINEAR)
    return _random_crop(resized, image_size, rng, hflip=True)


def _random_crop(image: np.ndarray, image_size: int, rng: np.random.Generator,
                 hflip: bool) -> np.ndarray:
    h, w = image.shape[:2]
    top = int(rng.integers(0, h - image_size + 1))
    left = int(rng.integers(0, w - image_size + 1))
    out = image[top:top + image_size, left:left + image_size]
    if hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def var_val(image: np.ndarray, image_size: int) -> np.ndarray:
    """VAR validation crop: var_resize, then torchvision's CenterCrop (offsets rounded)."""
    image = var_resize(image, image_size)
    h, w = image.shape[:2]
    top = int(round((h - image_size) / 2.0))
    left = int(round((w - image_size) / 2.0))
    return np.ascontiguousarray(image[top:top + image_size, left:left + image_size])


def adm_center_crop(image: np.ndarray, image_size: int) -> np.ndarray:
    """guided-diffusion's `center_crop_arr`: BOX-halve while short ≥ 2R, BICUBIC to R, crop."""
    img = _pil(image)
    while min(img.size) >= 2 * image_size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = image_size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return np.ascontiguousarray(arr[top:top + image_size, left:left + image_size])


def adm_train(image: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """BiGR training view: ADM centre crop, then a horizontal flip with p = 0.5."""
    out = adm_center_crop(image, image_size)
    if rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, ::-1])
    return out


def resolve_value_range(value_range: str | tuple[float, float]) -> tuple[float, float]:
    if isinstance(value_range, str):
        if value_range not in VALUE_RANGES:
            raise ValueError(f"value_range={value_range!r} is unknown; use one of "
                             f"{sorted(VALUE_RANGES)} or a (low, high) tuple")
        return VALUE_RANGES[value_range]
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range={value_range!r}: need low < high")
    return lo, hi


def to_float(images: np.ndarray, value_range: str | tuple[float, float]) -> np.ndarray:
    """uint8 images (any leading shape) → float32 with 0 ↦ low and 255 ↦ high."""
    lo, hi = resolve_value_range(value_range)
    out = np.asarray(images, np.float32) * np.float32((hi - lo) / 255.0)
    if lo != 0.0:
        out += np.float32(lo)
    return out


def make_image_transform(kind: str, image_size: int, *, hflip: bool = False,
                         train: bool = True
                         ) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """(decoded uint8 image, rng) → uint8 (R, R, 3) for transform `kind` ("var" | "adm" | "bld").

    "adm" and "bld" always flip at random during training (their recipes), so `hflip` only
    affects "var". "bld" validates with the ADM centre crop.
    """
    if kind not in TRANSFORMS:
        raise ValueError(f"transform={kind!r} is unknown; use one of {list(TRANSFORMS)}")
    if image_size < 1:
        raise ValueError(f"image_size={image_size} must be positive")
    # functools.partial, not lambdas: the transform is pickled into grain's worker processes.
    if kind == "var":
        if train:
            return functools.partial(_call_var_train, image_size=image_size, hflip=hflip)
        return functools.partial(_ignore_rng, fn=var_val, image_size=image_size)
    if train:
        train_fn = adm_train if kind == "adm" else bld_train
        return functools.partial(_call_train, fn=train_fn, image_size=image_size)
    return functools.partial(_ignore_rng, fn=adm_center_crop, image_size=image_size)


def _call_var_train(image, rng, *, image_size, hflip):
    return var_train(image, image_size, rng, hflip=hflip)


def _call_train(image, rng, *, fn, image_size):
    return fn(image, image_size, rng)


def _ignore_rng(image, rng, *, fn, image_size):
    del rng  # deterministic (validation) transform
    return fn(image, image_size)
