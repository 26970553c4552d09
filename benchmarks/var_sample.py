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


def build(depth: int, dtype: str = "float32", attn_impl: str = "xla", tiny: bool = False):
    """(var, vae) of VAR-d`depth` with the release's VQ-VAE; `tiny`: width 64 and a small VQ-VAE
    (4 scales, 64 px) for smoke runs on a CPU."""
    shared = depth == 36
    if tiny:
        config = ml_collections.ConfigDict(dict(
            model="var", vae=msvq.config_section(ch=32, vocab_size=64),
            var=var_section(depth, embed_dim=64, num_heads=2, num_classes=1000, patch_nums=(1, 2, 3, 4))))
    else:
        config = ml_collections.ConfigDict(dict(
            model="var", vae=msvq.config_section(),
            var=var_section(depth, shared_aln=shared,
                            patch_nums=PATCH_NUMS_512 if shared else PATCH_NUMS_256)))
    config.var.dtype, config.var.attn_impl = dtype, attn_impl
    return models.build(config)


def measure(var, vae, batch: int, cfg: float = 1.5, iters: int = 3, compile_only: bool = False) -> dict:
    """Compile seconds and (unless compile_only) the best of `iters` timed batches, random weights."""
    settings = SamplingSettings(cfg=cfg, top_k=900, top_p=0.96)
    fn = jax.jit(functools.partial(sample, var, vae, settings))
    labels = jnp.arange(batch, dtype=jnp.int32) % var.num_classes
    index = jnp.arange(batch, dtype=jnp.int32)
    var_shapes, vae_shapes = param_shapes(var, vae)
    start = time.perf_counter()
    compiled = fn.lower(var_shapes, vae_shapes, labels, jnp.uint32(0), index).compile()
    result = {"compile_s": time.perf_counter() - start}
    if compile_only:
        return result
    var_params, vae_params = init_params(var, vae, 0)
    jax.block_until_ready(compiled(var_params, vae_params, labels, jnp.uint32(0), index))  # warm-up
    times = []
    for i in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(var_params, vae_params, labels, jnp.uint32(i + 1), index))
        times.append(time.perf_counter() - start)
    result.update(batch_s=min(times), median_batch_s=float(np.median(times)))
    return result


def measure_decode(vae, vae_params, batch: int, iters: int = 3) -> float:
    """Best seconds of the VQ-VAE decode alone (f̂ → uint8 image) at `batch`: the part of a
    sampled batch that is convolutions, not the transformer."""
    from bigvar.sampling.common import to_uint8
    spec = vae.spec
    f_hat = jnp.asarray(np.random.default_rng(0).normal(
        size=(batch, spec.latent_size, spec.latent_size, vae.z_channels)), jnp.float32)
    decode = jax.jit(lambda p, f: to_uint8(vae.apply(p, f, method=msvq.MultiScaleVQVAE.fhat_to_img),
                                           vae.VALUE_RANGE))
    jax.block_until_ready(decode(vae_params, f_hat))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(decode(vae_params, f_hat))
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attn_impl", default="xla", choices=["xla", "cudnn", "splash", "auto"])
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--iters", type=int, default=3, help="timed runs after the compile")
    p.add_argument("--compile_only", action="store_true")
    p.add_argument("--breakdown", action="store_true", help="also time the VQ-VAE decode alone "
                   "(the rest of a batch is the transformer's 10 scales and the sampling)")
    args = p.parse_args()

    var, vae = build(args.depth, args.dtype, args.attn_impl)
    result = measure(var, vae, args.batch, args.cfg, args.iters, args.compile_only)
    line = (f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} depth={args.depth} "
            f"batch={args.batch} dtype={args.dtype} attn={args.attn_impl} compile_s={result['compile_s']:.1f}")
    if args.compile_only:
        print(line)
        return
    if args.breakdown:
        decode_s = measure_decode(vae, init_params(var, vae, 0)[1], args.batch, args.iters)
        line += f" decode_s={decode_s:.2f} transformer_and_sampling_s={result['batch_s'] - decode_s:.2f}"
    print(f"{line} batch_s={result['batch_s']:.2f} images_per_s={args.batch / result['batch_s']:.2f} "
          f"(median {args.batch / result['median_batch_s']:.2f})")


if __name__ == "__main__":
    from bigvar import cpu_tuning
    cpu_tuning.reexec_with_huge_pages()  # as `python -m bigvar.main` runs on a CPU
    main()
