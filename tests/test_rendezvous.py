"""The start of a `--multihost` job: processes that never come are named, after --join_timeout,
in one line by every process that did (before: 300 s of silence, then JAX aborted every process
with exit 134 and a page of C++ stack, naming no one)."""
import threading

import pytest

import distributed_cli
from bigvar import rendezvous
from bigvar.errors import UserError

ARGS = ["--config=configs/var_tiny.py", "--config.mode=sample", "--join_timeout=4"]


def _last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_a_process_that_never_starts_is_named_by_those_that_did(tmp_path):
    with distributed_cli.Job(ARGS, tmp_path / "w", processes=3, devices=1, start=[0, 1]) as job:
        results = job.wait(timeout=120)
    for i, result in enumerate(results):
        assert result.returncode == 2, f"process {i}:\n{distributed_cli.readable_tail(result.output)}"
        assert _last_line(result.output).startswith("error: process 2 of 3 never joined the job "
                                                    "at 127.0.0.1:"), result.output[-2000:]
    assert "process 0: waiting for processes 1, 2 of 3 to join" in results[0].output
    assert not (tmp_path / "w").exists()


def test_a_coordinator_that_never_starts_is_named(tmp_path):
    with distributed_cli.Job(ARGS, tmp_path / "w", processes=2, devices=1, start=[1]) as job:
        [result] = job.wait(timeout=120)
    assert result.returncode == 2, distributed_cli.readable_tail(result.output)
    assert "process 1: waiting for process 0 at 127.0.0.1:" in result.output
    assert _last_line(result.output).startswith("error: process 0 never answered at 127.0.0.1:")


@pytest.mark.parametrize("joiners, message", [
    ([(1, 3), (2, 3)], None),  # everyone came
    ([(1, 4)], "refused process 1: it was started with --num_processes=4, process 0 with 3"),
    ([(1, 3), (1, 3)], "refused process 1: another process already joined as --process_id=1"),
])
def test_joining_in_process(joiners, message):
    """The protocol itself, with threads: who is let go and who is refused with what."""
    port = distributed_cli.free_port()
    address, errors, threads = f"127.0.0.1:{port}", [], []

    def call(function, *args):
        try:
            function(address, *args, report=lambda line: None)
        except UserError as e:
            errors.append(str(e))

    threads.append(threading.Thread(target=call, args=(rendezvous.gather, 3, 3)))
    threads[0].start()
    for process_id, count in joiners:
        threads.append(threading.Thread(target=call, args=(rendezvous.join, count, process_id, 3)))
        threads[-1].start()
    for thread in threads:
        thread.join(30)
    if message is None:
        assert errors == []
    else:
        assert any(message in e for e in errors), errors
        assert any(e.startswith("process 2 of 3 never joined") or "processes 1, 2 of 3" in e
                   for e in errors), errors  # process 0's own word, at its timeout
