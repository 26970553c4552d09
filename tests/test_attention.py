"""`bigvar.nn.layers.attention`: the fused-kernel choices fall back to XLA's attention where they
cannot run, with the same outputs."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    layers._warn_cudnn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING):
        auto = layers.attention(q, k, v, scale=0.25, mask=mask, impl="auto")
        assert "cudnn" not in caplog.text  # auto falls back silently
        cudnn = [layers.attention(q, k, v, scale=0.25, mask=mask, impl="cudnn") for _ in range(3)]
    assert caplog.text.count("attn_impl='cudnn' needs a GPU and bfloat16/float16") == 1
    for out in (auto, *cudnn):
        np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(xla, np.float32))


def test_unknown_attention_is_an_error():
    q, k, v, _ = _inputs(jnp.float32)
    with pytest.raises(ValueError, match="attention impl 'flash' is not one of"):
        layers.attention(q, k, v, scale=1.0, impl="flash")
