"""`mode=train` for the generators (VAR and BiGR), read top to bottom:

  1. `Trainer`: models, optimizer, shardings of the train state and the jitted train step —
     everything that defines the computation (also used by `bigvar.plan` and the benchmark).
  2. `run`: the frozen tokenizer, restore-or-init and the step of each progressive stage,
     handed to `loop.run_loop` (data, progress bar, metrics, grids, checkpoints, SIGTERM).

The train state is a dict {step, params, opt_state[, ema]} (`train/state.py`); params are
sharded by their logical axis names (`config.axis_rules`) on the mesh `config.mesh`, batches
over data × fsdp. The step's randomness is fold_in(seed, step) and the data iterator's state
is checkpointed, so a killed and restarted run continues exactly as if it had never stopped.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from flax.traverse_util import flatten_dict, unflatten_dict

from bigvar import config_lib, models, parallel, weights
from bigvar.models import run_init
from bigvar.train import loop, losses, optim, state as state_lib
from bigvar.train.init import bigr_official_init, var_official_init


# ---- the computation -------------------------------------------------------------------------
class Trainer:
    """Models, optimizer, train-state shardings and the jitted train step of a config."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, dataset_size: int):
        self.config, self.mesh = config, mesh
        self.model = config.model
        self.generator, self.tokenizer = models.build(config)
        self.rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.axis_rules)
        self.schedules = optim.Schedules(config, dataset_size)
        t = config.train
        self.tx = optim.adamw(
            learning_rate=self.schedules.lr, weight_decay=self.schedules.weight_decay,
            mask=functools.partial(optim.decay_mask, model=self.model), b1=t.b1, b2=t.b2,
            eps=t.eps, clip=t.clip)
        self.loss_fn = functools.partial(
            losses.var_loss if self.model == "var" else losses.bigr_loss,
            self.generator, self.tokenizer)
        self.ema_decay = float(t.ema_decay)
        self.grad_accum = int(t.grad_accum)
        self._gen_init, self._tok_init = models.init_fns(self.generator, self.tokenizer)
        self.state_shardings = self._state_shardings()
        self.tokenizer_sharding = jax.tree_util.tree_map(
            lambda _: parallel.replicated(mesh), self.abstract_tokenizer_params())
        self._steps = {}

    # -- state --
    def _state_shardings(self):
        boxed = jax.eval_shape(self._gen_init, jax.random.PRNGKey(0))
        param_sh = parallel.logical_shardings(boxed, self.mesh, self.rules)
        abstract_params = nn.unbox(boxed)
        opt_sh = parallel.shardings_by_path(jax.eval_shape(self.tx.init, abstract_params), param_sh,
                                            self.mesh)
        shardings = {"step": parallel.replicated(self.mesh), "params": param_sh, "opt_state": opt_sh}
        if self.ema_decay > 0:
            shardings["ema"] = param_sh
        return shardings

    def abstract_state(self):
        """The train state as ShapeDtypeStructs carrying their shardings (for restore, planning)."""
        return state_lib.abstract_state(self._new_state, self.state_shardings)

    def abstract_tokenizer_params(self):
        return nn.unbox(jax.eval_shape(self._tok_init, jax.random.PRNGKey(0)))

    def _official_init(self, gen_params, key):
        t, c = self.config.train, self.config
        if not t.official_init:
            return gen_params
        if self.model == "var":
            return var_official_init(gen_params, key, depth=c.var.depth, embed_dim=c.var.embed_dim,
                                     init_adaln=t.init_adaln, init_adaln_gamma=t.init_adaln_gamma,
                                     init_head=t.init_head)
        return bigr_official_init(gen_params, key)

    def _new_state(self, key, gen_params=None):
        k_init, k_official = jax.random.split(key)
        if gen_params is None:
            gen_params = self._official_init(nn.unbox(self._gen_init(k_init)), k_official)
        return state_lib.new_state(gen_params, self.tx, self.ema_decay)

    def init_state(self, seed: int, gen_params=None):
        """A fresh state, created directly with its shardings (never whole on one device)."""
        return run_init(self._new_state, jax.random.PRNGKey(seed), gen_params,
                        out_shardings=self.state_shardings)

    # -- the step --
    def grads(self, params, tok_params, batch, rng, stage, prog_wp):
        """(gradients, metrics) of the loss on `batch`, averaged over `train.grad_accum`
        micro-batches."""
        loss_fn = lambda p, b, r: self.loss_fn(p, tok_params, b, r, stage=stage, prog_wp=prog_wp,
                                               label_smoothing=self.config.train.label_smoothing)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if self.grad_accum == 1:
            (_, metrics), grads = grad_fn(params, batch, rng)
            return grads, metrics
        n = self.grad_accum
        micro = jax.tree_util.tree_map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)

        def body(acc, inputs):
            i, mb = inputs
            (_, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
            return jax.tree_util.tree_map(jnp.add, acc, (grads, metrics)), None

        zeros = jax.eval_shape(lambda: grad_fn(params, jax.tree_util.tree_map(lambda x: x[0], micro), rng))
        zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[1], zeros[0][1]))
        (grads, metrics), _ = jax.lax.scan(body, zero, (jnp.arange(n), micro))
        return jax.tree_util.tree_map(lambda x: x / n, (grads, metrics))

    def train_step(self, state, tok_params, batch, prog_wp, *, stage: int):
        step = state["step"]
        rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), step)
        with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), nn.logical_axis_rules(self.rules):
            grads, metrics = self.grads(state["params"], tok_params, batch, rng, stage, prog_wp)
        params, opt_state, grad_norm = state_lib.apply_gradients(state, grads, self.tx)
        new, finite = state_lib.finish_step(
            state, {"step": step + 1, "params": params, "opt_state": opt_state},
            loss=metrics["loss"], grad_norm=grad_norm, ema_decay=self.ema_decay)
        metrics.update(grad_norm=grad_norm, finite=finite, lr=self.schedules.lr(step),
                       wd=self.schedules.weight_decay(step))
        return new, metrics

    def step_fn(self, stage: int):
        """The jitted step for a progressive stage (each stage has its own sequence length)."""
        if stage not in self._steps:
            batch_sh = parallel.batch_sharding(self.mesh)
            self._steps[stage] = jax.jit(
                functools.partial(self.train_step, stage=stage),
                in_shardings=(self.state_shardings, self.tokenizer_sharding,
                              {"image": batch_sh, "label": batch_sh}, parallel.replicated(self.mesh)),
                out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
                donate_argnums=(0,))
        return self._steps[stage]

    def image_size(self) -> int:
        return config_lib.image_size(self.config)

    def abstract_batch(self, global_batch: int):
        sh = parallel.batch_sharding(self.mesh)
        r = self.image_size()
        return {"image": jax.ShapeDtypeStruct((global_batch, r, r, 3), jnp.float32, sharding=sh),
                "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=sh)}


# ---- weights in and out ------------------------------------------------------------------------
def _weights_dir_tokenizer(config) -> str:
    return config.tokenizer_from or config.init_from


def load_tokenizer(config, trainer: Trainer):
    """The frozen tokenizer: from `tokenizer_from` (or `init_from`), or random for smoke runs."""
    _, tok_key = models.SECTIONS[config.model]
    source = _weights_dir_tokenizer(config)
    target = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        trainer.abstract_tokenizer_params(), trainer.tokenizer_sharding)
    if source:
        stored = weights.load_config(source)
        flag = "tokenizer_from" if config.tokenizer_from else "init_from"
        weights.check_architecture(config, stored, f"--config.{flag}={source}", (tok_key,))
        return weights.load_weights(source, {tok_key: target}, partial=True)[tok_key]
    if not config.allow_random_init:
        raise ValueError(
            f"training needs a tokenizer: set --config.tokenizer_from=DIR to a weights directory "
            f"holding `{tok_key}` (from `python -m bigvar.convert` or a tokenizer export), or "
            "--config.allow_random_init=True to train on a random tokenizer (smoke tests only)")
    logging.warning("training on a RANDOM tokenizer (config.allow_random_init)")
    return nn.unbox(run_init(trainer._tok_init, jax.random.PRNGKey(config.seed + 7),
                          out_shardings=trainer.tokenizer_sharding))


