"""Small shared layers: parameter-free LayerNorm, logically partitioned Dense, attention.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `vocab`, ...) so the same
module runs unsharded on one CPU and FSDP/tensor-parallel on a pod (see `bigvar.parallel`).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvar.errors import invalid

Dtype = Any


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters, computed in float32 (torch `elementwise_affine=False`)."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return (x32 - mean) * jax.lax.rsqrt(var + eps)


def dense(features: int, axes: tuple[str, str], name: str | None = None, *, use_bias: bool = True,
          std: float = 0.02, dtype: Dtype = jnp.float32) -> nn.Dense:
    """Dense layer whose kernel (in, out) and bias (out,) carry logical axis names."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
    )


def param(module: nn.Module, name: str, init, shape: Sequence[int], axes: tuple[str | None, ...]):
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), jnp.float32)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Pins an activation's sharding by logical names (`act_batch`, `act_embed`, ...). A no-op
    without axis rules (inference, tests on one device); under the trainer's rules it keeps the
    batch split over data × fsdp, where GSPMD alone may follow the FSDP-sharded weights instead."""
    return nn.with_logical_constraint(x, names)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """`F.normalize(x, dim=-1)`: x / max(‖x‖₂, eps)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


ATTENTION_IMPLS = ("xla", "cudnn", "auto")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
              mask: jax.Array | None = None, impl: str = "xla") -> jax.Array:
    """Softmax attention. q: (B, T, H, D); k, v: (B, S, H, D); mask: (T, S) bool, True = attend.

    `xla` is a plain einsum (softmax in float32), the path the parity tests pin. `cudnn` asks for
    cuDNN's fused flash kernel, which runs on a GPU in bfloat16/float16; on another backend or in
    float32 it falls back to `xla` with a warning. `auto` takes cuDNN where it runs and `xla`
    elsewhere, silently. Returns (B, T, H, D) in q's dtype.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
    if impl != "xla":
        if _cudnn_runs(q.dtype):
            return jax.nn.dot_product_attention(
                q, k, v, mask=None if mask is None else mask[None, None], scale=scale,
                implementation="cudnn")
        if impl == "cudnn":
            _warn_cudnn_fallback(jax.default_backend(), jnp.dtype(q.dtype).name)
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[None, None], logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


def _cudnn_runs(dtype) -> bool:
    return jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)


@functools.lru_cache(maxsize=None)  # once per backend and dtype, not once per traced layer
def _warn_cudnn_fallback(backend: str, dtype: str) -> None:
    logging.warning("attn_impl='cudnn' needs a GPU and bfloat16/float16 (here: %s, %s): using "
                    "XLA's attention", backend, dtype)


def layer_stack(block: type[nn.Module], *, length: int, in_axes: tuple, remat: bool,
                remat_policy: str, scan_unroll: int, static_argnums: tuple[int, ...] = ()):
    """`length` copies of `block` as one `nn.scan` (params stacked on a leading `layers` axis),
    rematerialised with the named `jax.checkpoint_policies` policy when `remat`; call the result
    with the block's constructor arguments. `scan_unroll` layers run per scan iteration."""
    if remat:
        block = nn.remat(block, prevent_cse=False, static_argnums=static_argnums,
                         policy=getattr(jax.checkpoint_policies, remat_policy))
    return nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=in_axes, length=length, metadata_params={nn.PARTITION_NAME: "layers"},
        unroll=max(1, min(scan_unroll, length)))


def validate_stack_fields(section, name: str) -> None:
    """The `layer_stack` fields of a model's config section: remat policy and scan unrolling."""
    if not hasattr(jax.checkpoint_policies, section.remat_policy):
        options = sorted(p for p in dir(jax.checkpoint_policies) if not p.startswith("_"))
        invalid(f"{name}.remat_policy", section.remat_policy, f"one of jax.checkpoint_policies: {options}")
    if section.scan_unroll < 1:
        invalid(f"{name}.scan_unroll", section.scan_unroll, "≥ 1 layers per scan iteration "
                "(the depth unrolls the stack fully)")
