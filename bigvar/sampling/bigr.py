"""BiGR sampling (BIGR_SPEC §3): entropy-ordered iterative unmasking with a Bernoulli-diffusion
transcoder, as one jittable function.

* Outer loop: `lax.scan` over a precomputed schedule (tokens to reveal, CFG weight and Gumbel
  scale per step). Each step runs the transformer on the conditional and null-class inputs
  (interleaved pairs, so a sample's pair stays on its device), runs the transcoder to get the
  bit probabilities P of every token, ranks the hidden tokens by confidence mean|P − ½|·2 (+
  Gumbel noise) and reveals the top n_i with bits ~ Bernoulli(P).
* Inner loop: `lax.scan` over the strided diffusion steps s = 256, 253, …, 1 (S = 100), CFG and
  temperature in logit space, posterior to the next step exactly as §3.1; returns p0 at s = 1.
* Randomness is per sample: sample i uses fold_in(PRNGKey(seed), global index i) only, so image i
  is the same whatever the batch size or device count.
* Guidance w = 1 (constant) needs no null branch and runs none; any other w (also w < 1) runs both.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bigvar.models.bigr import BiGR
from bigvar.sampling.var import per_sample_keys
from bigvar.tokenizers.bae import BinaryAutoEncoder, from_tokens

CFG_SCHEDULES = ("constant", "linear")
# Random streams derived from a sample's key for one outer step (fold_in constants).
_GUMBEL, _BITS, _TRANSCODER_INIT, _TRANSCODER_STEP = 0, 1, 2, 3
GUMBEL_SCHEDULES = ("constant", "down", "up")


@dataclasses.dataclass(frozen=True)
class BiGRSamplingSettings:
    """num_iter: unmasking steps I. cfg: guidance w (1 = none), constant or linear 1 → w.
    gumbel: confidence noise g, constant / down (g·(1−r)) / up (g·r). temperature: transcoder
    logit temperature τ. diffusion_steps T (training) and transcoder_steps S (strided)."""
    num_iter: int = 20
    cfg: float = 2.5
    cfg_schedule: str = "constant"
    gumbel: float = 0.01
    gumbel_schedule: str = "constant"
    temperature: float = 1.0
    diffusion_steps: int = 256
    transcoder_steps: int = 100

    def __post_init__(self):
        if self.num_iter < 1:
            raise ValueError(f"num_iter must be ≥ 1; got {self.num_iter}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}; got {self.cfg_schedule!r}")
        if self.gumbel_schedule not in GUMBEL_SCHEDULES:
            raise ValueError(f"gumbel_schedule must be one of {GUMBEL_SCHEDULES}; got {self.gumbel_schedule!r}")
        if self.gumbel < 0 or self.temperature <= 0:
            raise ValueError(f"gumbel must be ≥ 0 and temperature > 0; got {self.gumbel}, {self.temperature}")
        if not 1 <= self.transcoder_steps <= self.diffusion_steps:
            raise ValueError(f"transcoder_steps must be in [1, {self.diffusion_steps}]; got {self.transcoder_steps}")

    @property
    def uses_null_branch(self) -> bool:
        return self.cfg != 1.0


# ---- schedules (host-side NumPy, exactly as the official Python floats) -------------------
def reveal_counts(num_tokens: int, num_iter: int, schedule: str = "cosine") -> np.ndarray:
    """Tokens revealed at each step: M_i = ⌊rate(r)·M⌋ with r = (i+1)/I, n_i = M_{i−1} − M_i.
    `cosine` (generation): rate = cos(π/2·r); `linear` (in-painting): rate = 1 − r."""
    counts, old = [], num_tokens
    for step in range(num_iter):
        ratio = (step + 1) / num_iter
        rate = np.cos(math.pi / 2.0 * ratio) if schedule == "cosine" else 1.0 - ratio
        new = math.floor(rate * num_tokens)
        counts.append(old - new)
        old = new
    return np.asarray(counts, np.int32)


def cfg_weights(settings: BiGRSamplingSettings) -> np.ndarray:
    ratio = np.arange(1, settings.num_iter + 1) / settings.num_iter
    if settings.cfg_schedule == "linear":
        return (1.0 + (settings.cfg - 1.0) * ratio).astype(np.float32)
    return np.full(settings.num_iter, settings.cfg, np.float32)


def gumbel_scales(settings: BiGRSamplingSettings) -> np.ndarray:
    ratio = np.arange(1, settings.num_iter + 1) / settings.num_iter
    scale = {"constant": np.ones_like(ratio), "down": 1.0 - ratio, "up": ratio}[settings.gumbel_schedule]
    return (settings.gumbel * scale).astype(np.float32)


def diffusion_schedule(num_timesteps: int) -> dict[str, np.ndarray]:
    """The linear Bernoulli schedule: q(x_t = 1 | x_0) = k_t·x_0 + b_t with k_t = 1 − t/T,
    b_t = t/(2T), one-step β_t = 1 − 1/(T − t + 1); arrays indexed t = 0..T, float32 like the
    official buffers (computed in float64 by the same recursion)."""
    beta = 1.0 - 1.0 / (num_timesteps - np.arange(1, num_timesteps + 1) + 1)
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
    beta64 = 1.0 - 1.0 / (num_timesteps - np.arange(1, num_timesteps + 1) + 1)
    prod = np.array([np.prod(np.concatenate([[1.0], beta64])[n + 1:c + 1]) for c, n in zip(s, s_next)])
    return TranscoderPlan((s - 1).astype(np.int32), sched["k_final"][s_next], sched["b_final"][s_next],
                          prod.astype(np.float32))


# ---- the transcoder ----------------------------------------------------------------------
def posterior_step(p0, x, k_next, b_next, beta_prod):
    """π = P(x_{s′} = 1 | x_s, p0): u_v = k_{s′}·p0_v + b_{s′}, λ_v = ½ + ([x, 1−x]_v − ½)·Πβ."""
    u1, u0 = k_next * p0 + b_next, k_next * (1 - p0) + b_next
    lam1, lam0 = 0.5 + (x - 0.5) * beta_prod, 0.5 + ((1 - x) - 0.5) * beta_prod
    return u1 * lam1 / (u1 * lam1 + u0 * lam0)


def transcode(model: BiGR, params, c_z, weight, temperature: float, keys, plan: TranscoderPlan,
              pairs: int):
    """Bit probabilities P (B, N, K) for transcoder conditions c_z (B·pairs, N, H), interleaved
    (conditional, null) when pairs = 2. keys: (B,) per-sample keys for this outer step."""
    bp, n, _ = c_z.shape
    b, k = bp // pairs, model.binary_size
    init = jax.vmap(lambda key: jax.random.bernoulli(jax.random.fold_in(key, _TRANSCODER_INIT), 0.5, (n, k)))(keys)

    def step(carry, inp):
        x, _ = carry
        j, t_index, k_next, b_next, beta_prod = inp
        xp = jnp.repeat(x, pairs, axis=0)
        logits = model.apply(params, xp, jnp.full(xp.shape[:2], t_index), c_z,
                             method=BiGR.flip_logits_from_embedded) / temperature
        logits = logits.reshape(b, pairs, n, k)
        if pairs == 2:
            logits = logits[:, 1] + weight * (logits[:, 0] - logits[:, 1])
        else:
            logits = logits[:, 0]
        q = jax.nn.sigmoid(logits)
        p0 = x * (1 - q) + (1 - x) * q
        pi = posterior_step(p0, x, k_next, b_next, beta_prod)
        u = jax.vmap(lambda key: jax.random.uniform(
            jax.random.fold_in(jax.random.fold_in(key, _TRANSCODER_STEP), j), (n, k)))(keys)
        return ((u < pi).astype(jnp.float32), p0), None

    steps = len(plan.t_index)
    xs = (jnp.arange(steps), *(jnp.asarray(a) for a in plan))
    (_, p0), _ = jax.lax.scan(step, (init.astype(jnp.float32), jnp.zeros((b, n, k))), xs)
    return p0


# ---- the outer loop ----------------------------------------------------------------------
class BiGRSampleOutput(NamedTuple):
    images: jax.Array   # (B, S, S, 3) uint8
    tokens: jax.Array   # (B, N, K) float32 bits


def sample_tokens(model: BiGR, settings: BiGRSamplingSettings, params, cond, null_cond, seed,
                  sample_index, counts, known_tokens=None, known=None, final_fill: bool = False):
    """The token loop. cond (B, D): class embeddings (or mixes); null_cond (D,): the null class
    embedding. counts (B, I): tokens to reveal per step. known_tokens/known: tokens given at the
    start (in-painting), revealed from the start. `final_fill` adds the official last pass that
    fills tokens a too-small budget left hidden. Returns (B, N, K) bits."""
    b, n, k = cond.shape[0], model.seq_len, model.binary_size
    pairs = 2 if settings.uses_null_branch else 1
    conds = cond[:, None, :]
    if pairs == 2:
        conds = jnp.concatenate([conds, jnp.broadcast_to(null_cond, conds.shape)], axis=1)
    conds = conds.reshape(b * pairs, -1)
    keys = per_sample_keys(seed, sample_index)
    plan = transcoder_plan(settings.diffusion_steps, settings.transcoder_steps)

    seq = jnp.zeros((b, n, k), jnp.float32)
    revealed = jnp.zeros((b, n), bool)
    if known is not None:
        seq = jnp.where(known[..., None], known_tokens.astype(jnp.float32), seq)
        revealed = known.astype(bool)

    def probabilities(seq, revealed, weight, step_keys):
        tokens2 = jnp.repeat(seq, pairs, axis=0)
        mask2 = jnp.repeat(~revealed, pairs, axis=0)
        z = model.apply(params, tokens2, mask2, conds, method=BiGR.condition_from_embedding)
        c_z = model.apply(params, z, method=BiGR.transcoder_condition)
        return transcode(model, params, c_z, weight, settings.temperature, step_keys, plan, pairs)

    def step(carry, inp):
        seq, revealed = carry
        i, count, weight, gumbel = inp
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i)
        probs = probabilities(seq, revealed, weight, step_keys)
        confidence = jnp.mean(jnp.abs(probs - 0.5) * 2.0, axis=-1)
        confidence = jnp.where(revealed, -jnp.inf, confidence)
        noise = jax.vmap(lambda key: jax.random.gumbel(jax.random.fold_in(key, _GUMBEL), (n,)))(step_keys)
        confidence = confidence + gumbel * noise
        rank = jnp.argsort(jnp.argsort(-confidence, axis=-1, stable=True), axis=-1, stable=True)
        chosen = rank < count[:, None]
        bits = bernoulli(step_keys, probs)
        return (jnp.where(chosen[..., None], bits, seq), revealed | chosen), None

    xs = (jnp.arange(settings.num_iter), jnp.swapaxes(counts, 0, 1),
          jnp.asarray(cfg_weights(settings)), jnp.asarray(gumbel_scales(settings)))
    (seq, revealed), _ = jax.lax.scan(step, (seq, revealed), xs)
    if final_fill:
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, settings.num_iter)
        probs = probabilities(seq, revealed, jnp.float32(settings.cfg), step_keys)
        seq = jnp.where(revealed[..., None], seq, bernoulli(step_keys, probs))
    return seq


def bernoulli(step_keys, probs):
    """Independent bits ~ Bernoulli(P), one key per sample."""
    u = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, _BITS), probs.shape[1:]))(step_keys)
    return (u < probs).astype(jnp.float32)


def decode_to_uint8(bae: BinaryAutoEncoder, bae_params, tokens) -> jax.Array:
    img = bae.apply(bae_params, from_tokens(tokens, bae.grid_size), method=BinaryAutoEncoder.decode)
    return jnp.clip(jnp.round(img * 255.0), 0, 255).astype(jnp.uint8)
