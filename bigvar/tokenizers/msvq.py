"""VAR's multi-scale residual VQ-VAE (official `models/vqvae.py`, `models/quant.py`), NHWC,
parameter names mirroring the official state dict (`encoder/down_2/block_0/nin_shortcut`,
`quantize/quant_resi/qresi_ls_3`, ...).

Images are NHWC float32 in [-1, 1]. A "token map list" is a list of K int32 arrays of shape
(B, pn_k²), row-major over (h, w), exactly like the official `img_to_idxBl`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigvar.errors import invalid
from bigvar.nn.convnet import (HIGHEST, Downsample, ResBlock, Upsample, conv, group_norm,
                                spatial_attention)
from bigvar.nn.resize import resize_nhwc


def config_section(ch: int = 160, vocab_size: int = 4096) -> dict:
    """`config.vae`: the released `vae_ch160v4096z32` (shared by every VAR release, 256 and 512
    px). `MultiScaleVQVAE(**section)`; a VAR config keeps the scales in `config.var.patch_nums`,
    a tokenizer-training config adds `patch_nums` here."""
    return dict(vocab_size=vocab_size, z_channels=32, ch=ch, ch_mult=(1, 1, 2, 2, 4),
                num_res_blocks=2, quant_resi=0.5, share_quant_resi=4)


def validate_section(q, name: str = "vae") -> None:
    if "patch_nums" in q:
        pns = tuple(q.patch_nums)
        if not pns or list(pns) != sorted(set(pns)) or pns[0] < 1:
            invalid(f"{name}.patch_nums", pns, "strictly increasing positive ints")
    if q.ch % 32:
        invalid(f"{name}.ch", q.ch, "a multiple of 32 (GroupNorm uses 32 groups)")


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused [q | k | v] 1×1 conv."""

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        qkv = conv(3 * c, 1, "qkv")(group_norm("norm")(x)).reshape(b, hh * ww, 3, c)
        h = spatial_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return x + conv(c, 1, "proj_out")(h.reshape(b, hh, ww, c))


class Level(nn.Module):
    """One resolution of the encoder (`down_i`) or decoder (`up_i`): res-blocks, optional
    attention after each block, optional resampling. Submodule names follow the state dict."""
    channels: int
    num_blocks: int
    with_attn: bool
    resample: type[nn.Module] | None

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_blocks):
            x = ResBlock(self.channels, name=f"block_{i}")(x)
            if self.with_attn:
                x = AttnBlock(name=f"attn_{i}")(x)
        if self.resample is Downsample:
            x = Downsample(name="downsample")(x)
        elif self.resample is Upsample:
            x = Upsample(name="upsample")(x)
        return x


class Mid(nn.Module):
    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = ResBlock(c, name="block_1")(x)
        x = AttnBlock(name="attn_1")(x)
        return ResBlock(c, name="block_2")(x)


class Encoder(nn.Module):
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    z_channels: int

    @nn.compact
    def __call__(self, x):
        h = conv(self.ch, 3, "conv_in")(x)
        last = len(self.ch_mult) - 1
        for i, mult in enumerate(self.ch_mult):
            h = Level(self.ch * mult, self.num_res_blocks, with_attn=i == last,
                      resample=None if i == last else Downsample, name=f"down_{i}")(h)
        h = Mid(name="mid")(h)
        return conv(self.z_channels, 3, "conv_out")(nn.silu(group_norm("norm_out")(h)))


class Decoder(nn.Module):
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    out_channels: int = 3

    @nn.compact
    def __call__(self, z):
        last = len(self.ch_mult) - 1
        h = conv(self.ch * self.ch_mult[last], 3, "conv_in")(z)
        h = Mid(name="mid")(h)
        for i in reversed(range(len(self.ch_mult))):
            h = Level(self.ch * self.ch_mult[i], self.num_res_blocks + 1, with_attn=i == last,
                      resample=None if i == 0 else Upsample, name=f"up_{i}")(h)
        return conv(self.out_channels, 3, "conv_out")(nn.silu(group_norm("norm_out")(h)))


