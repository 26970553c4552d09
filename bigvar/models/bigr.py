"""BiGR generator (official `llama/gpt.py`, `Transformer`): a LLaMA-style bidirectional
transformer over binary tokens with a shared AdaLN, plus the "binary transcoder", a per-token MLP
that predicts bit-flip logits for Bernoulli diffusion. Layers under `nn.scan`; parameter names
mirror the official state dict
(`tok_embeddings`, `mask_tok`, `cls_embedding/embedding_table`, `adaLN`,
`layers/{ada_gss, attention/{wqkv,wo}, feed_forward/{w1,w2,w3}, attention_norm, ffn_norm}`,
`norm`, `diffusion_pos_embed_learned`, `denoise_mlp/...`).

Tokens are (B, N, K) float {0, 1}; `mask` (B, N) is True where a token is hidden (replaced by the
learned mask token). The class token is prepended and also drives the shared AdaLN.
"""
from __future__ import annotations

import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigvar.errors import invalid
from bigvar.nn.layers import (ATTENTION_IMPLS, attention, constrain, dense, layer_norm,
                              layer_stack, param, validate_stack_fields)

Dtype = Any


def config_section(*, binary_size: int, dim: int, n_layer: int, n_head: int, seq_len: int,
                   denoise_hidden: int, num_block_mlp: int, num_classes: int = 1000) -> dict:
    """`config.bigr`, the `BiGR` fields (`BiGR(**section)`): an architecture and the released
    models' training and compute settings."""
    return dict(
        binary_size=binary_size, num_classes=num_classes, dim=dim, n_layer=n_layer, n_head=n_head,
        seq_len=seq_len, denoise_hidden=denoise_hidden, num_block_mlp=num_block_mlp, norm_eps=1e-5,
        class_dropout=0.1, dropout=0.1, attn_impl="xla", remat=False,
        remat_policy="nothing_saveable", scan_unroll=1, dtype="float32")


def validate_section(g, tokenizer, name: str = "bigr") -> None:
    """The values of `config.bigr` a user can get wrong; `tokenizer` is `config.bae`."""
    if g.dim % g.n_head:
        invalid(f"{name}.n_head", g.n_head, f"a divisor of {name}.dim={g.dim}")
    if g.binary_size != tokenizer.codebook_size:
        invalid(f"{name}.binary_size", g.binary_size,
                f"the B-AE's bits per token, bae.codebook_size={tokenizer.codebook_size}")
    grid = tokenizer.img_size // 2 ** (len(tokenizer.ch_mult) - 1)
    if grid * grid != g.seq_len:
        invalid(f"{name}.seq_len", g.seq_len, f"the B-AE's token count {grid}×{grid} = {grid * grid}")
    if g.attn_impl not in ATTENTION_IMPLS:
        invalid(f"{name}.attn_impl", g.attn_impl, "'xla', 'cudnn' (a GPU in bfloat16), 'splash' "
                "(a TPU; both fall back to XLA elsewhere) or 'auto' (the chip's fused kernel)")
    validate_stack_fields(g, name)


def ffn_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4·dim, rounded up to a multiple of 256."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * -(-hidden // multiple_of)


