"""Training-step speed of a config on the current backend (random weights and images):

  python benchmarks/train_step.py --config=configs/var_d16.py --batch=4 --iters=3
  python benchmarks/train_step.py --config=configs/bigr_l_d24.py --batch=8 --dtype=bfloat16 --remat

One step = the trainer's jitted step exactly as `mode=train` runs it: frozen-tokenizer encoding
of the batch (VQ-VAE indices + teacher-forcing input, or B-AE Bernoulli bits), the generator's
forward and backward, gradient clipping, AdamW with the recipe's schedules and no-decay groups
(and the EMA for BiGR), sharded on every visible device (`config.mesh`). Prints one line after
a compile + warm-up step: compile seconds, seconds per step, images/s and tokens/s.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from bigvar import config_lib, parallel
from bigvar.train.generator import Trainer, load_tokenizer


def measure(config, batch: int, iters: int = 3) -> dict:
    """The trainer's step on random images at global `batch`: seconds of the first step (compile +
    run), mean seconds per step over `iters` more, the loss, tokens per image and the number of
    trained parameters."""
    config.mode = "train"
    config.allow_random_init = True
    config.train.update(batch_size=batch, steps=1000)
    gen = config[config.model]
    mesh = parallel.make_mesh(config.mesh)
    trainer = Trainer(config, mesh, dataset_size=1_281_167)
    state = trainer.init_state(config.seed)
    tok = load_tokenizer(config, trainer)
    r = trainer.image_size()
    rng = np.random.RandomState(0)
    images = {
        "image": rng.uniform(*trainer.tokenizer.VALUE_RANGE, (batch, r, r, 3)).astype(np.float32),
        "label": (np.arange(batch) % gen.num_classes).astype(np.int32)}
    global_batch = parallel.global_batch(images, mesh)
    step_fn = trainer.step_fn(trainer.schedules.stage(trainer.schedules.max_it - 1)[0])
    prog_wp = jnp.float32(1.0)

    started = time.perf_counter()
    state, metrics = step_fn(state, tok, global_batch, prog_wp)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - started  # compile + one step
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        state, metrics = step_fn(state, tok, global_batch, prog_wp)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    return {"first_step_s": first, "step_s": float(np.mean(times)), "loss": float(metrics["loss"]),
            "tokens_per_image": trainer.generator.seq_len if config.model == "var" else gen.seq_len,
            "params": sum(x.size for x in jax.tree_util.tree_leaves(state["params"]))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/var_d16.py")
    p.add_argument("--batch", type=int, default=4, help="global batch")
    p.add_argument("--iters", type=int, default=3, help="timed steps after the warm-up")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true")
    p.add_argument("--attn_impl", default="xla", choices=["xla", "cudnn", "splash", "auto"])
    args = p.parse_args()

    config = config_lib.load_config_file(*args.config.split(":", 1))
    config[config.model].update(dtype=args.dtype, remat=args.remat, attn_impl=args.attn_impl)
    r = measure(config, args.batch, args.iters)
    per_step, tokens = r["step_s"], r["tokens_per_image"] * args.batch
    print(f"bigvar {config.model} {args.config} train step: {per_step:.3f} s/step "
          f"(batch {args.batch}, {args.batch / per_step:.2f} images/s, {tokens / per_step:.1f} tokens/s, "
          f"{args.dtype}, remat={args.remat}, backend {jax.default_backend()} × {len(jax.devices())}, "
          f"first step incl. compile {r['first_step_s']:.1f} s, loss {r['loss']:.4f})")


if __name__ == "__main__":
    from bigvar import cpu_tuning
    cpu_tuning.reexec_with_huge_pages()  # as `python -m bigvar.main` runs on a CPU
    main()
