"""VAR transformer (official `models/var.py`, `models/basic_var.py`): GPT-style blocks with
AdaLN, cosine attention and a block-causal (scale-wise) mask, layers under `nn.scan`.

Parameter names mirror the official state dict: `word_embed`, `class_emb`, `pos_start`,
`pos_1LC`, `lvl_embed`, `blocks/{attn/{mat_qkv,q_bias,v_bias,scale_mul_1H11,proj},
ffn/{fc1,fc2}, ada_lin | ada_gss}`, `shared_ada_lin`, `head_nm/ada_lin`, `head`; block params are
stacked on a leading layer axis.

Two entry points share the blocks:
  * `__call__(labels, x_in)`: the teacher-forced forward over all L tokens (training, parity);
  * `step(...)`: one scale of KV-cached inference, used by `bigvar.sampling.var`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigvar.errors import invalid
from bigvar.nn.layers import (ATTENTION_IMPLS, attention, constrain, dense, l2_normalize,
                              layer_norm, layer_stack, param, validate_stack_fields)

ACT = ("act_batch", "act_seq", "act_embed")

Dtype = Any
_MAX_SCALE_MUL = math.log(100.0)
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # token-map sides of the 256-px releases
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)  # and of var_d36 at 512 px


def config_section(depth: int, *, shared_aln: bool = False, patch_nums=PATCH_NUMS_256,
                   embed_dim: int | None = None, num_heads: int | None = None,
                   num_classes: int = 1000) -> dict:
    """`config.var`: the `VAR` fields but the tokenizer's (`VAR(vocab_size=…, cvae=…, **section)`).
    The official depth rule: heads = depth, width = 64·depth, drop_path 0.1·depth/24."""
    return dict(
        depth=depth, embed_dim=embed_dim or 64 * depth, num_heads=num_heads or depth,
        mlp_ratio=4.0, num_classes=num_classes, shared_aln=shared_aln, attn_l2_norm=True,
        patch_nums=tuple(patch_nums), norm_eps=1e-6, cond_drop_rate=0.1,
        drop_path_rate=0.1 * depth / 24,  # training only (stochastic depth)
        attn_impl="xla", remat=False, remat_policy="nothing_saveable", scan_unroll=1,
        dtype="float32")


def validate_section(v, name: str = "var") -> None:
    """The values of `config.var` a user can get wrong, named with the fix."""
    pns = tuple(v.patch_nums)
    if not pns or any(p <= 0 for p in pns) or list(pns) != sorted(set(pns)):
        invalid(f"{name}.patch_nums", pns, "strictly increasing positive ints, e.g. (1,2,3,4,5,6,8,10,13,16)")
    if v.embed_dim % v.num_heads:
        invalid(f"{name}.num_heads", v.num_heads, f"a divisor of {name}.embed_dim={v.embed_dim}")
    if v.num_classes < 1:
        invalid(f"{name}.num_classes", v.num_classes, "≥ 1")
    if v.attn_impl not in ATTENTION_IMPLS:
        invalid(f"{name}.attn_impl", v.attn_impl, "'xla', 'cudnn' (a GPU in bfloat16), 'splash' "
                "(a TPU; both fall back to XLA elsewhere) or 'auto' (the chip's fused kernel)")
    if v.dtype not in ("float32", "bfloat16"):
        invalid(f"{name}.dtype", v.dtype, "'float32' or 'bfloat16'")
    validate_stack_fields(v, name)
    if v.attn_impl == "cudnn" and v.dtype != "bfloat16":
        invalid(f"{name}.attn_impl", v.attn_impl, "'xla' with float32: cuDNN attention needs "
                f"--config.{name}.dtype=bfloat16")


def scale_ids(patch_nums: Sequence[int]) -> np.ndarray:
    """(L,) scale index of every token position (the official `lvl_1L`)."""
    return np.concatenate([np.full(pn * pn, i, np.int32) for i, pn in enumerate(patch_nums)])


def block_causal_mask(patch_nums: Sequence[int]) -> np.ndarray:
    """(L, L) bool: token i sees token j iff scale(i) ≥ scale(j)."""
    d = scale_ids(patch_nums)
    return d[:, None] >= d[None, :]


class SelfAttention(nn.Module):
    embed_dim: int
    num_heads: int
    attn_l2_norm: bool
    attn_impl: str
    dtype: Dtype
    patch_nums: tuple[int, ...]

    @nn.compact
    def __call__(self, x, past_kv):
        b, t, c = x.shape
        h, hd = self.num_heads, c // self.num_heads
        # k has no bias: the official qkv bias is cat(q_bias, zeros, v_bias).
        q_bias = param(self, "q_bias", nn.initializers.zeros, (c,), ("embed",))
        v_bias = param(self, "v_bias", nn.initializers.zeros, (c,), ("embed",))
        qkv = dense(3 * c, ("embed", "qkv"), "mat_qkv", use_bias=False, dtype=self.dtype)(x)
        qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        qkv = constrain(qkv.reshape(b, t, 3, h, hd), ("act_batch", "act_seq", None, "act_heads", None))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.attn_l2_norm:
            # Cosine attention with a learned per-head temperature, clamped at 100.
            scale_mul = param(self, "scale_mul_1H11", nn.initializers.constant(math.log(4.0)),
                              (1, h, 1, 1), (None, "heads", None, None))
            temperature = jnp.exp(jnp.minimum(scale_mul, _MAX_SCALE_MUL)).reshape(1, 1, h, 1)
            q = (l2_normalize(q.astype(jnp.float32)) * temperature).astype(self.dtype)
            k = l2_normalize(k.astype(jnp.float32)).astype(self.dtype)
            scale = 1.0
        else:
            scale = 0.25 / math.sqrt(hd)
        new_kv = (k, v)
        if past_kv is None:  # the whole sequence (or its first scales): block-causal
            # A NumPy constant, known when tracing: a fused kernel can skip masked-out blocks.
            mask = block_causal_mask(self.patch_nums)[:t, :t]
            mask = None if mask.all() else mask
        else:  # KV-cached inference: one scale attends to all earlier scales and itself
            k = jnp.concatenate([past_kv[0].astype(k.dtype), k], axis=1)
            v = jnp.concatenate([past_kv[1].astype(v.dtype), v], axis=1)
            mask = None
        out = attention(q, k, v, scale=scale, mask=mask, impl=self.attn_impl).reshape(b, t, c)
        return dense(c, ("embed", "embed_out"), "proj", dtype=self.dtype)(out), new_kv


class FFN(nn.Module):
    hidden: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = dense(self.hidden, ("embed", "mlp"), "fc1", dtype=self.dtype)(x)
        x = constrain(jax.nn.gelu(x, approximate=True), ("act_batch", "act_seq", "act_mlp"))
        return dense(c, ("mlp", "embed"), "fc2", dtype=self.dtype)(x)


class AdaLNSelfAttn(nn.Module):
    """One transformer block. `cond` is the class condition (B, D), or, with shared AdaLN, the
    shared projection (B, 6, C) to which the block adds its own `ada_gss`."""
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    shared_aln: bool
    attn_l2_norm: bool
    norm_eps: float
    attn_impl: str
    dtype: Dtype
    patch_nums: tuple[int, ...]

    @nn.compact
    def __call__(self, x, past_kv, cond, drop_rate=None):
        """`drop_rate`: this block's stochastic-depth rate (training), or None."""
        c = self.embed_dim
        if self.shared_aln:
            ada_gss = param(self, "ada_gss", nn.initializers.normal(1.0 / math.sqrt(c)),
                            (1, 1, 6, c), (None, None, None, "embed"))
            ada = ada_gss[0] + cond  # (B, 6, C)
        else:
            ada = dense(6 * c, ("embed", "adaln"), "ada_lin", dtype=jnp.float32)(nn.silu(cond))
            ada = ada.reshape(-1, 6, c)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (ada[:, i:i + 1] for i in range(6))

        x = constrain(x, ACT)
        h = layer_norm(x, self.norm_eps) * (1 + scale1) + shift1
        attn_out, new_kv = SelfAttention(c, self.num_heads, self.attn_l2_norm, self.attn_impl,
                                         self.dtype, self.patch_nums, name="attn")(
            h.astype(self.dtype), past_kv)
        x = x + self.drop_path(attn_out.astype(jnp.float32) * gamma1, drop_rate)
        h = layer_norm(x, self.norm_eps) * (1 + scale2) + shift2
        ffn_out = FFN(round(c * self.mlp_ratio), self.dtype, name="ffn")(h.astype(self.dtype))
        x = x + self.drop_path(ffn_out.astype(jnp.float32) * gamma2, drop_rate)
        return constrain(x, ACT), new_kv

    def drop_path(self, branch, rate):
        """timm's DropPath: zero a sample's whole branch w.p. `rate`, rescale the rest by
        1/(1 − rate). Identity when `rate` is None (inference)."""
        if rate is None:
            return branch
        keep = 1.0 - rate
        alive = jax.random.bernoulli(self.make_rng("dropout"), keep, (branch.shape[0], 1, 1))
        return jnp.where(alive, branch / keep, 0.0).astype(branch.dtype)


