"""What a resumable result is made from, as one key. The sample parts of `mode=sample`, the
Inception features of `mode=eval` and BiGR's features of `mode=probe` are kept between runs and
read back only when a rerun would make the same ones; anything else is a fresh computation or a
refusal, never a mix.

A key holds the resolved config sections that feed the computation, every field of them but the
few named below that cannot change the result, so a field added to a section later is in the key
without touching this file. Fields are flattened to dotted names ("var.dtype", "sample.cfg"), so
a refusal names exactly what changed.
"""
from __future__ import annotations

import hashlib
import json

import ml_collections

# Fields of the model sections that only training reads (a forward pass without gradients never
# does): they cannot change samples or features.
TRAINING_ONLY = frozenset({"drop_path_rate", "dropout", "remat", "remat_policy"})

# Fields of `config.sample` that decide how a sampling job runs, not what it makes: the batch
# actually used is keyed on its own (0 picks it from the free memory), PNGs and the grid are
# written from the parts.
SAMPLING_LOGISTICS = frozenset({"batch_size", "memory_gib", "save_pngs", "grid_cols"})

# Fields of `config.eval` that do not change the Inception features of an image: which files
# (their images are keyed by checksum, the network by its weights' checksums), the metrics asked
# for, and the batch (each part is keyed by its own images).
EVAL_LOGISTICS = frozenset({"samples", "reference", "inception", "precision_recall", "batch_size"})


def _as_json(key: dict) -> dict:
    """The key as it reads back from a JSON file (tuples become lists), so that a recorded key
    and a computed one compare equal."""
    return json.loads(json.dumps(key, sort_keys=True))


def _flat(prefix: str, section, leave_out=frozenset()) -> dict:
    values = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
    return {f"{prefix}.{name}": value for name, value in sorted(values.items())
            if name not in leave_out}


def model_fields(config: ml_collections.ConfigDict) -> dict:
    """The generator's and tokenizer's sections (config.model picks them), less training-only
    fields."""
    from bigvar.models import SECTIONS
    fields = {"model": config.model}
    for section in SECTIONS[config.model]:
        fields.update(_flat(section, config[section], TRAINING_ONLY))
    return fields


def samples_key(config: ml_collections.ConfigDict, *, weights: str, batch_size: int) -> dict:
    """What a sampling job's images depend on: the model sections, the weights' checksums, every
    content field of `config.sample` and the batch boundaries."""
    return _as_json({**model_fields(config), **_flat("sample", config.sample, SAMPLING_LOGISTICS),
                     "weights": weights, "batch_size": int(batch_size)})


def eval_features_key(config: ml_collections.ConfigDict, *, network: str) -> dict:
    """What an image's Inception features depend on besides the image: the network's weights
    (their checksums) and how images are fed to it."""
    return _as_json({**_flat("eval", config.eval, EVAL_LOGISTICS), "network": network})


def probe_features_key(config: ml_collections.ConfigDict, *, weights: str, layer: int) -> dict:
    """What an image's BiGR features depend on besides the image: the model sections (dtype
    included), the weights' checksums and the block read."""
    return _as_json({**model_fields(config), "weights": weights, "layer": int(layer)})


def digest(key: dict) -> str:
    """16 hex digits of a key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def differences(recorded: dict, key: dict) -> list[str]:
    """The names whose values differ between two keys."""
    return sorted(name for name in set(recorded) | set(key) if recorded.get(name) != key.get(name))
