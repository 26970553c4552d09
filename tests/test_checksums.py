"""The two ways of checksumming an array (NumPy on the host, XLA on the devices) agree bit for
bit, so a checkpoint written from device arrays verifies when read back as host arrays, on any
mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bigvar import checksums


def _tree():
    rng = np.random.default_rng(0)
    return {"f32": rng.standard_normal((37, 5)).astype(np.float32),
            "bf16": rng.standard_normal((7, 3)).astype(jnp.bfloat16),
            "f16": rng.standard_normal((4, 3)).astype(np.float16),
            "i32": rng.integers(-9, 9, (3, 4, 5)).astype(np.int32),
            "i64": rng.integers(-9, 9, (6,)),  # 4-byte on device unless x64 is on
            "u8": rng.integers(0, 255, (11,)).astype(np.uint8),
            "bool": np.array([True, False, True]),
            "scalar": np.float32(3.5), "empty": np.zeros((0, 3), np.float32)}


def _device_sums(tree):
    sums = jax.device_get(checksums.device_checksums(jax.tree.map(jnp.asarray, tree)))
    return {k: f"{int(v[0]):08x}{int(v[1]):08x}" for k, v in sums.items()}


@pytest.mark.parametrize("chunk", [3, 1 << 22])
def test_host_path_equals_device_path(monkeypatch, chunk):
    monkeypatch.setattr(checksums, "_HOST_CHUNK", chunk)  # small chunks: the position carries over
    tree = _tree()
    assert checksums.array_checksums(tree) == _device_sums(tree)


def test_sharded_array_and_key_match_the_device_path():
    x = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    key = jax.random.key(7)
    found = checksums.array_checksums({"x": sharded, "key": key})
    assert found == _device_sums({"x": x, "key": jax.random.key_data(key)})
    assert found["x"] == checksums.array_checksums({"x": x})["x"]


def test_a_flipped_bit_and_swapped_values_change_the_sum():
    x = np.arange(12, dtype=np.float32)
    flipped = x.copy()
    flipped.view(np.uint32)[5] ^= 1 << 9
    swapped = x.copy()
    swapped[[2, 3]] = swapped[[3, 2]]
    sums = [checksums.array_checksums({"x": a})["x"] for a in (x, flipped, swapped)]
    assert len(set(sums)) == 3
    assert sums[0][:8] == sums[2][:8]  # the plain sum cannot see a swap; the weighted one does
