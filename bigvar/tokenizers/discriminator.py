"""PatchGAN discriminator and adversarial-loss pieces for VQGAN-style tokenizer training, NHWC.

The network is taming-transformers' `NLayerDiscriminator` (pix2pix PatchGAN) with BatchNorm, which
BinaryLatentDiffusion's `BinaryGAN` (`models/binaryae.py`, B-AE recipe) and LlamaGen's tokenizer
training use unchanged. Layer names mirror the official `main.<i>` Sequential indices (`main_0`,
`main_2`, `main_3`, …; the LeakyReLUs hold the odd/skipped indices), so a converter is a table.

BatchNorm follows torch's `BatchNorm2d`, not `flax.linen.BatchNorm`:
- train=True normalises with the biased batch variance and updates the running variance with the
  *unbiased* one (n/(n−1)); momentum 0.1 in torch's convention (new = 0.9·old + 0.1·batch), eps 1e-5.
  Running stats live in the `batch_stats` collection (`mean`, `var`): call
  `apply(..., train=True, mutable=["batch_stats"])` and keep the returned state.
- The batch statistics are over the whole (global) batch given to `apply`. torch DDP without SyncBN
  (what BLD, taming and LlamaGen run) uses per-GPU statistics; with a sharded batch under jit this
  module uses the global batch instead.
- Like the official losses, call D separately on the real and on the fake batch (two sets of batch
  statistics, two running-stat updates); concatenating them changes the statistics.

The official trainers always run D in train mode, also inside the generator step (so the fake batch's
statistics are used and the running stats are updated there too); eval mode is for validation only.

Three recipes differ in details a trainer must get right (see each function's docstring):

| | taming VQGAN | BLD BinaryGAN (BiGR B-AE) | LlamaGen VQ |
|---|---|---|---|
| D init | `weights_init` (N(0,.02)) | torch default (never calls weights_init) | N(0,.02) in `__init__` |
| images fed to D | [−1, 1] | [0, 1] (ToTensor, no Normalize); optional DiffAugment | [−1, 1] |
| adaptive λ | clip(r, 0, 1e4)·disc_weight | clip(r, 0, disc_weight_max=1) | off by default (λ=1); if on clip(r, 0, 1e4) |
| G loss adv term | λ·disc_factor·g | λ·adopt_weight(1, step, start)·g | λ·disc_weight(0.5)·factor·g |
| G adv term from | step ≥ disc_start | step ≥ disc_start_step | train_steps+1 ≥ disc_start |
| D step | every step, hinge × disc_factor | only when step > disc_start_step (strict), plain hinge | every step, hinge × disc_weight(0.5)·factor |

(r = ‖∇L_rec‖ / (‖∇L_G‖ + 1e-4) at the last decoder conv's kernel; all three compute λ even before the
start step, where it is multiplied by 0.)
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
LEAKY_SLOPE = 0.2


# --------------------------------------------------------------------------------------------- #
# initialisers (torch conventions)
# --------------------------------------------------------------------------------------------- #

# Each draw (incl. its scaling) is one jitted program per shape: eagerly, a draw plus a multiply and
# an add would be three compilations, which add up on a CPU.
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _normal_draw(key, shape, dtype, mean, std):
    return mean + std * jax.random.normal(key, shape, dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _uniform_draw(key, shape, dtype, bound):
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _normal(mean: float, std: float):
    def init(key, shape, dtype=jnp.float32):
        return _normal_draw(key, tuple(shape), jnp.dtype(dtype), mean, std)
    return init


def _torch_default_uniform(fan_in: int):
    """torch's default Conv2d init for both weight (kaiming_uniform, a=√5) and bias:
    U(−1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return _uniform_draw(key, tuple(shape), jnp.dtype(dtype), bound)
    return init


# --------------------------------------------------------------------------------------------- #
# modules
# --------------------------------------------------------------------------------------------- #

class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d over the channel (last) axis; statistics and output in fp32."""
    momentum: float = 0.1      # torch convention: weight of the new batch statistics
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", _normal(1.0, 0.02), (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x = x.astype(jnp.float32)
        if train:
            n = x.size // c
            if n < 2:
                raise ValueError(
                    f"BatchNorm in train mode needs more than one value per channel; got input of "
                    f"shape {x.shape}. Use a larger batch or image, or train=False.")
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)          # biased: used to normalise
            if not self.is_initializing():
                m = self.momentum
                unbiased = jax.lax.stop_gradient(var) * (n / (n - 1))
                ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def _conv(features: int, fan_in: int, stride: int, use_bias: bool, dtype, name: str) -> nn.Conv:
    return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                   use_bias=use_bias, precision=HIGHEST, dtype=dtype,
                   kernel_init=_normal(0.0, 0.02), bias_init=_torch_default_uniform(fan_in),
                   name=name)


def layer_plan(ndf: int, n_layers: int, in_channels: int = 3) -> list[tuple[int, int, int, int, bool]]:
    """(official Sequential index, in channels, out channels, stride, followed by BatchNorm) of each
    conv, in order. The BatchNorm after conv `i` is `main_{i+1}`."""
    plan = [(0, in_channels, ndf, 2, False)]
    idx, mult = 2, 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2 ** n, 8)
        plan.append((idx, ndf * prev, ndf * mult, 2, True))
        idx += 3
    prev, mult = mult, min(2 ** n_layers, 8)
    plan.append((idx, ndf * prev, ndf * mult, 1, True))
    plan.append((idx + 3, ndf * mult, 1, 1, False))
    return plan


def output_size(size: int, n_layers: int) -> int:
    """Side of the logit map for an input side `size`: n_layers stride-2 4×4 convs (pad 1) halve it
    (floor), the two stride-1 4×4 convs (pad 1) each take one off."""
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1
    return size - 2


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator (BatchNorm variant). x: (B, H, W, in_channels) → patch logits
    (B, h, w, 1) in fp32; for n_layers=3, 256 px gives 30×30 and 32 px gives 2×2."""
    ndf: int = 64
    n_layers: int = 3
    in_channels: int = 3
    dtype: Any = jnp.float32      # conv compute dtype; BatchNorm and the logits are fp32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.ndf < 1 or self.n_layers < 1:
            raise ValueError(f"PatchDiscriminator needs ndf ≥ 1 and n_layers ≥ 1, got ndf={self.ndf}, "
                             f"n_layers={self.n_layers}.")
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"PatchDiscriminator expects NHWC images with {self.in_channels} channels, "
                             f"got shape {x.shape} (NCHW input must be transposed first).")
        h, w = output_size(x.shape[1], self.n_layers), output_size(x.shape[2], self.n_layers)
        if h < 1 or w < 1:
            raise ValueError(f"Images of {x.shape[1]}×{x.shape[2]} are too small for a {self.n_layers}-layer "
                             f"PatchDiscriminator (the logit map would be {h}×{w}); use at least "
                             f"{2 ** self.n_layers * 3}×{2 ** self.n_layers * 3} or fewer layers.")
        plan = layer_plan(self.ndf, self.n_layers, self.in_channels)
        for k, (idx, cin, cout, stride, bn) in enumerate(plan):
            last = k == len(plan) - 1
            x = _conv(cout, cin * 16, stride, not bn, self.dtype, f"main_{idx}")(x.astype(self.dtype))
            if bn:
                x = BatchNorm(name=f"main_{idx + 1}")(x, train)
            if not last:
                x = nn.leaky_relu(x, LEAKY_SLOPE)
        return x.astype(jnp.float32)


