"""`bigvar.nn.layers.attention`: the fused-kernel choices fall back to XLA's attention where they
cannot run, with the same outputs."""
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvar import parallel
from bigvar.models.var import block_causal_mask
from bigvar.nn import layers


def _inputs(dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (2, 30, 4, 16), jnp.float32).astype(dtype) for key in keys)
    return q, k, v, jnp.asarray(block_causal_mask((1, 2, 3, 4)))


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN runs on a GPU: no fallback")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cudnn_and_auto_fall_back_to_xla_with_identical_outputs(dtype, caplog):
    q, k, v, mask = _inputs(dtype)
    xla = layers.attention(q, k, v, scale=0.25, mask=mask, impl="xla")
    layers._warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING):
        auto = layers.attention(q, k, v, scale=0.25, mask=mask, impl="auto")
        assert "cudnn" not in caplog.text  # auto falls back silently
        cudnn = [layers.attention(q, k, v, scale=0.25, mask=mask, impl="cudnn") for _ in range(3)]
    assert caplog.text.count("attn_impl='cudnn' needs a GPU and bfloat16/float16") == 1
    assert "splash" not in caplog.text
    for out in (auto, *cudnn):
        np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(xla, np.float32))


def test_unknown_attention_is_an_error():
    q, k, v, _ = _inputs(jnp.float32)
    with pytest.raises(ValueError, match="attention impl 'flash' is not one of"):
        layers.attention(q, k, v, scale=1.0, impl="flash")


def _splash_inputs(length: int, batch: int = 2, heads: int = 2, seed: int = 0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return tuple(jax.random.normal(key, (batch, length, heads, 64), jnp.float32) for key in keys)


def _loss(attend):
    """A scalar of the attention output that weights every output coordinate differently."""
    return lambda q, k, v: jnp.sum(attend(q, k, v) * jnp.cos(jnp.arange(q.shape[-1])))


@pytest.mark.parametrize("patch_nums", [(1, 2, 3, 4, 5, 6, 8, 10), None])
def test_splash_attention_kernel_matches_xla_forward_and_gradients(patch_nums):
    """The Pallas kernel in interpret mode (its TPU code path, run on the CPU): VAR's block-causal
    mask over 255 tokens (padded to 256) and BiGR's full attention, values and q/k/v gradients."""
    mask = None if patch_nums is None else block_causal_mask(patch_nums)
    q, k, v = _splash_inputs(255 if mask is not None else 200)
    splash = functools.partial(layers.splash_attention, scale=0.125, mask=mask, interpret=True)
    xla = functools.partial(layers.attention, scale=0.125, mask=mask, impl="xla")
    np.testing.assert_allclose(jax.jit(splash)(q, k, v), xla(q, k, v), atol=2e-6, rtol=1e-5)
    grads = jax.jit(jax.grad(_loss(splash), argnums=(0, 1, 2)))(q, k, v)
    reference = jax.grad(_loss(xla), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads, reference):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_splash_attention_runs_per_device_under_the_trainers_mesh():
    """Under the trainer's abstract mesh the kernel runs per device (shard_map over batch rows
    and heads) and gives the unsharded result."""
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    mask = block_causal_mask((1, 2, 3, 4, 5, 6, 8, 10))
    q, k, v = _splash_inputs(255, batch=4, heads=2, seed=1)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor"))
    q, k, v = (jax.device_put(x, sharding) for x in (q, k, v))

    def sharded(q, k, v):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return layers.splash_attention(q, k, v, scale=0.125, mask=mask, interpret=True)
    out = jax.jit(sharded)(q, k, v)
    assert "shard_map" in str(jax.make_jaxpr(sharded)(q, k, v))
    np.testing.assert_allclose(out, layers.attention(q, k, v, scale=0.125, mask=mask), atol=2e-6,
                               rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="splash runs on a TPU: no fallback")
def test_splash_falls_back_to_xla_off_tpu(caplog):
    q, k, v, mask = _inputs(jnp.float32)
    layers._warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING):
        out = layers.attention(q, k, v, scale=0.25, mask=np.asarray(mask), impl="splash")
    assert "attn_impl='splash' needs a TPU" in caplog.text
    np.testing.assert_array_equal(out, layers.attention(q, k, v, scale=0.25, mask=mask))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["var", "bigr"])
