"""Optimisers of the official recipes: AdamW with no-decay groups, the VAR learning-rate and
weight-decay schedules (official VAR `utils/lr_control.py`), progressive training, gradient
clipping, the BiGR EMA, and `Schedules`, which binds them to a config (both trainers use it).

Schedules are functions of the optimizer step; they run both on Python floats (host-side
logging, tests against the official formulas) and on traced ints inside the train step.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

# Substrings that put a VAR parameter in the no-decay group (the official trainer's `nowd_keys`);
# 1-D parameters and names ending in `bias` are not decayed either.
VAR_NO_DECAY_KEYS = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC",
                     "pos_start", "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias",
                     "scale_mul")
# Sub-trees whose parameters are stacked on a leading layer axis by `nn.scan`.
STACKED = {"var": ("blocks",), "bigr": ("layers",)}


def _param_ndim(path: tuple[str, ...], leaf, stacked: Iterable[str]) -> int:
    """The rank the parameter has in PyTorch (scan adds a leading layer axis)."""
    return leaf.ndim - (1 if any(p in stacked for p in path) else 0)


def decay_mask(params: Any, model: str) -> Any:
    """True where weight decay applies, following the official trainer of `model`.

    VAR (`filter_params` with its nowd keys): not 1-D, not a bias, no no-decay key in the name.
    BiGR (train_ddp.py): not 1-D, not a bias, not in the transcoder (`denoise_mlp`).
    """
    stacked = STACKED[model]
    flat = flatten_dict(params)
    mask = {}
    for path, leaf in flat.items():
        name = "/".join(path)
        decay = _param_ndim(path, leaf, stacked) > 1 and not path[-1].endswith("bias")
        if model == "var":
            decay = decay and not any(k in name for k in VAR_NO_DECAY_KEYS)
        else:
            decay = decay and "denoise_mlp" not in path
        mask[path] = decay
    return unflatten_dict(mask)


# ---- VAR schedules (`lr_wd_annealing`) -----------------------------------------------------
def _py_round(x: float) -> int:
    return round(x)  # Python's round-half-even, as the official `round(wp_it)`


def var_lr_ratio(it, *, schedule: str, max_it: int, wp_it: float, wp0: float = 0.005,
                 wpe: float = 0.01):
    """Multiplier of the peak learning rate at iteration `it` (float or traced int)."""
    wp_it = _py_round(wp_it)
    it = jnp.asarray(it, jnp.float32) if isinstance(it, jax.Array) else float(it)
    np_ = jnp if isinstance(it, jax.Array) else _PyMath
    warm = wp0 + (1 - wp0) * it / max(wp_it, 1)
    pasd = (it - wp_it) / (max_it - 1 - wp_it)
    rest = 1 - pasd
    if schedule == "cos":
        after = wpe + (1 - wpe) * (0.5 + 0.5 * np_.cos(math.pi * pasd))
    elif schedule == "lin00":
        after = wpe + (1 - wpe) * rest
    elif schedule in ("lin", "lin0"):
        t = 0.15 if schedule == "lin" else 0.05
        after = np_.where(pasd < t, 1.0, wpe + (1 - wpe) * rest / (1 - t))
    elif schedule.startswith("lin"):  # lin{T}: the progressive-training schedule
        t = float(schedule[3:])
        mid = (1 + wpe + (1 - wpe) * (1 - t)) / 2
        after = np_.where(pasd < t, 1 + (mid - 1) * pasd / t, wpe + (mid - wpe) * rest / (1 - t))
    elif schedule == "exp":
        t = 0.15
        after = np_.where(pasd < t, 1.0, np_.exp((pasd - t) / (1 - t) * math.log(wpe)))
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of 'lin0', "
                         "'lin', 'lin00', 'lin<T>', 'cos', 'exp'")
    return np_.where(it < wp_it, warm, after)


def var_weight_decay(it, *, max_it: int, wd: float, wd_end: float):
    """Cosine from `wd` at iteration 0 to `wd_end` at the last iteration."""
    np_ = jnp if isinstance(it, jax.Array) else _PyMath
    pasd = it / (max_it - 1)
    return wd_end + (wd - wd_end) * (0.5 + 0.5 * np_.cos(math.pi * pasd))


class _PyMath:
    """The few numpy-like functions the schedules use, on Python floats (float64 like the
    official code)."""
    cos = staticmethod(math.cos)
    exp = staticmethod(math.exp)

    @staticmethod
    def where(cond, a, b):
        return a if cond else b


# ---- progressive training (official VAR `train.py`, `trainer.py`) -------------------------
def progressive_stage(it: int, *, pg: float, pg0: int, num_scales: int, max_it: int,
                      wp_it: float) -> int:
    """Stage index: the last scale trained at iteration `it` (num_scales − 1 = the full model)."""
    if not pg:
        return num_scales - 1
    if it <= wp_it:
        return pg0
    if it >= max_it * pg:
        return num_scales - 1
    progress = min(max((it - wp_it) / (max_it * pg - wp_it), 0), 1)
    return pg0 + round(progress * (num_scales - 1 - pg0))


def progressive_weight(it: int, *, pg: float, pg0: int, num_scales: int, max_it: int,
                       wp_it: float, stage_warmup_it: float) -> float:
    """`prog_wp`, the loss weight of the newest scale: ramps from 0.01 to 1 over
    `stage_warmup_it` iterations after each stage change, except in the first stage.

    The official trainer counts iterations since the stage changed in its state; the count is a
    pure function of `it` because the stage never decreases, so resuming needs no extra state.
    """
    kw = dict(pg=pg, pg0=pg0, num_scales=num_scales, max_it=max_it, wp_it=wp_it)
    stage = progressive_stage(it, **kw)
    if stage == progressive_stage(0, **kw):
        return 1.0
    lo, hi = 0, it  # the stage never decreases: bisect for the first step of this stage
    while lo < hi:
        mid = (lo + hi) // 2
        if progressive_stage(mid, **kw) < stage:
            lo = mid + 1
        else:
            hi = mid
    return max(min((it - lo + 1) / stage_warmup_it, 1), 0.01)


# ---- the optimizer -------------------------------------------------------------------------
def adamw(*, learning_rate, weight_decay, mask, b1: float, b2: float, eps: float = 1e-8,
          clip: float = 0.0) -> optax.GradientTransformation:
    """torch.optim.AdamW (decoupled decay, `p ← p − lr·(adam + wd·p)`) after clipping the
    global gradient norm at `clip` (≤ 0: no clipping). `learning_rate` and `weight_decay` may be
    schedules of the step."""
    return optax.chain(
        optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """`ema ← decay·ema + (1 − decay)·params` (DiT's update_ema, as BiGR uses it)."""
    # incremental_update(a, b, t) = t·a + (1 − t)·b. Given (ema, params, decay) it evaluates the
    # expression above term for term; (params, ema, 1 − decay) would differ in the last bit on
    # CPU (XLA fuses one product into a multiply-add, and which one depends on the order).
    return optax.incremental_update(ema, params, step_size=decay)


# ---- a config's schedules (host side) -------------------------------------------------------
def steps_per_epoch(config: ml_collections.ConfigDict, dataset_size: int) -> int:
    return max(dataset_size // config.train.batch_size, 1)


def total_steps(config: ml_collections.ConfigDict, dataset_size: int) -> int:
    t = config.train
    return int(t.steps) if t.steps > 0 else int(t.epochs * steps_per_epoch(config, dataset_size))


def peak_lr(config: ml_collections.ConfigDict) -> float:
    t = config.train
    return t.lr if t.lr > 0 else t.tblr * t.batch_size / 256


class Schedules:
    """Learning rate, weight decay and progressive-training stage as functions of the step."""

    def __init__(self, config: ml_collections.ConfigDict, dataset_size: int):
        t = config.train
        self.max_it = total_steps(config, dataset_size)
        per_epoch = steps_per_epoch(config, dataset_size)
        epochs = self.max_it / per_epoch
        self.wp_it = (t.warmup_epochs or epochs / 50) * per_epoch
        self.peak = peak_lr(config)
        self.schedule = f"lin{t.pg:g}" if t.pg > 0 else t.schedule
        self.wd, self.wd_end = t.twd, (t.twde or t.twd)
        self.wp0, self.wpe = t.wp0, t.wpe
        self.num_scales = len(config.var.patch_nums) if config.model == "var" else 1
        self.pg, self.pg0 = t.pg, t.pg0
        self.stage_warmup_it = (t.pgwp or epochs / 300) * per_epoch

    def lr(self, it):
        if self.schedule == "constant":
            return jnp.float32(self.peak) if isinstance(it, jax.Array) else self.peak
        return self.peak * var_lr_ratio(it, schedule=self.schedule, max_it=self.max_it,
                                        wp_it=self.wp_it, wp0=self.wp0, wpe=self.wpe)

    def weight_decay(self, it):
        return var_weight_decay(it, max_it=self.max_it, wd=self.wd, wd_end=self.wd_end)

    def stage(self, it: int) -> tuple[int, float]:
        """(progressive stage, prog_wp) at step `it`; (K − 1, 1.0) without progressive training."""
        kw = dict(pg=self.pg, pg0=self.pg0, num_scales=self.num_scales, max_it=self.max_it,
                  wp_it=self.wp_it)
        if not self.pg:
            return self.num_scales - 1, 1.0
        return (progressive_stage(it, **kw),
                progressive_weight(it, stage_warmup_it=self.stage_warmup_it, **kw))
