"""The cost of checkpoint checksums: save and restore of a VAR training state with and without them.

  python benchmarks/checkpoint_integrity.py --depth=16 --iters=3

The state is a VAR-d<depth> train state's size (params + Adam's two moments, float32; random
values). Prints one line per measurement: compile seconds of the checksum function, seconds to
compute the checksums, seconds to save (synchronous) and to restore, each the median of --iters.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from bigvar import models
from bigvar.models.var import config_section as var_section
from bigvar.tokenizers.msvq import config_section as vae_section
from bigvar.train import checkpoints as ck


def _median_seconds(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args()

    # The generator's state is what counts: a small tokenizer.
    config = ml_collections.ConfigDict(dict(model="var", var=var_section(args.depth),
                                            vae=vae_section(ch=32, vocab_size=4096)))
    shapes = models.param_shapes(*models.build(config))[0]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), shapes)
    state = {"params": params, "mu": params, "nu": jax.tree_util.tree_map(jnp.abs, params),
             "step": jnp.int32(1)}
    n = sum(x.size for x in jax.tree_util.tree_leaves(state))
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    print(f"backend={jax.default_backend()} VAR-d{args.depth} state: {n / 1e6:.0f}M values, "
          f"{n * 4 / 2**30:.2f} GiB")

    t = time.perf_counter()
    ck.device_checksums.lower(state).compile()
    print(f"checksum compile: {time.perf_counter() - t:.2f} s")
    print(f"checksums: {_median_seconds(lambda: ck.device_checksums(state), args.iters):.3f} s")

    with tempfile.TemporaryDirectory() as tmp:
        plain = ocp.CheckpointManager(f"{tmp}/plain", options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False, max_to_keep=1))
        step = iter(range(10**6))

        def save_plain():
            plain.save(next(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)))

        def restore_plain():
            return plain.restore(plain.latest_step(), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))["state"]

        checked = ck.Checkpoints(f"{tmp}/checked", keep=1, async_save=False)
        checked_step = iter(range(10**6))
        save = {"plain": save_plain, "with checksums": lambda: checked.save(next(checked_step), state, None)}
        restore = {"plain": restore_plain,
                   "with checksums": lambda: checked.restore_latest(abstract, with_data=False)[1]}
        for name in save:
            print(f"save, {name}: {_median_seconds(save[name], args.iters):.2f} s; "
                  f"restore, {name}: {_median_seconds(restore[name], args.iters):.2f} s")
        checked.close()
        plain.close()


if __name__ == "__main__":
    from bigvar import cpu_tuning
    cpu_tuning.reexec_with_huge_pages()
    main()
