"""Speed on one accelerator, everything in one run (a few minutes on a GPU or TPU): one table,
printed and written as JSON.

  python benchmarks/gpu_suite.py --out=gpu_suite.json \\
      [--official_var=refs/VAR --official_bigr=refs/BiGR --official_python=/usr/bin/python3]
  python benchmarks/gpu_suite.py --smoke --out=/tmp/smoke.json   # tiny configs, any CPU (a test)

Rows (random weights throughout; each row is measured independently and an error or an
out-of-memory is recorded in its row instead of stopping the run):
  - VAR-d16 and VAR-d30 sampling (cfg 1.5, top-k 900, top-p 0.96, VQ-VAE decode included),
    batch 64 and 256, bf16 weights and KV cache, attention through the chip's fused kernel
    (cuDNN on a GPU, Pallas splash on a TPU) and through XLA: compile seconds, images/s,
    achieved TFLOP/s and the share of the chip's bf16 peak;
  - the official VAR sampler on the same chip (`autoregressive_infer_cfg` under bf16 autocast,
    as its demo, same batch and settings), when a checkout is given: images/s and the ratio;
  - BiGR-L sampling (20 iterations, 100 transcoder steps, cfg 2.5), ours and the official one;
  - training steps: VAR-d16 and BiGR-L in bf16 with remat and `attn_impl=auto` at the largest
    batch that fits (tried from large to small), tokens/s and MFU; the VQ-VAE tokenizer's step,
    images/s.

FLOP counts (multiply-accumulates × 2; the counts are the model's matmuls and attention):
  VAR sampling, per image: branches × Σ_s pn_s² · (depth · (12·d² + 2·L_s·d) + d·V), with
    branches = 2 under CFG, L_s the tokens of scales ≤ s (what scale s attends to), d the width,
    V = 4096 (the head); the per-image AdaLN (depth · 6·d²) and the VQ-VAE decode are left out.
    VAR-d16: 0.60 TFLOP per image, VAR-d30: 3.76 TFLOP.
  Training (MFU): 6 · trained parameters · tokens per step (forward + backward), plus the
    attention's 12 · depth · Σ_tokens L · d, over the chip's bf16 peak.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling benchmark scripts

import jax  # noqa: E402
import numpy as np  # noqa: E402

# Dense bf16 peak TFLOP/s per chip, by jax's device_kind (vendor data sheets).
PEAK_BF16_TFLOPS = {
    "NVIDIA H200": 989.0, "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0,
    "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-SXM4-40GB": 312.0, "NVIDIA L4": 121.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0,
}
VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def peak_tflops() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if kind.startswith(k)), None)


def var_sampling_flops(depth: int, width: int, patch_nums=VAR_PATCH_NUMS, vocab: int = 4096,
                       cfg: bool = True) -> float:
    """FLOPs of one VAR sample (see the module docstring for the formula)."""
    total, seen = 0.0, 0
    for pn in patch_nums:
        seen += pn * pn
        total += pn * pn * (depth * (12 * width ** 2 + 2 * seen * width) + width * vocab)
    return 2.0 * (2 if cfg else 1) * total


def train_flops(params: int, tokens: int, depth: int, width: int, attended: int) -> float:
    """FLOPs of one training step: 6·params·tokens plus attention (12·depth·attended·width,
    `attended` = Σ over the step's tokens of the keys each one sees)."""
    return 6.0 * params * tokens + 12.0 * depth * attended * width


def _is_oom(error: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


class Table:
    def __init__(self, smoke: bool):
        self.rows, self.smoke = [], smoke
        self.device = f"{jax.default_backend()} {jax.devices()[0].device_kind} × {jax.device_count()}"

    def add(self, **row) -> dict:
        row = {k: v for k, v in row.items() if v is not None}
        self.rows.append(row)
        shown = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        print(shown, flush=True)
        return row

    def attempt(self, what: str, measure, **row) -> dict | None:
        """`measure()` → dict of figures merged into the row; errors become the row's note."""
        began = time.perf_counter()
        try:
            figures = measure()
        except Exception as e:  # noqa: BLE001 (one row's failure must not stop the suite)
            note = "out of memory" if _is_oom(e) else f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            self.add(what=what, **row, error=note, seconds=time.perf_counter() - began)
            return None
        return self.add(what=what, **row, **figures)

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"device": self.device, "date": time.strftime("%Y-%m-%d"), "smoke": self.smoke,
                       "jax": jax.__version__, "rows": self.rows}, f, indent=1)


