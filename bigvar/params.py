"""Model parameters for a job: build the (generator, tokenizer) pair of a config, initialise them
randomly, describe their shapes without computing anything, or load them from a weights
directory written by `bigvar.convert` (checked against the config first)."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections

from bigvar import checkpoint, configs, parallel
from bigvar.errors import UserError
from bigvar.models.bigr import BiGR
from bigvar.models.var import VAR
from bigvar.utils import run_init, unbox

# Top-level keys of a weights directory, per model: (generator, tokenizer).
WEIGHT_KEYS = {"var": ("var", "vae"), "bigr": ("bigr", "bae")}


def build_models(config: ml_collections.ConfigDict):
    if config.model == "bigr":
        return configs.build_bigr(config), configs.build_bae(config)
    return configs.build_var(config), configs.build_vae(config)


def init_fns(generator, tokenizer):
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


def init_params(generator, tokenizer, seed: int):
    """Random (generator params, tokenizer params), unboxed."""
    gen_init, tok_init = init_fns(generator, tokenizer)
    tok = run_init(tok_init, jax.random.PRNGKey(seed))
    gen = run_init(gen_init, jax.random.PRNGKey(seed + 1))
    return unbox(gen), unbox(tok)


def param_shapes(generator, tokenizer):
    """(generator, tokenizer) params as ShapeDtypeStructs."""
    gen_init, tok_init = init_fns(generator, tokenizer)
    key = jax.random.PRNGKey(0)
    return unbox(jax.eval_shape(gen_init, key)), unbox(jax.eval_shape(tok_init, key))


def load_params(config: ml_collections.ConfigDict, generator, tokenizer, mesh):
    """Params from `config.init_from`, replicated on the mesh, or random ones for smoke tests."""
    gen_key, tok_key = WEIGHT_KEYS[config.model]
    if config.init_from:
        configs.check_architecture(config, checkpoint.load_config(config.init_from),
                                   f"--config.init_from={config.init_from}")
        shapes = dict(zip((gen_key, tok_key), param_shapes(generator, tokenizer)))
        target = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), shapes)
        params = checkpoint.load_weights(config.init_from, target)
        return params[gen_key], params[tok_key]
    if not config.allow_random_init:
        example = ("python -m bigvar.convert bigr --bae=binaryae_ema_1000000.th --gpt=bigr_L_d24.pt --out=DIR"
                   if config.model == "bigr" else
                   "python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d16.pth --out=DIR")
        raise UserError(f"no weights: set --config.init_from=DIR to a directory written by `{example}` "
                         "(or --config.allow_random_init=True for a smoke test with random weights)")
    logging.warning("sampling from RANDOM weights (config.allow_random_init): images are noise")
    return jax.device_put(init_params(generator, tokenizer, config.seed), parallel.replicated(mesh))

