"""FID, sFID, Inception Score, Precision and Recall, computed as OpenAI's ADM evaluator
(guided-diffusion `evaluations/evaluator.py`) computes them, on Inception features
(`bigvar.eval.inception`).

- Statistics (FID on `pool`, sFID on `spatial`): mean and covariance. The sums run on device,
  sharded over every device (`shard_map` + `psum`), batch by batch around a fixed shift (the first
  batch's mean) so float32 sums do not cancel; batches are added in float64 on the host.
  `np.cov`'s (n − 1) normalisation.
- Fréchet distance: on the host in float64, `scipy.linalg.sqrtm` of Σ₁Σ₂, with ADM's fallback
  (add 1e-6·I to both when the root is not finite) and its check of the imaginary part.
- Inception Score: softmax of `logits` (pool @ W, no bias), splits of 5000 in order, the last one
  shorter; exp of the mean KL, averaged over splits; float32 as ADM. One difference: a probability
  that underflows to 0 contributes 0·log 0 = 0 (ADM's formula would give NaN).
- Precision / Recall (Kynkäänniemi et al., ADM's `ManifoldEstimator`, k = 3): the radius of a
  point is its squared distance to its 4th nearest point of its own set, itself included (i.e.
  the 3rd neighbour); precision = share of samples within some reference radius, recall = share
  of references within some sample radius (`<=`). Squared distances are computed as ADM's
  evaluator computes them on a CPU, rounding included: ‖u‖² − 2u·v + ‖v‖² in float16 with
  TensorFlow's float16 row sums (float32 where float16 overflows), the reference on the rows.
  Each device takes its block of rows against all columns.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from scipy import linalg

from bigvar import multihost, parallel

IS_SPLIT = 5000
NEIGHBOURHOOD = 3
_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Mean and covariance of a feature set (float64)."""
    mu: np.ndarray
    sigma: np.ndarray


def frechet_distance(a: Statistics, b: Statistics, eps: float = 1e-6) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), as ADM's `FIDStatistics.frechet_distance`."""
    mu1, mu2 = np.atleast_1d(a.mu), np.atleast_1d(b.mu)
    sigma1, sigma2 = np.atleast_2d(a.sigma), np.atleast_2d(b.sigma)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"the two feature statistics differ in size ({mu1.shape} vs {mu2.shape}): "
                         "were they made with the same network and feature?")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov "
                      "estimates")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the matrix square root has an imaginary component "
                             f"{np.max(np.abs(covmean.imag))}: too few images for the feature size?")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ---- moments, sharded -------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _moment_fn(mesh):
    def per_device(x, valid, shift):
        centred = (x - shift) * valid[:, None]
        total = jnp.sum(centred, axis=0)
        outer = jnp.dot(centred.T, centred, precision=jax.lax.Precision.HIGHEST)
        return jax.lax.psum(total, _AXES), jax.lax.psum(outer, _AXES)
    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(_AXES), P(_AXES), P()),
                                 out_specs=(P(), P()), check_vma=False))


class MomentAccumulator:
    """Streaming mean and covariance: `add(batch)` for each feature batch, then `statistics()`."""

    def __init__(self, mesh=None):
        self.mesh = mesh if mesh is not None else parallel.make_mesh()
        self.count, self.shift, self.total, self.outer = 0, None, None, None

    def add(self, features: np.ndarray) -> None:
        features = np.asarray(features, np.float32)
        if len(features) == 0:
            return
        if self.shift is None:
            self.shift = features.mean(axis=0)
            d = features.shape[1]
            self.total, self.outer = np.zeros(d), np.zeros((d, d))
        x, valid = _pad_rows(features, parallel.data_parallel_size(self.mesh))
        total, outer = _moment_fn(self.mesh)(x, valid, self.shift)
        self.count += len(features)
        self.total += multihost.to_host(total).astype(np.float64)
        self.outer += multihost.to_host(outer).astype(np.float64)

    def statistics(self) -> Statistics:
        if self.count < 2:
            raise ValueError(f"statistics need at least 2 feature vectors, got {self.count}")
        mean_offset = self.total / self.count
        sigma = (self.outer - self.count * np.outer(mean_offset, mean_offset)) / (self.count - 1)
        return Statistics(self.shift.astype(np.float64) + mean_offset, sigma)


def statistics(features: np.ndarray, mesh=None, batch_size: int = 10_000) -> Statistics:
    acc = MomentAccumulator(mesh)
    for start in range(0, len(features), batch_size):
        acc.add(features[start:start + batch_size])
    return acc.statistics()