# ---------------------------------------------------------------------------------------------
# Sections


def var_sampling(table: Table, smoke: bool) -> dict:
    import var_sample
    peak = peak_tflops()
    best = {}
    depths = (2,) if smoke else (16, 30)
    batches = (8,) if smoke else (64, 256)
    fused = {"gpu": "cudnn", "tpu": "splash"}.get(jax.default_backend())
    attns = (fused, "xla") if fused else ("xla",)
    for depth in depths:
        for attn in attns:
            var, vae = var_sample.build(depth, "bfloat16", attn, tiny=smoke)
            flops = var_sampling_flops(depth, var.embed_dim, var.patch_nums, var.vocab_size)
            for batch in batches:
                def measure():
                    r = var_sample.measure(var, vae, batch, cfg=1.5, iters=1 if smoke else 3)
                    ips = batch / r["batch_s"]
                    tflops = ips * flops / 1e12
                    return {"compile_s": r["compile_s"], "images_per_s": ips, "tflops": tflops,
                            "peak_pct": 100 * tflops / peak if peak else None}
                row = table.attempt("var sample", measure, depth=depth, batch=batch, dtype="bf16",
                                    attn=attn)
                if row and row["images_per_s"] > best.get((depth, batch), {}).get("images_per_s", 0):
                    best[(depth, batch)] = row
    if not fused:
        table.add(what="var sample", attn="cudnn/splash", note="skipped: the fused attention "
                  f"kernels need a GPU or a TPU (backend {jax.default_backend()})")
    return best


def official_var(table: Table, ours: dict, checkout: str, python: str, smoke: bool) -> None:
    for (depth, batch), row in sorted(ours.items()):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "var_sample_official.py")
        cmd = [python, script, f"--ref={checkout}", f"--depth={depth}", f"--batch={batch}",
               "--iters=1" if smoke else "--iters=3", f"--device={_torch_device()}", "--amp=bfloat16"]

        def measure():
            ips = _run_official(cmd, r"images_per_s=([\d.]+)")
            return {"images_per_s": ips, "ours_over_official": row["images_per_s"] / ips}
        table.attempt("official var sample", measure, depth=depth, batch=batch, dtype="bf16 autocast")


def bigr_sampling(table: Table, smoke: bool, checkout: str | None, python: str) -> None:
    import bigr_sample
    batch, num_iter, steps = (4, 2, 5) if smoke else (64, 20, 100)
    model, bae = bigr_sample.build("l_d24", "bfloat16", "auto", tiny=smoke)

    def measure():
        r = bigr_sample.measure(model, bae, batch, num_iter, steps, cfg=2.5, iters=1)
        return {"compile_s": r["compile_s"], "images_per_s": batch / r["batch_s"]}
    ours = table.attempt("bigr sample", measure, model="tiny" if smoke else "L", batch=batch,
                         num_iter=num_iter, transcoder_steps=steps, dtype="bf16")
    if checkout and ours:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bigr_sample_official.py")
        cmd = [python, script, f"--ref={checkout}", "--size=L", f"--batch={batch}",
               f"--num_iter={num_iter}", f"--transcoder_steps={steps}", "--cfg=2.5",
               f"--device={_torch_device()}", "--amp=bfloat16"]

        def official():
            seconds = _run_official(cmd, r"batch_s=([\d.]+)")
            return {"images_per_s": batch / seconds,
                    "ours_over_official": ours["images_per_s"] / (batch / seconds)}
        table.attempt("official bigr sample", official, model="L", batch=batch, num_iter=num_iter,
                      transcoder_steps=steps, dtype="bf16 autocast")


