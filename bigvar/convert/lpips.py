"""LPIPS-VGG weights → bigvar params (`bigvar.tokenizers.lpips.LPIPS`).

Two sources, read without torch:

* `--vgg` + `--lin`: torchvision's VGG16 ImageNet state dict (`vgg16-397923af.pth`: keys
  `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}`; `classifier.*` is ignored) and
  the LPIPS linear layers (`vgg.pth` of PerceptualSimilarity v0.1 = taming's download: keys
  `lin{0..4}.model.1.weight`, (1, C, 1, 1); `lin{k}.model.0.weight` of a `use_dropout=False`
  LPIPS is accepted too).
* `--lpips`: a whole LPIPS state dict as the official modules hold it — taming's `LPIPS` or the
  `lpips` package's `LPIPS(net="vgg")`: `net.slice{1..5}.{i}.{weight,bias}` (i = the torchvision
  index), `lin{k}.model.1.weight`, the `scaling_layer.{shift,scale}` buffers (checked against
  the fixed v0.1 values) and, for the lpips package, the duplicate `lins.{k}.*` (checked equal).
  It may sit under a prefix inside a bigger checkpoint (e.g. `loss.perceptual_loss.` in a taming
  VQGAN `last.ckpt`, `perceptual.` in a BinaryGAN / BiGR B-AE state dict); the prefix is found
  from `net.slice1.0.weight` and keys outside it are ignored.

Torch conv weights (out, in, kh, kw) become Flax kernels (kh, kw, in, out); every key is checked
against the table, with missing, unexpected and mis-shaped keys named in torch layout.
"""
from __future__ import annotations

import numpy as np

from bigvar.weights import describe_mismatch
from bigvar.convert import torch_pickle
from bigvar.convert.common import (ConversionError, check_against, conv, find_state_dict,
                                   set_path)
from bigvar.tokenizers.lpips import SCALE, SHIFT, TAP_CHANNELS, VGG16_STAGES, lpips_shapes

# torchvision `features` index of conv i (ReLUs and max-pools take the other indices).
VGG16_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# The official LPIPS vgg16 wrapper: slice s (1-based) holds features[start:end].
SLICE_BOUNDS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
TAP_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
ANCHOR = "net.slice1.0.weight"

_CONVERT_HELP = ("usage: python -m bigvar.convert lpips --vgg=vgg16-397923af.pth --lin=vgg.pth "
                 "--out=DIR, or --lpips=CKPT (a checkpoint holding a whole LPIPS state dict) "
                 "--out=DIR")



def _slice_of(index: int) -> int:
    return next(s for s, (lo, hi) in enumerate(SLICE_BOUNDS, start=1) if lo <= index < hi)


def _conv_shapes() -> list[tuple[int, int]]:
    shapes, c_in = [], 3
    for widths in VGG16_STAGES:
        for width in widths:
            shapes.append((width, c_in))
            c_in = width
    return shapes


