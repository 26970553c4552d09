"""Entry point: `python -m bigvar.main --config=configs/<file>.py[:arg] [--workdir=DIR]`
(the workdir defaults to runs/<file>[-<arg>]). The configs ship with the package, so
`configs/var_d30.py`, `var_d30.py` and `var_d30` name the same one from any directory.

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
On several hosts (TPU pod slice, GKE, SLURM), run the same command with `--multihost` on every
host (`launch/` has the scripts); the workdir must be one every host sees.
A user error (an unknown flag or `--config.*` field, a bad value, a missing config file or path, a
run directory in use or made with another config) prints one line, `error: …`, and exits with
status 2, leaving no new run directory behind; training stopped by SIGTERM/SIGINT after saving its
checkpoint exits with status 75 (launchers restart it; the same command resumes); anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

if __name__ == "__main__":  # before anything imports JAX: glibc reads the tunable at exec
    from bigvar import cpu_tuning
    cpu_tuning.reexec_with_huge_pages()

import json
import logging
import os
import re
import sys

from absl import app, flags

from bigvar import config_lib, console
from bigvar.errors import PREEMPTED_EXIT_STATUS, Preempted, UserError, invalid

_CONFIG = config_lib.define_config_flag("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs, logs and checkpoints go "
                                "(default: runs/<config name>[-<config argument>]).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first "
                                "(one process per host on TPU pods, SLURM, multi-node GPU).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost: HOST:PORT of process 0's coordination service; "
    "by default JAX finds it (Cloud TPU, GKE, SLURM) or reads JAX_COORDINATOR_ADDRESS.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --multihost: how many "
                                      "processes form the job (by default JAX finds it).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --multihost: this process's index in "
                                   "[0, --num_processes) (by default JAX finds it).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "With --multihost: a process that stops answering for this many "
    "seconds (killed, host lost) stops the whole job, each process with an error.")
_JOIN_TIMEOUT = flags.DEFINE_integer(
    "join_timeout", 300, "With --multihost: how many seconds the processes wait for each other "
    "at the start; then every process that came stops, naming those that did not.")
_STORAGE_TIMEOUT = flags.DEFINE_float(
    "storage_timeout", 600, "How many seconds reads and writes of gs:// (or other remote) paths "
    "retry through a storage outage, reporting what waits, before the job stops with an error.")
flags.mark_flags_as_required(["config"])


def run(config, workdir: str):
    """Runs the job `config` names in `workdir`; a refused start leaves no new folder behind."""
    from bigvar import multihost, rundir
    flat = {"workdir": workdir, **_flat_config(config.to_dict())}
    multihost.require_agreement(json.loads(json.dumps(flat, default=str)), "flags")
    with rundir.removed_if_refused(workdir):
        return _run_job(config, rundir.prepare(workdir))


def _flat_config(values: dict, prefix: str = "config.") -> dict:
    """{"config.train.batch_size": 8, …}: each leaf of a config's dict by its flag name."""
    flat = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _run_job(config, workdir: str):
    """Dispatches on the config's model and mode; each job validates its config first."""
    from bigvar import config_lib, storage
    if config.get("model") == "demo":
        if storage.is_url(workdir):
            raise UserError(f"--workdir={workdir}: the demo runs in a local directory")
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


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, heartbeat_timeout: int = 100,
                           join_timeout: int = 300) -> None:
    """Joins this process to the job (`jax.distributed.initialize`); what is not given, JAX finds
    from the cluster (Cloud TPU, GKE, SLURM, Open MPI). The processes first check in with each
    other (`bigvar.rendezvous`), so one that never starts is named in one line after
    `join_timeout` seconds. On CPU, the processes' collectives go through gloo (several CPU
    processes on one machine are how the multi-host paths are tested)."""
    import jax
    from bigvar import rendezvous
    coordinator_address, num_processes, process_id = _detected(
        coordinator_address, num_processes, process_id, join_timeout)
    if None in (coordinator_address, num_processes, process_id):
        print(f"waiting for every process to join (up to --join_timeout={join_timeout} s)",
              flush=True)
    elif process_id == 0:
        rendezvous.gather(coordinator_address, num_processes, join_timeout)
    else:
        rendezvous.join(coordinator_address, num_processes, process_id, join_timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=join_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
    logging.info("process %d of %d: %d of the job's %d devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def _detected(coordinator_address, num_processes, process_id, timeout):
    """The job's coordinator, size and this process's index: the flags', else what JAX finds
    from the cluster (Nones where it finds nothing or its way of finding has changed)."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if None not in (coordinator_address, num_processes, process_id):
        return coordinator_address, num_processes, process_id
    try:
        from jax._src import clusters  # JAX's own detection, as jax.distributed.initialize does
        found = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            coordinator_address, num_processes, process_id, None, None, timeout)
        return tuple(found[:3])
    except Exception:  # noqa: BLE001 (a private API: JAX then detects the cluster itself)
        return coordinator_address, num_processes, process_id


def default_workdir(config_argument: str) -> str:
    """runs/<config file name>[-<its argument>]: `configs/bigr.py:l_d24` → runs/bigr-l_d24."""
    path, _, arg = config_argument.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}-{arg}" if arg else name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    console.quiet_library_logs()
    preempted = None
    try:
        from bigvar import storage
        storage.set_outage_limit(_STORAGE_TIMEOUT.value)
        if _MULTIHOST.value:
            initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                   _HEARTBEAT_TIMEOUT.value, _JOIN_TIMEOUT.value)
        elif any(flags.FLAGS[name].present for name in ("coordinator_address", "num_processes",
                                                          "process_id")):
            raise UserError("--coordinator_address, --num_processes and --process_id go with "
                            "--multihost: add it")
        workdir = _WORKDIR.value
        if workdir is None:
            workdir = default_workdir(flags.FLAGS["config"].config_filename)
            print(f"workdir: {workdir} (--workdir=DIR to choose another)", flush=True)
        summary = run(_CONFIG.value, workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        _leave(2)
    except Preempted as e:  # the checkpoint landed: leave the job as usual, then exit 75
        summary, preempted = e.summary, e
    if summary:
        for key, value in summary.items():
            print(f"{key}: {value}")
    if _MULTIHOST.value:
        # Leave the job now, before the interpreter's exit joins leftover threads (data loader,
        # thread pools): JAX's atexit shutdown is a barrier with a time limit for every process.
        sys.stdout.flush()
        import jax
        jax.distributed.shutdown()
    if preempted is not None:
        # EX_TEMPFAIL, not 0: XPK/JobSet, SLURM and launch/tpu_vm.sh restart the job on it.
        print(preempted, file=sys.stderr, flush=True)
        _leave(PREEMPTED_EXIT_STATUS)
    _leave(0)


def _leave(status: int) -> None:
    """Exits with `status`; at once where a checkpoint save that storage failed left orbax's
    threads waiting minutes for it (`checkpoints.saves_left_threads`), which the interpreter's
    exit would join: what the job wrote has landed or been given up by then."""
    checkpoints = sys.modules.get("bigvar.train.checkpoints")
    if checkpoints is not None and checkpoints.saves_left_threads():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    if status:
        sys.exit(status)


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


def _flag_error_message(error: flags.Error) -> str:
    """absl's message, without the traceback ml_collections puts in it when the config file's
    get_config raised: its first line and, where a traceback follows, the exception's line."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and re.match(r"^\w+(Error|Exception): ", lines[-1]):
        return f"{lines[0].rstrip(':')} {lines[-1]}".replace("Error whilst parsing config file ", "")
    return lines[0]


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; a mistake on the command line (an unknown or missing flag, a bad
    value, an unknown `--config.<field>`, a missing config file) is one line and exit status 2."""
    def fail(message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        fail(_flag_error_message(e))
    except (AttributeError, KeyError) as e:  # raised while applying --config.* overrides
        message = unknown_field_message(e, argv[1:])
        if message is None:
            raise
        fail(message)
    return remaining


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
