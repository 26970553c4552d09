"""The README's hardware table: for each released model, the memory one device needs to sample
and to train, and the batch that fits on a 16, 40 or 80 GiB device.

  python benchmarks/hardware_table.py --out=hardware.json             # every model (hours on 2 cores)
  python benchmarks/hardware_table.py --models=var:d16 --only=sampling  # one row, sampling only
  python benchmarks/hardware_table.py --tables=sampling.json,training.json  # the table of earlier runs

Everything is compiled ahead of time on this CPU for fake devices, as `python -m bigvar.plan` does
(nothing is allocated; XLA's buffer assignment gives the temporaries, so an accelerator's
compiler may differ somewhat; weights and optimizer state are exact):

- sampling with `dtype=bfloat16`, one device: the weights as the sampler holds them, then a
  line through the bytes at 8 and 16 images (the sampling job's own estimate,
  `bigvar.sampling.memory`): the images per device that fit 85% of each memory size;
- training, bfloat16 compute, rematerialised layers, weights, Adam state (and BiGR's EMA)
  sharded over 8 devices (`mesh.fsdp=8`): the step's bytes per device at 1, 8 and 32 images per
  device, joined by straight lines and the last one extended: the per-device batch that fits
  85%. (One line through two small batches misleads: up to some batch the peak is set by
  buffers the size of the weights, not by activations, and it hardly grows.)

Prints one table (markdown) and writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

GIB = 1 << 30
MEMORY_SIZES_GIB = (16, 40, 80)
MODELS = ("var:d16", "var:d20", "var:d24", "var:d30", "var:d36", "bigr:l_d24", "bigr:xl_d24",
          "bigr:xxl_d24", "bigr:xxl_d32", "bigr:l_d32_512")
TRAIN_DEVICES = 8
TRAIN_BATCHES = (1, 8, 32)  # images per device of the compiles


def _config(model: str, name: str):
    from bigvar import config_lib
    config = config_lib.load_config_file(f"{model}.py", name)
    config[model].dtype = "bfloat16"
    return config


def sampling_row(model: str, name: str) -> dict:
    from bigvar import models, parallel
    from bigvar.sampling import job, memory
    config = _config(model, name)
    mesh = parallel.make_mesh(config.mesh)
    generator, tokenizer = models.build(config)
    sampler = job.make_sampler_from_params(config, generator, tokenizer,
                                           *models.param_shapes(generator, tokenizer), mesh)
    fixed, per_image = memory.sampling_memory(sampler)
    weights = memory.weight_bytes(sampler)
    fits = {str(m): memory.largest_batch(fixed, per_image, memory.MEMORY_HEADROOM * (m * GIB - weights),
                                    cap=1 << 20) for m in MEMORY_SIZES_GIB}
    return {"weights_gib": weights / GIB, "per_image_gib": per_image / GIB,
            "fixed_gib": fixed / GIB, "images_per_device": fits}


def training_row(model: str, name: str) -> dict:
    """Run in a process of its own: the fake devices are set when JAX starts."""
    from bigvar import plan
    config = _config(model, name)
    config[model].remat = True
    config.mesh.update(data=1, fsdp=TRAIN_DEVICES, tensor=1)
    runs = {b: plan.plan(config, TRAIN_DEVICES, b * TRAIN_DEVICES) for b in TRAIN_BATCHES}
    fixed = sum(runs[1][k] for k in ("params", "optimizer", "ema", "tokenizer"))
    return {"fixed_gib": fixed / GIB,
            "total_gib": {str(b): (fixed + r["temporaries"] + r["batch"]) / GIB
                          for b, r in runs.items()}}


def training_batch(row: dict, memory_gib: float) -> int:
    """The largest per-device batch whose bytes, interpolated between the compiled batches (and
    extrapolated past the last), fit the sampling job's headroom of `memory_gib`."""
    from bigvar.sampling import memory
    usable = memory.MEMORY_HEADROOM * memory_gib
    points = sorted((int(b), gib) for b, gib in row["total_gib"].items())

    def total(batch):
        if batch <= points[-1][0]:
            return float(np.interp(batch, *zip(*points)))
        (b0, g0), (b1, g1) = points[-2:]
        return g1 + (g1 - g0) * (batch - b1) / (b1 - b0)

    batch = 0
    while batch < 1 << 16 and total(batch + 1) <= usable:
        batch += 1
    return batch


def _in_subprocess(function: str, model: str, name: str, devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import hardware_table as h; print('RESULT', json.dumps(h.{function}({model!r}, {name!r})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{function}({model}:{name}) failed:\n{out.stderr[-3000:]}")
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def print_table(rows: dict) -> None:
    sizes = " / ".join(str(m) for m in MEMORY_SIZES_GIB)
    print(f"| model | sampling: weights GiB, GiB per image | images per device on {sizes} GiB "
          f"| training: GiB per device at batch 1 | batch per device on {sizes} GiB |")
    print("|---|---|---|---|---|")
    for entry, row in rows.items():
        s, t = row.get("sampling"), row.get("training")
        sample = (f"{s['weights_gib']:.2f}, {s['per_image_gib']:.3f} | " + " / ".join(
            str(s["images_per_device"][str(m)]) for m in MEMORY_SIZES_GIB)) if s else "– | –"
        train = (f"{t['total_gib']['1']:.1f} | " + " / ".join(
            str(training_batch(t, m)) for m in MEMORY_SIZES_GIB)) if t else "– | –"
        print(f"| {entry} | {sample} | {train} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--only", choices=("sampling", "training"), default=None)
    parser.add_argument("--out", default="", help="write the rows as JSON")
    parser.add_argument("--tables", default="", help="JSON files of earlier runs: print their table")
    args = parser.parse_args()
    rows: dict = {}
    if args.tables:
        for path in args.tables.split(","):
            with open(path) as f:
                for entry, row in json.load(f).items():
                    rows.setdefault(entry, {}).update(row)
        print_table(rows)
        return 0
    for entry in args.models.split(","):
        model, name = entry.split(":")
        row = {}
        if args.only != "training":
            row["sampling"] = _in_subprocess("sampling_row", model, name, 1)
        if args.only != "sampling":
            row["training"] = _in_subprocess("training_row", model, name, TRAIN_DEVICES)
        rows[entry] = row
        print(entry, json.dumps(row), flush=True)
        if args.out:  # after every row: a long run keeps what it measured
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