def vgg_table(lpips_names: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    """torch key → (flax path, torch shape) of the 13 VGG16 convs, with torchvision names
    (`features.{i}.*`) or the official LPIPS wrapper's (`net.slice{s}.{i}.*`)."""
    table = {}
    for i, (index, (out, c_in)) in enumerate(zip(VGG16_FEATURES, _conv_shapes())):
        prefix = f"net.slice{_slice_of(index)}.{index}" if lpips_names else f"features.{index}"
        table[f"{prefix}.weight"] = (f"vgg/conv_{i}/kernel", (out, c_in, 3, 3))
        table[f"{prefix}.bias"] = (f"vgg/conv_{i}/bias", (out,))
    return table


def lin_table(sequential_index: int = 1) -> dict[str, tuple[str, tuple[int, ...]]]:
    """torch key → (flax path, torch shape) of the lin layers; index 1 behind the Dropout of
    the official `use_dropout=True`, 0 without it."""
    return {f"lin{k}.model.{sequential_index}.weight": (f"lin_{k}/kernel", (1, c, 1, 1))
            for k, c in enumerate(TAP_CHANNELS)}


def _convert(sd: dict, table: dict, what: str, ignore=lambda key: False, hint: str = "") -> dict:
    missing = [k for k in table if k not in sd]
    misshaped = [f"{k}: expected {table[k][1]}, found {tuple(sd[k].shape)}"
                 for k in table if k in sd and tuple(sd[k].shape) != table[k][1]]
    unexpected = sorted(k for k in sd if k not in table and not ignore(k))
    if missing or misshaped or unexpected:
        raise ConversionError(describe_mismatch(what, missing, unexpected, misshaped)
                              + (f"\n{hint}" if hint else ""))
    params: dict = {}
    for key, (path, _) in table.items():
        value = np.asarray(sd[key], np.float32)
        set_path(params, path, conv(value) if path.endswith("kernel") else value)
    return params


def _hint(sd: dict, expected: str) -> str:
    if any(k.endswith(ANCHOR) for k in sd):
        return ("This is a whole LPIPS state dict: pass it as --lpips instead of --vgg/--lin.")
    if expected == "vgg" and any(k.startswith("lin0.") for k in sd):
        return "This looks like the LPIPS linear layers (vgg.pth): pass it as --lin."
    if expected == "lin" and any(k.startswith("features.") for k in sd):
        return "This looks like torchvision's VGG16 weights: pass it as --vgg."
    return ""


def convert_vgg_state_dict(sd: dict, path: str = "VGG16") -> dict:
    """torchvision VGG16 state dict → {"vgg": {"conv_{i}": {kernel, bias}}}."""
    return _convert(sd, vgg_table(lpips_names=False), f"{path}: the torchvision VGG16 weights",
                    ignore=lambda k: k.startswith("classifier."), hint=_hint(sd, "vgg"))


def convert_lin_state_dict(sd: dict, path: str = "LPIPS lin") -> dict:
    """LPIPS linear layers (`lin{k}.model.1.weight`, or `.model.0.` without dropout) →
    {"lin_{k}": {kernel}}."""
    table = lin_table(0 if "lin0.model.0.weight" in sd else 1)
    return _convert(sd, table, f"{path}: the LPIPS linear layers", hint=_hint(sd, "lin"))


def lpips_prefix(sd: dict, path: str) -> str:
    """The prefix under which a whole LPIPS state dict sits ('' for a bare one)."""
    prefixes = sorted({k[:-len(ANCHOR)] for k in sd
                       if k.endswith(ANCHOR) and (k == ANCHOR or k[-len(ANCHOR) - 1] == ".")})
    if not prefixes:
        advice = _hint(sd, "vgg") or _hint(sd, "lin")
        raise ConversionError(f"{path} holds no LPIPS network: no `{ANCHOR}` key (first keys: "
                              f"{sorted(sd)[:8]}). {advice or _CONVERT_HELP}")
    if len(prefixes) > 1:
        raise ConversionError(f"{path} holds {len(prefixes)} LPIPS networks (under "
                              f"{[p or '<no prefix>' for p in prefixes]}); cannot tell which to use")
    return prefixes[0]


def convert_lpips_state_dict(sd: dict, path: str = "LPIPS") -> dict:
    """A whole official LPIPS state dict, possibly under a prefix → {"vgg": …, "lin_{k}": …}."""
    prefix = lpips_prefix(sd, path)
    sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    where = f"{path}{f' (under {prefix!r})' if prefix else ''}"
    for name, want in (("shift", SHIFT), ("scale", SCALE)):
        value = sub.pop(f"scaling_layer.{name}", None)
        if value is not None and (value.size != 3 or not np.allclose(np.ravel(value), want, rtol=0, atol=1e-6)):
            raise ConversionError(f"{where}: scaling_layer.{name} is {np.ravel(value).tolist()}, "
                                  f"not the LPIPS v0.1 value {list(want)}; this is not the LPIPS "
                                  "that bigvar implements")
    sequential_index = 0 if "lin0.model.0.weight" in sub else 1
    for k in range(len(TAP_CHANNELS)):  # the lpips package also registers them as lins.{k}
        dup, key = f"lins.{k}.model.{sequential_index}.weight", f"lin{k}.model.{sequential_index}.weight"
        if dup in sub:
            twin = sub.pop(dup)
            if key in sub and not np.array_equal(sub[key], twin):
                raise ConversionError(f"{where}: {dup} differs from {key}; the two copies must "
                                      "be identical")
            sub.setdefault(key, twin)
    table = {**vgg_table(lpips_names=True), **lin_table(sequential_index)}
    return _convert(sub, table, f"{where}: the LPIPS weights")


def read_state_dict(path: str) -> dict:
    """A state dict from a zip-format or legacy (pre-1.6, e.g. LPIPS's vgg.pth) torch file."""
    return find_state_dict(torch_pickle.load(path), [("state_dict",), ("model",), ("ema",)], path)


def convert(vgg_path: str | None = None, lin_path: str | None = None,
            lpips_path: str | None = None) -> tuple[dict, dict]:
    """Reads the files (no torch) → (model config for config.json, variables {"params": …})."""
    if lpips_path is not None and (vgg_path or lin_path):
        raise ConversionError(f"pass either --lpips or --vgg and --lin, not both. {_CONVERT_HELP}")
    if lpips_path is None and not (vgg_path and lin_path):
        raise ConversionError(f"both --vgg and --lin are needed (or --lpips alone). {_CONVERT_HELP}")
    if lpips_path is not None:
        params = convert_lpips_state_dict(read_state_dict(lpips_path), lpips_path)
        source = {"lpips": lpips_path}
    else:
        params = {**convert_vgg_state_dict(read_state_dict(vgg_path), vgg_path),
                  **convert_lin_state_dict(read_state_dict(lin_path), lin_path)}
        source = {"vgg": vgg_path, "lin": lin_path}
    check_against(lpips_shapes()["params"], params, "the converted LPIPS weights")
    config = {"model": "lpips",
              "lpips": {"net": "vgg16", "version": "0.1", "taps": list(TAP_NAMES),
                        "tap_channels": list(TAP_CHANNELS), "shift": list(SHIFT), "scale": list(SCALE)},
              "source": source}
    return config, {"params": params}
