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


def build(release: str = "l_d24", dtype: str = "float32", attn_impl: str = "xla", tiny: bool = False):
    """(model, bae) of a configs/bigr.py release; `tiny`: configs/bigr_tiny.py at 64 px (4×4
    tokens) for smoke runs on a CPU."""
    if tiny:
        config = config_lib.load_config_file("bigr_tiny.py")
        config.bae.img_size, config.bigr.seq_len = 64, 16
    else:
        config = config_lib.load_config_file("bigr.py", release)
    config.bigr.dtype, config.bigr.attn_impl = dtype, attn_impl
    return models.build(config)


def measure(model, bae, batch: int, num_iter: int = 20, transcoder_steps: int = 100,
            cfg: float = 3.0, iters: int = 1, warmup: int = 1, compile_only: bool = False) -> dict:
    """Compile seconds and (unless compile_only) the best of `iters` timed batches, random weights."""
    settings = sb.BiGRSamplingSettings(num_iter=num_iter, cfg=cfg, gumbel=0.01,
                                       transcoder_steps=transcoder_steps)
    counts = jnp.asarray(np.tile(sb.reveal_counts(model.seq_len, num_iter), (batch, 1)))
    labels = jnp.arange(batch, dtype=jnp.int32) % model.num_classes
    # What BiGRSampler does: transcode only the hidden tokens (same samples, less work).
    segments = sb.hidden_token_segments(np.asarray(counts), model.seq_len, None)

    def generate(params, bae_params, labels, seed, index):
        cond = model.apply(params, labels, method=model.class_embedding)
        null = model.apply(params, jnp.asarray([model.num_classes]), method=model.class_embedding)[0]
        tokens, _ = sb.sample_tokens(model, settings, params, cond, null, seed, index, counts,
                                     segments=segments)
        return sb.decode_to_uint8(bae, bae_params, tokens)

    shapes = param_shapes(model, bae)
    index = jnp.arange(batch, dtype=jnp.int32)
    start = time.perf_counter()
    compiled = jax.jit(generate).lower(*shapes, labels, jnp.uint32(0), index).compile()
    result = {"compile_s": time.perf_counter() - start}
    if compile_only:
        return result
    params, bae_params = init_params(model, bae, 0)
    for _ in range(warmup):
        jax.block_until_ready(compiled(params, bae_params, labels, jnp.uint32(0), index))
    times = []
    for i in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, bae_params, labels, jnp.uint32(i + 1), index))
        times.append(time.perf_counter() - start)
    result["batch_s"] = min(times)
    return result


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

    model, bae = build(args.release, args.dtype)
    result = measure(model, bae, args.batch, args.num_iter, args.transcoder_steps, args.cfg,
                     args.iters, args.warmup, args.compile_only)
    line = (f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
            f"release={args.release} K={model.binary_size} batch={args.batch} num_iter={args.num_iter} "
            f"transcoder_steps={args.transcoder_steps} dtype={args.dtype} "
            f"compile_s={result['compile_s']:.1f}")
    if args.compile_only:
        print(line)
        return
    best = result["batch_s"]
    print(f"{line} batch_s={best:.1f} images_per_s={args.batch / best:.4f} "
          f"s_per_iteration={best / args.num_iter:.2f}")


if __name__ == "__main__":
    from bigvar import cpu_tuning
    cpu_tuning.reexec_with_huge_pages()  # as `python -m bigvar.main` runs on a CPU
    main()
