"""VAR sampler throughput and compile time on the current backend, random weights.

  python benchmarks/var_sample.py --depth=16 --batch=8          # images/s + compile s
  python benchmarks/var_sample.py --depth=30 --compile_only     # compile s, no weights needed

Prints one line: backend, depth, batch, dtype, compile seconds, images/s (full pipeline: 10
KV-cached transformer scales with CFG, top-k/top-p sampling, VQ-VAE decode to uint8).
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigvar import models
from bigvar.models import init_params, param_shapes
from bigvar.models.var import PATCH_NUMS_256, PATCH_NUMS_512, config_section as var_section
from bigvar.sampling.var import SamplingSettings, sample
from bigvar.tokenizers import msvq


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attn_impl", default="xla", choices=["xla", "cudnn"])
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--iters", type=int, default=3, help="timed runs after the compile")
    p.add_argument("--compile_only", action="store_true")
    args = p.parse_args()

    shared = args.depth == 36
    config = ml_collections.ConfigDict(dict(
        model="var", vae=msvq.config_section(),
        var=var_section(args.depth, shared_aln=shared,
                        patch_nums=PATCH_NUMS_512 if shared else PATCH_NUMS_256)))
    config.var.dtype, config.var.attn_impl = args.dtype, args.attn_impl
    var, vae = models.build(config)
    settings = SamplingSettings(cfg=args.cfg, top_k=900, top_p=0.96)
    fn = jax.jit(functools.partial(sample, var, vae, settings))
    labels = jnp.arange(args.batch, dtype=jnp.int32) % 1000
    index = jnp.arange(args.batch, dtype=jnp.int32)

    var_shapes, vae_shapes = param_shapes(var, vae)
    start = time.perf_counter()
    compiled = fn.lower(var_shapes, vae_shapes, labels, jnp.uint32(0), index).compile()
    compile_s = time.perf_counter() - start
    line = (f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} depth={args.depth} "
            f"batch={args.batch} dtype={args.dtype} attn={args.attn_impl} compile_s={compile_s:.1f}")
    if args.compile_only:
        print(line)
        return
    var_params, vae_params = init_params(var, vae, 0)
    out = compiled(var_params, vae_params, labels, jnp.uint32(0), index)  # warm-up
    jax.block_until_ready(out)
    times = []
    for i in range(args.iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(var_params, vae_params, labels, jnp.uint32(i + 1), index))
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"{line} batch_s={best:.2f} images_per_s={args.batch / best:.2f} "
          f"(median {args.batch / float(np.median(times)):.2f})")


if __name__ == "__main__":
    main()
