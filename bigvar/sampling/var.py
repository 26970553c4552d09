"""VAR coarse-to-fine sampling (official `VAR.autoregressive_infer_cfg`) as one jittable function.

* The 10 scales are unrolled (each has its own static token count); the layers are scanned.
* KV cache: preallocated (depth, 2B, L, H, hd) arrays; scale k writes its slice [start, end) and
  attends to [0, end) — the rows of the block-causal mask, so no mask is needed.
* CFG doubles the batch as interleaved (conditional, null-class) pairs, so a sample's pair stays
  on the device that holds the sample when the batch is sharded over `data`.
* Randomness is per sample: sample i draws from fold_in(PRNGKey(seed), global index i), then
  fold_in(·, scale). The tokens of sample i for seed s are the same whatever the batch size or
  device count; its pixels agree within 1/255 (decoder rounding follows the per-device batch).
* Editing (official `demo_zero_shot_edit.ipynb`): optional ground-truth tokens and per-scale
  keep-masks replace the sampled tokens where the mask is set, before f̂ is updated.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from bigvar import multihost
from bigvar.errors import invalid
from bigvar.models.var import VAR
from bigvar.sampling.common import Sampler, per_sample_keys, to_uint8
from bigvar.sampling.edit import box_mask, scale_keep_masks
from bigvar.tokenizers.msvq import MultiScaleVQVAE



@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """cfg: guidance at the last scale (linear ramp t = cfg·si/(K−1)); 0 disables CFG.
    top_k: keep the k largest logits (0 or ≥ vocab: off). top_p: nucleus mass in (0, 1] (0: off).
    more_smooth: Gumbel-softmax mixture of code vectors (visualisation only, not for FID)."""
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False

    def __post_init__(self):
        if self.cfg < 0:
            invalid("sample.cfg", self.cfg, "≥ 0 (0 disables guidance)")
        if self.top_k < 0:
            invalid("sample.top_k", self.top_k, "≥ 0 (0 disables top-k)")
        if not (self.top_p == 0 or 0 < self.top_p <= 1):
            invalid("sample.top_p", self.top_p, "a value in (0, 1], or 0 to disable top-p")

    @classmethod
    def from_config(cls, sample) -> SamplingSettings:
        """The settings in a `config.sample` section (its other fields belong to the job)."""
        return cls(**{field.name: sample[field.name] for field in dataclasses.fields(cls)})


class EditGuide(NamedTuple):
    """Ground truth for zero-shot editing: per scale, token ids (B, pn²) and a keep-mask (B, pn²)
    that is True where the ground-truth token is kept (not generated)."""
    gt_idx: Sequence[jax.Array]
    keep: Sequence[jax.Array]


class SampleOutput(NamedTuple):
    images: jax.Array            # (B, H, W, 3) uint8
    tokens: jax.Array            # (B, L) int32, all scales concatenated
    logits: jax.Array | None     # (B, L, V) conditional logits per scale, when asked for


def filter_top_k_top_p(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """The official `sample_with_top_k_top_p_` masking (−inf outside the kept set), last axis.

    top-k keeps every logit ≥ the k-th largest (ties kept). top-p then walks the kept logits in
    ascending order and removes those whose cumulative probability is ≤ 1 − p, never the largest.
    The removed set is a prefix of the ascending order, so it is a value cutoff: we compute it
    from the k sorted top values instead of sorting the whole vocabulary (and a tie group at the
    cutoff is kept whole, where torch's unstable sort would split it arbitrarily).
    """
    vocab = logits.shape[-1]
    use_k, use_p = 0 < top_k < vocab, 0 < top_p < 1
    if not (use_k or use_p):
        return logits
    if use_k:
        desc = jax.lax.top_k(logits, top_k)[0]  # (..., k), descending
    else:
        desc = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    cutoff = desc[..., -1:]
    if use_p:
        weights = jnp.exp(desc - desc[..., :1])
        # Logits tied with the k-th value beyond the k returned by top_k are kept too.
        tied_extra = jnp.sum(logits >= cutoff, axis=-1, keepdims=True) - desc.shape[-1]
        tied_mass = tied_extra * weights[..., -1:]
        total = jnp.sum(weights, axis=-1, keepdims=True) + tied_mass
        cum_ascending = (tied_mass + jnp.cumsum(jnp.flip(weights, axis=-1), axis=-1)) / total
        removed = jnp.sum(cum_ascending <= 1 - top_p, axis=-1, keepdims=True)
        removed = jnp.minimum(removed, desc.shape[-1] - 1)  # the largest always stays
        cutoff = jnp.take_along_axis(jnp.flip(desc, axis=-1), removed, axis=-1)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample_from_logits(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One categorical draw per row of (..., V) logits (−inf = excluded), by inverting the CDF
    with a single uniform per row: the same distribution as Gumbel-max, without V Gumbels."""
    probs = jax.nn.softmax(logits, axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.random.uniform(key, logits.shape[:-1] + (1,), dtype=cdf.dtype) * cdf[..., -1:]
    idx = jnp.sum(cdf <= u, axis=-1)
    # Guard the rounding edge u == cdf[-1]: never return an excluded (zero-probability) entry.
    last_valid = logits.shape[-1] - 1 - jnp.argmax(jnp.flip(probs > 0, axis=-1), axis=-1)
    return jnp.minimum(idx, last_valid).astype(jnp.int32)


def sample(var: VAR, vae: MultiScaleVQVAE, settings: SamplingSettings, var_params, vae_params,
           labels: jax.Array, seed: jax.Array, sample_index: jax.Array,
           edit: EditGuide | None = None, return_logits: bool = False) -> SampleOutput:
    """Generates images for `labels` (B,) (the null class `num_classes` for unconditional).

    Pure and jittable with `var`, `vae`, `settings`, `return_logits` static.
    """
    spec = vae.spec
    if tuple(var.patch_nums) != spec.patch_nums:
        raise ValueError(f"VAR patch_nums {var.patch_nums} != tokenizer patch_nums {spec.patch_nums}")
    b = labels.shape[0]
    use_cfg = settings.cfg > 0
    pairs = 2 if use_cfg else 1
    keys = per_sample_keys(seed, sample_index)
    run = lambda method, *a: var.apply(var_params, *a, method=method)  # noqa: E731
    embed = lambda idx: vae.apply(vae_params, idx, method=MultiScaleVQVAE.embed)  # noqa: E731

    labels_x = labels[:, None]
    if use_cfg:
        labels_x = jnp.concatenate([labels_x, jnp.full_like(labels_x, var.num_classes)], axis=1)
    labels_x = labels_x.reshape(b * pairs)
    cond = run(VAR.class_condition, labels_x)
    x = run(VAR.first_tokens, cond)

    head_dim = var.embed_dim // var.num_heads
    cache_shape = (var.depth, b * pairs, var.seq_len, var.num_heads, head_dim)
    cache_k = jnp.zeros(cache_shape, var.dtype)
    cache_v = jnp.zeros(cache_shape, var.dtype)
    f_hat = jnp.zeros((b, spec.latent_size, spec.latent_size, vae.z_channels), jnp.float32)
    tokens, all_logits = [], []
    k_scales = spec.num_scales
    for si, (pn, (start, end)) in enumerate(zip(spec.patch_nums, spec.begin_ends)):
        past = None if si == 0 else (cache_k[:, :, :start], cache_v[:, :, :start])
        logits, (new_k, new_v) = run(VAR.step, x, cond, past)
        cache_k = cache_k.at[:, :, start:end].set(new_k.astype(var.dtype))
        cache_v = cache_v.at[:, :, start:end].set(new_v.astype(var.dtype))
        logits = rearrange(logits, "(b pair) l v -> b pair l v", pair=pairs)
        if return_logits:
            all_logits.append(logits[:, 0])
        ratio = si / max(k_scales - 1, 1)
        t = settings.cfg * ratio
        logits = (1 + t) * logits[:, 0] - t * logits[:, 1] if use_cfg else logits[:, 0]
        logits = filter_top_k_top_p(logits, settings.top_k, settings.top_p)

        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, si)
        idx = jax.vmap(sample_from_logits)(step_keys, logits)
        if settings.more_smooth:
            tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
            gumbel = jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, 1), logits.shape[1:]))(step_keys)
            weights = jax.nn.softmax((logits * (1 + ratio) + gumbel) / tau, axis=-1)
            codebook = vae_params["params"]["quantize"]["embedding"]
            h = jnp.einsum("blv,vc->blc", weights, codebook, precision=jax.lax.Precision.HIGHEST)
        else:
            h = embed(idx)
        if edit is not None:
            keep = edit.keep[si].astype(bool)
            idx = jnp.where(keep, edit.gt_idx[si], idx)
            h = jnp.where(keep[..., None], embed(edit.gt_idx[si]), h)
        tokens.append(idx)

        f_hat, nxt = vae.apply(vae_params, si, f_hat, rearrange(h, "b (h w) c -> b h w c", h=pn),
                               method=MultiScaleVQVAE.next_autoregressive_input)
        if si != k_scales - 1:
            x = run(VAR.embed_next, rearrange(nxt, "b h w c -> b (h w) c"), end)
            x = jnp.repeat(x, pairs, axis=0)  # the same tokens feed both CFG halves

    images = to_uint8(vae.apply(vae_params, f_hat, method=MultiScaleVQVAE.fhat_to_img), vae.VALUE_RANGE)
    logits_out = jnp.concatenate(all_logits, axis=1) if return_logits else None
    return SampleOutput(images, jnp.concatenate(tokens, axis=1), logits_out)


