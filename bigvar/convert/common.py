"""Pieces every converter shares: finding the state dict inside a checkpoint, tensor layout
transforms (PyTorch → Flax), nested-path helpers and the mismatch report."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from bigvar.checkpoint import describe_mismatch


class ConversionError(ValueError):
    """A checkpoint that is not the expected model, or does not match its config."""


# ---- layout transforms ----------------------------------------------------------------------
def linear(w: np.ndarray) -> np.ndarray:
    """nn.Linear weight (out, in) → Dense kernel (in, out)."""
    return np.ascontiguousarray(w.T)


def conv(w: np.ndarray) -> np.ndarray:
    """nn.Conv2d weight (out, in, kh, kw) → Conv kernel (kh, kw, in, out)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def same(w: np.ndarray) -> np.ndarray:
    return w


Transform = Callable[[np.ndarray], np.ndarray]


# ---- finding the weights --------------------------------------------------------------------
def is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, np.ndarray) for v in obj.values()))


def find_state_dict(obj: Any, candidates: Iterable[tuple[str, ...]], path: str) -> dict[str, np.ndarray]:
    """The bare state dict, or the first nested one at a candidate key path."""
    if is_state_dict(obj):
        return dict(obj)
    for keys in candidates:
        node = obj
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        if is_state_dict(node):
            return dict(node)
    top = sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ConversionError(
        f"{path}: no state dict found (top-level keys: {top}); expected a bare state dict or one "
        f"under {[ '/'.join(c) for c in candidates]}")


# ---- nested params ---------------------------------------------------------------------------
def set_path(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def check_against(expected: Mapping, converted: Mapping, what: str,
                  display: Callable[[str], str] = lambda p: p) -> None:
    """Compares converted params with the model's expected shapes (flat dicts of path → shape);
    raises ConversionError naming missing, unexpected and mis-shaped entries."""
    want, got = flatten(expected), flatten(converted)
    missing = sorted(display(k) for k in set(want) - set(got))
    unexpected = sorted(display(k) for k in set(got) - set(want))
    misshaped = sorted(
        f"{display(k)}: expected {tuple(want[k].shape)}, found {tuple(got[k].shape)}"
        for k in set(want) & set(got) if tuple(want[k].shape) != tuple(got[k].shape))
    if missing or unexpected or misshaped:
        raise ConversionError(describe_mismatch(what, missing, unexpected, misshaped))


def report_unknown_keys(what: str, unknown: list[str], hint: str = "") -> None:
    if unknown:
        raise ConversionError(describe_mismatch(what, [], sorted(unknown), []) + (f"\n{hint}" if hint else ""))