def load_finetune_params(config, trainer: Trainer):
    """Generator params from `init_from` for fine-tuning. A different number of classes is
    allowed: the class-embedding table is then re-initialised (the rest is kept)."""
    gen_key, _ = models.SECTIONS[config.model]
    stored = weights.load_config(config.init_from)
    weights.check_architecture(config, stored, f"--config.init_from={config.init_from}", (gen_key,),
                               skip=("num_classes",))
    loaded = weights.load_weights(config.init_from)[gen_key]
    fresh = trainer._official_init(nn.unbox(trainer._gen_init(jax.random.PRNGKey(config.seed))),
                                   jax.random.PRNGKey(config.seed + 1))
    flat_fresh, flat_loaded = flatten_dict(fresh), flatten_dict(loaded)
    merged = {}
    for path, new in flat_fresh.items():
        old = flat_loaded.get(path)
        if old is None:
            raise ValueError(f"{config.init_from} has no parameter {'/'.join(path)}")
        if tuple(old.shape) == tuple(new.shape):
            merged[path] = jnp.asarray(old)
        elif "class_emb" in path or "cls_embedding" in path:
            logging.warning("re-initialising the class embedding %s: %s → %s rows (new number "
                            "of classes)", "/".join(path), old.shape[0], new.shape[0])
            merged[path] = new
        else:
            raise ValueError(f"{'/'.join(path)}: {config.init_from} has shape {tuple(old.shape)}, "
                             f"the config needs {tuple(new.shape)}")
    return unflatten_dict(merged)


