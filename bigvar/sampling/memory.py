"""How much memory sampling needs per device, and the largest batch that fits: the sampling
job's `sample.batch_size=0` and `python -m bigvar.plan --sample`.

The bytes are XLA's own buffer assignment of the compiled sampler (its temporaries and outputs,
beyond the weights), at two batch sizes; sampling memory is close to linear in the batch (VAR's
KV cache and logits, BiGR's token states, the decoder's activations), so the line through them
gives the largest batch for the memory a device has free.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax

from bigvar import parallel

GIB = 2 ** 30
# XLA's buffer assignment is one compile's estimate; the runtime and fragmentation want room too.
MEMORY_HEADROOM = 0.85
# Per-device batch sizes the sampling estimate compiles at: the bytes are a line through both.
SAMPLING_PROBES = (8, 16)


def free_device_memory() -> int:
    """Bytes free on this process's first device: its allocator's limit minus what is in use
    (GPU, TPU); on the CPU, the host's available memory shared by the CPU devices."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    return available // len(jax.local_devices())


def sampling_memory(sampler) -> tuple[float, float]:
    """(fixed, per_image): bytes one device needs to `generate` a batch, beyond the weights it
    holds, as fixed + per_image × (images per device). The line goes through two compiled batch
    sizes (`SAMPLING_PROBES`); nothing runs. Sampling memory is close to linear in the batch:
    VAR's KV cache and logits, BiGR's token states, the decoder's activations."""
    shards = parallel.data_parallel_size(sampler.mesh)
    small, large = SAMPLING_PROBES
    at_small, at_large = (sampler.generate_bytes(n * shards) for n in SAMPLING_PROBES)
    per_image = max(at_large - at_small, 1) / (large - small)
    return max(at_small - small * per_image, 0.0), per_image


def largest_batch(fixed: float, per_image: float, budget: float, cap: int) -> int:
    """The most images per device whose bytes, fixed + per_image × n, fit `budget`; at most
    `cap`, and below it a multiple of 8 from 8 up (whole tensor-core tiles). 0: none fits."""
    fits = int((budget - fixed) // per_image) if budget > fixed else 0
    if fits >= cap:
        return cap
    return fits - fits % 8 if fits >= 8 else fits


class BatchPlan(NamedTuple):
    per_device: int     # images per device: the largest that fits (0: none)
    fixed: float        # bytes per device for any batch, beyond the weights
    per_image: float    # bytes per device for each image it makes
    free: float         # bytes free per device beside the weights (before the headroom)


def plan_batch(sampler, cap: int, memory_gib: float = 0.0) -> BatchPlan:
    """The largest per-device batch (at most `cap`) that `sampler.generate` fits in this
    process's devices: in what they have free beside the sampler's weights, or, with
    `memory_gib`, in that many GiB per device less the weights."""
    fixed, per_image = sampling_memory(sampler)
    free = memory_gib * GIB - weight_bytes(sampler) if memory_gib else free_device_memory()
    return BatchPlan(largest_batch(fixed, per_image, MEMORY_HEADROOM * free, cap), fixed,
                     per_image, free)


def weight_bytes(sampler) -> int:
    """Bytes of the sampler's weights on each device (they are replicated); abstract ones too."""
    leaves = jax.tree_util.tree_leaves((sampler.gen_params, sampler.tok_params))
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in leaves)
