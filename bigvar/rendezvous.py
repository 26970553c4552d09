"""Every process of a `--multihost` job checks in at the coordinator's address before JAX does.

`jax.distributed.initialize` waits silently for the processes that have not started and, at its
time limit, aborts from C++ (exit 134, "another task died", a page of stack) without saying which
ones never came. So first each process says hello on the coordinator's port: process 0 listens,
counts who arrived, prints whom it still waits for, and at `timeout` tells everyone which
processes never joined; every process then ends with the same one-line error. When all are
there, process 0 closes its socket and JAX's coordination service takes the port.

The protocol is one line each way over TCP: `bigvar-join <process id> <process count>` from a
process, then `go`, or `missing <ids>`, or `refused <reason>` from process 0.
"""
from __future__ import annotations

import contextlib
import socket
import time
from typing import Callable

from bigvar.errors import UserError

_REPORT_EVERY_S = 10.0


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--coordinator_address={address}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _since(start: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(start))


def _listen(port: int) -> socket.socket:
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", port))


def _read_line(conn: socket.socket, deadline: float) -> str:
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = conn.recv(256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _names(ids) -> str:
    ids = sorted(ids)
    return ("process " if len(ids) == 1 else "processes ") + ", ".join(map(str, ids))


def _never_joined(missing, num_processes: int, address: str, timeout: float) -> UserError:
    """The one line every process that came ends with (process 0 and those it told)."""
    return UserError(f"{_names(missing)} of {num_processes} never joined the job at {address} in "
                     f"{timeout:g} s: start the same command there with --process_id set, or "
                     "raise --join_timeout")


def gather(address: str, num_processes: int, timeout: float,
           report: Callable[[str], None] = print) -> None:
    """Process 0: waits until processes 1 … num_processes-1 have checked in at `address`'s port,
    then lets them go; after `timeout` seconds, tells those that came who did not and raises."""
    host, port = _split_address(address)
    start = time.monotonic()
    deadline, next_report = start + timeout, start
    arrived: dict[int, socket.socket] = {}
    try:
        server = _listen(port)
    except OSError as e:
        raise UserError(f"--coordinator_address={address}: process 0 cannot listen on port "
                        f"{port} ({e.strerror}); pick a free port") from e
    with server, contextlib.ExitStack() as open_connections:
        server.settimeout(0.2)
        while len(arrived) < num_processes - 1:
            now = time.monotonic()
            if now >= deadline:
                missing = set(range(1, num_processes)) - set(arrived)
                for conn in arrived.values():
                    with contextlib.suppress(OSError):
                        conn.sendall(f"missing {','.join(map(str, sorted(missing)))}\n".encode())
                raise _never_joined(missing, num_processes, address, timeout)
            if now >= next_report:
                waiting = sorted(set(range(1, num_processes)) - set(arrived))
                report(f"process 0: waiting for {_names(waiting)} of {num_processes} to join at "
                       f"{address} (since {_since(time.time() - (now - start))}, "
                       f"--join_timeout={timeout:g} s)")
                next_report = now + _REPORT_EVERY_S
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            open_connections.enter_context(conn)
            with contextlib.suppress(OSError, ValueError):
                words = _read_line(conn, time.monotonic() + 5).split()
                if len(words) == 3 and words[0] == "bigvar-join":
                    process_id, count = int(words[1]), int(words[2])
                    problem = (f"it was started with --num_processes={count}, process 0 with "
                               f"{num_processes}" if count != num_processes else
                               f"--process_id={process_id} is not in [1, {num_processes})"
                               if not 0 < process_id < num_processes else
                               f"another process already joined as --process_id={process_id}"
                               if process_id in arrived else None)
                    if problem is None:
                        arrived[process_id] = conn
                    else:
                        conn.sendall(f"refused {problem}\n".encode())
        for conn in arrived.values():
            with contextlib.suppress(OSError):  # one that left meanwhile: JAX will notice
                conn.sendall(b"go\n")
        for conn in arrived.values():  # they close first: the port is left free for JAX
            with contextlib.suppress(OSError):
                _read_line(conn, time.monotonic() + 5)


def join(address: str, num_processes: int, process_id: int, timeout: float,
         report: Callable[[str], None] = print) -> None:
    """Process `process_id` > 0: checks in at process 0 and waits for its word."""
    host, port = _split_address(address)
    start = time.monotonic()
    deadline, next_report = start + timeout, start
    while True:
        now = time.monotonic()
        if now >= next_report:
            report(f"process {process_id}: waiting for process 0 at {address} "
                   f"(since {_since(time.time() - (now - start))}, --join_timeout={timeout:g} s)")
            next_report = now + _REPORT_EVERY_S
        try:
            conn = socket.create_connection((host, port), timeout=max(deadline - now, 0.01))
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise UserError(f"process 0 never answered at {address} in {timeout:g} s: start "
                                "it (the same command with --process_id=0), or check the "
                                "address and raise --join_timeout") from None
            time.sleep(0.5)
    with conn:
        conn.sendall(f"bigvar-join {process_id} {num_processes}\n".encode())
        # process 0 answers within its own --join_timeout, which may have started later
        try:
            answer = _read_line(conn, time.monotonic() + timeout + 10)
        except OSError:
            answer = ""
    if answer == "go":
        return
    if answer.startswith("missing "):
        missing = [int(i) for i in answer.split()[1].split(",")]
        raise _never_joined(missing, num_processes, address, timeout)
    if answer.startswith("refused "):
        raise UserError(f"process 0 at {address} refused process {process_id}: "
                        f"{answer.removeprefix('refused ')}")
    raise UserError(f"process 0 at {address} stopped answering before every process joined: "
                    "see its output")