def export_weights(config, workdir: str, out_dir: str | None = None) -> str:
    """`mode=export`: the newest checkpoint's generator (its EMA when there is one) and the
    tokenizer, as a weights directory that `--config.init_from` (mode=sample) loads."""
    gen_key, tok_key = models.SECTIONS[config.model]
    return loop.export_newest(
        config, workdir, out_dir, Trainer,
        lambda trainer, params: {gen_key: params, tok_key: load_tokenizer(config, trainer)})


# ---- the loop ----------------------------------------------------------------------------------
def _sample_grid(trainer: Trainer, sampler_cache: dict, gen_params, tok_params) -> np.ndarray:
    """A class-conditional grid from the current weights (EMA when kept), with the config's
    sampling settings; the sampler is compiled once and reused with new params."""
    from bigvar.images import make_grid
    from bigvar.sampling import job
    config = trainer.config
    if "sampler" not in sampler_cache:
        sampler = job.make_sampler_from_params(config, trainer.generator, trainer.tokenizer,
                                               gen_params, tok_params, trainer.mesh)
        classes = tuple(config.sample.classes) or tuple(range(trainer.generator.num_classes))
        labels = np.sort(np.resize(np.asarray(classes, np.int32), config.train.sample_images))
        sampler_cache.update(sampler=sampler, labels=labels)
    sampler = sampler_cache["sampler"]
    sampler.set_params(gen_params, tok_params)
    images = sampler.generate(sampler_cache["labels"], seed=config.sample.seed).images
    return make_grid(images, cols=min(config.sample.grid_cols, len(images)))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains until `train.steps`/`train.epochs` are done, or until SIGTERM; resumable."""
    from bigvar import data as data_lib
    config_lib.validate(config)
    mesh = parallel.make_mesh(config.mesh)
    loop.check_batch(config, mesh)
    dataset_size = len(data_lib.make_source(config.data, config_lib.image_size(config)))
    trainer = Trainer(config, mesh, dataset_size)
    tok_params = load_tokenizer(config, trainer)

    def init_state():
        gen_params = load_finetune_params(config, trainer) if config.init_from else None
        return trainer.init_state(config.seed, gen_params)

    def step(state, batch, i):
        stage, prog_wp = trainer.schedules.stage(i)
        return trainer.step_fn(stage)(state, tok_params, batch, jnp.float32(prog_wp))

    sampler_cache: dict = {}
    spec = loop.LoopSpec(
        name=f"train {config.model}", steps=trainer.schedules.max_it,
        image_size=trainer.image_size(), abstract_state=trainer.abstract_state(),
        init_state=init_state, step=step, grid_every=config.train.sample_every,
        grids=lambda state: {"samples": _sample_grid(
            trainer, sampler_cache, state_lib.shown_params(state), tok_params)})
    summary, _ = loop.run_loop(config, workdir, mesh, spec)
    return summary

