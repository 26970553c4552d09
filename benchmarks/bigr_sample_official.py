"""The official PyTorch BiGR sampler's speed on this machine, for comparison with
benchmarks/bigr_sample.py. Runs in a separate torch environment against a checkout of
haoosz/BiGR (not part of bigvar; nothing of it is copied here):

  python benchmarks/bigr_sample_official.py --ref /path/to/BiGR --size=L --batch=8 --num_iter=2

Random weights (the official init), fp32, cfg 3.0, Gumbel 0.01: `generate_with_cfg` only (the
B-AE decode is a few seconds of the total). Prints one line with seconds per batch and per
unmasking iteration.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import types


def _stub(name: str):
    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: type(attr, (), {})  # imported, never used on this path
    sys.modules.setdefault(name, module)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ref", required=True, help="checkout of haoosz/BiGR")
    p.add_argument("--size", default="L", choices=["L", "XL", "XXL"])
    p.add_argument("--bits", type=int, default=24)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num_iter", type=int, default=20)
    p.add_argument("--transcoder_steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", default="", choices=["", "bfloat16", "float16"], help="autocast dtype")
    args = p.parse_args()

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("torchvision", "torchvision.models", "torchvision.transforms", "torchvision.utils"):
        _stub(name)
    sys.path.insert(0, args.ref)
    from llama.gpt import BIGR_models

    model = BIGR_models[f"BiGR-{args.size}"](
        block_size=256, num_classes=1000, cls_token_num=1, resid_dropout_p=0.0, ffn_dropout_p=0.0,
        drop_path_rate=0.0, token_dropout_p=0.0, binary_size=args.bits, p_flip=True, n_repeat=1,
        aux=0.0, focal=0.0, sample_temperature=1.0, n_sample_steps=256,
        infer_steps=args.transcoder_steps, use_adaLN=True, seq_len=256, alpha=-1)
    model.eval().to(args.device)
    labels = (torch.arange(args.batch) % 1000).to(args.device)
    autocast = (torch.autocast(args.device, dtype=getattr(torch, args.amp)) if args.amp
                else contextlib.nullcontext())
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.inference_mode(), autocast:
        start = time.perf_counter()
        model.generate_with_cfg(cond=labels, max_new_tokens=256, cond_padding=1, num_iter=args.num_iter,
                                out_dim=args.bits, cfg_scale=args.cfg, cfg_schedule="constant",
                                gumbel_temp=0.01, gumbel_schedule="constant")
        sync()
        seconds = time.perf_counter() - start
    print(f"official torch={torch.__version__} threads={torch.get_num_threads()} size={args.size} "
          f"batch={args.batch} num_iter={args.num_iter} transcoder_steps={args.transcoder_steps} "
          f"batch_s={seconds:.1f} s_per_iteration={seconds / args.num_iter:.2f}")


if __name__ == "__main__":
    main()
