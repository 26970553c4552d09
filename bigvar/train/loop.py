"""The training loop shared by the generator and tokenizer trainers.

`run_loop` owns everything that is not the computation: restore-or-init, the data iterator and
its checkpointed position, the progress bar, JSONL/TensorBoard metrics (window means saved with
every checkpoint), periodic image grids, asynchronous checkpoints, SIGTERM and the stop on a
non-finite loss. A trainer hands it three functions: `init_state()`, `step(state, batch, i)` and
optionally `grids(state)`; the step's randomness must be a function of the state's step so that a
killed and restarted run continues exactly as if it had never stopped.

Also here, for both trainers: `validate_train_section` (the `train` section of a config) and
`export_newest` (`mode=export`: the newest checkpoint as a weights directory).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm  # widgets in a notebook, text in a terminal

from bigvar import config_lib, data as data_lib, multihost, parallel, rundir, storage, weights
from bigvar.images import save_png
from bigvar.errors import MissingFile, Preempted, UserError, invalid
from bigvar.train import state as state_lib
from bigvar.train.checkpoints import Checkpoints, PreemptionFlag


class NonFiniteLoss(RuntimeError):
    pass


class MetricWindow:
    """Means of the per-step metrics over each logging window. Its sums are saved with every
    checkpoint, so a resumed run logs exactly what an uninterrupted one would."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.count: int = int(state.get("count", 0))

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def pop_means(self) -> dict[str, float]:
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means

    def state(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}


@dataclasses.dataclass
class LoopSpec:
    """What a trainer gives the loop (all callables are host-side; `step` may dispatch to one of
    several jitted functions, e.g. per progressive stage)."""
    name: str                                   # progress-bar label, e.g. "train var"
    steps: int                                  # total optimizer steps
    image_size: int
    abstract_state: Any                         # ShapeDtypeStructs with shardings (restore target)
    init_state: Callable[[], Any]               # a fresh (or fine-tuning) state
    step: Callable[[Any, dict, int], tuple[Any, dict]]  # (state, global batch, step) → (state, metrics)
    grids: Callable[[Any], dict[str, np.ndarray]] | None = None  # state → {name: uint8 image}
    grid_every: int = 0                         # 0 = never (the last step always draws when > 0)
    on_log: Callable[[Any, int], dict[str, float]] | None = None  # extra scalars at log steps


def run_loop(config, workdir: str, mesh, spec: LoopSpec) -> tuple[dict, Any]:
    """Trains until `spec.steps` are done, or until SIGTERM/SIGINT; resumable from `workdir`,
    which is locked for the run and must hold checkpoints of this config (`bigvar.rundir`).
    Returns (summary for the user, the final state). Stopped by a signal before the last step, it
    saves that step's checkpoint, cleans up and raises `Preempted` (the CLI exits with 75)."""
    from bigvar import rundir
    check_batch(config, mesh)
    with rundir.writing(workdir, config, what=spec.name) as workdir:
        return _train(config, workdir, mesh, spec)


def _train(config, workdir: str, mesh, spec: LoopSpec) -> tuple[dict, Any]:
    from bigvar.train.metric_writer import MetricWriter

    t = config.train
    chief = jax.process_index() == 0
    writer = MetricWriter(os.path.join(workdir, "logs"), is_chief=chief)
    ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints,
                        async_save=t.async_checkpoints)
    restored = ckpts.restore_latest(spec.abstract_state)
    if restored is not None:
        start, state, host_state = restored
        data_iter = _resumed_iterator(config, spec, host_state, start)
        window = MetricWindow(host_state.get("metrics"))
        logging.info("resumed from step %d (%s)", start, ckpts.directory)
    else:
        start, state, window = 0, spec.init_state(), MetricWindow()
        data_iter = _data_iterator(config, spec)
    writer.truncate_after(start)
    summary = {"steps": spec.steps, "checkpoints": ckpts.directory,
               "metrics": os.path.join(workdir, "logs", "metrics.jsonl")}
    if start >= spec.steps:
        getattr(data_iter, "close", lambda: None)()
        ckpts.close()
        writer.close()
        return {**summary, "status": "already finished"}, state

    stop = PreemptionFlag(start)
    grids_dir = os.path.join(workdir, "samples")
    pending = None  # the previous step's metrics: read one step late so the host never waits

    def finish_pending():
        nonlocal pending
        if pending is None:
            return
        step, metrics = pending
        pending = None
        metrics = jax.device_get(metrics)
        if not metrics.pop("finite"):
            raise NonFiniteLoss(
                f"the loss or gradient became non-finite at step {step} (loss={metrics['loss']}); "
                f"training stopped without saving it. The last good checkpoint is kept in "
                f"{ckpts.directory} (steps {ckpts.steps()}). Try a lower learning rate, "
                "float32 compute (--config.<model>.dtype=float32) or check the data.")
        window.add(metrics)
        bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", refresh=False)
        if (step + 1) % t.log_every == 0 or step == 0 or step + 1 == spec.steps:
            scalars = window.pop_means()  # means over the steps since the last log line
            scalars["skipped_images"] = sum(multihost.gather_json(data_lib.skipped_count(data_iter)))
            scalars["steps_per_s"] = (step + 1 - start) / max(time.time() - began, 1e-9)
            if spec.on_log is not None:
                scalars.update(spec.on_log(state, step + 1))
            writer.write_scalars(step + 1, scalars)

    bar = tqdm(total=spec.steps, initial=start, desc=spec.name, unit="step",
               dynamic_ncols=True, disable=not chief)
    began = time.time()
    step = start
    stopping = False
    try:
        while step < spec.steps:
            batch = parallel.global_batch(next(data_iter), mesh)
            state, metrics = spec.step(state, batch, step)
            finish_pending()
            pending = (step, metrics)
            step += 1
            bar.update(1)
            stopping = stop.reached(step)
            if step % t.checkpoint_every == 0 or step == spec.steps or stopping:
                finish_pending()  # never save past a non-finite step
                ckpts.save(step, state, {  # the chief writes it: it holds every process's
                    "iterators": multihost.gather_json(  # data position
                        json.loads(data_lib.iterator_state_to_bytes(data_iter))),
                    "metrics": window.state()}, last=step == spec.steps or stopping)
            if (spec.grids and spec.grid_every and not stopping
                    and (step % spec.grid_every == 0 or step == spec.steps)):
                finish_pending()
                for name, grid in spec.grids(state).items():
                    if chief:
                        storage.makedirs(grids_dir)
                        save_png(os.path.join(grids_dir, f"{name}_{step:08d}.png"), grid)
                        writer.write_images(step, {name: grid})
            if stopping:
                logging.warning("stopped at step %d on request; checkpoint saved", step)
                break
        finish_pending()
    finally:
        bar.close()
        getattr(data_iter, "close", lambda: None)()
        ckpts.close()  # waits for the asynchronous save to land
        writer.close()
        stop.restore_handlers()
    summary = {**summary, "steps": step,
               "samples": grids_dir if storage.isdir(grids_dir) else "(none)"}
    if stopping and step < spec.steps:  # after the cleanup: the checkpoint has landed
        raise Preempted(step, ckpts.directory, summary)
    return summary, state


