"""Small shared layers: parameter-free LayerNorm, logically partitioned Dense, attention.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `vocab`, ...) so the same
module runs unsharded on one CPU and FSDP/tensor-parallel on a pod (see `bigvar.parallel`).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


ATTENTION_IMPLS = ("xla", "cudnn", "splash", "auto")
# Splash attention's tile: sequences are padded to a multiple of it; shorter query blocks (the
# sampler's coarse scales) would be mostly padding and take XLA's attention instead.
SPLASH_BLOCK = 128
# Tests set this to run `splash` off a TPU through the kernel's interpreter (slow, exact).
SPLASH_INTERPRET_OFF_TPU = False


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
              mask: np.ndarray | jax.Array | None = None, impl: str = "xla") -> jax.Array:
    """Softmax attention. q: (B, T, H, D); k, v: (B, S, H, D); mask: (T, S) bool, True = attend.

    `xla` is a plain einsum (softmax in float32), the path the parity tests pin. The fused kernels
    run where they can and fall back to `xla` elsewhere, with one warning:
      `cudnn`: cuDNN's flash attention, on a GPU in bfloat16/float16;
      `splash`: the Pallas splash-attention kernel, on a TPU, for T ≥ 128 query tokens and a
        mask given as a NumPy array (its sparsity is planned at trace time; whole masked-out
        blocks, such as VAR's later scales for earlier queries, are skipped);
      `auto`: cuDNN on a GPU, splash on a TPU, XLA elsewhere, without warnings.
    Returns (B, T, H, D) in q's dtype.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
    backend = jax.default_backend()
    if impl in ("cudnn", "auto") and backend == "gpu" and jnp.dtype(q.dtype) in (jnp.bfloat16, jnp.float16):
        return jax.nn.dot_product_attention(
            q, k, v, mask=None if mask is None else jnp.asarray(mask)[None, None], scale=scale,
            implementation="cudnn")
    if impl in ("splash", "auto") and (backend == "tpu" or SPLASH_INTERPRET_OFF_TPU):
        if q.shape[1] >= SPLASH_BLOCK and not isinstance(mask, jax.Array):
            return splash_attention(q, k, v, scale=scale, mask=mask, interpret=backend != "tpu")
        return _xla_attention(q, k, v, scale, mask)
    if impl in ("cudnn", "splash"):
        _warn_fallback(impl, backend, jnp.dtype(q.dtype).name)
    return _xla_attention(q, k, v, scale, mask)


def _xla_attention(q, k, v, scale, mask):
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(jnp.asarray(mask)[None, None], logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


@functools.lru_cache(maxsize=None)  # once per choice, backend and dtype, not once per layer
def _warn_fallback(impl: str, backend: str, dtype: str) -> None:
    needs = "a GPU and bfloat16/float16" if impl == "cudnn" else "a TPU"
    logging.warning("attn_impl=%r needs %s (here: %s, %s): using XLA's attention", impl, needs,
                    backend, dtype)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                     mask: np.ndarray | None = None, interpret: bool = False) -> jax.Array:
    """`attention` with the Pallas splash-attention kernel (TPU; `interpret` runs it anywhere,
    slowly, for tests). T and S are padded to multiples of `SPLASH_BLOCK`: padded keys are masked
    out and padded queries, cut from the result, attend to key 0 (so no row is empty). Under a
    mesh (the trainer's), each device runs the kernel on its batch rows and heads (shard_map)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    b, t, h, _ = q.shape
    s = k.shape[1]
    t_pad, s_pad = (-(-n // SPLASH_BLOCK) * SPLASH_BLOCK for n in (t, s))
    padded_mask = np.zeros((t_pad, s_pad), bool)
    padded_mask[:t, :s] = True if mask is None else np.asarray(mask, bool)
    padded_mask[t:, 0] = True

    def heads_first(x, length):  # (B, n, H, D) → (B, H, length, D), zero-padded
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    def local(q, k, v):  # one device's rows and heads
        kernel = splash.make_splash_mha(
            masks.MultiHeadMask([masks.NumpyMask(padded_mask)] * q.shape[1]), head_shards=1,
            q_seq_shards=1, interpret=interpret)
        return jax.vmap(kernel)(q, k, v)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        rows = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
        heads = "tensor" if "tensor" in mesh.axis_names and h % mesh.shape["tensor"] == 0 else None
        if b % math.prod(mesh.shape[a] for a in rows) == 0:
            spec = jax.sharding.PartitionSpec(rows, heads, None, None)
            local = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                                  check_vma=False)
    out = local(heads_first(q * jnp.asarray(scale, q.dtype), t_pad), heads_first(k, s_pad),
                heads_first(v, s_pad))
    return out.transpose(0, 2, 1, 3)[:, :t]


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