def train_steps(table: Table, smoke: bool) -> None:
    import train_step

    from bigvar import config_lib
    peak = peak_tflops()
    plans = ([("var", "var_tiny.py", (16, 8)), ("bigr", "bigr_tiny.py", (16, 8))] if smoke else
             [("var", "var_d16.py", (512, 256, 128, 64, 32)),
              ("bigr", "bigr_l_d24.py", (512, 256, 128, 64, 32))])
    for model, config_file, batches in plans:
        for batch in batches:  # the largest that fits
            config = config_lib.load_config_file(config_file)
            if smoke and model == "var":
                config.var.patch_nums = (1, 2, 3, 4)
            if smoke and model == "bigr":
                config.bae.img_size, config.bigr.seq_len = 64, 16
            config[model].update(dtype="bfloat16", remat=True, attn_impl="auto")
            if model == "var":
                depth, width = config.var.depth, config.var.embed_dim or 64 * config.var.depth
            else:
                depth, width = config.bigr.n_layer, config.bigr.dim

            def measure():
                r = train_step.measure(config, batch, iters=1 if smoke else 3)
                tokens = r["tokens_per_image"] * batch
                # Keys attended: VAR's block-causal mask (scale s sees scales ≤ s); BiGR: all.
                if model == "var":
                    seen, attended = 0, 0
                    for pn in config.var.patch_nums:
                        seen += pn * pn
                        attended += pn * pn * seen
                    attended *= batch
                else:
                    attended = tokens * r["tokens_per_image"]
                flops = train_flops(r["params"], tokens, depth, width, attended)
                return {"step_s": r["step_s"], "tokens_per_s": tokens / r["step_s"],
                        "images_per_s": batch / r["step_s"], "compile_s": r["first_step_s"],
                        "mfu_pct": 100 * flops / r["step_s"] / (peak * 1e12) if peak else None}
            row = table.attempt("train step", measure, model=config_file, batch=batch,
                                dtype="bf16", remat=True)
            if row is not None:
                break


def tokenizer_step(table: Table, smoke: bool) -> None:
    from bigvar import config_lib, parallel
    from bigvar.train.tokenizer import TokenizerTrainer, value_range
    batch = 8 if smoke else 64
    config = config_lib.load_config_file("vqvae_tiny.py" if smoke else "vqvae.py")
    config.train.batch_size = batch

    def measure():
        mesh = parallel.make_mesh(config.mesh)
        trainer = TokenizerTrainer(config, mesh, 1_281_167)
        state = trainer.init_state(config.seed)
        size = config_lib.image_size(config)
        images = np.random.default_rng(0).uniform(*value_range(config), (batch, size, size, 3))
        data = parallel.global_batch({"image": images.astype(np.float32),
                                      "label": np.zeros(batch, np.int32)}, mesh)
        began = time.perf_counter()
        state, metrics = trainer.step(state, data, 0)
        jax.block_until_ready(metrics)
        first = time.perf_counter() - began
        times = []
        for i in range(1 if smoke else 3):
            began = time.perf_counter()
            state, metrics = trainer.step(state, data, i + 1)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - began)
        return {"compile_s": first, "step_s": float(np.mean(times)),
                "images_per_s": batch / float(np.mean(times))}
    table.attempt("tokenizer step", measure, model="vqvae_tiny" if smoke else "vqvae", batch=batch)


def _torch_device() -> str:
    return "cuda" if jax.default_backend() == "gpu" else "cpu"


def _run_official(cmd: list[str], pattern: str) -> float:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    match = re.search(pattern, proc.stdout)
    if proc.returncode or not match:
        raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1] if
                           (proc.stderr or proc.stdout).strip() else f"exit {proc.returncode}")
    return float(match.group(1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_suite.json", help="the table as JSON")
    p.add_argument("--smoke", action="store_true", help="tiny configs (a CPU run of every section)")
    p.add_argument("--official_var", default="", help="a checkout of FoundationVision/VAR")
    p.add_argument("--official_bigr", default="", help="a checkout of haoosz/BiGR")
    p.add_argument("--official_python", default=sys.executable,
                   help="the interpreter with torch for the official samplers")
    p.add_argument("--only", default="", help="comma-separated sections: var,bigr,train,tokenizer")
    args = p.parse_args(argv)

    only = set(filter(None, args.only.split(",")))
    table = Table(args.smoke)
    print(f"# {table.device}, jax {jax.__version__}, peak bf16 {peak_tflops() or '?'} TFLOP/s",
          flush=True)
    began = time.perf_counter()
    if not only or "var" in only:
        ours = var_sampling(table, args.smoke)
        if args.official_var:
            official_var(table, ours, args.official_var, args.official_python, args.smoke)
    if not only or "bigr" in only:
        bigr_sampling(table, args.smoke, args.official_bigr or None, args.official_python)
    if not only or "train" in only:
        train_steps(table, args.smoke)
    if not only or "tokenizer" in only:
        tokenizer_step(table, args.smoke)
    table.dump(args.out)
    print(f"# {len(table.rows)} rows in {time.perf_counter() - began:.0f} s → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
