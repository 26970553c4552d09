"""BiGR's binary autoencoder (B-AE: BiGR's `bae/binaryae.py`, from BinaryLatentDiffusion), NHWC.

Images are in [0, 1]. The encoder gives K sigmoid bit probabilities per latent position; bits are
drawn Bernoulli(p) (what BiGR trains and edits with) or thresholded at 0.5; the decoder sees the
bits through a linear, bias-free K → emb_dim projection (`quantize/embed`).

The encoder and generator are flat lists of layers, `blocks_0 … blocks_n`, in the official order:
attention follows every res-block at the resolution(s) in `attn_resolutions` (16), so the 256- and
512-px layouts have different block indices. Parameter names mirror the official state dict.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvar.errors import invalid
from bigvar.nn.convnet import (HIGHEST, Downsample, ResBlock, Upsample, conv, group_norm,
                                spatial_attention)


def config_section(*, codebook_size: int, img_size: int = 256) -> dict:
    """`config.bae`, the `BinaryAutoEncoder` fields: the released B-AE (nf 128, emb 256, 16×
    downsampling, attention at 16×16) with K bits per token at `img_size` px."""
    return dict(codebook_size=codebook_size, nf=128, emb_dim=256, ch_mult=(1, 1, 2, 2, 4),
                res_blocks=2, attn_resolutions=(16,), img_size=img_size, norm_first=True)


def validate_section(b, name: str = "bae") -> None:
    if b.nf % 32:
        invalid(f"{name}.nf", b.nf, "a multiple of 32 (GroupNorm uses 32 groups)")
    down = 2 ** (len(b.ch_mult) - 1)
    if b.img_size % down:
        invalid(f"{name}.img_size", b.img_size, f"a multiple of the downsampling {down}")


class Layer(NamedTuple):
    kind: str       # conv | res | attn | down | up | norm
    channels: int   # output channels (input channels for attn/down/up/norm)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with separate 1×1 q, k, v convs."""

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = group_norm("norm")(x)
        q, k, v = (conv(c, 1, name)(h).reshape(b, hh * ww, c) for name in ("q", "k", "v"))
        return x + conv(c, 1, "proj_out")(spatial_attention(q, k, v).reshape(b, hh, ww, c))


def encoder_layout(nf: int, ch_mult: Sequence[int], res_blocks: int, img_size: int,
                   attn_resolutions: Sequence[int], emb_dim: int) -> list[Layer]:
    layers, res, ch = [Layer("conv", nf)], img_size, nf
    for i, mult in enumerate(ch_mult):
        for _ in range(res_blocks):
            ch = nf * mult
            layers.append(Layer("res", ch))
            if res in attn_resolutions:
                layers.append(Layer("attn", ch))
        if i != len(ch_mult) - 1:
            layers.append(Layer("down", ch))
            res //= 2
    layers += [Layer("res", ch), Layer("attn", ch), Layer("res", ch), Layer("norm", ch),
               Layer("conv", emb_dim)]
    return layers


def decoder_layout(nf: int, ch_mult: Sequence[int], res_blocks: int, img_size: int,
                   attn_resolutions: Sequence[int], emb_dim: int, norm_first: bool) -> list[Layer]:
    ch = nf * ch_mult[-1]
    res = img_size // 2 ** (len(ch_mult) - 1)
    layers = [Layer("norm", emb_dim)] if norm_first else []
    layers += [Layer("conv", ch), Layer("res", ch), Layer("attn", ch), Layer("res", ch)]
    for i in reversed(range(len(ch_mult))):
        for _ in range(res_blocks):
            ch = nf * ch_mult[i]
            layers.append(Layer("res", ch))
            if res in attn_resolutions:
                layers.append(Layer("attn", ch))
        if i != 0:
            layers.append(Layer("up", ch))
            res *= 2
    layers += [Layer("norm", ch), Layer("conv", 3)]
    return layers


