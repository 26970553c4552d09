"""BiGR's schedules, shared by training (`train/losses.py`) and sampling (`sampling/bigr.py`).

* Masking (official BiGR `llama/gpt.py`: `Transformer.forward`, `generate_with_cfg`): the masked
  fraction of the N tokens follows cos(π/2·r) over the progress r ∈ [0, 1]. Training draws one
  step s ~ U{0..N−1} per batch and masks m = max(1, ⌊N·cos(π/2·s/N)⌋) tokens; sampling reveals
  n_i = M_{i−1} − M_i tokens at step i, M_i = ⌊rate((i+1)/I)·N⌋.
* Bernoulli diffusion (`llama/bindiff/binarylatent.py`: `noise_scheduler`, `BinaryDiffusion`)
  over T = DIFFUSION_STEPS steps: q(x_t = 1 | x0) = k_t·x0 + b_t with k_t = 1 − t/T,
  b_t = t/(2T); the sampler's transcoder walks S strided steps from T to 1.

Host-side tables are NumPy float64, like the official Python floats, and the training draws are
traced float32; each keeps its order of operations, since one rounding more or less moves some
counts across an integer (e.g. the training count for N = 270 when s/N is computed first).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

DIFFUSION_STEPS = 256  # T of BiGR's Bernoulli diffusion


# ---- masking ---------------------------------------------------------------------------------
def cosine_mask_rate(progress, total=1, xp=np):
    """The masked fraction cos(π/2 · progress/total): a host ratio (total 1) in float64, or
    with xp = jax.numpy a traced training step of `total` tokens in float32."""
    return xp.cos(math.pi / 2 * progress / total)


def bigr_mask_count(s, num_tokens: int):
    """Training's masked-token count m = max(1, ⌊N·cos(π/2 · s/N)⌋) for s ∈ {0..N−1}."""
    m = jnp.floor(num_tokens * cosine_mask_rate(s, num_tokens, jnp)).astype(jnp.int32)
    return jnp.maximum(m, 1)


def reveal_counts(num_tokens: int, num_iter: int, schedule: str = "cosine") -> np.ndarray:
    """Sampling's tokens revealed at each step: M_i = ⌊rate(r)·M⌋ with r = (i+1)/I,
    n_i = M_{i−1} − M_i. `cosine` (generation): rate = cos(π/2·r); `linear` (in-painting):
    rate = 1 − r."""
    counts, old = [], num_tokens
    for step in range(num_iter):
        ratio = (step + 1) / num_iter
        rate = cosine_mask_rate(ratio) if schedule == "cosine" else 1.0 - ratio
        new = math.floor(rate * num_tokens)
        counts.append(old - new)
        old = new
    return np.asarray(counts, np.int32)


# ---- Bernoulli diffusion ---------------------------------------------------------------------
def noised_probability(x0, t, num_timesteps: int = DIFFUSION_STEPS):
    """q(x_t = 1 | x0) = (1 − t/T)·x0 + t/(2T) for bits x0 (..., K) and steps t (...,), traced."""
    tf = (t / num_timesteps)[..., None]
    return (1 - tf) * x0 + tf / 2


def one_step_betas(num_timesteps: int) -> np.ndarray:
    """The one-step kernels β_t = 1 − 1/(T − t + 1), t = 1..T, in float64:
    q(x_t = 1 | x_{t−1}) = β_t·x_{t−1} + ½(1 − β_t)."""
    return 1.0 - 1.0 / (num_timesteps - np.arange(1, num_timesteps + 1) + 1)


def diffusion_schedule(num_timesteps: int) -> dict[str, np.ndarray]:
    """The official buffers k_final = k_t, b_final = b_t, beta and cumbeta, indexed t = 0..T,
    float32 like the official ones (computed in float64 by the same recursion)."""
    beta = one_step_betas(num_timesteps)
    k, b = [1.0], [0.0]
    for i in range(num_timesteps):
        k.append(k[-1] * beta[i])
        b.append(beta[i] * b[-1] + 0.5 * (1 - beta[i]))
    out = {"k_final": np.asarray(k), "b_final": np.asarray(b), "beta": np.concatenate([[1.0], beta])}
    out["cumbeta"] = np.cumprod(out["beta"].astype(np.float32))
    return {name: np.asarray(v, np.float32) for name, v in out.items()}


def transcoder_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The strided steps s, descending: 1 + ⌊linspace(0, 1, S)·(T − 1)⌋ reversed."""
    all_steps = np.arange(1, num_timesteps + 1)
    if steps != num_timesteps:
        all_steps = all_steps[np.array(np.linspace(0.0, 1.0, steps) * (num_timesteps - 1), int)]
    return all_steps[::-1].copy()


class TranscoderPlan(NamedTuple):
    """Per inner step: model timestep index s−1, next step's k and b, Π β over (s′, s]."""
    t_index: np.ndarray
    k_next: np.ndarray
    b_next: np.ndarray
    beta_prod: np.ndarray


def transcoder_plan(num_timesteps: int, steps: int) -> TranscoderPlan:
    sched = diffusion_schedule(num_timesteps)
    s = transcoder_timesteps(num_timesteps, steps)
    s_next = np.concatenate([s[1:], [0]])  # the last step (s = 1) returns p0: its posterior is unused
    beta = np.concatenate([[1.0], one_step_betas(num_timesteps)])
    prod = np.array([np.prod(beta[n + 1:c + 1]) for c, n in zip(s, s_next)])
    return TranscoderPlan((s - 1).astype(np.int32), sched["k_final"][s_next], sched["b_final"][s_next],
                          prod.astype(np.float32))