def _pad_rows(x: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    pad = -len(x) % multiple
    valid = np.ones(len(x) + pad, np.float32)
    if pad:
        valid[len(x):] = 0
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    return x, valid


# ---- Inception Score --------------------------------------------------------------------------
@jax.jit
def _softmax(logits):
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT) -> float:
    """ADM's Inception Score of the (N, 1008) logits (pool @ W, no bias)."""
    preds = np.asarray(_softmax(np.asarray(logits, np.float32)))
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.where(part > 0, kl, np.float32(0))  # 0·log 0 = 0, where ADM's formula gives NaN
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


# ---- precision and recall ---------------------------------------------------------------------
# ADM's distance block casts the features to float16 and computes ‖u‖² − 2u·vᵀ + ‖v‖² with every
# op in float16 on TensorFlow. The float16 row sums ‖u‖² are not "sum, then round": TF's CPU kernel
# is Eigen's tree reduction over 8-lane half packets, each packet add rounded. Radii sit in a
# narrow band in high dimensions, so this rounding moves precision/recall by ~1 % (measured with
# the evaluator on fixed features): we reproduce it, on the host, exactly.
_PACKET, _LEAF = 8, 200  # Eigen's half packet size on x86 and its tree-reduction leaf (in packets)


def _half_add(a, b):
    return (np.asarray(a, np.float32) + np.asarray(b, np.float32)).astype(np.float16)