class LayerStack(nn.Module):
    """Applies `blocks_0 … blocks_n` of a layout in order."""
    layout: Sequence[Layer]

    @nn.compact
    def __call__(self, x):
        for i, layer in enumerate(self.layout):
            name = f"blocks_{i}"
            if layer.kind == "conv":
                x = conv(layer.channels, 3, name)(x)
            elif layer.kind == "res":
                x = ResBlock(layer.channels, "conv_out", name=name)(x)  # conv_out: unused if same width
            elif layer.kind == "attn":
                x = AttnBlock(name=name)(x)
            elif layer.kind == "down":
                x = Downsample(name=name)(x)
            elif layer.kind == "up":
                x = Upsample(name=name)(x)
            elif layer.kind == "norm":
                x = group_norm(name)(x)  # no activation follows, unlike taming's norm_out
            else:
                raise ValueError(f"unknown layer kind {layer.kind!r}")
        return x


class BinaryAutoEncoder(nn.Module):
    """Defaults are the released B-AE (nf 128, emb 256, 16× downsampling) with K = 24 at 256 px."""
    VALUE_RANGE = (0.0, 1.0)  # of the images it encodes and decodes (not a field)
    codebook_size: int = 24
    nf: int = 128
    emb_dim: int = 256
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    img_size: int = 256
    norm_first: bool = True

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.downsample

    def setup(self):
        args = (self.nf, tuple(self.ch_mult), self.res_blocks, self.img_size,
                tuple(self.attn_resolutions), self.emb_dim)
        self.encoder = LayerStack(encoder_layout(*args))
        self.generator = LayerStack(decoder_layout(*args, self.norm_first))
        self.quantize = BinaryQuantizer(self.codebook_size, self.emb_dim)

    def check_images(self, img):
        want = (self.img_size, self.img_size, 3)
        if img.ndim != 4 or tuple(img.shape[1:]) != want:
            raise ValueError(f"the B-AE takes (B, {self.img_size}, {self.img_size}, 3) images in "
                             f"[0, 1]; got shape {tuple(img.shape)}. Resize or crop to {self.img_size} px.")

    def encode_probs(self, img):
        """(B, S, S, 3) in [0, 1] → bit probabilities (B, S/16, S/16, K)."""
        self.check_images(img)
        return self.quantize.probs(self.encoder(img))

    def bits_to_latent(self, bits):
        """(B, h, w, K) bits → (B, h, w, emb_dim): z_q = Σ_k b_k · E[k]."""
        return self.quantize.project(bits)

    def decode(self, bits):
        """Bits (B, h, w, K) → image (B, S, S, 3), nominally [0, 1], not clamped (as official)."""
        return self.generator(self.bits_to_latent(bits))

    def __call__(self, img):
        """Touches every parameter (for init); any image side divisible by 16 works."""
        return self.generator(self.quantize.project(self.quantize.probs(self.encoder(img))))


class BinaryQuantizer(nn.Module):
    codebook_size: int
    emb_dim: int

    def setup(self):
        self.proj_0 = conv(self.codebook_size, 1)
        self.embed = nn.Embed(self.codebook_size, self.emb_dim)

    def probs(self, h):
        return jax.nn.sigmoid(self.proj_0(h))

    def project(self, bits):
        return jnp.einsum("bhwk,kd->bhwd", bits.astype(jnp.float32), self.embed.embedding,
                          precision=HIGHEST)


def bernoulli_bits(key: jax.Array, probs: jax.Array) -> jax.Array:
    """Stochastic binarization b ~ Bernoulli(p), as float32 {0, 1}."""
    return jax.random.bernoulli(key, probs).astype(jnp.float32)


def deterministic_bits(probs: jax.Array) -> jax.Array:
    return (probs > 0.5).astype(jnp.float32)


def to_tokens(bits: jax.Array) -> jax.Array:
    """(B, h, w, K) → (B, N = h·w, K), raster order n = row·w + col."""
    b, h, w, k = bits.shape
    return bits.reshape(b, h * w, k)


def from_tokens(tokens: jax.Array, grid: int) -> jax.Array:
    b, n, k = tokens.shape
    return tokens.reshape(b, grid, grid, k)