def scale_progression(vae: MultiScaleVQVAE, vae_params, tokens: jax.Array) -> jax.Array:
    """(B, K, H, W, 3) uint8: for each of the K scales, the image decoded from the tokens of that
    scale and all coarser ones, i.e. how a sample is refined from 1×1 tokens to the full grid.
    tokens: (B, L), all scales concatenated (`SampleOutput.tokens`). The last image is the
    sample's own (with `more_smooth`, whose last scale mixes codebook entries, close to it)."""
    spec = vae.spec
    f_hat = jnp.zeros((tokens.shape[0], spec.latent_size, spec.latent_size, vae.z_channels),
                      jnp.float32)
    images = []
    for si, (pn, (start, end)) in enumerate(zip(spec.patch_nums, spec.begin_ends)):
        h = vae.apply(vae_params, tokens[:, start:end], method=MultiScaleVQVAE.embed)
        f_hat, _ = vae.apply(vae_params, si, f_hat, rearrange(h, "b (h w) c -> b h w c", h=pn),
                             method=MultiScaleVQVAE.next_autoregressive_input)
        images.append(to_uint8(vae.apply(vae_params, f_hat, method=MultiScaleVQVAE.fhat_to_img),
                               vae.VALUE_RANGE))
    return jnp.stack(images, axis=1)


