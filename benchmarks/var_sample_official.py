"""The official PyTorch VAR sampler's throughput on this machine, for comparison with
benchmarks/var_sample.py. Runs in a separate torch environment against a checkout of
FoundationVision/VAR (not part of bigvar; nothing of it is copied here):

  python benchmarks/var_sample_official.py --ref /path/to/VAR --depth=16 --batch=8

Random weights (build_vae_var's init), fp32, cfg 1.5, top-k 900, top-p 0.96, like the FID protocol.
Prints one line: depth, batch, seconds per batch, images/s.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import types


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ref", required=True, help="checkout of FoundationVision/VAR")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--breakdown", action="store_true", help="also time the VQ-VAE decode alone")
    p.add_argument("--amp", default="", choices=["", "bfloat16", "float16"],
                   help="autocast dtype, as the official demo samples on a GPU (default: fp32)")
    args = p.parse_args()

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if "huggingface_hub" not in sys.modules:
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:  # only used for a hub mixin class
            hub = types.ModuleType("huggingface_hub")
            hub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
            sys.modules["huggingface_hub"] = hub
    sys.path.insert(0, args.ref)
    from models import build_vae_var

    shared = args.depth == 36
    pn = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32) if shared else (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    vae, var = build_vae_var(V=4096, Cvae=32, ch=160, share_quant_resi=4, device=args.device, patch_nums=pn,
                             num_classes=1000, depth=args.depth, shared_aln=shared, attn_l2_norm=True,
                             flash_if_available=False, fused_if_available=False)
    # build_vae_var disables torch's default init for speed and only initialises VAR: give the
    # VQ-VAE finite random weights (uninitialised memory can hold NaNs).
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in vae.parameters():
            param.copy_(torch.randn(param.shape, generator=g).to(param.device) * 0.02)
    var.eval()
    labels = (torch.arange(args.batch) % 1000).to(args.device)
    autocast = (torch.autocast(args.device, dtype=getattr(torch, args.amp)) if args.amp
                else contextlib.nullcontext())
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode(), autocast:
        var.autoregressive_infer_cfg(B=args.batch, label_B=labels, g_seed=0, cfg=1.5, top_k=900, top_p=0.96)
        sync()
        for i in range(args.iters):
            start = time.perf_counter()
            var.autoregressive_infer_cfg(B=args.batch, label_B=labels, g_seed=i + 1, cfg=1.5, top_k=900, top_p=0.96)
            sync()
            times.append(time.perf_counter() - start)
    best = min(times)
    extra = ""
    if args.breakdown:  # f̂ → image, as autoregressive_infer_cfg's last line
        f_hat = torch.randn(args.batch, 32, pn[-1], pn[-1], generator=g).to(args.device)
        decode_times = []
        with torch.inference_mode(), autocast:
            vae.fhat_to_img(f_hat)
            for _ in range(args.iters):
                sync()
                start = time.perf_counter()
                vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
                sync()
                decode_times.append(time.perf_counter() - start)
        decode_s = min(decode_times)
        extra = f" decode_s={decode_s:.2f} transformer_and_sampling_s={best - decode_s:.2f}"
    print(f"official torch={torch.__version__} device={args.device} amp={args.amp or 'none'} "
          f"threads={torch.get_num_threads()} depth={args.depth} "
          f"batch={args.batch} batch_s={best:.2f} images_per_s={args.batch / best:.2f}{extra}")


if __name__ == "__main__":
    main()