def discriminator_init(params: Mapping[str, Any], key: jax.Array, scheme: str = "taming") -> dict:
    """Re-draws a PatchDiscriminator param tree (the `params` collection) like the official code.

    scheme="taming": taming's `weights_init` (also LlamaGen's `_init_weights`): conv kernels
      N(0, 0.02), BatchNorm scale N(1, 0.02), BatchNorm bias 0. It leaves conv biases (first and last
      conv) at torch's default U(±1/√fan_in), so they are drawn that way here. This is also what
      `PatchDiscriminator.init` gives.
    scheme="torch_default": what BLD's BinaryGAN gets (it never calls weights_init): conv kernels and
      biases U(±1/√fan_in) with fan_in = in_channels·16, BatchNorm scale 1, bias 0.
    """
    if scheme not in ("taming", "torch_default"):
        raise ValueError(f"discriminator_init: unknown scheme {scheme!r}; use 'taming' or 'torch_default'.")
    if "params" in params and not any(k.startswith("main_") for k in params):
        raise ValueError("discriminator_init takes the `params` collection, e.g. variables['params'], "
                         "not the whole variables dict.")
    names = sorted(params, key=lambda n: int(n.split("_")[-1]) if n.split("_")[-1].isdigit() else -1)
    keys = jax.random.split(key, max(len(names), 1))
    out = {}
    for name, k in zip(names, keys):
        leaves = params[name]
        kw, kb = jax.random.split(k)
        if "kernel" in leaves:                               # conv (HWIO)
            kernel = leaves["kernel"]
            fan_in = math.prod(kernel.shape[:3])
            new = {"kernel": (_normal(0.0, 0.02) if scheme == "taming" else _torch_default_uniform(fan_in))(
                kw, kernel.shape, kernel.dtype)}
            if "bias" in leaves:
                new["bias"] = _torch_default_uniform(fan_in)(kb, leaves["bias"].shape, leaves["bias"].dtype)
        elif "scale" in leaves:                              # BatchNorm
            s = leaves["scale"]
            new = {"scale": _normal(1.0, 0.02)(kw, s.shape, s.dtype) if scheme == "taming"
                   else jnp.ones(s.shape, s.dtype),
                   "bias": jnp.zeros_like(leaves["bias"])}
        else:
            raise ValueError(f"discriminator_init: {name!r} with leaves {sorted(leaves)} is neither a conv "
                             "nor a BatchNorm; is this a PatchDiscriminator param tree?")
        if set(new) != set(leaves):
            raise ValueError(f"discriminator_init: unexpected leaves {sorted(leaves)} in {name!r}.")
        out[name] = new
    return out