def _half_leaf_sums(x: np.ndarray) -> np.ndarray:
    """Row sums of a leaf: 4 packet accumulators over 32-wide strides, combined
    ((p0 + p1) + p2) + p3, the remaining whole packets into p0, the leftover scalars one by one,
    plus the float32 sum of p0's lanes rounded to half."""
    rows, n = x.shape
    p = _PACKET
    acc = np.zeros((4, rows, p), np.float16)
    stride = (n // (4 * p)) * 4 * p
    for j in range(0, stride, 4 * p):
        for q in range(4):
            acc[q] = _half_add(acc[q], x[:, j + q * p:j + (q + 1) * p])
    p0 = _half_add(_half_add(_half_add(acc[0], acc[1]), acc[2]), acc[3]) if stride else acc[0]
    whole = (n // p) * p
    for j in range(stride, whole, p):
        p0 = _half_add(p0, x[:, j:j + p])
    tail = np.zeros(rows, np.float16)
    for j in range(whole, n):
        tail = _half_add(tail, x[:, j])
    return _half_add(tail, p0.astype(np.float32).sum(axis=1).astype(np.float16))


def half_row_sums(x: np.ndarray) -> np.ndarray:
    """TensorFlow-CPU `reduce_sum(x, axis=1)` of a float16 (N, D) array, bit for bit: while a
    range is longer than 8·200, it splits at the packet-aligned middle of its ABSOLUTE flat index
    and adds the halves in half precision; leaves as `_half_leaf_sums`."""
    x = np.asarray(x, np.float16)
    n = x.shape[1]
    out = np.zeros(len(x), np.float16)

    def reduce(rows, lo, start, count):  # lo: the range's flat index (mod 8), start: its column
        if count > _PACKET * _LEAF:
            left = _PACKET * -(-(lo + -(-count // 2)) // _PACKET) - lo
            return _half_add(reduce(rows, lo, start, left),
                             reduce(rows, lo + left, start + left, count - left))
        return _half_leaf_sums(x[rows, start:start + count])

    # The split points depend on where a row starts modulo the packet size. Sums beyond float16
    # become inf, as in TF (the distance block then falls back to float32).
    with np.errstate(over="ignore"):
        for phase in range(_PACKET):
            rows = np.nonzero((np.arange(len(x)) * n) % _PACKET == phase)[0]
            if len(rows):
                out[rows] = reduce(rows, phase, 0, n)
    return out


def half_squared_norms(features: np.ndarray) -> np.ndarray:
    """‖x‖² of each row as ADM's distance block computes it: squares rounded to float16, summed
    by `half_row_sums`; float16."""
    x16 = np.asarray(features, np.float32).astype(np.float16)
    return half_row_sums((x16.astype(np.float32) ** 2).astype(np.float16))


def squared_distances(u, v, u_norms, v_norms):
    """ADM's pairwise block: (‖u‖² − 2u·vᵀ) + ‖v‖², clipped at 0, each op rounded to float16
    (the dot product accumulated in float32 and rounded once, as TF's CPU kernel does); if any
    entry overflows float16, the whole block in float32. Returns float32 (rows of u × rows of v).
    `u_norms`, `v_norms`: `half_squared_norms` of the rows."""
    f16, f32 = jnp.float16, jnp.float32
    mm = jnp.dot(u.astype(f16), v.astype(f16).T, preferred_element_type=f32).astype(f16)
    d = (u_norms.astype(f32)[:, None] - 2 * mm.astype(f32)).astype(f16)
    d = (d.astype(f32) + v_norms.astype(f32)[None, :]).astype(f16)
    d16 = jnp.maximum(d, f16(0))

    def exact():
        nu = jnp.sum(jnp.square(u), axis=1)[:, None]
        nv = jnp.sum(jnp.square(v), axis=1)[None, :]
        return jnp.maximum(nu - 2 * jnp.dot(u, v.T, precision=jax.lax.Precision.HIGHEST) + nv, 0)
    return jax.lax.cond(jnp.all(jnp.isfinite(d16)), lambda: d16.astype(f32), exact)


def _row_blocks(per_row, rows, mesh, block: int, *replicated):
    """Runs `per_row(row_block, *replicated)` over blocks of `block` rows, the rows (an array or a
    tuple of arrays with the same leading size) sharded over the devices and the `replicated`
    arrays whole on every device; returns the per-row results (padding removed)."""
    rows = rows if isinstance(rows, tuple) else (rows,)
    shards = parallel.data_parallel_size(mesh)
    n = len(rows[0])
    block = max(1, min(block, -(-n // shards)))
    padded = tuple(_pad_rows(r, shards * block)[0] for r in rows)

    def per_device(local, *rest):
        blocks = tuple(x.reshape((-1, block) + x.shape[1:]) for x in local)
        out = jax.lax.map(lambda b: per_row(b if len(b) > 1 else b[0], *rest), blocks)
        return out.reshape((-1,) + out.shape[2:])

    fn = jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=((P(_AXES),) * len(rows),) + (P(),) * len(replicated),
                               out_specs=P(_AXES), check_vma=False))
    return multihost.to_host(fn(padded, *replicated))[:n]


def manifold_radii(features: np.ndarray, mesh=None, k: int = NEIGHBOURHOOD,
                   row_block: int = 1024) -> np.ndarray:
    """(N,) squared distance of each point to its k-th nearest neighbour in the same set (the
    (k+1)-th smallest distance of its row, itself included)."""
    features = np.asarray(features, np.float32)
    if len(features) <= k:
        raise ValueError(f"precision/recall need more than k={k} images per set (the radius is the "
                         f"distance to the {k}th nearest neighbour); got {len(features)}")
    mesh = mesh if mesh is not None else parallel.make_mesh()
    norms = half_squared_norms(features)

    def radius(rows, cols, col_norms):
        row_x, row_norms = rows
        nearest = -jax.lax.top_k(-squared_distances(row_x, cols, row_norms, col_norms), k + 1)[0]
        return nearest[:, k]
    return _row_blocks(radius, (features, norms), mesh, row_block, features, norms)


def precision_recall(ref: np.ndarray, ref_radii: np.ndarray, sample: np.ndarray,
                     sample_radii: np.ndarray, mesh=None, row_block: int = 1024) -> tuple[float, float]:
    """(precision, recall) of `sample` against `ref` (ADM's `evaluate_pr` on pool features)."""
    mesh = mesh if mesh is not None else parallel.make_mesh()
    ref, sample = np.asarray(ref, np.float32), np.asarray(sample, np.float32)
    ref_radii, sample_radii = (np.asarray(r, np.float32).reshape(-1) for r in (ref_radii, sample_radii))
    ref_norms, sample_norms = half_squared_norms(ref), half_squared_norms(sample)

    def sample_inside_ref(rows, ref_all, ref_all_norms, radii):  # the reference on the rows, as ADM
        x, norms = rows
        d = squared_distances(ref_all, x, ref_all_norms, norms)
        return jnp.any(d <= radii[:, None], axis=0)

    def ref_inside_sample(rows, sample_all, sample_all_norms, radii):
        x, norms = rows
        d = squared_distances(x, sample_all, norms, sample_all_norms)
        return jnp.any(d <= radii[None, :], axis=1)

    inside_ref = _row_blocks(sample_inside_ref, (sample, sample_norms), mesh, row_block,
                             ref, ref_norms, ref_radii)
    inside_sample = _row_blocks(ref_inside_sample, (ref, ref_norms), mesh, row_block,
                                sample, sample_norms, sample_radii)
    return (float(np.mean(inside_ref.astype(np.float64))),
            float(np.mean(inside_sample.astype(np.float64))))
