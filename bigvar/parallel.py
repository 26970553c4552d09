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
