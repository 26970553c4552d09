"""BiGR sampling (official `llama/gpt.py`, `generate_with_cfg`): entropy-ordered iterative
unmasking with a Bernoulli-diffusion transcoder, as one jittable function.

* Outer loop: `lax.scan` over a precomputed schedule (tokens to reveal, CFG weight and Gumbel
  scale per step). Each step runs the transformer on the conditional and null-class inputs
  (interleaved pairs, so a sample's pair stays on its device), runs the transcoder to get the
  bit probabilities P of every token, ranks the hidden tokens by confidence mean|P − ½|·2 (+
  Gumbel noise) and reveals the top n_i with bits ~ Bernoulli(P).
* Inner loop: `lax.scan` over the strided diffusion steps s = 256, 253, …, 1 (S = 100), CFG and
  temperature in logit space, posterior to the next step exactly as the official
  `BinaryDiffusion.sample` (`llama/bindiff/binarylatent.py`); returns p0 at s = 1.
* Randomness is per sample: sample i uses fold_in(PRNGKey(seed), global index i) only, so the
  tokens of sample i are the same whatever the batch size or device count; its pixels agree
  within 1/255 (the decoder's float rounding follows the per-device batch on XLA:CPU).
* Guidance w = 1 (constant) needs no null branch and runs none; any other w (also w < 1) runs both.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from bigvar.errors import invalid
from bigvar.models.bigr import BiGR
from bigvar.models.bigr_schedules import DIFFUSION_STEPS, TranscoderPlan, reveal_counts, transcoder_plan
from bigvar.nn.resize import resize_matrix
from bigvar.sampling.common import Sampler, per_sample_keys, to_uint8
from bigvar.sampling.edit import box_mask
from bigvar.tokenizers.bae import BinaryAutoEncoder, from_tokens

CFG_SCHEDULES = ("constant", "linear")
GUMBEL_SCHEDULES = ("constant", "down", "up")
# Random streams derived from a sample's key for one outer step (fold_in constants).
_GUMBEL, _BITS, _TRANSCODER_INIT, _TRANSCODER_STEP = 0, 1, 2, 3
_ENCODE = 2**20  # `encode`'s Bernoulli bits, from the sample's key itself


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
    diffusion_steps: int = DIFFUSION_STEPS
    transcoder_steps: int = 100

    def __post_init__(self):
        if self.num_iter < 1:
            invalid("sample.num_iter", self.num_iter, "≥ 1")
        if self.cfg_schedule not in CFG_SCHEDULES:
            invalid("sample.cfg_schedule", self.cfg_schedule, "'constant' or 'linear'")
        if self.gumbel_schedule not in GUMBEL_SCHEDULES:
            invalid("sample.gumbel_schedule", self.gumbel_schedule, "'constant', 'down' or 'up'")
        if self.gumbel < 0:
            invalid("sample.gumbel", self.gumbel, "≥ 0 (0 disables the confidence noise)")
        if self.temperature <= 0:
            invalid("sample.temperature", self.temperature, "> 0")
        if not 1 <= self.transcoder_steps <= self.diffusion_steps:
            invalid("sample.transcoder_steps", self.transcoder_steps, f"in [1, {self.diffusion_steps}]")

    @classmethod
    def from_config(cls, sample) -> BiGRSamplingSettings:
        """The settings in a `config.sample` section (its other fields belong to the job)."""
        return cls(**{field.name: sample[field.name] for field in dataclasses.fields(cls)})

    @property
    def uses_null_branch(self) -> bool:
        return self.cfg != 1.0


# ---- per-step guidance and noise (host-side; the other schedules: models/bigr_schedules.py)
def cfg_weights(settings: BiGRSamplingSettings) -> np.ndarray:
    ratio = np.arange(1, settings.num_iter + 1) / settings.num_iter
    if settings.cfg_schedule == "linear":
        return (1.0 + (settings.cfg - 1.0) * ratio).astype(np.float32)
    return np.full(settings.num_iter, settings.cfg, np.float32)


def gumbel_scales(settings: BiGRSamplingSettings) -> np.ndarray:
    ratio = np.arange(1, settings.num_iter + 1) / settings.num_iter
    scale = {"constant": np.ones_like(ratio), "down": 1.0 - ratio, "up": ratio}[settings.gumbel_schedule]
    return (settings.gumbel * scale).astype(np.float32)


# ---- the transcoder ----------------------------------------------------------------------
def posterior_step(p0, x, k_next, b_next, beta_prod):
    """π = P(x_{s′} = 1 | x_s, p0): u_v = k_{s′}·p0_v + b_{s′}, λ_v = ½ + ([x, 1−x]_v − ½)·Πβ."""
    u1, u0 = k_next * p0 + b_next, k_next * (1 - p0) + b_next
    lam1, lam0 = 0.5 + (x - 0.5) * beta_prod, 0.5 + ((1 - x) - 0.5) * beta_prod
    return u1 * lam1 / (u1 * lam1 + u0 * lam0)


def transcode(model: BiGR, params, c_z, weight, temperature: float, keys, plan: TranscoderPlan,
              pairs: int, rows=None, num_tokens: int | None = None):
    """Bit probabilities P (B, n, K) for transcoder conditions c_z (B·pairs, n, H), interleaved
    (conditional, null) when pairs = 2. keys: (B,) per-sample keys for this outer step.

    `rows` (B, n): which of the `num_tokens` grid tokens these are, when only some (the hidden
    ones) are transcoded. Random draws are made for the whole grid and gathered, so a token's
    probabilities do not depend on which other tokens are transcoded with it."""
    bp, n, _ = c_z.shape
    b, k = bp // pairs, model.binary_size
    grid_n = n if rows is None else num_tokens
    pick = (lambda u: u) if rows is None else (lambda u: jnp.take_along_axis(u, rows[..., None], axis=1))

    def uniforms(stream, j=0):
        return pick(jax.vmap(lambda key: jax.random.uniform(
            jax.random.fold_in(jax.random.fold_in(key, stream), j), (grid_n, k)))(keys))

    def step(carry, inp):
        x, _ = carry
        j, t_index, k_next, b_next, beta_prod = inp
        xp = jnp.repeat(x, pairs, axis=0)
        # One timestep for all tokens: its embedding is computed once and broadcast.
        logits = model.apply(params, xp, t_index, c_z, method=BiGR.flip_logits_from_embedded) / temperature
        logits = rearrange(logits, "(b pair) n k -> b pair n k", pair=pairs)
        if pairs == 2:
            logits = logits[:, 1] + weight * (logits[:, 0] - logits[:, 1])
        else:
            logits = logits[:, 0]
        q = jax.nn.sigmoid(logits)
        p0 = x * (1 - q) + (1 - x) * q
        pi = posterior_step(p0, x, k_next, b_next, beta_prod)
        return ((uniforms(_TRANSCODER_STEP, j) < pi).astype(jnp.float32), p0), None

    init = (uniforms(_TRANSCODER_INIT) < 0.5).astype(jnp.float32)  # x_T ~ Bernoulli(½)
    xs = (jnp.arange(len(plan.t_index)), *(jnp.asarray(a) for a in plan))
    (_, p0), _ = jax.lax.scan(step, (init, jnp.zeros((b, n, k))), xs)
    return p0


def hidden_token_segments(counts: np.ndarray, num_tokens: int, known: np.ndarray | None,
                          num_segments: int = 4) -> tuple[tuple[int, int], ...]:
    """Splits the unmasking steps into segments (length, tokens to transcode): the transcoder
    only needs the still-hidden tokens, whose number at each step is known in advance, so each
    segment transcodes as many tokens as are hidden at its start (the batch maximum, rounded up
    to a multiple of 8). ~25% less transcoder work at 20 steps; the outputs are unchanged."""
    counts = np.asarray(counts).reshape(-1, np.shape(counts)[-1])
    hidden0 = num_tokens - (0 if known is None else np.asarray(known).sum(axis=-1))
    hidden = np.asarray(hidden0).reshape(-1, 1) - np.concatenate(
        [np.zeros((len(counts), 1), int), np.cumsum(counts, axis=1)[:, :-1]], axis=1)
    steps = counts.shape[1]
    bounds = np.linspace(0, steps, min(num_segments, steps) + 1).round().astype(int)
    segments = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        size = int(min(num_tokens, -(-max(int(hidden[:, start].max()), 1) // 8) * 8))
        segments.append((int(end - start), size))
    return tuple(segments)


# ---- the outer loop ----------------------------------------------------------------------
class BiGRSampleOutput(NamedTuple):
    images: jax.Array         # (B, S, S, 3) uint8
    tokens: jax.Array         # (B, N, K) float32 bits
    times_sampled: jax.Array  # (B, N) int32: 1 for generated tokens, 0 for kept ones


def sample_tokens(model: BiGR, settings: BiGRSamplingSettings, params, cond, null_cond, seed,
                  sample_index, counts, known_tokens=None, known=None, final_fill: bool = False,
                  segments: tuple[tuple[int, int], ...] | None = None):
    """The token loop. cond (B, D): class embeddings (or mixes); null_cond (D,): the null class
    embedding. counts (B, I): tokens to reveal per step. known_tokens/known: tokens given at the
    start (in-painting), revealed from the start. `final_fill` adds the official last pass that
    fills tokens a too-small budget left hidden. Returns (bits (B, N, K), how many times each
    token was (re)sampled (B, N): 1 for every generated token unless the official in-painting
    budget re-samples known ones).

    `segments` (from `hidden_token_segments`, static): transcode only the hidden tokens, in
    segments of steps with a fixed token count each. Valid only when every step chooses hidden
    tokens (not with the official in-painting budget); without it every token is transcoded
    at every step, like the official sampler."""
    b, n, k = cond.shape[0], model.seq_len, model.binary_size
    pairs = 2 if settings.uses_null_branch else 1
    conds = cond[:, None, :]
    if pairs == 2:
        conds = jnp.concatenate([conds, jnp.broadcast_to(null_cond, conds.shape)], axis=1)
    conds = rearrange(conds, "b pair d -> (b pair) d")
    keys = per_sample_keys(seed, sample_index)
    plan = transcoder_plan(settings.diffusion_steps, settings.transcoder_steps)

    seq = jnp.zeros((b, n, k), jnp.float32)
    revealed = jnp.zeros((b, n), bool)
    if known is not None:
        seq = jnp.where(known[..., None], known_tokens.astype(jnp.float32), seq)
        revealed = known.astype(bool)

    def probabilities(seq, revealed, weight, step_keys, size=None):
        tokens2 = jnp.repeat(seq, pairs, axis=0)
        mask2 = jnp.repeat(~revealed, pairs, axis=0)
        z = model.apply(params, tokens2, mask2, conds, method=BiGR.condition_from_embedding)
        c_z = model.apply(params, z, method=BiGR.transcoder_condition)
        if size is None or size == n:
            return transcode(model, params, c_z, weight, settings.temperature, step_keys, plan, pairs)
        rows = jnp.argsort(revealed, axis=-1, stable=True)[:, :size]  # hidden tokens first
        c_rows = jnp.take_along_axis(rearrange(c_z, "(b pair) n h -> b pair n h", pair=pairs),
                                     rows[:, None, :, None], axis=2)
        p_rows = transcode(model, params, rearrange(c_rows, "b pair n h -> (b pair) n h"), weight,
                           settings.temperature, step_keys, plan, pairs, rows, n)
        return jnp.zeros((b, n, k)).at[jnp.arange(b)[:, None], rows].set(p_rows)

    def step(carry, inp, size=None):
        seq, revealed, times = carry
        i, count, weight, gumbel = inp
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i)
        probs = probabilities(seq, revealed, weight, step_keys, size)
        confidence = jnp.mean(jnp.abs(probs - 0.5) * 2.0, axis=-1)
        confidence = jnp.where(revealed, -jnp.inf, confidence)
        noise = jax.vmap(lambda key: jax.random.gumbel(jax.random.fold_in(key, _GUMBEL), (n,)))(step_keys)
        confidence = confidence + gumbel * noise
        rank = jnp.argsort(jnp.argsort(-confidence, axis=-1, stable=True), axis=-1, stable=True)
        chosen = rank < count[:, None]
        bits = bernoulli(step_keys, probs)
        return (jnp.where(chosen[..., None], bits, seq), revealed | chosen, times + chosen), None

    xs = (jnp.arange(settings.num_iter), jnp.swapaxes(counts, 0, 1),
          jnp.asarray(cfg_weights(settings)), jnp.asarray(gumbel_scales(settings)))
    carry, start = (seq, revealed, jnp.zeros((b, n), jnp.int32)), 0
    for length, size in segments or ((settings.num_iter, n),):
        part = jax.tree_util.tree_map(lambda a: a[start:start + length], xs)
        carry, _ = jax.lax.scan(functools.partial(step, size=size), carry, part)
        start += length
    seq, revealed, times = carry
    if final_fill:
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, settings.num_iter)
        probs = probabilities(seq, revealed, jnp.float32(settings.cfg), step_keys)
        seq = jnp.where(revealed[..., None], seq, bernoulli(step_keys, probs))
        times = times + ~revealed
    return seq, times


def bernoulli(step_keys, probs):
    """Independent bits ~ Bernoulli(P), one key per sample."""
    bits = jax.vmap(lambda key, p: jax.random.bernoulli(jax.random.fold_in(key, _BITS), p))(step_keys, probs)
    return bits.astype(jnp.float32)


def decode_to_uint8(bae: BinaryAutoEncoder, bae_params, tokens) -> jax.Array:
    img = bae.apply(bae_params, from_tokens(tokens, bae.grid_size), method=BinaryAutoEncoder.decode)
    return to_uint8(img, bae.VALUE_RANGE)


def keep_mask_tokens(keep_mask, grid: int, batch: int, image_size: int) -> np.ndarray:
    """(batch, grid²) bool from a keep-mask given at the token grid (grid, grid) / (B, grid, grid)
    or at pixels (S, S) / (B, S, S), nearest-resized like the official apps."""
    mask = np.asarray(keep_mask)
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (batch,) + mask.shape)
    if mask.ndim != 3 or mask.shape[0] != batch or mask.shape[1] != mask.shape[2] \
            or mask.shape[1] not in (grid, image_size):
        raise ValueError(f"keep_mask must be the token grid ({grid}, {grid}) or ({batch}, {grid}, {grid}), "
                         f"or a pixel mask ({image_size}, {image_size}); got shape {np.shape(keep_mask)}")
    if mask.shape[1] != grid:
        centres = ((np.arange(grid) + 0.5) * mask.shape[1] / grid).astype(int)
        mask = mask[:, centres][:, :, centres]
    return (mask > 0).reshape(batch, grid * grid)


class BiGRSampler(Sampler):
    """BiGR's public sampling API: generation, the zero-shot apps and features (params, batch
    sharding, label checks and the jit cache come from `Sampler`).

        sampler = BiGRSampler(model, bae, params, bae_params, BiGRSamplingSettings(cfg=2.5))
        out = sampler.generate([207, 360], seed=0)          # out.images (2, 256, 256, 3) uint8
        out = sampler.inpaint(images, keep_mask)            # keep_mask: 1 = keep the image token
    """

    def __init__(self, model: BiGR, bae: BinaryAutoEncoder, params, bae_params,
                 settings: BiGRSamplingSettings = BiGRSamplingSettings(), mesh=None):
        if model.binary_size != bae.codebook_size:
            raise ValueError(f"the generator models K={model.binary_size} bits per token but the "
                             f"B-AE makes K={bae.codebook_size}; use the matching B-AE")
        if bae.grid_size ** 2 != model.seq_len:
            raise ValueError(f"the generator has {model.seq_len} tokens but the B-AE a "
                             f"{bae.grid_size}×{bae.grid_size} grid")
        super().__init__(model, bae, params, bae_params, settings, mesh)

    # ---- helpers ------------------------------------------------------------------------------
    def _images(self, images) -> np.ndarray:
        images = self._image_batch(images)
        self.tokenizer.check_images(images)
        return images.astype(np.float32)

    def _embed(self, labels):
        return self.generator.apply(self.gen_params, labels, method=BiGR.class_embedding)

    def _reveal_counts(self, batch: int) -> np.ndarray:
        """The generation schedule (cosine) for each of `batch` samples: (batch, num_iter)."""
        return np.tile(reveal_counts(self.generator.seq_len, self.settings.num_iter), (batch, 1))

    def _run(self, name, cond, seed, first_index, counts, known_tokens=None, known=None,
             final_fill=False, official_budget=False, lower=False):
        n = cond.shape[0]
        model, bae, settings = self.generator, self.tokenizer, self.settings
        # The official budget may pick known tokens, whose probabilities are then needed too.
        segments = None if official_budget else hidden_token_segments(counts, model.seq_len, known)

        def fn(params, bae_params, cond, seed, index, counts, known_tokens, known):
            # From `params`, not closed over: the compiled function is reused after `set_params`.
            null = model.apply(params, jnp.asarray([model.num_classes]), method=BiGR.class_embedding)[0]
            tokens, times = sample_tokens(model, settings, params, cond, null, seed, index, counts,
                                          known_tokens, known, final_fill, segments)
            return BiGRSampleOutput(decode_to_uint8(bae, bae_params, tokens), tokens, times)

        call = self._jit((name, final_fill, known is None, segments), fn)
        args = (self.gen_params, self.tok_params, self._pad(cond), jnp.uint32(seed),
                self._pad(self._sample_index(first_index, n)), self._pad(counts),
                None if known_tokens is None else self._pad(known_tokens),
                None if known is None else self._pad(known))
        return call.lower(*args) if lower else self._unpad(call(*args), n)

    def _lower_generate(self, batch: int) -> jax.stages.Lowered:
        labels = np.full(batch, self.generator.num_classes, np.int32)
        cond = jax.eval_shape(  # the weights may be abstract: only the condition's shape is needed
            lambda params: self.generator.apply(params, labels, method=BiGR.class_embedding),
            self.gen_params)
        return self._run("generate", np.zeros(cond.shape, cond.dtype), 0, 0,
                         self._reveal_counts(batch), lower=True)

    # ---- public API ----------------------------------------------------------------------------
    def generate(self, labels, seed: int = 0, first_index: int = 0) -> BiGRSampleOutput:
        """Class-conditional samples (the null class id gives unconditional ones). Sample j uses
        global index first_index + j, so every image is reproducible on its own."""
        labels = self.check_labels(labels)
        return self._run("generate", np.asarray(self._embed(jnp.asarray(labels))), seed, first_index,
                         self._reveal_counts(len(labels)))

    def interpolate(self, class_a: int, class_b: int, ratios, seed: int = 0) -> BiGRSampleOutput:
        """Class interpolation: condition r·E[a] + (1 − r)·E[b] (token and AdaLN) for each r."""
        a, b = self.check_labels([class_a, class_b])
        ratios = np.asarray(ratios, np.float32).reshape(-1, 1)
        emb = np.asarray(self._embed(jnp.asarray([a, b])))
        cond = ratios * emb[0] + (1 - ratios) * emb[1]
        counts = self._reveal_counts(1)
        # One seed for every ratio, as the official app: the same noise, a moving condition.
        out = [self._run("generate", cond[i:i + 1], seed, 0, counts) for i in range(len(cond))]
        return BiGRSampleOutput(*(np.concatenate(x) for x in zip(*out)))

    def encode(self, images, seed: int = 0, first_index: int = 0, deterministic: bool = False):
        """Images (B, S, S, 3) uint8 or float [0, 1] → tokens (B, N, K): Bernoulli bits (what the
        official apps use) drawn per sample from (seed, index), or thresholded at ½."""
        images = self._images(images)
        bae = self.tokenizer

        def fn(bae_params, images, seed, index):
            probs = bae.apply(bae_params, images, method=BinaryAutoEncoder.encode_probs)
            if deterministic:
                bits = probs > 0.5
            else:
                keys = jax.vmap(lambda key: jax.random.fold_in(key, _ENCODE))(per_sample_keys(seed, index))
                bits = jax.vmap(jax.random.bernoulli)(keys, probs)
            return rearrange(bits.astype(jnp.float32), "b h w k -> b (h w) k")

        n = len(images)
        out = self._jit(("encode", deterministic), fn)(self.tok_params, self._pad(images), jnp.uint32(seed),
                                                       self._pad(self._sample_index(first_index, n)))
        return np.asarray(out)[:n]

    def edit(self, images, keep_mask, labels=None, seed: int = 0,
             official_budget: bool = False) -> BiGRSampleOutput:
        """In/out-painting and class-conditional editing: tokens where keep_mask is set come from
        the image (Bernoulli-encoded), the others are generated over `num_iter` steps with the
        linear schedule, conditioned on `labels` (default: the null class).

        official_budget: the official apps size the per-step budget by the number of KNOWN
        tokens (`inpaint_with_cfg` in `llama/gpt.py`), which re-samples some known tokens when
        they outnumber the unknown ones and leaves a final fill pass otherwise; the default
        budgets the UNKNOWN tokens, so every unknown token is generated once and known ones are
        kept."""
        images = self._images(images)
        bae = self.tokenizer
        known = keep_mask_tokens(keep_mask, bae.grid_size, len(images), bae.img_size)
        return self.edit_tokens(self.encode(images, seed), known, labels, seed, official_budget)

    def edit_tokens(self, tokens, known, labels=None, seed: int = 0,
                    official_budget: bool = False) -> BiGRSampleOutput:
        """`edit` on tokens (B, N, K) with a known-token mask (B, N)."""
        tokens, known = np.asarray(tokens, np.float32), np.asarray(known, bool)
        labels = self._edit_labels(labels, len(tokens))
        budget = known.sum(axis=1) if official_budget else (~known).sum(axis=1)
        counts = np.stack([reveal_counts(int(m), self.settings.num_iter, "linear") for m in budget])
        final_fill = bool(official_budget and np.any(budget < (~known).sum(axis=1)))
        return self._run("edit", np.asarray(self._embed(jnp.asarray(labels))), seed, 0, counts,
                         tokens, known, final_fill, official_budget)

    def enrich(self, images, downsample_rate: int = 2, rounds: int = 4, labels=None, seed: int = 0,
               official_budget: bool = False) -> BiGRSampleOutput:
        """Enrichment (`apps/enrich.py`): low-detail images (e.g. upsampled from half size) get
        their tokens re-generated in 4 groups of sub-positions of every r×r token block, each
        group in-painted while the rest is kept; repeated `rounds` times, chained, with seeds
        seed + round. Images of another size are resized (bilinear) to the model's size first."""
        images = self._image_batch(images)
        size = self.tokenizer.img_size
        if images.shape[1] != size:
            m = resize_matrix("bilinear", images.shape[1], size)
            images = np.einsum("oh,bhwc,pw->bopc", m, images, m).astype(np.float32)
        grid, r = self.tokenizer.grid_size, downsample_rate
        if grid % r:
            raise ValueError(f"downsample_rate {r} must divide the {grid}×{grid} token grid")
        tokens, out = self.encode(images, seed), None
        for round_ in range(rounds):
            positions = np.random.default_rng(seed + round_).permutation(r * r)
            for group in (positions[i::4] for i in range(min(4, r * r))):
                unknown = np.zeros((grid, grid), bool)
                for pos in group:
                    unknown[pos // r::r, pos % r::r] = True
                known = np.broadcast_to(~unknown.reshape(-1), tokens.shape[:2])
                out = self.edit_tokens(tokens, known, labels, seed + round_, official_budget)
                tokens = out.tokens
        return out

    def inpaint(self, images, box, labels=None, seed: int = 0, official_budget: bool = False):
        """Regenerates the box (y0, x0, y1, x1), fractions of the side; keeps the rest."""
        keep = box_mask(self.tokenizer.grid_size, box, inpainting=True)
        return self.edit(images, keep, labels, seed, official_budget)

    def outpaint(self, images, box, labels=None, seed: int = 0, official_budget: bool = False):
        """Keeps the box (y0, x0, y1, x1) and regenerates everything around it."""
        keep = box_mask(self.tokenizer.grid_size, box, inpainting=False)
        return self.edit(images, keep, labels, seed, official_budget)

    def features(self, images, layer_index: int, seed: int = 0, deterministic: bool = True,
                 pooled: bool = True) -> np.ndarray:
        """Representation for linear probing (docs/official_behaviour.md): the residual stream
        after block `layer_index` for the image's tokens (null class), mean-pooled (B, D)."""
        from bigvar.models.bigr import features
        tokens = self.encode(images, seed, deterministic=deterministic)
        model = self.generator
        labels = np.full((len(tokens),), model.num_classes, np.int32)

        def fn(params, tokens, labels):
            h = features(model, params, tokens, labels, layer_index)
            return jnp.mean(h, axis=1) if pooled else h

        out = self._jit(("features", layer_index, pooled), fn)(self.gen_params, self._pad(tokens),
                                                               self._pad(labels))
        return np.asarray(out)[:len(tokens)]
