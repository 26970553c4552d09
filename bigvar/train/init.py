"""The official initialisations for training from scratch (VAR's `VAR.init_weights` and
`build_vae_var`; BiGR's `Transformer` constructor and `_init_weights` in `llama/gpt.py`).

Both are pure functions of freshly initialised params (for shapes) and a key: the flax module
initialisers give the right shapes and reasonable values for inference tests; these rewrite
them into the exact distributions and scalings the official trainers start from.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict


def _trunc_normal(key, shape, std: float):
    """torch `trunc_normal_(std=std)`: truncation at the absolute bounds ±2 (not ±2σ)."""
    return jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, jnp.float32) * std


def var_official_init(params: Any, key: jax.Array, *, depth: int, embed_dim: int,
                      init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                      init_head: float = 0.02, init_std: float = -1.0) -> Any:
    """`VAR.init_weights`: every Linear/Embedding and the position/level tables trunc-normal
    with std √(1/3C), biases 0, temperatures ln 4, `ada_gss` N(0,1)/√C; then the head ×init_head,
    the head's AdaLN ×init_adaln, proj/fc2 /√(2·depth), and each block's AdaLN scale/shift rows
    ×init_adaln and gamma rows ×init_adaln_gamma."""
    c = embed_dim
    std = math.sqrt(1.0 / (3 * c)) if init_std < 0 else init_std
    flat = flatten_dict(params["params"])
    keys = dict(zip(sorted(flat), jax.random.split(key, len(flat))))
    out = {}
    for path, leaf in flat.items():
        name, k = path[-1], keys[path]
        if name in ("kernel", "embedding", "pos_start", "pos_1LC"):
            value = _trunc_normal(k, leaf.shape, std)
        elif name.endswith("bias"):  # Linear biases, q_bias, v_bias
            value = jnp.zeros(leaf.shape, jnp.float32)
        elif name == "scale_mul_1H11":
            value = jnp.full(leaf.shape, math.log(4.0), jnp.float32)
        elif name == "ada_gss":
            value = jax.random.normal(k, leaf.shape, jnp.float32) / math.sqrt(c)
        else:
            raise ValueError(f"var_official_init: no rule for parameter {'/'.join(path)}")
        out[path] = value

    out[("head", "kernel")] = out[("head", "kernel")] * init_head
    out[("head_nm", "ada_lin", "kernel")] = out[("head_nm", "ada_lin", "kernel")] * init_adaln
    for sub in (("attn", "proj"), ("ffn", "fc2")):
        path = ("blocks",) + sub + ("kernel",)
        out[path] = out[path] / math.sqrt(2 * depth)
    # The six AdaLN chunks are (γ1, γ2, scale1, scale2, shift1, shift2): the γs start tiny.
    chunk_scale = jnp.asarray([init_adaln_gamma] * 2 + [init_adaln] * 4, jnp.float32)
    if ("blocks", "ada_gss") in out:  # shared AdaLN: (depth, 1, 1, 6, C)
        out[("blocks", "ada_gss")] = out[("blocks", "ada_gss")] * chunk_scale[:, None]
    else:  # kernel (depth, C, 6C): output columns are the chunks
        path = ("blocks", "ada_lin", "kernel")
        out[path] = out[path] * jnp.repeat(chunk_scale, c)
    return {"params": unflatten_dict(out)}


# BiGR parameters that start at zero (MAR's adaLN-zero transcoder and the shared AdaLN).
_BIGR_ZERO = (("adaLN",), ("denoise_mlp", "final_layer", "adaLN_modulation"),
              ("denoise_mlp", "final_layer", "linear"))


def bigr_official_init(params: Any, key: jax.Array) -> Any:
    """BiGR from scratch: Linear and Embedding N(0, 0.02) with zero biases (as the flax
    modules already initialise), `mask_tok` N(0,1), `ada_gss` N(0,1)/√D, the learned position
    embedding N(0, 0.02), RMSNorm weights 1 — and zero for the main AdaLN projection, every
    transcoder block's adaLN modulation, the final layer's modulation and its output Linear."""
    del key  # the module initialisers already draw the official distributions
    flat = flatten_dict(params["params"])
    out = {}
    for path, leaf in flat.items():
        zero = any(path[:len(p)] == p for p in _BIGR_ZERO) or (
            path[0] == "denoise_mlp" and path[1].startswith("blocks_") and path[2] == "adaLN_modulation")
        out[path] = jnp.zeros_like(leaf) if zero else leaf
    return {"params": unflatten_dict(out)}