def test_models_with_splash_attention_match_xla_in_outputs_and_gradients(model, monkeypatch):
    """The kernel inside the models: VAR's block-causal mask reaches it as a constant (the
    teacher-forced sequence of 255 tokens), BiGR attends fully (1 + 256 tokens). The outputs and
    the weights' gradients match the XLA path."""
    from bigvar import config_lib, models
    from bigvar.models.bigr import BiGR
    config = config_lib.load_config_file(f"{model}_tiny.py")
    if model == "var":
        config.var.patch_nums = (1, 2, 3, 4, 5, 6, 8, 10)
    else:
        config.bae.img_size, config.bigr.seq_len = 256, 256
    monkeypatch.setattr(layers, "SPLASH_INTERPRET_OFF_TPU", True)
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    labels = jnp.asarray([1, 2])

    def forward(impl):
        config[model].attn_impl = impl
        generator, tokenizer = models.build(config)
        params = models.init_params(generator, tokenizer, seed=0)[0]
        if model == "var":
            x_in = jax.random.normal(keys[0], (2, generator.seq_len - 1, generator.cvae))
            apply = lambda p: generator.apply(p, labels, x_in)  # noqa: E731
        else:
            shape = (2, generator.seq_len, generator.binary_size)
            tokens = jax.random.bernoulli(keys[0], 0.5, shape).astype(jnp.float32)
            mask = jax.random.bernoulli(keys[1], 0.5, shape[:2])
            cond = generator.apply(params, labels, method=BiGR.class_embedding)
            apply = lambda p: generator.apply(p, tokens, cond, mask,  # noqa: E731
                                              method=BiGR.hidden_states)
        assert ("pallas_call" in str(jax.make_jaxpr(apply)(params))) == (impl == "splash")
        out = apply(params)
        weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
        grads = jax.grad(lambda p: jnp.sum(apply(p) * weights))(params)
        return out, grads

    (out_xla, grads_xla), (out_splash, grads_splash) = forward("xla"), forward("splash")
    np.testing.assert_allclose(out_splash, out_xla, atol=2e-5, rtol=1e-4)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads_splash),
                                 jax.tree_util.tree_leaves(grads_xla)):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_var_sampler_with_splash_attention_matches_xla(monkeypatch):
    """The cached sampler on 8 devices: its 13×13 and 16×16 scales (≥ 128 queries) take the
    kernel, per device; the logits of every scale match the XLA path's."""
    from bigvar import config_lib, models
    from bigvar.sampling.var import SamplingSettings, VARSampler
    monkeypatch.setattr(layers, "SPLASH_INTERPRET_OFF_TPU", True)
    traced_lengths = []  # the query lengths the kernel was traced for

    def splash_attention(q, *args, **kwargs):
        traced_lengths.append(q.shape[1])
        return kernel(q, *args, **kwargs)
    kernel = layers.splash_attention
    monkeypatch.setattr(layers, "splash_attention", splash_attention)
    config = config_lib.load_config_file("var_tiny.py")
    outputs = []
    for impl in ("xla", "splash"):
        config.var.attn_impl = impl
        var, vae = models.build(config)
        sampler = VARSampler(var, vae, *models.init_params(var, vae, seed=0),
                             SamplingSettings(cfg=1.5, top_k=1, top_p=0.0))
        outputs.append(sampler.generate(list(range(8)), seed=0, return_logits=True))
    # (680: the teacher-forced forward that initialises the weights)
    assert len(jax.devices()) == 8 and set(traced_lengths) == {13 * 13, 16 * 16, 680}
    np.testing.assert_array_equal(outputs[1].tokens, outputs[0].tokens)
    np.testing.assert_allclose(outputs[1].logits, outputs[0].logits, atol=1e-4, rtol=1e-4)