def _to_bfloat16(array):
    """A float array (or abstract array) as bfloat16; other dtypes as they are."""
    if not jnp.issubdtype(array.dtype, jnp.floating):
        return array
    if isinstance(array, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(array.shape, jnp.bfloat16)
    return array.astype(jnp.bfloat16)


class VARSampler(Sampler):
    """VAR's public sampling API: generation and zero-shot editing, one jitted `sample` per kind
    of call (params, batch sharding, label checks and the jit cache come from `Sampler`).

        sampler = VARSampler(var, vae, var_params, vae_params, SamplingSettings(cfg=4))
        out = sampler.generate([980, 437], seed=0)        # out.images: (2, 256, 256, 3) uint8
        out = sampler.inpaint(images, box=(0.1, 0.1, 0.8, 0.8))
    """

    def __init__(self, var: VAR, vae: MultiScaleVQVAE, var_params, vae_params,
                 settings: SamplingSettings = SamplingSettings(), mesh=None):
        super().__init__(var, vae, var_params, vae_params, settings, mesh)

    @property
    def image_size(self) -> int:
        return self.tokenizer.spec.latent_size * self.tokenizer.downsample

    def set_params(self, gen_params, tok_params) -> None:
        """As `Sampler.set_params`; with a bfloat16 VAR (`config.var.dtype`), its weights are kept
        in bfloat16 too (half the memory traffic; logits and sampling stay float32)."""
        if jnp.dtype(self.generator.dtype) == jnp.bfloat16:
            gen_params = jax.tree_util.tree_map(_to_bfloat16, gen_params)
        super().set_params(gen_params, tok_params)

    def _run(self, labels, seed: int, first_index: int, edit: EditGuide | None, return_logits: bool,
             lower: bool = False):
        n = len(labels)
        if edit is not None:
            edit = EditGuide([self._pad(g) for g in edit.gt_idx], [self._pad(k) for k in edit.keep])
        var, vae, settings = self.generator, self.tokenizer, self.settings

        def fn(var_params, vae_params, labels, seed, index, guide):
            return sample(var, vae, settings, var_params, vae_params, labels, seed, index, guide,
                          return_logits=return_logits)

        call = self._jit((edit is None, return_logits), fn)
        args = (self.gen_params, self.tok_params, self._pad(labels), jnp.uint32(seed),
                self._pad(self._sample_index(first_index, n)), edit)
        return call.lower(*args) if lower else self._unpad(call(*args), n)

    def _lower_generate(self, batch: int) -> jax.stages.Lowered:
        return self._run(np.full(batch, self.generator.num_classes, np.int32), 0, 0, None, False,
                         lower=True)

    def generate(self, labels, seed: int = 0, first_index: int = 0,
                 return_logits: bool = False) -> SampleOutput:
        """Images for class `labels`. Sample j uses global index first_index + j: a batch job
        passes its offset so that every image is reproducible on its own."""
        return self._run(self.check_labels(labels), seed, first_index, None, return_logits)

    def edit(self, images, keep_mask, labels=None, seed: int = 0, first_index: int = 0,
             return_logits: bool = False) -> SampleOutput:
        """Zero-shot editing (official `demo_zero_shot_edit.ipynb`): tokens of `images` are kept
        where `keep_mask` is 1 and generated elsewhere, conditioned on `labels` (default: the null
        class, i.e. plain in/out-painting; a class id gives class-conditional editing).

        images: (B, H, W, 3) uint8, or float in [−1, 1]. keep_mask: the last scale's token grid
        (h, h) or (B, h, h), or a pixel mask (H, W) / (B, H, W) (area-averaged to the grid).
        """
        images = self._image_batch(images)
        b = images.shape[0]
        labels = self._edit_labels(labels, b)
        gt = self.tokenizer.apply(self.tok_params, jnp.asarray(images, jnp.float32),
                                  method=MultiScaleVQVAE.img_to_idx)
        keep = scale_keep_masks(keep_mask, self.tokenizer.spec.patch_nums, b, self.image_size)
        return self._run(labels, seed, first_index, EditGuide([np.asarray(g) for g in gt], keep),
                         return_logits)

    def progression(self, tokens) -> np.ndarray:
        """(B, K, H, W, 3) uint8: the image after each of the K scales of `tokens` (B, L), e.g.
        `generate(...).tokens` (see `scale_progression`)."""
        tokens = np.asarray(tokens, np.int32)
        vae = self.tokenizer
        images = self._jit("progression", lambda p, t: scale_progression(vae, p, t))(
            self.tok_params, self._pad(tokens))
        return multihost.to_host(images)[:len(tokens)]

    def inpaint(self, images, box, labels=None, seed: int = 0) -> SampleOutput:
        """Regenerates the box (y0, x0, y1, x1), fractions of the image side; keeps the rest."""
        keep = box_mask(self.tokenizer.spec.latent_size, box, inpainting=True)
        return self.edit(images, keep, labels, seed)

    def outpaint(self, images, box, labels=None, seed: int = 0) -> SampleOutput:
        """Keeps the box (y0, x0, y1, x1) and regenerates everything around it."""
        keep = box_mask(self.tokenizer.spec.latent_size, box, inpainting=False)
        return self.edit(images, keep, labels, seed)
