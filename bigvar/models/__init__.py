"""The generators and their tokenizers, built from a job config: each config section holds the
module's own fields, so a model is `Module(**config.section)`.

    generator, tokenizer = models.build(config)         # VAR + VQ-VAE, or BiGR + B-AE
    gen_params, tok_params = models.init_params(generator, tokenizer, seed=0)
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigvar.models.bigr import BiGR
from bigvar.models.var import VAR
from bigvar.tokenizers.bae import BinaryAutoEncoder
from bigvar.tokenizers.msvq import MultiScaleVQVAE

# Per generator: its config section and its tokenizer's (also the keys of a weights directory).
SECTIONS = {"var": ("var", "vae"), "bigr": ("bigr", "bae")}
# Per tokenizer model (a tokenizer-training config's `model`): its config section.
TOKENIZER_SECTIONS = {"vqvae": "vae", "bae": "bae"}


def build_tokenizer(config: ml_collections.ConfigDict) -> nn.Module:
    """The VQ-VAE of a VAR or `vqvae` config (scales from `var.patch_nums` or `vae.patch_nums`),
    or the B-AE of a BiGR or `bae` config."""
    if config.model in ("bigr", "bae"):
        return BinaryAutoEncoder(**config.bae)
    if "var" in config:
        return MultiScaleVQVAE(patch_nums=tuple(config.var.patch_nums), **config.vae)
    return MultiScaleVQVAE(**config.vae)


def build(config: ml_collections.ConfigDict) -> tuple[nn.Module, nn.Module]:
    """(generator, tokenizer) of a VAR or BiGR config."""
    tokenizer = build_tokenizer(config)
    if config.model == "bigr":
        return BiGR(**config.bigr), tokenizer
    return VAR(vocab_size=config.vae.vocab_size, cvae=config.vae.z_channels, **config.var), tokenizer


def run_init(init_fn: Callable, *args, out_shardings: Any = None) -> Any:
    """Runs a flax `init` compiled without backend optimisation.

    An init is run once and is cheap to execute, but XLA's optimising CPU backend spends ~30 s on
    the hundreds of small RNG kernels of a VQ-VAE init; level 0 compiles them ~5× faster.
    """
    jitted = jax.jit(init_fn) if out_shardings is None else jax.jit(init_fn, out_shardings=out_shardings)
    lowered = jitted.lower(*args)
    try:
        compiled = lowered.compile({"xla_backend_optimization_level": 0})
    except Exception:  # an XLA build without the option: the default compile is still correct
        compiled = lowered.compile()
    return compiled(*args)


def init_fns(generator: nn.Module, tokenizer: nn.Module):
    """(generator init, tokenizer init) as functions of a key, on dummy inputs: parameters do not
    depend on batch or image size, so the tokenizer sees one downsample×downsample image."""
    tiny_image = jnp.zeros((1, tokenizer.downsample, tokenizer.downsample, 3))
    if isinstance(generator, BiGR):
        n, k = generator.seq_len, generator.binary_size
        gen_args = (jnp.zeros((1, n, k)), jnp.zeros((1, n), bool), jnp.zeros((1,), jnp.int32),
                    jnp.zeros((1, n, k)), jnp.zeros((1, n), jnp.int32))
    elif isinstance(generator, VAR):
        gen_args = (jnp.zeros((1,), jnp.int32),
                    jnp.zeros((1, generator.seq_len - generator.first_l, tokenizer.z_channels)))
    else:
        raise TypeError(f"unknown generator {type(generator).__name__}")
    return (lambda key: generator.init(key, *gen_args, train=False),
            lambda key: tokenizer.init(key, tiny_image))


def init_params(generator: nn.Module, tokenizer: nn.Module, seed: int):
    """Random (generator params, tokenizer params), unboxed."""
    gen_init, tok_init = init_fns(generator, tokenizer)
    tok = run_init(tok_init, jax.random.PRNGKey(seed))
    gen = run_init(gen_init, jax.random.PRNGKey(seed + 1))
    return nn.unbox(gen), nn.unbox(tok)


def param_shapes(generator: nn.Module, tokenizer: nn.Module):
    """(generator, tokenizer) params as ShapeDtypeStructs, computing nothing."""
    gen_init, tok_init = init_fns(generator, tokenizer)
    key = jax.random.PRNGKey(0)
    return nn.unbox(jax.eval_shape(gen_init, key)), nn.unbox(jax.eval_shape(tok_init, key))
