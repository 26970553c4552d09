"""Bytes that a run's logs upload to a gs:// logdir: appends composed onto the objects (bigvar's
MetricWriter) vs the whole files uploaded after every write (what it did before, and still does
on stores without compose), against the tests' GCS emulator on localhost.

  python benchmarks/log_upload_bytes.py --steps=10000

Each strategy logs --steps steps through `MetricWriter` (metrics.jsonl and a TensorBoard event
file), each one `write_scalars` of the scalars the trainer logs. Prints one line per strategy:
the object data uploaded (counted by the emulator as it receives it), all request bodies, the
final size of the logs in the bucket, and seconds (of a Python emulator: not the service's).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import gcs_emulator  # noqa: E402  (tests/gcs_emulator.py)

BUCKET = "bench"


def _log(logdir: str, steps: int) -> None:
    from bigvar.train.metric_writer import MetricWriter
    with MetricWriter(logdir) as writer:
        for step in range(1, steps + 1):
            writer.write_scalars(step, {
                "loss": 5.0 / step ** 0.5, "acc": 100 * step / (steps + 1), "grad_norm": 1 + 1 / step,
                "lr": 1e-4 * min(1, step / 500), "skipped_images": 0, "steps_per_s": 3.7 + step % 7 / 100})


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--strategies", default="append,whole",
                   help="comma-separated: append (compose) and/or whole (upload after each write)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bigvar-bench-gcs-") as folder, \
            gcs_emulator.running(os.path.join(folder, "data"), bucket=BUCKET,
                                 soft_delete=False) as env:
        os.environ.update(env)
        from bigvar import storage
        for strategy in args.strategies.split(","):
            if strategy not in ("append", "whole"):
                raise SystemExit(f"--strategies: unknown strategy {strategy!r}; use append, whole")
            logdir = f"gs://{BUCKET}/{strategy}/logs"
            with contextlib.ExitStack() as stack:
                if strategy == "whole":  # the mirror's way on stores without compose
                    can_compose = storage._can_compose
                    storage._can_compose = lambda fs: False
                    stack.callback(setattr, storage, "_can_compose", can_compose)
                before = gcs_emulator.received(env)
                began = time.perf_counter()
                _log(logdir, args.steps)
                seconds = time.perf_counter() - began
            after = gcs_emulator.received(env)
            sizes = storage.filesystem(logdir).du(logdir, total=False)
            final = sum(sizes.values())
            uploaded = after["payload"] - before["payload"]
            print(f"{strategy}: {args.steps} writes, uploaded {uploaded / 2**20:.2f} MiB of object "
                  f"data ({(after['body'] - before['body']) / 2**20:.2f} MiB of request bodies), "
                  f"logs {final / 2**20:.3f} MiB in {len(sizes)} objects "
                  f"(uploaded/size {uploaded / final:.2f}), {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
