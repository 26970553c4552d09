"""What the VAR and BiGR samplers share: per-sample random keys, label checks, batch placement."""
from __future__ import annotations

import jax
import numpy as np

from bigvar import parallel


def per_sample_keys(seed: jax.Array, sample_index: jax.Array) -> jax.Array:
    """Key of each sample from (seed, global sample index) only: batch- and device-independent."""
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(sample_index)


def check_labels(labels, num_classes: int) -> np.ndarray:
    """Class ids as int32 (B,), each in [0, num_classes] (num_classes is the null class)."""
    labels = np.asarray(labels, np.int32).reshape(-1)
    bad = labels[(labels < 0) | (labels > num_classes)]
    if bad.size:
        raise ValueError(f"class ids must be in [0, {num_classes}) or {num_classes} (the null "
                         f"class, unconditional); got {sorted(set(bad.tolist()))}")
    return labels


class MeshPlacement:
    """Puts params on every device and batches split over the data axes, padded to a multiple
    of their size (the padding rows repeat the last one and are dropped from the outputs)."""

    def __init__(self, mesh=None):
        self.mesh = mesh if mesh is not None else parallel.make_mesh({"data": -1})
        self._replicated = parallel.replicated(self.mesh)
        self._batch = parallel.batch_sharding(self.mesh)
        self._multiple = parallel.data_parallel_size(self.mesh)

    def replicate(self, tree):
        return jax.device_put(tree, self._replicated)

    def batch(self, x):
        return jax.device_put(parallel.pad_to_multiple(np.asarray(x), self._multiple), self._batch)
