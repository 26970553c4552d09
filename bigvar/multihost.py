"""What the jobs need to behave on several processes (one per host) as on one.

Every process runs the same program (SPMD): jitted calls are collective, so every process must
make the same calls in the same order, and decisions that steer them (which batches are done, is
the run directory usable) must be the same everywhere. The rules the jobs follow:
  - the chief (process 0) writes the files every process shares; the others write only files of
    their own (e.g. the PNGs of the images their devices made);
  - a decision is made by the chief and broadcast (`chief_decides`), errors included, so that a
    user error stops every process with the same message instead of leaving the others waiting
    in a collective;
  - arrays that span several processes come back to the host with `to_host` (all processes
    call it; each gets the whole array).
With one process all of this is free: no collectives, no barriers.
"""
from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

import jax
import numpy as np

from bigvar.errors import UserError

T = TypeVar("T")


def is_chief() -> bool:
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier: returns once every process got here (names must match across processes)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"bigvar: {name}")


def to_host(x: jax.Array | np.ndarray) -> np.ndarray:
    """The whole array as NumPy, also when its shards live on other processes' devices (then a
    collective: every process must call it)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def broadcast_json(value: Any) -> Any:
    """The chief's JSON-able `value` on every process (the others' `value` is ignored)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_chief() else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size)))
    padded = np.zeros(size, np.uint8)
    padded[:data.size] = data
    return json.loads(bytes(multihost_utils.broadcast_one_to_all(padded)).decode())


def gather_json(value: Any) -> list:
    """Every process's JSON-able `value`, in process order, on every process."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int64(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:size]).decode()) for row, size in zip(rows, sizes)]


def chief_decides(decide: Callable[[], T]) -> T:
    """Runs `decide()` on the chief and returns its JSON-able result on every process; a
    `UserError` it raises is raised on every process with the same message."""
    if jax.process_count() == 1:
        return decide()
    outcome, error = None, None
    if is_chief():
        try:
            outcome = {"value": decide()}
        except UserError as e:
            outcome, error = {"error": str(e)}, e
    outcome = broadcast_json(outcome)
    if error is not None:
        raise error
    if "error" in outcome:
        raise UserError(outcome["error"])
    return outcome["value"]


def require_agreement(values: dict, what: str) -> None:
    """Raises the same `UserError` on every process when the processes' flat JSON-able `values`
    differ (processes started with different flags would train one model on two recipes and
    record only process 0's), naming each differing field with every process's value."""
    if jax.process_count() == 1:
        return
    every = [{k: json.dumps(v, sort_keys=True) for k, v in e.items()} for e in gather_json(values)]
    differing = sorted(k for k in set().union(*every)
                       if any(v.get(k) != every[0].get(k) for v in every))
    if differing:
        shown = "; ".join(f"{k}: " + ", ".join(f"process {i} {v.get(k, 'unset')}"
                                               for i, v in enumerate(every))
                          for k in differing[:5])
        raise UserError(f"the processes were started with different {what} ({shown}"
                        f"{'; …' if len(differing) > 5 else ''}): start every process with the same "
                        "command")


def all_true(flag: bool) -> bool:
    """True on every process when `flag` is True on every process."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray([flag], np.bool_))))
