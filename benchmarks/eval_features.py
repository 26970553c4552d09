"""Throughput of the FID Inception pass (`bigvar.eval.inception.FeatureExtractor`) on the current
backend: preprocessing (resize to 299) + InceptionV3 → pool, spatial and logits features.

  python benchmarks/eval_features.py --batch=64 --size=256 --iters=3
  python benchmarks/eval_features.py --weights=ckpt/inception --preprocessing=pytorch-fid

Random weights unless --weights is given (the speed does not depend on them). The batch is
sharded over every device. Prints one line: backend, devices, batch, input size, preprocessing,
compile seconds, seconds per batch, images/s, and the hours 50 000 images would take.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from bigvar.convert.inception import param_shapes
from bigvar.eval import inception


def random_variables(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: (rng.normal(size=s.shape) * 0.05).astype(np.float32), param_shapes())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="images per pass, over all devices")
    p.add_argument("--size", type=int, default=256, help="input resolution (resized to 299)")
    p.add_argument("--preprocessing", default="adm", choices=inception.PREPROCESSING)
    p.add_argument("--weights", default="", help="a weights dir (python -m bigvar.convert inception)")
    p.add_argument("--precision", default="highest", choices=["highest", "high", "default"],
                   help="convolution precision (default = bf16/TF32 passes on TPU/GPU)")
    p.add_argument("--iters", type=int, default=3, help="timed batches")
    args = p.parse_args()

    variables = inception.load_inception(args.weights) if args.weights else random_variables()
    extractor = inception.FeatureExtractor(variables, args.preprocessing, batch_size=args.batch,
                                           precision=args.precision)
    images = np.random.default_rng(0).integers(0, 256, (extractor.batch_size, args.size, args.size, 3),
                                               dtype=np.uint8)
    start = time.perf_counter()
    extractor(images)  # compiles
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.iters):
        extractor(images)
    per_batch = (time.perf_counter() - start) / args.iters
    rate = extractor.batch_size / per_batch
    print(f"backend={jax.default_backend()} devices={jax.device_count()} batch={extractor.batch_size} "
          f"size={args.size} preprocessing={args.preprocessing} precision={args.precision} "
          f"compile_s={compile_s:.1f} s_per_batch={per_batch:.3f} images_per_s={rate:.1f} "
          f"hours_per_50k={50_000 / rate / 3600:.2f}")


if __name__ == "__main__":
    main()
