"""The train state both trainers share, and the end of every train step.

A state is a dict {step, params, opt_state[, ema]} to which a trainer may add its own entries
(the tokenizer trainer: the discriminator and the code-usage EMA). A step computes gradients
its own way, then ends the same way in both trainers: `apply_gradients` (the optimizer update
and the global gradient norm) and `finish_step` (the EMA, then the whole new state is kept only
when the loss and the gradient norm are finite).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from bigvar.train import optim


def new_state(params: Any, tx: optax.GradientTransformation, ema_decay: float) -> dict:
    """The state at step 0; the EMA, when kept, starts as a copy of `params`."""
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if ema_decay > 0:
        state["ema"] = jax.tree_util.tree_map(jnp.copy, params)
    return state


def abstract_state(make_state: Callable[[jax.Array], Any], shardings: Any) -> Any:
    """The state `make_state(key)` builds, as ShapeDtypeStructs carrying `shardings` (the restore
    target of a checkpoint; the planner's input)."""
    shapes = jax.eval_shape(make_state, jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def apply_gradients(state: dict, grads: Any, tx: optax.GradientTransformation):
    """(new params, new optimizer state, global gradient norm) after one update with `grads`."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return optax.apply_updates(state["params"], updates), opt_state, grad_norm


def finish_step(state: dict, new: dict, *, loss, grad_norm, ema_decay: float):
    """(the state after the step, finite): `new` with its EMA moved towards `new["params"]`, or
    `state` unchanged when the loss or the gradient norm is not finite, so that what the host
    saves is always the last good state."""
    if ema_decay > 0:
        new = dict(new, ema=optim.ema_update(state["ema"], new["params"], ema_decay))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jax.lax.cond(finite, lambda: new, lambda: state), finite


def shown_params(state: dict) -> Any:
    """The params to sample from, evaluate and export: the EMA when one is kept."""
    return state.get("ema", state["params"])