def rope_2d_table(grid: int, head_dim: int, base: float = 10000.0, prefix: int = 1) -> np.ndarray:
    """LlamaGen's 2-D RoPE: (prefix + grid², head_dim/2, 2) [cos, sin]. The first half of the
    rotation pairs uses the row, the second the column; `prefix` class-token rows are zeros, so the
    class token's q and k become exactly 0 (BiGR `llama/gpt.py`, `precompute_freqs_cis_2d`)."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (np.arange(0, half, 2)[: half // 2] / half))
    pos = np.arange(grid)
    angles = np.outer(pos, freqs)  # (grid, half/2)
    grid_angles = np.concatenate([
        np.broadcast_to(angles[:, None, :], (grid, grid, half // 2)),   # row
        np.broadcast_to(angles[None, :, :], (grid, grid, half // 2)),   # column
    ], axis=-1).reshape(grid * grid, half)
    table = np.stack([np.cos(grid_angles), np.sin(grid_angles)], axis=-1)
    return np.concatenate([np.zeros((prefix, half, 2)), table]).astype(np.float32)


def apply_rope(x: jax.Array, table: jax.Array) -> jax.Array:
    """Interleaved (GPT-J) rotation of pairs (x[2p], x[2p+1]); x (B, T, H, D), in float32."""
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    out = jnp.stack([xf[..., 0] * cos - xf[..., 1] * sin, xf[..., 1] * cos + xf[..., 0] * sin], -1)
    return out.reshape(x.shape).astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        weight = param(self, "weight", nn.initializers.ones, (x.shape[-1],), ("embed",))
        x32 = x.astype(jnp.float32)
        normed = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)).astype(x.dtype)
        return normed * weight.astype(x.dtype)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Bidirectional multi-head attention with 2-D RoPE on q and k; no biases."""
    dim: int
    n_head: int
    attn_impl: str
    dtype: Dtype

    @nn.compact
    def __call__(self, x, rope):
        b, t, d = x.shape
        hd = d // self.n_head
        qkv = dense(3 * d, ("embed", "qkv"), "wqkv", use_bias=False, dtype=self.dtype)(x)
        q, k, v = (constrain(y.reshape(b, t, self.n_head, hd), ("act_batch", "act_seq", "act_heads", None))
                   for y in jnp.split(qkv, 3, axis=-1))
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = attention(q, k, v, scale=1 / math.sqrt(hd), impl=self.attn_impl)
        return dense(d, ("embed", "embed_out"), "wo", use_bias=False, dtype=self.dtype)(out.reshape(b, t, d))


class FeedForward(nn.Module):
    """SwiGLU: w2(SiLU(w1 x) ⊙ w3 x), no biases."""
    hidden: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        w1 = dense(self.hidden, ("embed", "mlp"), "w1", use_bias=False, dtype=self.dtype)
        w3 = dense(self.hidden, ("embed", "mlp"), "w3", use_bias=False, dtype=self.dtype)
        hidden = constrain(nn.silu(w1(x)) * w3(x), ("act_batch", "act_seq", "act_mlp"))
        return dense(d, ("mlp", "embed"), "w2", use_bias=False, dtype=self.dtype)(hidden)


class TransformerBlock(nn.Module):
    dim: int
    n_head: int
    ffn_hidden: int
    norm_eps: float
    dropout: float
    attn_impl: str
    dtype: Dtype

    @nn.compact
    def __call__(self, h, ada, rope, deterministic: bool):
        d = self.dim
        h = constrain(h, ("act_batch", "act_seq", "act_embed"))
        ada_gss = param(self, "ada_gss", nn.initializers.normal(1 / math.sqrt(d)), (1, 1, 6, d),
                        (None, None, None, "embed"))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (
            (ada + ada_gss[0])[:, None, i] for i in range(6))
        drop = nn.Dropout(self.dropout, deterministic=deterministic)
        x = modulate(RMSNorm(self.norm_eps, name="attention_norm")(h), shift_a, scale_a)
        out = Attention(d, self.n_head, self.attn_impl, self.dtype, name="attention")(x.astype(self.dtype), rope)
        h = h + gate_a * drop(out.astype(jnp.float32))
        x = modulate(RMSNorm(self.norm_eps, name="ffn_norm")(h), shift_m, scale_m)
        out = FeedForward(self.ffn_hidden, self.dtype, name="feed_forward")(x.astype(self.dtype))
        h = h + gate_m * drop(out.astype(jnp.float32))
        return constrain(h, ("act_batch", "act_seq", "act_embed")), None


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding laid out [cos, sin] (DiT/MAR), float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, t):
        h = dense(self.hidden, ("freq", "mlp"), "mlp_0")(timestep_embedding(t))
        return dense(self.hidden, ("mlp", "mlp_out"), "mlp_2")(nn.silu(h))


