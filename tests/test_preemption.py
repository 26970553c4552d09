"""Preemption: training stopped by SIGTERM saves its checkpoint, and `python -m bigvar.main` exits
with status 75 (EX_TEMPFAIL, "retry"), the status the launchers restart on; the same command run
again resumes from that checkpoint and exits 0. The trainer here is the real loop with a trivial
step (no model to compile), so the test takes seconds; tests/test_trainer.py and
tests/test_multihost.py (slow tier) do the same with the real trainers."""
import os
import signal
import subprocess
import sys

from bigvar import rundir
from bigvar.errors import PREEMPTED_EXIT_STATUS
from bigvar.train.checkpoints import Checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bigvar.main's own main() and flags, with `run` replaced by the loop and a step that only counts;
# each step prints its number, so the test knows when to send the signal.
_CLI = """
import sys, time
import jax, jax.numpy as jnp
from absl import app
from jax.sharding import NamedSharding, PartitionSpec as P
from bigvar import main as cli, parallel
from bigvar.train import loop

def run(config, workdir):
    mesh = parallel.make_mesh(dict(data=1), jax.devices()[:1])
    replicated = NamedSharding(mesh, P())
    def step(state, batch, i):
        time.sleep(0.1)
        print(f"step {i + 1}", flush=True)
        return {"n": state["n"] + 1}, {"loss": jnp.float32(0.0), "finite": True}
    spec = loop.LoopSpec(
        name="count", steps=config.train.steps, image_size=8,
        abstract_state={"n": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)},
        init_state=lambda: {"n": jax.device_put(jnp.int32(0), replicated)}, step=step)
    summary, state = loop.run_loop(config, workdir, mesh, spec)
    return {**summary, "counted": int(state["n"])}

cli.run = run
app.run(cli.main, flags_parser=cli.parse_flags)
"""


def _train(workdir, log):
    cmd = [sys.executable, "-c", _CLI, "--config=configs/var_tiny.py", f"--workdir={workdir}",
           "--config.mode=train", "--config.train.steps=30", "--config.train.batch_size=2",
           "--config.train.checkpoint_every=100", "--config.train.log_every=100"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)


def test_sigterm_checkpoints_exits_75_and_the_same_command_resumes(tmp_path):
    workdir = tmp_path / "run"
    with open(tmp_path / "stderr.log", "w") as log:
        proc = _train(workdir, log)
        try:
            while (line := proc.stdout.readline()) and line.strip() != "step 3":
                pass
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
    stderr = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == PREEMPTED_EXIT_STATUS == 75, stderr[-3000:]
    (stopped,) = Checkpoints(str(workdir / "checkpoints")).steps()
    assert 3 <= stopped < 30, stderr[-3000:]
    assert f"steps: {stopped}" in out  # the summary, as after a finished run
    assert (f"stopped on request at step {stopped}: its checkpoint is saved in "
            f"{workdir / 'checkpoints'}; rerun the same command to resume") in stderr
    assert not (workdir / rundir.LOCK_FILE).exists()  # released: the rerun may start at once

    # The launchers' restart: the same command resumes at the saved step and finishes (exit 0).
    with open(tmp_path / "stderr2.log", "w") as log:
        proc = _train(workdir, log)
        out, _ = proc.communicate(timeout=300)
    stderr = (tmp_path / "stderr2.log").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    steps = [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")]
    assert steps == list(range(stopped + 1, 31)), stderr[-3000:]
    assert "counted: 30" in out and "steps: 30" in out
