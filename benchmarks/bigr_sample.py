"""BiGR sampler throughput and compile time on the current backend, random weights.

  python benchmarks/bigr_sample.py --release=l_d24 --batch=8 --num_iter=20 --transcoder_steps=100
  python benchmarks/bigr_sample.py --release=xxl_d24 --compile_only

Prints one line: backend, release, batch, iterations, transcoder steps, compile seconds, seconds per
batch, images/s, and seconds per unmasking iteration (every iteration costs the same: the
transformer and the transcoder see all tokens, as in the official sampler), which lets a short
run (--num_iter=2) predict a long one.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from bigvar import config_lib, models
from bigvar.models import init_params, param_shapes
from bigvar.sampling import bigr as sb


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release", default="l_d24", help="a configs/bigr.py release: l_d24, xl_d24, "
                   "xxl_d24, xxl_d32 or l_d32_512")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num_iter", type=int, default=20)
    p.add_argument("--transcoder_steps", type=int, default=100)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--iters", type=int, default=1, help="timed runs")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (the function is "
                   "compiled ahead of time, so 0 only skips cache warm-up)")
    p.add_argument("--compile_only", action="store_true")
    args = p.parse_args()

    config = config_lib.load_config_file("bigr.py", args.release)
    config.bigr.dtype = args.dtype
    model, bae = models.build(config)
    settings = sb.BiGRSamplingSettings(num_iter=args.num_iter, cfg=args.cfg, gumbel=0.01,
                                       transcoder_steps=args.transcoder_steps)
    counts = jnp.asarray(np.tile(sb.reveal_counts(model.seq_len, args.num_iter), (args.batch, 1)))
    labels = jnp.arange(args.batch, dtype=jnp.int32) % 1000
    # What BiGRSampler does: transcode only the hidden tokens (same samples, less work).
    segments = sb.hidden_token_segments(np.asarray(counts), model.seq_len, None)

    def generate(params, bae_params, labels, seed, index):
        cond = model.apply(params, labels, method=model.class_embedding)
        null = model.apply(params, jnp.asarray([model.num_classes]), method=model.class_embedding)[0]
        tokens, _ = sb.sample_tokens(model, settings, params, cond, null, seed, index, counts,
                                     segments=segments)
        return sb.decode_to_uint8(bae, bae_params, tokens)

    shapes = param_shapes(model, bae)
    index = jnp.arange(args.batch, dtype=jnp.int32)
    start = time.perf_counter()
    compiled = jax.jit(generate).lower(*shapes, labels, jnp.uint32(0), index).compile()
    compile_s = time.perf_counter() - start
    line = (f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
            f"release={args.release} K={model.binary_size} batch={args.batch} num_iter={args.num_iter} "
            f"transcoder_steps={args.transcoder_steps} dtype={args.dtype} compile_s={compile_s:.1f}")
    if args.compile_only:
        print(line)
        return
    params, bae_params = init_params(model, bae, 0)
    for _ in range(args.warmup):
        jax.block_until_ready(compiled(params, bae_params, labels, jnp.uint32(0), index))
    times = []
    for i in range(args.iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, bae_params, labels, jnp.uint32(i + 1), index))
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"{line} batch_s={best:.1f} images_per_s={args.batch / best:.4f} "
          f"s_per_iteration={best / args.num_iter:.2f}")


if __name__ == "__main__":
    main()
