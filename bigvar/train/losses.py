"""Training objectives of the generators, as pure functions of (params, batch, rng).

VAR (official `trainer.py`, `VARTrainer.train_step`): the frozen VQ-VAE turns images into 10
index maps, the transformer predicts every map from the coarser ones (teacher forcing),
cross-entropy over all tokens.
BiGR (official `llama/gpt.py`, `Transformer.forward`, and `llama/bindiff/binarylatent.py`): the
frozen B-AE gives Bernoulli bits, a cosine number of tokens is masked, the transcoder predicts
which bits of a noised token flipped; the weighted BCE is averaged over the masked tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bigvar.models.bigr import BiGR
from bigvar.models.bigr_schedules import DIFFUSION_STEPS, bigr_mask_count, noised_probability
from bigvar.models.var import VAR
from bigvar.tokenizers.bae import BinaryAutoEncoder, bernoulli_bits, to_tokens
from bigvar.tokenizers.msvq import MultiScaleVQVAE


def var_tokens(tokenizer: MultiScaleVQVAE, tok_params, images):
    """Frozen tokenisation in float32: (targets (B, L) ids, teacher-forcing input (B, L − 1, Cvae))."""
    idx = tokenizer.apply(tok_params, images.astype(jnp.float32), method=MultiScaleVQVAE.img_to_idx)
    x_in = tokenizer.apply(tok_params, idx, method=MultiScaleVQVAE.idx_to_var_input)
    b = images.shape[0]
    targets = jnp.concatenate([i.reshape(b, -1) for i in idx], axis=1)
    return jax.lax.stop_gradient(targets), jax.lax.stop_gradient(x_in)


def var_token_weights(patch_nums, stage: int, prog_wp) -> jax.Array:
    """Per-position loss weights 1/L, cropped to the stage's end; during progressive training
    (stage < K − 1) the newest scale's positions are scaled by `prog_wp`."""
    ends = [sum(p * p for p in patch_nums[:i + 1]) for i in range(len(patch_nums))]
    total, end = ends[-1], ends[stage]
    begin = ends[stage - 1] if stage > 0 else 0
    w = jnp.full((end,), 1.0 / total, jnp.float32)
    if stage < len(patch_nums) - 1:
        w = w.at[begin:end].multiply(jnp.clip(prog_wp, 0.0, 1.0))
    return w


def var_loss(generator: VAR, tokenizer: MultiScaleVQVAE, gen_params, tok_params, batch, rng, *,
             stage: int, prog_wp, label_smoothing: float = 0.0):
    """→ (loss, metrics). `stage` (static) is the progressive-training stage, K − 1 = full."""
    targets, x_in = var_tokens(tokenizer, tok_params, batch["image"])
    end = sum(p * p for p in generator.patch_nums[:stage + 1])
    targets, x_in = targets[:, :end], x_in[:, :end - generator.first_l]
    logits = generator.apply(gen_params, batch["label"], x_in, train=True, rngs={"dropout": rng})
    return var_loss_from_logits(logits, targets, generator.patch_nums, stage=stage, prog_wp=prog_wp,
                                label_smoothing=label_smoothing)


def var_loss_from_logits(logits, targets, patch_nums, *, stage: int, prog_wp,
                         label_smoothing: float = 0.0):
    """Cross-entropy (optionally label-smoothed) weighted 1/L per token, summed over positions,
    averaged over the batch; metrics Lm/Accm over all tokens, Lt/Acct over the last scale (full
    model only), as the official trainer logs them."""
    vocab = logits.shape[-1]
    logits = logits.astype(jnp.float32)
    one_hot = jax.nn.one_hot(targets, vocab, dtype=jnp.float32)
    soft = one_hot * (1.0 - label_smoothing) + label_smoothing / vocab
    ce = optax.softmax_cross_entropy(logits, soft)  # (B, ℓ)
    loss = jnp.mean(jnp.sum(ce * var_token_weights(patch_nums, stage, prog_wp), axis=-1))

    plain_ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    metrics = {"loss": loss, "Lm": jnp.mean(plain_ce), "Accm": 100 * jnp.mean(correct)}
    if stage == len(patch_nums) - 1:  # the last scale is only trained in the full model
        last = patch_nums[-1] ** 2
        metrics.update(Lt=jnp.mean(plain_ce[:, -last:]), Acct=100 * jnp.mean(correct[:, -last:]))
    return loss, metrics


# ---- BiGR -----------------------------------------------------------------------------------
def bigr_random_mask(rng, batch: int, num_tokens: int):
    """One count m per batch (discretised cosine), then m random positions per sample."""
    k_count, k_pos = jax.random.split(rng)
    m = bigr_mask_count(jax.random.randint(k_count, (), 0, num_tokens), num_tokens)
    noise = jax.random.uniform(k_pos, (batch, num_tokens))
    ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
    return ranks < m


def bigr_noise(rng, x0, diffusion_steps: int = DIFFUSION_STEPS):
    """Per token t ~ U{1..T} and x_t ~ Bernoulli(k_t·x0 + b_t), k_t = 1 − t/T, b_t = t/2T."""
    k_t, k_x = jax.random.split(rng)
    t = jax.random.randint(k_t, x0.shape[:-1], 1, diffusion_steps + 1)
    x_t = bernoulli_bits(k_x, noised_probability(x0, t, diffusion_steps))
    return t, x_t


def bigr_flip_loss(logits, x0, x_t, mask):
    """Weighted BCE on flip targets (focal loss with α = −1, γ = 0), masked mean over tokens
    and bits: w = (1 − r)·y + r·(1 − y) + 1/K with r the token's flipped fraction."""
    y = jnp.abs(x0 - x_t)  # x0 ⊕ x_t
    k = y.shape[-1]
    r = jnp.mean(y, axis=-1, keepdims=True)
    w = (1 - r) * y + r * (1 - y) + 1.0 / k
    per_bit = w * optax.sigmoid_binary_cross_entropy(logits, y)
    m = mask.astype(jnp.float32)[..., None]
    return jnp.sum(per_bit * m) / (k * jnp.sum(m))


def bigr_loss(generator: BiGR, tokenizer: BinaryAutoEncoder, gen_params, tok_params, batch, rng,
              **_):
    """→ (loss, metrics)."""
    k_bits, k_mask, k_noise, k_drop = jax.random.split(rng, 4)
    images = batch["image"].astype(jnp.float32)
    probs = tokenizer.apply(tok_params, images, method=BinaryAutoEncoder.encode_probs)
    x0 = jax.lax.stop_gradient(to_tokens(bernoulli_bits(k_bits, probs)))
    mask = bigr_random_mask(k_mask, x0.shape[0], x0.shape[1])
    t, x_t = bigr_noise(k_noise, x0)
    _, logits = generator.apply(gen_params, x0, mask, batch["label"], x_t, t - 1, train=True,
                                rngs={"dropout": k_drop})
    loss = bigr_flip_loss(logits, x0, x_t, mask)
    x0_logit = jnp.where(x_t > 0.5, -logits, logits)  # flip logits → logits of x0 = 1
    acc = jnp.mean(((x0_logit > 0) == (x0 > 0.5)).astype(jnp.float32))
    return loss, {"loss": loss, "acc": 100 * acc,
                  "masked": jnp.mean(mask.astype(jnp.float32))}
