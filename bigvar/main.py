"""Entry point: `python -m bigvar.main --config=configs/<file>.py[:arg] --workdir=DIR`.

Dispatches on `config.mode`:
  sample   class-conditional sampling to PNGs, a grid and an .npz (`bigvar.sampling.job`);
  train    train the generator (`bigvar.train.generator`) or, for a tokenizer config
           (model vqvae | bae), the tokenizer (`bigvar.train.tokenizer`); resumable;
  export   the newest training checkpoint (its EMA when kept) → a weights directory for
           `--config.init_from` / `--config.tokenizer_from` (written to <workdir>/export);
  eval     FID, sFID, Inception Score, Precision and Recall as the ADM evaluator computes them
           (`bigvar.eval.job`): samples with the sampling job, or evaluates `eval.samples`;
  probe    BiGR only: linear probe of the generator's features (`bigvar.eval.probe`).
The demo config (`configs/demo.py`, model=demo) runs its stages in order (`bigvar.demo`).
Override any field on the command line, e.g. `--config.sample.cfg=4 --config.init_from=ckpt/var_d16`.
On several hosts (TPU pod slice, SLURM), pass `--multihost` on every host.
A user error (an unknown `--config.*` field, a bad value or path, a run directory in use or made
with another config) prints one line, `error: …`, and exits with status 2.
"""
from __future__ import annotations

import logging
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from bigvar.errors import UserError, invalid

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs, logs and checkpoints go.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first "
                                "(one process per host on TPU pods, SLURM, multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str):
    """Runs the job `config` names; each job validates its config first."""
    from bigvar import config_lib, rundir
    workdir = rundir.prepare(workdir)
    if config.get("model") == "demo":
        from bigvar import demo
        return demo.run(config, workdir)
    if config.mode not in config_lib.MODES:
        invalid("mode", config.mode, f"one of {config_lib.MODES}")
    if config.model in config_lib.TOKENIZERS:
        from bigvar.train import tokenizer
        if config.mode == "train":
            return tokenizer.run(config, workdir)
        return {"exported": tokenizer.export_tokenizer(config, workdir)}
    if config.mode == "sample":
        from bigvar.sampling import job
        return job.run(config, workdir)
    if config.mode == "train":
        from bigvar.train import generator
        return generator.run(config, workdir)
    if config.mode == "export":
        from bigvar.train import generator
        return {"exported": generator.export_weights(config, workdir)}
    if config.mode == "probe":
        from bigvar.eval import probe
        return probe.run(config, workdir)
    from bigvar.eval import job as eval_job
    return eval_job.run(config, workdir)


class _QuietLibraries(logging.Filter):
    """orbax narrates every checkpoint step at INFO; keep its warnings, drop the chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
    global _FLAGS_PARSED
    _FLAGS_PARSED = True
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").addFilter(_QuietLibraries())
    if _MULTIHOST.value:
        import jax
        jax.distributed.initialize()
    try:
        summary = run(_CONFIG.value, _WORKDIR.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if summary:
        for key, value in summary.items():
            print(f"{key}: {value}")


_FLAGS_PARSED = False


def unknown_field_message(error: BaseException, argv: list[str]) -> str | None:
    """A one-line explanation when flag parsing failed on a `--config.<field>` the config file
    does not have (ml_collections raises a bare AttributeError/KeyError naming only the key)."""
    text = str(error)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if not flag.startswith("--config."):
            continue
        field = flag[len("--config."):]
        if any(re.search(rf"'\\?{re.escape(name)}\\?'", text) for name in field.split(".")):
            hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""
            return (f"{flag}: the config has no field {field!r}{hint} (the config file lists the "
                    "fields it has)")
    return None


if __name__ == "__main__":
    from bigvar import cpu_tuning
    cpu_tuning.reexec_with_huge_pages()  # once, before JAX starts: glibc reads it at exec
    try:
        app.run(main)
    except (AttributeError, KeyError) as e:  # raised while parsing --config.* overrides
        message = None if _FLAGS_PARSED else unknown_field_message(e, sys.argv[1:])
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