def phi_indices(num_scales: int, num_phi: int) -> tuple[int, ...]:
    """Which φ conv each scale uses: argmin_j |tick_j − si/(K−1)|, in float64 like the official
    NumPy code (`PhiPartiallyShared`); float32 resolves the tie at si=7 of K=10 the other way
    (docs/official_behaviour.md)."""
    if num_phi == 4:
        ticks = np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi)
    else:
        ticks = np.linspace(1 / 2 / num_phi, 1 - 1 / 2 / num_phi, num_phi)
    denom = max(num_scales - 1, 1)
    return tuple(int(np.argmin(np.abs(ticks - si / denom))) for si in range(num_scales))


class Phi(nn.Conv):
    """φ(h) = (1−r)·h + r·conv3×3(h); a Conv itself so its params are `kernel`/`bias` directly."""
    ratio: float = 0.5

    def __call__(self, h):
        return h * (1 - self.ratio) + super().__call__(h) * self.ratio


class PhiBank(nn.Module):
    """The `quant_resi` φ convs (`qresi_ls_0..n-1`); identity when |quant_resi| is ~0."""
    features: int
    num_phi: int
    ratio: float

    def setup(self):
        if abs(self.ratio) > 1e-6:
            self.qresi_ls = [Phi(self.features, (3, 3), padding=1, precision=HIGHEST,
                                 ratio=abs(self.ratio)) for _ in range(self.num_phi)]

    def __call__(self, h, index: int):
        return self.qresi_ls[index](h) if abs(self.ratio) > 1e-6 else h


@dataclasses.dataclass(frozen=True)
class QuantizerSpec:
    """Static description of the multi-scale quantizer (hashable, safe to close over in jit)."""
    patch_nums: tuple[int, ...]
    phi_index: tuple[int, ...]

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def latent_size(self) -> int:
        return self.patch_nums[-1]

    @property
    def seq_len(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def begin_ends(self) -> tuple[tuple[int, int], ...]:
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return tuple(out)


class MultiScaleVQVAE(nn.Module):
    """Encoder → quant_conv → residual multi-scale quantizer → post_quant_conv → decoder.

    Defaults are the released `vae_ch160v4096z32` except `ch`, which the configs set.
    """
    VALUE_RANGE = (-1.0, 1.0)  # of the images it encodes and decodes (not a field)
    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0
    patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

    @property
    def num_phi(self) -> int:
        if self.share_quant_resi > 0:
            return self.share_quant_resi
        return self.default_qresi_counts or len(self.patch_nums)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def spec(self) -> QuantizerSpec:
        return QuantizerSpec(tuple(self.patch_nums), phi_indices(len(self.patch_nums), self.num_phi))

    def setup(self):
        self.encoder = Encoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, self.z_channels)
        self.decoder = Decoder(self.ch, tuple(self.ch_mult), self.num_res_blocks)
        self.quant_conv = conv(self.z_channels, 3)
        self.post_quant_conv = conv(self.z_channels, 3)
        self.quantize = Quantizer(self.vocab_size, self.z_channels, self.num_phi, self.quant_resi)

    # ---- the pieces -------------------------------------------------------------------------
    def img_to_f(self, img):
        """(B, H, W, 3) in [−1, 1] → continuous latent f (B, H/16, W/16, Cvae)."""
        size = self.patch_nums[-1] * self.downsample
        if img.ndim != 4 or img.shape[1:] != (size, size, 3):
            raise ValueError(f"the tokenizer takes (B, {size}, {size}, 3) images for patch_nums "
                             f"ending at {self.patch_nums[-1]}; got shape {tuple(img.shape)}. "
                             f"Resize or crop images to {size} px.")
        return self.quant_conv(self.encoder(img))

    def fhat_to_img(self, f_hat):
        """Cumulative f̂ → image in [−1, 1] (clamped, as the official decoder output)."""
        return jnp.clip(self.decoder(self.post_quant_conv(f_hat)), -1.0, 1.0)

    # ---- the official functions -------------------------------------------------------------
    def img_to_idx(self, img):
        return self.quantize.f_to_idx_or_fhat(self.img_to_f(img), self.spec)[0]

    def img_to_reconstructed_img(self, img):
        _, f_hats = self.quantize.f_to_idx_or_fhat(self.img_to_f(img), self.spec)
        return self.fhat_to_img(f_hats[-1])

    def idx_to_fhat(self, idx_list):
        return self.quantize.idx_to_fhat(idx_list, self.spec)

    def idx_to_img(self, idx_list):
        return self.fhat_to_img(self.idx_to_fhat(idx_list))

    def idx_to_var_input(self, idx_list):
        return self.quantize.idx_to_var_input(idx_list, self.spec)

    def next_autoregressive_input(self, si, f_hat, h):
        return self.quantize.next_autoregressive_input(si, f_hat, h, self.spec)

    def training_forward(self, img, beta: float = 0.25):
        """The official training forward: (reconstruction (not clamped), vq_loss, hits (K, V),
        the continuous latent f (B, h, w, Cvae), e.g. to re-seed dead codes from)."""
        f = self.img_to_f(img)
        f_st, vq_loss, hits = self.quantize.training_forward(f, self.spec, beta)
        return self.decoder(self.post_quant_conv(f_st)), vq_loss, hits, f

    def embed(self, idx):
        return self.quantize.embed(idx)

    def __call__(self, img):
        """Touches every parameter, for `init`; any image side divisible by `downsample` works,
        so init can use a tiny (downsample × downsample) image."""
        f = self.quantize.init_all_phi(self.quant_conv(self.encoder(img)))
        return self.decoder(self.post_quant_conv(f))