# --------------------------------------------------------------------------------------------- #
# losses
# --------------------------------------------------------------------------------------------- #

def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5·(mean relu(1 − D(x)) + mean relu(1 + D(x̂))), the default of all three recipes."""
    real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
    return 0.5 * (real + fake)


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """taming's / LlamaGen's `vanilla_d_loss`: 0.5·(mean softplus(−D(x)) + mean softplus(D(x̂)))."""
    real = jnp.mean(jax.nn.softplus(-logits_real.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.softplus(logits_fake.astype(jnp.float32)))
    return 0.5 * (real + fake)


def generator_adv_loss(logits_fake: jax.Array) -> jax.Array:
    """−mean D(x̂) (taming's and BLD's `g_loss`, LlamaGen's `hinge_gen_loss`)."""
    return -jnp.mean(logits_fake.astype(jnp.float32))


def disc_factor(step, start_step: int, factor: float = 1.0) -> jax.Array:
    """taming's `adopt_weight(factor, step, threshold=start_step)`: 0 while step < start_step, `factor`
    from start_step on (≥). Works on traced steps.

    Which step the official trainers pass: taming Lightning's global_step; LlamaGen train_steps+1
    (so its term starts one iteration earlier in 0-based counting); BLD its loop step, but BLD
    applies this only to the generator's adversarial term and trains D only when step > start_step.
    """
    return jnp.where(jnp.asarray(step) >= start_step, jnp.float32(factor), jnp.float32(0.0))


def _global_norm(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def adaptive_weight(rec_grad, adv_grad, max_weight: float, disc_weight: float = 1.0) -> jax.Array:
    """VQGAN's adaptive adversarial weight λ = clip(‖g_rec‖ / (‖g_adv‖ + 1e-4), 0, max_weight)·disc_weight,
    without gradient. g_rec, g_adv: gradients of the reconstruction (nll) loss and of
    `generator_adv_loss` w.r.t. the last decoder conv's kernel (arrays or pytrees: Frobenius/global norm).

    taming (`VQLPIPSWithDiscriminator`): max_weight=1e4, disc_weight=its `disc_weight` (multiplied
      after the clamp).
    LlamaGen (`disc_adaptive_weight=True`): max_weight=1e4, disc_weight=1 (its `disc_weight` multiplies
      the term outside, together with the start factor: the same product).
    BLD BinaryGAN (BiGR's B-AE): max_weight=`disc_weight_max` (1.0), disc_weight=1.
    """
    ratio = _global_norm(rec_grad) / (_global_norm(adv_grad) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight) * disc_weight)


# --------------------------------------------------------------------------------------------- #
# the last-layer gradients without two full backward passes
# --------------------------------------------------------------------------------------------- #

def conv2d(h: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 1) -> jax.Array:
    """The bias-free part of flax `nn.Conv(..., padding=padding, strides=stride, precision=HIGHEST)`:
    h (B, H, W, Cin), kernel (kh, kw, Cin, Cout) → (B, H', W', Cout). Use
    `functools.partial(conv2d, padding=1)` as `conv_fn` for a 3×3 "same" conv."""
    return jax.lax.conv_general_dilated(
        h, kernel, (stride, stride), ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)


def last_layer_grads(conv_fn: Callable[[jax.Array, jax.Array], jax.Array], h: jax.Array,
                     kernel: jax.Array, cotangents: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """Kernel gradients of several losses through the last conv, from one linearisation.

    conv_fn(h, kernel) is the last layer without its bias (its output y feeds the losses; the bias
    does not change the kernel gradient); h is that layer's input (stop-gradient is fine) and
    `cotangents` are dL_i/dy for each loss L_i. Returns (dL_i/dkernel for each i) — exactly the
    `torch.autograd.grad(L_i, last_layer)` the official adaptive weight uses.

    How a trainer avoids two full backward passes: get y = x̂ and h from the decoder forward; take the
    cotangents dL_rec/dx̂ and dL_G/dx̂ (backward through LPIPS and D only); λ = adaptive_weight(
    *last_layer_grads(conv_fn, h, kernel, (ct_rec, ct_g)), ...); then one backward through the
    decoder with the cotangent ct_rec + λ·disc_factor·ct_g (λ carries no gradient).
    """
    y, vjp = jax.vjp(lambda k: conv_fn(h, k), kernel)
    for ct in cotangents:
        if ct.shape != y.shape:
            raise ValueError(f"last_layer_grads: cotangent of shape {ct.shape} does not match the conv "
                             f"output {y.shape}.")
    return tuple(vjp(ct.astype(y.dtype))[0] for ct in cotangents)
