"""Memory planner: compile a config's train step ahead of time for N (fake) devices on this CPU
and print what each device would hold; or, with --sample, what sampling needs per image and the
largest batch that fits a device.

  python -m bigvar.plan --config=configs/var_d30.py --devices=64
  python -m bigvar.plan --config=configs/var_d30.py --devices=256 --config.mesh.data=32 \\
      --config.mesh.fsdp=8 --config.var.dtype=bfloat16 --config.var.remat=True
  python -m bigvar.plan --config=configs/var_d30.py --sample --memory_gib=80 --config.var.dtype=bfloat16

The sampling job uses the same estimate to choose its batch (`sample.batch_size=0`).

Nothing is allocated: the train state and batch are abstract (shapes + shardings), and XLA's
own buffer assignment gives the temporaries (activations, gradients, tokenizer work). Figures are
for the CPU backend's compilation of the same program; a TPU/GPU compile fuses differently, so
treat temporaries as an estimate (parameter and optimizer bytes are exact).
"""
from __future__ import annotations

import math
import os
import sys
import time

from absl import app, flags

from bigvar import config_lib, console

_CONFIG = config_lib.define_config_flag("config")
_DEVICES = flags.DEFINE_integer("devices", 8, "Number of devices to plan for (faked on the CPU).")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch (0: config.train.batch_size).")
_SAMPLE = flags.DEFINE_bool("sample", False, "Plan `mode=sample` (per device) instead of training.")
_MEMORY_GIB = flags.DEFINE_float("memory_gib", 0.0, "--sample: a device's memory in GiB, "
                                 "weights included (0: what this machine's device has free)")
flags.mark_flags_as_required(["config"])

GIB = 2 ** 30


def _per_device_bytes(tree) -> int:
    """Bytes of a sharded abstract tree on its most loaded device."""
    import jax
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        total += math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    return total


def plan(config, num_devices: int, global_batch: int = 0) -> dict:
    """Compiles the train step for `num_devices` and returns per-device byte counts."""
    import jax
    import jax.numpy as jnp

    from bigvar import config_lib, parallel
    from bigvar.train.generator import Trainer

    config_lib.validate(config)
    if len(jax.devices()) < num_devices:
        raise RuntimeError(f"{len(jax.devices())} devices visible, {num_devices} asked: run "
                           "`python -m bigvar.plan` as its own process (it fakes the devices)")
    mesh = parallel.make_mesh(config.mesh, jax.devices()[:num_devices])
    batch = global_batch or config.train.batch_size
    trainer = Trainer(config, mesh, dataset_size=1_281_167)
    state = trainer.abstract_state()
    tok = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                 trainer.abstract_tokenizer_params(), trainer.tokenizer_sharding)
    stage = trainer.schedules.stage(trainer.schedules.max_it - 1)[0]
    started = time.time()
    lowered = trainer.step_fn(stage).lower(state, tok, trainer.abstract_batch(batch),
                                           jax.ShapeDtypeStruct((), jnp.float32))
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    out = {
        "devices": num_devices, "mesh": dict(mesh.shape), "global_batch": batch,
        "params": _per_device_bytes(state["params"]),
        "optimizer": _per_device_bytes(state["opt_state"]),
        "ema": _per_device_bytes(state["ema"]) if "ema" in state else 0,
        "tokenizer": _per_device_bytes(tok),
        "batch": _per_device_bytes(trainer.abstract_batch(batch)),
        "compile_s": time.time() - started,
    }
    if memory is not None:
        out["temporaries"] = int(memory.temp_size_in_bytes)
        out["arguments"] = int(memory.argument_size_in_bytes)
        out["peak_estimate"] = int(memory.argument_size_in_bytes + memory.temp_size_in_bytes)
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.quiet_library_logs()
    config = _CONFIG.value
    if _SAMPLE.value:
        return plan_sampling(config, _MEMORY_GIB.value)
    result = plan(config, _DEVICES.value, _BATCH.value)
    gen = config[config.model]
    print(f"{config.model} ({'depth ' + str(gen.depth) if config.model == 'var' else str(gen.n_layer) + ' layers'}, "
          f"dtype {gen.dtype}, remat {gen.remat}) on {result['devices']} devices, mesh "
          f"{result['mesh']}, global batch {result['global_batch']} "
          f"({result['global_batch'] // (result['mesh']['data'] * result['mesh']['fsdp'])} per data shard); "
          f"compiled in {result['compile_s']:.1f} s")
    print("per device (GiB):")
    for key in ("params", "optimizer", "ema", "tokenizer", "batch", "temporaries", "peak_estimate"):
        if key in result:
            print(f"  {key:<14} {result[key] / GIB:8.3f}")
    return 0


def plan_sampling(config, memory_gib: float) -> int:
    """Prints `mode=sample`'s memory per device and the batch the sampling job would choose."""
    import jax

    from bigvar import config_lib, models, parallel
    from bigvar.sampling import job, memory

    config_lib.validate(config)
    mesh = parallel.make_mesh(config.mesh)
    generator, tokenizer = models.build(config)
    sampler = job.make_sampler_from_params(config, generator, tokenizer,
                                           *models.param_shapes(generator, tokenizer), mesh)
    started = time.time()
    # The weights are abstract here, not on the device: they are taken from its free memory.
    free = memory_gib or (memory.free_device_memory() / GIB)
    fit = memory.plan_batch(sampler, cap=1 << 20, memory_gib=free)
    print(f"{config.model} sampling ({jax.default_backend()} compile, {time.time() - started:.1f} s), "
          f"per device: weights {memory.weight_bytes(sampler) / GIB:.3f} GiB, then "
          f"{fit.per_image / GIB:.3f} GiB per image + {fit.fixed / GIB:.3f} GiB; {free:.1f} GiB "
          f"(×{memory.MEMORY_HEADROOM} headroom) → {fit.per_device} images per device, a batch of "
          f"{fit.per_device * parallel.data_parallel_size(mesh)}")
    return 0


def _fake_devices_from_argv(argv) -> None:
    """XLA reads the device count once, at backend start: set it before jax touches a device.
    A sampling plan is of this machine's own devices (their compiler and their free memory)."""
    if "--sample" in argv or "--sample=true" in argv:
        return
    n = 8
    for i, a in enumerate(argv):
        if a.startswith("--devices="):
            n = int(a.split("=", 1)[1])
        elif a == "--devices" and i + 1 < len(argv):
            n = int(argv[i + 1])
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={n}").strip()


if __name__ == "__main__":
    _fake_devices_from_argv(sys.argv)
    app.run(main)
