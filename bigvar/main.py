"""Entry point: `python -m bigvar.main --config=configs/<file>.py[:arg] --workdir=DIR`.

Dispatches on `config.mode`: `sample` (VAR sampling to PNGs/grid/npz). `train` and `eval`
are reserved for the trainer and the FID pipeline. Override any field on the command line,
e.g. `--config.sample.cfg=4 --config.init_from=ckpt/var_d16`.
"""
from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs, logs and checkpoints go.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str):
    from bigvar import configs
    configs.validate(config)
    if config.mode == "sample":
        from bigvar.sampling import job
        return job.run(config, workdir)
    raise NotImplementedError(
        f"config.mode={config.mode!r} is not available yet in this version; use mode=sample")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    summary = run(_CONFIG.value, _WORKDIR.value)
    if summary:
        for key, value in summary.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    app.run(main)
