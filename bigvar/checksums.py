"""Checksums of arrays that do not depend on how they are sharded: two uint32 sums per array,
computed on the devices. Stored with every checkpoint and weights folder and verified when
they are read; also the digest of the weights a resumable result (sample parts, features) was
made with."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def path_name(path) -> str:
    """A pytree leaf's key path as `a/b/0`."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (one per element; 8-byte elements add a trailing 2)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def device_checksums(state):
    """Two uint32 sums per array: of its words and of its words weighted by (2·position + 1), so a
    flipped bit and a moved word both show. Integer sums wrap exactly, so the result does not
    depend on the sharding or the reduction order: a checkpoint verifies on any mesh."""
    def one(x):
        words = _words(x)
        position = jnp.zeros(words.shape, jnp.uint32)
        stride = 1
        for axis in reversed(range(words.ndim)):
            position = position + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride)
            stride = stride * words.shape[axis] % 2**32
        return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                          jnp.sum(words * (2 * position + 1), dtype=jnp.uint32)])
    return jax.tree_util.tree_map(one, state)


def array_checksums(state: Any) -> dict[str, str]:
    """{array path: 16 hex digits} of a pytree of arrays."""
    sums = jax.device_get(device_checksums(state))
    flat = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {path_name(path): f"{int(v[0]):08x}{int(v[1]):08x}" for path, v in flat}
