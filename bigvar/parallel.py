"""Device mesh from config, and batch placement.

The mesh axes are (`data`, `fsdp`, `tensor`); `-1` in `config.mesh` fills with the remaining
devices. Axis types are Auto: GSPMD-style sharding annotations, the same code on one CPU, the 8
fake test devices and a pod.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis → mesh axes (MaxText style), the default `config.axis_rules`. Params are sharded
# FSDP over `fsdp` on their `embed` axis and tensor-parallel over `tensor` on the wide axes;
# batches over data × fsdp. A mesh axis that does not divide a dimension is dropped for that
# parameter (replicated).
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("adaln", "tensor"),
    ("vocab", "tensor"),
    ("embed_out", None),
    ("mlp_out", None),
    ("classes", None),
    ("seq", None),
    ("layers", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
)


def mesh_shape(spec: dict, num_devices: int) -> tuple[int, ...]:
    sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"config.mesh {dict(spec)}: only one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise ValueError(f"config.mesh {dict(spec)} does not divide the {num_devices} devices")
    if fills:
        sizes[fills[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh {dict(spec)} uses {math.prod(sizes)} devices but "
                         f"{num_devices} are present; set one axis to -1 to fill")
    return tuple(sizes)


def make_mesh(spec: dict | None = None, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(spec or {"data": -1}, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def batch_spec() -> P:
    """Batches are split over every data-parallel axis."""
    return P(("data", "fsdp"))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, batch_spec())


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pads the leading axis by repeating the last row (static shapes for a ragged last batch)."""
    pad = -len(x) % multiple
    return x if pad == 0 else np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])


# ---- parameter sharding from logical axis names -------------------------------------------
def _divisible_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops mesh axes that do not divide their dimension (e.g. 1001 class rows over 2 devices):
    that dimension is replicated instead of failing to place."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def logical_shardings(boxed_tree, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree of flax LogicallyPartitioned boxes (abstract or concrete), via
    the logical → mesh `rules`; unannotated leaves are replicated."""
    from flax import linen as nn
    logical = nn.get_partition_spec(boxed_tree)
    unboxed = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), boxed_tree,
                                     is_leaf=lambda x: hasattr(x, "value"))
    mesh_specs = nn.logical_to_mesh(logical, rules)
    return jax.tree_util.tree_map(
        lambda spec, leaf: NamedSharding(mesh, _divisible_spec(spec, leaf.shape, mesh)),
        mesh_specs, unboxed, is_leaf=lambda x: isinstance(x, P))


def shardings_by_path(tree, reference: dict, mesh: Mesh):
    """Shardings for a tree whose sub-trees mirror parameters (optimizer moments, EMA): a leaf
    takes the sharding of the parameter whose dict path is the longest suffix of its own dict
    path with the same shape; anything else (step counters, ...) is replicated."""
    from flax.traverse_util import flatten_dict
    by_path = flatten_dict(reference)
    longest = max((len(p) for p in by_path), default=0)

    def pick(path, leaf):
        names = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for n in range(min(len(names), longest), 0, -1):
            sharding = by_path.get(names[-n:])
            if sharding is not None and len(sharding.spec) <= leaf.ndim:
                return sharding
        return replicated(mesh)
    return jax.tree_util.tree_map_with_path(pick, tree)


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Global arrays, sharded over data × fsdp, from this process's slice of the batch."""
    sharding = batch_sharding(mesh)
    def place(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)
    return jax.tree_util.tree_map(place, local)