class Quantizer(nn.Module):
    """`quantize`: one codebook shared by all scales plus the φ bank."""
    vocab_size: int
    z_channels: int
    num_phi: int
    resi_ratio: float

    def setup(self):
        self.embedding = self.param("embedding", nn.initializers.uniform(1.0 / self.vocab_size),
                                    (self.vocab_size, self.z_channels))
        self.quant_resi = PhiBank(self.z_channels, self.num_phi, self.resi_ratio)

    def init_all_phi(self, h):
        """Calls every φ once so `init` creates all of them, used or not by these patch_nums."""
        for i in range(self.num_phi):
            h = self.quant_resi(h, i)
        return h

    def embed(self, idx):
        """Token ids (..., n) → code vectors (..., n, Cvae)."""
        return jnp.take(self.embedding, idx, axis=0)

    def phi(self, h, si: int, spec: QuantizerSpec):
        return self.quant_resi(h, spec.phi_index[si])

    def nearest_code(self, z):
        """Index of the nearest codebook row (Euclidean), computed like the official addmm."""
        zz = jnp.sum(z * z, axis=-1, keepdims=True)
        ee = jnp.sum(self.embedding * self.embedding, axis=-1)
        d = (zz + ee) - 2.0 * jnp.einsum("nc,vc->nv", z, self.embedding, precision=HIGHEST)
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def _upsample_h(self, h, si: int, spec: QuantizerSpec):
        last = si == spec.num_scales - 1
        return h if last else resize_nhwc(h, spec.latent_size, "bicubic")

    def f_to_idx_or_fhat(self, f, spec: QuantizerSpec):
        """Paper Algorithm 1: returns ([idx_k (B, pn²)], [cumulative f̂_k (B, H, W, C)])."""
        b, hh, ww, c = f.shape
        if (hh, ww) != (spec.latent_size,) * 2:
            raise ValueError(f"latent is {hh}x{ww} but patch_nums end at {spec.latent_size}")
        f_rest, f_hat = f, jnp.zeros_like(f)
        idx_list, f_hats = [], []
        for si, pn in enumerate(spec.patch_nums):
            z = resize_nhwc(f_rest, pn, "area")
            idx = self.nearest_code(z.reshape(-1, c)).reshape(b, pn * pn)
            h = self.phi(self._upsample_h(self.embed(idx).reshape(b, pn, pn, c), si, spec), si, spec)
            f_hat = f_hat + h
            f_rest = f_rest - h
            idx_list.append(idx)
            f_hats.append(f_hat)
        return idx_list, f_hats

    def training_forward(self, f, spec: QuantizerSpec, beta: float):
        """The official training `forward` (`VectorQuantizer2.forward` in `models/quant.py`): the
        Algorithm-1 loop with gradients through the codes and φ, the multi-scale VQ loss
        (1/K)·Σ_k [β·‖sg(f̂_k) − f‖² + ‖f̂_k − sg(f)‖²] (means over elements) and the
        straight-through output sg(f̂) − sg(f) + f. Returns (f̂_st, vq_loss, hits (K, V) counts)."""
        b, _, _, c = f.shape
        f_detached = jax.lax.stop_gradient(f)
        f_rest, f_hat = f_detached, jnp.zeros_like(f)
        vq_loss, hits = 0.0, []
        for si, pn in enumerate(spec.patch_nums):
            z = jax.lax.stop_gradient(resize_nhwc(f_rest, pn, "area"))
            idx = self.nearest_code(z.reshape(-1, c))
            hits.append(jnp.bincount(idx, length=self.vocab_size))
            h = self.phi(self._upsample_h(self.embed(idx).reshape(b, pn, pn, c), si, spec), si, spec)
            f_hat = f_hat + h
            f_rest = f_rest - h
            vq_loss = vq_loss + beta * jnp.mean(jnp.square(jax.lax.stop_gradient(f_hat) - f)) \
                + jnp.mean(jnp.square(f_hat - f_detached))
        vq_loss = vq_loss / spec.num_scales
        f_st = jax.lax.stop_gradient(f_hat) - f_detached + f
        return f_st, vq_loss, jnp.stack(hits)

    def idx_to_fhat(self, idx_list, spec: QuantizerSpec):
        """Paper Algorithm 2 (`embed_to_fhat`, all scales to max, last one)."""
        b = idx_list[0].shape[0]
        f_hat = 0.0
        for si, pn in enumerate(spec.patch_nums):
            h = self.embed(idx_list[si]).reshape(b, pn, pn, self.z_channels)
            f_hat = f_hat + self.phi(self._upsample_h(h, si, spec), si, spec)
        return f_hat

    def idx_to_var_input(self, idx_list, spec: QuantizerSpec):
        """Teacher-forcing input (`idxBl_to_var_input`): (B, L − pn_0², Cvae)."""
        b = idx_list[0].shape[0]
        f_hat = jnp.zeros((b, spec.latent_size, spec.latent_size, self.z_channels), jnp.float32)
        next_scales = []
        for si in range(spec.num_scales - 1):
            f_hat, nxt = self.next_autoregressive_input(
                si, f_hat, self.embed(idx_list[si]).reshape(b, spec.patch_nums[si], spec.patch_nums[si], -1), spec)
            next_scales.append(nxt.reshape(b, -1, self.z_channels))
        return jnp.concatenate(next_scales, axis=1)

    def next_autoregressive_input(self, si: int, f_hat, h, spec: QuantizerSpec):
        """Adds scale `si`'s code map h (B, pn, pn, C) to f̂ and returns (f̂, next-scale input)."""
        f_hat = f_hat + self.phi(self._upsample_h(h, si, spec), si, spec)
        if si == spec.num_scales - 1:
            return f_hat, f_hat
        return f_hat, resize_nhwc(f_hat, spec.patch_nums[si + 1], "area")