class AdaLNBeforeHead(nn.Module):
    """`head_nm`: LN(x)·(1 + scale) + shift with (scale, shift) = ada_lin(SiLU(cond))."""
    embed_dim: int
    norm_eps: float

    @nn.compact
    def __call__(self, x, cond):
        c = self.embed_dim
        ada = dense(2 * c, ("embed", "adaln"), "ada_lin", std=math.sqrt(1 / (3 * c)))(nn.silu(cond))
        ada = ada.reshape(-1, 2, c)
        return layer_norm(x, self.norm_eps) * (1 + ada[:, 0:1]) + ada[:, 1:2]


class VAR(nn.Module):
    """Next-scale prediction transformer. Defaults: VAR-d16 at 256 px."""
    vocab_size: int = 4096
    cvae: int = 32
    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    shared_aln: bool = False
    attn_l2_norm: bool = True
    norm_eps: float = 1e-6
    cond_drop_rate: float = 0.1
    drop_path_rate: float = 0.0
    attn_impl: str = "xla"
    remat: bool = False
    remat_policy: str = "nothing_saveable"  # a name in jax.checkpoint_policies
    # Layers per iteration of the layer scan (depth = fully unrolled). Same params and maths;
    # unrolling lets XLA fuse across layers and skips the stacked per-layer buffers: the demo's
    # 3-layer VAR train step takes 0.45 s instead of 0.58 s on 2 CPU cores. Big models keep 1
    # (one layer to compile).
    scan_unroll: int = 1
    dtype: Dtype = jnp.float32

    @property
    def seq_len(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    def setup(self):
        c = self.embed_dim
        std = math.sqrt(1.0 / (3 * c))
        self.word_embed = dense(c, ("cvae", "embed"), std=std)
        self.class_emb = nn.Embed(
            self.num_classes + 1, c,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(std), ("classes", "embed")))
        self.pos_start = param(self, "pos_start", nn.initializers.normal(std), (1, self.first_l, c),
                               (None, None, "embed"))
        self.pos_1LC = param(self, "pos_1LC", nn.initializers.normal(std), (1, self.seq_len, c),
                             (None, "seq", "embed"))
        self.lvl_embed = nn.Embed(
            len(self.patch_nums), c,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(std), ("levels", "embed")))
        if self.shared_aln:
            self.shared_ada_lin = dense(6 * c, ("embed", "adaln"), std=std)
        self.blocks = layer_stack(
            AdaLNSelfAttn, length=self.depth, in_axes=(0, nn.broadcast, 0),
            remat=self.remat, remat_policy=self.remat_policy, scan_unroll=self.scan_unroll,
        )(c, self.num_heads, self.mlp_ratio, self.shared_aln, self.attn_l2_norm, self.norm_eps,
          self.attn_impl, self.dtype, tuple(self.patch_nums))
        self.head_nm = AdaLNBeforeHead(c, self.norm_eps)
        self.head = dense(self.vocab_size, ("embed", "vocab"), std=std)

    # ---- pieces shared by training and inference --------------------------------------------
    def block_condition(self, cond):
        """What the blocks receive: the class embedding, or its shared 6C AdaLN projection."""
        if self.shared_aln:
            return self.shared_ada_lin(nn.silu(cond)).reshape(-1, 6, self.embed_dim)
        return cond

    def logits(self, x, cond):
        """`get_logits`: AdaLN before head (scale, shift order), then the head, in float32."""
        return self.head(self.head_nm(x, cond)).astype(jnp.float32)

    def lvl_pos(self):
        """(1, L, C) level embedding + absolute position embedding."""
        return (self.lvl_embed(jnp.asarray(scale_ids(self.patch_nums)))[None]
                + self.pos_1LC).astype(jnp.float32)

    def class_condition(self, labels):
        # float32 whatever the weights' dtype: the residual stream stays float32 (bf16 weights
        # for sampling cast only the matmuls' operands).
        return self.class_emb(labels).astype(jnp.float32)

    def first_tokens(self, cond):
        """Input of scale 0: sos (= class embedding) + pos_start + lvl_pos, (B, first_l, C)."""
        return cond[:, None, :] + self.pos_start.astype(jnp.float32) + self.lvl_pos()[:, :self.first_l]

    def embed_next(self, x_next, start: int):
        """Input of a later scale: word_embed(next-scale f̂ tokens) + lvl_pos at its positions."""
        n = x_next.shape[1]
        return self.word_embed(x_next).astype(jnp.float32) + self.lvl_pos()[:, start:start + n]

    # ---- teacher-forced forward --------------------------------------------------------------
    def __call__(self, labels, x_in, *, train: bool = False):
        """labels (B,) int; x_in (B, ℓ − first_l, Cvae) from `idx_to_var_input`. → logits (B, ℓ, V).

        ℓ is the full length L, or the end of a scale for progressive training (the sequence and
        the mask are cropped). With `train`, labels are replaced by the null class with
        probability `cond_drop_rate` and blocks are dropped per sample with rates
        linspace(0, drop_path_rate, depth) (rng stream 'dropout'); the official code drops
        labels even in eval, we do it only here.
        """
        chex.assert_rank([labels, x_in], [1, 3])
        chex.assert_equal_shape_prefix([labels, x_in], 1)
        if train and self.cond_drop_rate > 0:
            drop = jax.random.uniform(self.make_rng("dropout"), labels.shape) < self.cond_drop_rate
            labels = jnp.where(drop, self.num_classes, labels)
        cond = self.class_condition(labels)
        sos = cond[:, None, :] + self.pos_start
        x = jnp.concatenate([jnp.broadcast_to(sos, (labels.shape[0],) + sos.shape[1:]),
                             self.word_embed(x_in.astype(jnp.float32))], axis=1)
        length = x.shape[1]
        x = x + self.lvl_pos()[:, :length]
        drop_rates = None
        if train and self.drop_path_rate > 0:
            drop_rates = jnp.linspace(0.0, self.drop_path_rate, self.depth)
        x, _ = self.blocks(x, None, self.block_condition(cond), drop_rates)
        return self.logits(x, cond)

    # ---- KV-cached inference -----------------------------------------------------------------
    def step(self, x, cond, past_kv):
        """Runs every block on one scale's tokens x (B, n, C), attending to `past_kv` (per layer
        k, v of all earlier scales: (depth, B, start, H, hd) each, or None at scale 0).
        Returns (logits (B, n, V), new per-layer (k, v) of these n tokens)."""
        x, new_kv = self.blocks(x, past_kv, self.block_condition(cond), None)
        return self.logits(x, cond), new_kv
