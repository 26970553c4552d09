"""Pieces every converter shares: finding the state dict inside a checkpoint, tensor layout
transforms (PyTorch → Flax), nested-path helpers and the mismatch report."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import re

import numpy as np

from bigvar.weights import describe_mismatch


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


# ---- name tables ------------------------------------------------------------------------------
class NameTable:
    """A converter table: rows (torch key template, flax path template, transform).

    `{i}` in a template is a transformer layer index: those rows are stacked on a leading axis
    for `nn.scan`. `{j}` is any other index, substituted into the flax path (e.g. `blocks_{j}`).
    `skip` lists templates of buffers that are recomputed, not loaded.
    """

    def __init__(self, rows: list[tuple[str, str, Transform]], skip: list[str] = ()):
        self.rows = rows
        self._compiled = [(self._regex(t), path, fn) for t, path, fn in rows]
        self._skip = [self._regex(t) for t in skip]

    @staticmethod
    def _regex(template: str) -> re.Pattern:
        pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
        return re.compile("^" + pattern + "$")

    def is_skipped(self, key: str) -> bool:
        return any(p.match(key) for p in self._skip)

    def torch_name(self, flax_path: str) -> str:
        """Official key for a bigvar path, for error messages (`*` for a stacked layer index)."""
        for template, path, _ in self.rows:
            m = self._regex(path).match(flax_path)
            if m:
                j = m.groupdict().get("j")
                return template.replace("{i}", "*").replace("{j}", j if j is not None else "{j}")
        name = re.sub(r"_(\d+)(?=/|$)", r".\1", flax_path).replace("/", ".")
        return re.sub(r"\.(kernel|scale|embedding)$", ".weight", name)

    def convert(self, sd: dict, num_layers: int, what: str) -> dict:
        """State dict → nested params; unknown keys and inconsistent layer stacks are errors."""
        params, stacked, unknown = {}, {}, []
        for key, value in sd.items():
            if self.is_skipped(key):
                continue
            for regex, path, fn in self._compiled:
                m = regex.match(key)
                if not m:
                    continue
                groups = m.groupdict()
                if "j" in groups:
                    path = path.replace("{j}", groups["j"])
                if "i" in groups:
                    stacked.setdefault(path, (fn, {}))[1][int(groups["i"])] = value
                else:
                    set_path(params, path, fn(value))
                break
            else:
                unknown.append(key)
        report_unknown_keys(what, unknown)
        for path, (fn, rows) in stacked.items():
            name = self.torch_name(path)
            if sorted(rows) != list(range(num_layers)):
                missing = sorted(set(range(num_layers)) - set(rows))
                raise ConversionError(f"{what}: {name} is missing for layers {missing}")
            shapes = {i: rows[i].shape for i in range(num_layers)}
            odd = [f"{name.replace('*', str(i))}: {shapes[i]}" for i in range(num_layers) if shapes[i] != shapes[0]]
            if odd:
                raise ConversionError(f"{what}: layers disagree on the shape of {name} "
                                      f"(layer 0: {shapes[0]}; mis-shaped: {odd})")
            set_path(params, path, np.stack([fn(rows[i]) for i in range(num_layers)]))
        return params


def convert_conv_net(sd: dict, rules: list[tuple[str, str]] = ()) -> dict:
    """Conv-net state dict (tokenizers) → nested params by rename rules: explicit regex rules
    first, then the generic one: `a.3.b` → `a_3/b`; a 4-D `weight` → conv `kernel`, a 1-D one →
    GroupNorm `scale`."""
    params = {}
    for key, value in sd.items():
        for pattern, replacement in rules:
            if re.match(pattern, key):
                flax_path = re.sub(pattern, replacement, key)
                set_path(params, flax_path, conv(value) if flax_path.endswith("kernel") else value)
                break
        else:
            *names, leaf = re.sub(r"\.(\d+)(?=\.)", r"_\1", key).split(".")
            if leaf == "weight":
                leaf, value = ("kernel", conv(value)) if value.ndim == 4 else ("scale", value)
            set_path(params, "/".join(names + [leaf]), value)
    return params


def looks_like(sd: dict, required: list[str], kind: str, path: str, hints: dict[str, str]) -> None:
    """Raises a ConversionError if required keys are missing; `hints` maps a key prefix found in
    the file to advice (e.g. which converter it belongs to)."""
    missing = [k for k in required if k not in sd]
    if missing:
        hint = next((advice for prefix, advice in hints.items() if any(k.startswith(prefix) for k in sd)), "")
        raise ConversionError(f"{path} is not a {kind} state dict: missing {missing} "
                              f"(first keys: {sorted(sd)[:8]}).{(' ' + hint) if hint else ''}")