def _data_iterator(config, spec: LoopSpec, start_batch: int = 0):
    return data_lib.make_train_iterator(
        config.data, image_size=spec.image_size, global_batch=config.train.batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
        start_batch=start_batch)


def _resumed_iterator(config, spec: LoopSpec, host_state: dict, step: int):
    """This process's data iterator where the checkpoint of `step` left it. The checkpoint holds
    each process's iterator state; saved by another number of processes, the iterators start at
    global batch `step` instead (the same batches, unless unreadable images had been skipped)."""
    saved = host_state.get("iterators") or [host_state["iterator"]]  # (one process, before 2026-12)
    if len(saved) == jax.process_count():
        data_iter = _data_iterator(config, spec)
        data_lib.restore_iterator_state(data_iter, json.dumps(saved[jax.process_index()]).encode())
        return data_iter
    skipped = sum(data_lib.skipped_count(_StateView(s)) for s in saved)
    logging.log(logging.WARNING if skipped else logging.INFO,
                "the checkpoint was written by %d processes, this run has %d: the data restarts "
                "at global batch %d%s", len(saved), jax.process_count(), step,
                f" ({skipped} unreadable images had been skipped, so the batches from here on are "
                "close to, not exactly, the uninterrupted run's)" if skipped else "")
    return _data_iterator(config, spec, start_batch=step)


class _StateView:
    """A saved iterator state, readable by `data.skipped_count`."""

    def __init__(self, saved: dict):
        self._state = saved["grain_state"]

    def get_state(self) -> dict:
        return self._state


def check_batch(config, mesh) -> None:
    t = config.train
    dp = parallel.data_parallel_size(mesh)
    if t.batch_size % (dp * t.grad_accum) or t.batch_size % jax.process_count():
        raise UserError(f"config.train.batch_size={t.batch_size} must divide by the data-parallel "
                         f"size {dp} × grad_accum {t.grad_accum} and by the {jax.process_count()} "
                         "processes")


def validate_train_section(config, num_classes: int) -> None:
    """The `train` section of a train config (and the data's classes, which index the model's)."""
    t, d = config.train, config.data
    if d.num_classes > num_classes:
        invalid("data.num_classes", d.num_classes,
                f"at most the model's {num_classes} classes (labels index the class embedding)")
    if t.batch_size < 1 or t.grad_accum < 1 or t.batch_size % t.grad_accum:
        invalid("train.batch_size", t.batch_size, f"≥ 1 and a multiple of train.grad_accum={t.grad_accum}")
    if t.steps <= 0 and t.epochs <= 0:
        invalid("train.steps", t.steps, "> 0, or train.epochs > 0")
    for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if t[field] < 1:
            invalid(f"train.{field}", t[field], "≥ 1")
    if not 0 <= t.ema_decay < 1:
        invalid("train.ema_decay", t.ema_decay, "in [0, 1) (0 = no EMA)")


def export_newest(config, workdir: str, out_dir: str | None, make_trainer: Callable,
                  sections: Callable[[Any, Any], dict]) -> str:
    """`mode=export` for either trainer: the newest checkpoint in `workdir`, as a weights
    directory (`out_dir`, by default `<workdir>/export`) holding `sections(trainer, params)`,
    {config section: weights}, where params are the checkpoint's EMA when one is kept. Its
    config records those sections and where the weights came from."""
    config_lib.validate(config)
    with rundir.writing(workdir, config, what="export") as workdir:
        trainer = make_trainer(config, parallel.make_mesh(config.mesh), dataset_size=1)
        ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
        try:
            restored = ckpts.restore_latest(trainer.abstract_state(), with_data=False)
        finally:
            ckpts.close()
        if restored is None:
            raise MissingFile(f"no checkpoint in {ckpts.directory}: train first "
                              "(--config.mode=train with the same --workdir)")
        step, state, _ = restored
        exported = sections(trainer, state_lib.shown_params(state))
        model_config = {"model": config.model, **{key: config[key].to_dict() for key in exported},
                        "source": {"workdir": storage.absolute(workdir), "step": int(step),
                                   "weights": "ema" if "ema" in state else "params"}}
        out_dir = out_dir or os.path.join(workdir, "export")
        weights.save_weights(out_dir, exported, model_config, overwrite=True)
        return out_dir
