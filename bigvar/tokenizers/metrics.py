"""Tokenizer training metrics: reconstruction PSNR, the official codebook-usage tracking of the
multi-scale VQ-VAE (VAR's `models/quant.py`, `VectorQuantizer2.forward`) and the bit balance of
the binary autoencoder."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def psnr(reconstruction: jax.Array, target: jax.Array, low: float = -1.0,
         high: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image (…, H, W, C) for images in [low, high]
    ([−1, 1] for the VQ-VAE, [0, 1] for the B-AE); reconstructions are clipped to it first."""
    x = jnp.clip(reconstruction, low, high)
    mse = jnp.mean(jnp.square(x - target), axis=(-3, -2, -1))
    return 10.0 * jnp.log10((high - low) ** 2 / jnp.maximum(mse, 1e-12))


def update_hit_ema(ema: jax.Array, hits: jax.Array, record: jax.Array) -> jax.Array:
    """`ema_vocab_hit_SV` (K, V): a copy of the first record's hits, then 0.9/0.1 blends for the
    next 99 records and 0.99/0.01 after that (`record` counts earlier updates)."""
    hits = hits.astype(jnp.float32)
    decay = jnp.where(record == 0, 0.0, jnp.where(record < 100, 0.9, 0.99))
    return decay * ema + (1.0 - decay) * hits


def codebook_usage(ema: jax.Array, vectors_per_step: int) -> jax.Array:
    """Per-scale usage in percent: codes whose hit EMA reaches 8 % of a uniform share,
    vectors_per_step / V · 0.08, where vectors_per_step is the global B·h·w of the latent."""
    margin = vectors_per_step / ema.shape[-1] * 0.08
    return 100.0 * jnp.mean((ema >= margin).astype(jnp.float32), axis=-1)


def bit_balance(bits: jax.Array) -> dict[str, jax.Array]:
    """Binary codes (…, K): the mean fraction of ones, and the worst bit's distance from ½
    (0 = every bit used half the time, 0.5 = a constant bit)."""
    per_bit = jnp.mean(bits.reshape(-1, bits.shape[-1]).astype(jnp.float32), axis=0)
    return {"ones": jnp.mean(per_bit), "worst_bit_imbalance": jnp.max(jnp.abs(per_bit - 0.5))}