class DenoiseModel(nn.Module):
    """The binary transcoder: bits x_t (…, K), timestep index t−1, condition z (…, D) → flip
    logits (…, K). MAR's SimpleMLPAdaLN; its LayerNorms are affine-free with eps 1e-6."""
    binary_size: int
    hidden: int
    num_blocks: int

    def setup(self):
        h = self.hidden
        self.t_embedder = TimestepEmbedder(h)
        self.x_embedder = dense(h, ("bits", "mlp"))
        self.c_embedder = dense(h, ("embed", "mlp"))
        self.blocks = [DenoiseBlock(h) for _ in range(self.num_blocks)]
        self.final_layer = FinalLayer(h, self.binary_size)

    def embed_condition(self, z):
        """c_embedder(z): the same at every diffusion step, so samplers compute it once."""
        return self.c_embedder(z)

    def from_embedded(self, x, t, c_z):
        """t: timestep indices (…,) per token, or one scalar for all (embedded once)."""
        c = self.t_embedder(t) + c_z  # a scalar t gives one (H,) embedding, broadcast
        x = self.x_embedder((x.astype(jnp.float32) - 0.5) * 2.0)
        for block in self.blocks:
            x = block(x, c)
        return self.final_layer(x, c)

    def __call__(self, x, t, z):
        return self.from_embedded(x, t, self.embed_condition(z))


class DenoiseBlock(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x, c):
        h = self.hidden
        ada = dense(3 * h, ("mlp", "adaln"), "adaLN_modulation")(nn.silu(c))
        shift, scale, gate = jnp.split(ada, 3, axis=-1)
        y = modulate(layer_norm(x, 1e-6), shift, scale)
        y = dense(h, ("mlp", "mlp_out"), "mlp_2")(nn.silu(dense(h, ("mlp", "mlp_out"), "mlp_0")(y)))
        return x + gate * y


class FinalLayer(nn.Module):
    hidden: int
    out_dim: int

    @nn.compact
    def __call__(self, x, c):
        ada = dense(2 * self.hidden, ("mlp", "adaln"), "adaLN_modulation")(nn.silu(c))
        shift, scale = jnp.split(ada, 2, axis=-1)
        return dense(self.out_dim, ("mlp", "bits"), "linear")(modulate(layer_norm(x, 1e-6), shift, scale))


class LabelEmbedder(nn.Module):
    """`cls_embedding`: (num_classes + 1) rows, the last one the null class for CFG."""
    num_classes: int
    dim: int

    @nn.compact
    def __call__(self, labels):
        return nn.Embed(self.num_classes + 1, self.dim, name="embedding_table",
                        embedding_init=nn.with_logical_partitioning(
                            nn.initializers.normal(0.02), ("classes", "embed")))(labels)


