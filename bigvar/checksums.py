"""Checksums of arrays that do not depend on how they are sharded: two uint32 sums per array,
computed on the devices (or with NumPy for arrays already on the host, which spares an XLA
compile per tree). Stored with every checkpoint and weights folder and verified when
they are read; also the digest of the weights a resumable result (sample parts, features) was
made with."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_HOST_CHUNK = 1 << 22  # words per NumPy step: bounds the uint64 temporaries at 32 MiB


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


def _host_words(x) -> np.ndarray:
    """`_words` with NumPy, flattened: the same words in the same order (little-endian hosts)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = np.asarray(x)
    # what the device path would see: without x64, 8-byte values become 4-byte ones on device
    x = np.ascontiguousarray(x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False))
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[x.dtype.itemsize]
    return x.reshape(-1).view(unsigned)


def _host_checksums(x) -> tuple[int, int]:
    """`device_checksums` of one host array, in chunks of uint64 arithmetic reduced mod 2**32."""
    words = _host_words(x)
    total = weighted = 0
    for start in range(0, words.size, _HOST_CHUNK):
        chunk = words[start:start + _HOST_CHUNK].astype(np.uint64)
        position = np.arange(start, start + chunk.size, dtype=np.uint64)
        weight = (2 * position + 1) & 0xFFFFFFFF
        total += int(chunk.sum())
        weighted += int(((chunk * weight) & 0xFFFFFFFF).sum())
    return total % 2**32, weighted % 2**32


def _on_host(x) -> bool:
    """NumPy arrays and scalars, and JAX arrays this process holds entirely on CPU devices."""
    if isinstance(x, (np.ndarray, np.generic, int, float, bool)):
        return True
    return (isinstance(x, jax.Array) and x.is_fully_addressable
            and all(d.platform == "cpu" for d in x.sharding.device_set))


def array_checksums(state: Any) -> dict[str, str]:
    """{array path: 16 hex digits} of a pytree of arrays."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    on_device = [x for _, x in flat if not _on_host(x)]
    device_sums = iter(jax.device_get(device_checksums(on_device)) if on_device else [])
    found = {}
    for path, x in flat:
        a, b = _host_checksums(x) if _on_host(x) else map(int, next(device_sums))
        found[path_name(path)] = f"{a:08x}{b:08x}"
    return found
