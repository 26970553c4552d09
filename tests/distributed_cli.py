"""Runs the real CLI as one JAX distributed job of several processes on localhost.

    with distributed_cli.Job(["--config=configs/var_tiny.py", ...], workdir, processes=2) as job:
        results = job.wait(timeout=600)     # [Result(returncode, output, summary)] per process

Each process is `python -m bigvar.main ... --multihost --coordinator_address=127.0.0.1:<port>
--num_processes=N --process_id=i` with `devices` fake CPU devices (collectives through gloo), in
its own session so that everything it started is killed when the block exits. `run_single`
runs the same command as one process (the reference the multi-process runs must equal).
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Result:
    returncode: int
    output: str

    @property
    def summary(self) -> dict[str, str]:
        """The `key: value` lines the CLI prints when a job ends."""
        return dict(line.split(": ", 1) for line in self.output.splitlines()
                    if re.match(r"^[a-z_]+: ", line))


def readable_tail(output: str, chars: int = 4000) -> str:
    """The end of a process's output without the C++ frames of an abort (`@ 0x…` lines), so that
    the Python stacks that follow them (every thread's, from faulthandler) fit in the report."""
    lines = [line for line in output.splitlines()
             if not re.match(r"^\s*@\s+0x", line) and not line.startswith("Extension modules:")]
    return "\n".join(lines)[-chars:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(devices: int, cache: bool = True) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    if COMPILATION_CACHE and cache:  # the runs of a test compile the same programs: compile them once
        env.update(JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


# JAX's persistent compilation cache for the processes started here (a directory, or None).
COMPILATION_CACHE: str | None = None


class Job:
    """N processes of `python -m bigvar.main` forming one job (see the module docstring)."""

    def __init__(self, args: list[str], workdir, processes: int = 2, devices: int = 4,
                 heartbeat_timeout: int = 10, log_dir=None, extra_args: dict | None = None,
                 cwds: dict | None = None, start=None):
        """`extra_args`: {process index: flags for that process only}; `cwds`: {process index:
        the directory it runs in} (default: the checkout); `start`: the indices of the processes
        to start (default: all)."""
        port = free_port()
        log_dir = str(log_dir or workdir) + ".logs"
        os.makedirs(log_dir, exist_ok=True)
        self.logs = [os.path.join(log_dir, f"process_{i}.log") for i in range(processes)]
        self.procs: dict[int, subprocess.Popen] = {}
        for i in (range(processes) if start is None else start):
            cmd = [sys.executable, "-m", "bigvar.main", f"--workdir={workdir}", *args, "--multihost",
                   f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                   f"--process_id={i}", f"--heartbeat_timeout={heartbeat_timeout}",
                   *(extra_args or {}).get(i, [])]
            with open(self.logs[i], "w") as log:
                # No compilation cache: with jax 0.12.1 a 2-process CPU job whose executables come
                # from the persistent cache hangs in its first collectives (the second of two
                # identical jobs sharing a cache never logs a step; without the cache both run).
                self.procs[i] = subprocess.Popen(
                    cmd, cwd=(cwds or {}).get(i, ROOT), env=_environment(devices, cache=False),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self, i: int) -> str:
        with open(self.logs[i], errors="replace") as f:
            return f.read()

    def wait_for_line(self, i: int, pattern: str, timeout: float) -> None:
        """Waits until process i's output has a line matching `pattern`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if re.search(pattern, self.output(i), re.MULTILINE):
                return
            if self.procs[i].poll() is not None:
                raise AssertionError(f"process {i} ended before printing {pattern!r}:\n"
                                     f"{self._tails()}")
            time.sleep(0.2)
        raise AssertionError(f"process {i} did not print {pattern!r} in {timeout} s:\n{self._tails()}")

    def send_signal(self, i: int, sig: int) -> None:
        self.procs[i].send_signal(sig)

    def wait(self, timeout: float) -> list[Result]:
        """Every process's result; an AssertionError (with the outputs' ends) if any is still
        running after `timeout` seconds."""
        deadline = time.time() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"the job did not finish in {timeout} s:\n{self._tails()}")
        return [Result(proc.returncode, self.output(i)) for i, proc in self.procs.items()]

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- process {i} (exit {proc.poll()}):\n"
                         f"{readable_tail(self.output(i), chars)}" for i, proc in self.procs.items())

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def run(args: list[str], workdir, processes: int = 2, timeout: float = 900, **kw) -> list[Result]:
    """Runs the job to its end; every process must exit 0."""
    with Job(args, workdir, processes, **kw) as job:
        results = job.wait(timeout)
    failed = [i for i, r in enumerate(results) if r.returncode != 0]
    assert not failed, "\n".join(f"--- process {i} (exit {results[i].returncode}):\n"
                                 f"{readable_tail(results[i].output)}" for i in failed)
    return results


def run_single(args: list[str], workdir, devices: int = 8, timeout: float = 900) -> Result:
    """The same command as one process with `devices` devices; it must exit 0."""
    proc = subprocess.run([sys.executable, "-m", "bigvar.main", f"--workdir={workdir}", *args],
                          cwd=ROOT, env=_environment(devices), capture_output=True, text=True,
                          timeout=timeout)
    result = Result(proc.returncode, proc.stdout + proc.stderr)
    assert proc.returncode == 0, result.output[-4000:]
    return result