class BiGR(nn.Module):
    """Defaults: BiGR-L with K = 24 at 256 px."""
    binary_size: int = 24
    num_classes: int = 1000
    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    seq_len: int = 256
    denoise_hidden: int = 1024
    num_block_mlp: int = 3
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    class_dropout: float = 0.1
    dropout: float = 0.1
    attn_impl: str = "xla"
    remat: bool = False
    remat_policy: str = "nothing_saveable"  # a name in jax.checkpoint_policies
    scan_unroll: int = 1  # layers per iteration of the layer scan (as VAR.scan_unroll)
    dtype: Dtype = jnp.float32

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.seq_len)

    def setup(self):
        d = self.dim
        self.cls_embedding = LabelEmbedder(self.num_classes, d)
        self.mask_tok = param(self, "mask_tok", nn.initializers.normal(1.0), (1, d), (None, "embed"))
        self.tok_embeddings = dense(d, ("bits", "embed"))
        self.adaLN = dense(6 * d, ("embed", "adaln"))
        self.norm = RMSNorm(self.norm_eps)
        self.diffusion_pos_embed_learned = param(
            self, "diffusion_pos_embed_learned", nn.initializers.normal(0.02), (1, self.seq_len, d),
            (None, "seq", "embed"))
        self.denoise_mlp = DenoiseModel(self.binary_size, self.denoise_hidden, self.num_block_mlp)
        self.layers = blocks(self, self.n_layer)

    def class_embedding(self, labels):
        return self.cls_embedding(labels)

    def embed_inputs(self, tokens, cond, mask=None):
        """→ (h (B, 1+N, D) with the class token first, shared AdaLN (B, 6, D), RoPE table)."""
        e = self.tok_embeddings(tokens.astype(jnp.float32))
        if mask is not None:
            e = jnp.where(mask[..., None], self.mask_tok.astype(e.dtype), e)
        h = jnp.concatenate([cond[:, None, :].astype(e.dtype), e], axis=1)
        ada = self.adaLN(nn.silu(cond)).reshape(-1, 6, self.dim)
        rope = jnp.asarray(rope_2d_table(self.grid_size, self.dim // self.n_head, self.rope_base))
        return h, ada, rope

    def hidden_states(self, tokens, cond, mask=None, *, train: bool = False):
        """Residual stream after all blocks, class token dropped. `cond` (B, D) is the class
        embedding (or a mix of embeddings, for interpolation)."""
        h, ada, rope = self.embed_inputs(tokens, cond, mask)
        h, _ = self.layers(h, ada, rope, not train)
        return h[:, 1:]

    def __call__(self, tokens, mask, labels, x_t, t, *, train: bool = False):
        """The training forward: (z, flip logits of the noisy bits x_t (B, N, K) at timestep
        indices t (B, N)). With `train`, labels drop to the null class w.p. `class_dropout`
        (rng 'dropout') and residual dropout is on."""
        chex.assert_rank([tokens, mask, labels, x_t, t], [3, 2, 1, 3, 2])
        chex.assert_equal_shape([tokens, x_t])
        chex.assert_equal_shape([mask, t])
        z = self.condition(tokens, mask, labels, train=train)
        return z, self.flip_logits(x_t, t, z)

    def condition(self, tokens, mask, labels, *, train: bool = False):
        """Per-token transcoder condition z (B, N, D): final RMSNorm, class token dropped, plus
        the learned position embedding (official BiGR `llama/gpt.py`, `Transformer.forward`)."""
        if train and self.class_dropout > 0:
            drop = jax.random.uniform(self.make_rng("dropout"), labels.shape) < self.class_dropout
            labels = jnp.where(drop, self.num_classes, labels)
        return self.condition_from_embedding(tokens, mask, self.class_embedding(labels), train=train)

    def condition_from_embedding(self, tokens, mask, cond, *, train: bool = False):
        h = self.hidden_states(tokens, cond, mask, train=train)
        return self.norm(h).astype(jnp.float32) + self.diffusion_pos_embed_learned

    def flip_logits(self, x_t, t, z):
        """Transcoder: bit-flip logits for noisy bits x_t (…, K) at timestep index t (…,)."""
        return self.denoise_mlp(x_t, t, z)

    def transcoder_condition(self, z):
        return self.denoise_mlp.embed_condition(z)

    def flip_logits_from_embedded(self, x_t, t, c_z):
        return self.denoise_mlp.from_embedded(x_t, t, c_z)


def blocks(model: BiGR, length: int) -> nn.Module:
    """The scanned block stack (`layers`, params stacked on a leading axis) of `length` layers."""
    return layer_stack(
        TransformerBlock, length=length, in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        remat=model.remat, remat_policy=model.remat_policy, scan_unroll=model.scan_unroll,
        static_argnums=(4,),  # `deterministic`
    )(model.dim, model.n_head, ffn_hidden_dim(model.dim), model.norm_eps, model.dropout,
      model.attn_impl, model.dtype)


def features(model: BiGR, params, tokens, labels, layer_index: int) -> jax.Array:
    """`forward_full_image`: the raw residual stream after block `layer_index` (inclusive) — no
    mask token, no final norm, class token dropped — (B, N, D). Only the first layer_index + 1
    blocks are run. Mean-pool over N for linear probing (docs/official_behaviour.md)."""
    if not 0 <= layer_index < model.n_layer:
        raise ValueError(f"layer_index must be in [0, {model.n_layer}); got {layer_index}")
    cond = model.apply(params, labels, method=BiGR.class_embedding)
    h, ada, rope = model.apply(params, tokens, cond, None, method=BiGR.embed_inputs)
    first = jax.tree_util.tree_map(lambda p: p[:layer_index + 1], params["params"]["layers"])
    h, _ = blocks(model, layer_index + 1).apply({"params": first}, h, ada, rope, True)
    return h[:, 1:]
