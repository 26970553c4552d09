"""A Google Cloud Storage API on localhost for the tests (gcp-storage-emulator, from the test extra).

    with gcs_emulator.running(tmp_path / "gcs", bucket="bigvar-test") as env:
        subprocess.run([... "--workdir=gs://bigvar-test/run"], env={**os.environ, **env})

`env` points the clients at the emulator: gcsfs (bigvar's own files) reads
STORAGE_EMULATOR_HOST, TensorStore (orbax's checkpoints) TENSORSTORE_GCS_HTTP_URL, and both take
the fixed testing token instead of looking for Google credentials (no network is touched).

`received(env)` tells how many bytes the emulator has received so far: "payload", the object
data of uploads (not the JSON of other requests), and "body", every request body.

Run as a script, it serves until killed: `python tests/gcs_emulator.py PORT DATA_DIR BUCKET
[SOFT_DELETE (1 or 0)]`.
What the script adds to the emulator, as the real service does: the `x-goog-generation` header
of downloads (TensorStore requires it), compose's `ifGenerationMatch` precondition, and the last
byte of uploaded data that ends in a carriage return (the emulator dropped it).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

_RECEIVED = "/_bigvar/received"  # the counts (not a GCS path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """The emulator's process, which a test may stop (an outage) and start again on the same
    port and objects. `env` points the clients at it (see `running`)."""

    def __init__(self, data_dir, bucket: str, soft_delete: bool, timeout: float):
        self.port, self.timeout = _free_port(), timeout
        self.args = [sys.executable, os.path.abspath(__file__), str(self.port), str(data_dir),
                     bucket, str(int(soft_delete))]
        os.makedirs(data_dir, exist_ok=True)
        self.log_path = os.path.join(data_dir, "..", "gcs_emulator.log")
        self.server = None
        url = f"http://127.0.0.1:{self.port}"
        self.env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
                    # gcsfs's probe of the bucket type (a gRPC API the emulator lacks) off
                    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.server = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + self.timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            if self.server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the GCS emulator did not start (see {self.log_path})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
            self.server = None


@contextlib.contextmanager
def serving(data_dir, bucket: str = "bigvar-test", timeout: float = 30,
            soft_delete: bool = True) -> Iterator[Emulator]:
    """`running`, yielding the `Emulator` (to stop and start it) instead of its `env`."""
    emulator = Emulator(data_dir, bucket, soft_delete, timeout)
    open(emulator.log_path, "w").close()
    try:
        emulator.start()
        yield emulator
    finally:
        emulator.stop()


@contextlib.contextmanager
def running(data_dir, bucket: str = "bigvar-test", timeout: float = 30,
            soft_delete: bool = True) -> Iterator[dict]:
    """Serves a GCS API (bucket `bucket` created, objects kept under `data_dir`) for the block;
    yields the environment variables that point gcsfs and TensorStore at it. `soft_delete=False`
    deletes objects at once (the emulator keeps soft-deleted ones in one index file that it
    rewrites at every request: long benchmarks slow down as it grows)."""
    with serving(data_dir, bucket, timeout, soft_delete) as emulator:
        yield emulator.env


def received(env: dict) -> dict:
    """{"payload": bytes of uploaded object data, "body": bytes of request bodies} so far."""
    with urllib.request.urlopen(env["STORAGE_EMULATOR_HOST"] + _RECEIVED, timeout=10) as r:
        return json.loads(r.read())


def _multipart_data(raw: bytes, content_type: str) -> bytes:
    """The object data of a multipart upload, cut at the delimiters (the emulator's email parser
    drops a carriage return that ends the data: gcsfs ends its lines with a bare line feed)."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    eol = b"\r\n" if raw.startswith(b"--" + boundary + b"\r\n") else b"\n"
    _, part, _ = raw.split(eol + b"--" + boundary)  # the metadata, the data, "--"
    return part[len(eol):].partition(eol + eol)[2]


def _serve(port: int, data_dir: str, bucket: str, soft_delete: bool = True) -> None:
    from http import HTTPStatus

    from gcp_storage_emulator import storage as emulator_storage
    from gcp_storage_emulator.handlers import objects

    if not soft_delete:
        emulator_storage.Storage._bucket_soft_delete_retention_seconds = lambda self, bucket: 0

    download, compose = objects.download, objects.compose

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        with contextlib.suppress(Exception):  # (not found: the handler answered 404)
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])

    def compose_if_generation_matches(request, response, storage, *args, **kwargs):
        expected = request.query.get("ifGenerationMatch", [None])[0]
        if expected is not None:
            bucket_name, object_id = request.params["bucket_name"], request.params["object_id"]
            try:
                generation = str(storage.get_file_obj(bucket_name, object_id)["generation"])
            except Exception:  # no object: generation 0
                generation = "0"
            if generation != expected:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return
        compose(request, response, storage, *args, **kwargs)

    # Before the server module binds its routes to the handlers.
    objects.download, objects.compose = download_with_generation, compose_if_generation_matches
    from gcp_storage_emulator import server

    counts = {"payload": 0, "body": 0}
    last_raw = [b""]  # (the server answers one request at a time)
    read_raw_data, read_data = server._read_raw_data, server._read_data

    def counting_read_raw_data(handler):
        last_raw[0] = raw = read_raw_data(handler) or b""
        counts["body"] += len(raw)
        return raw

    def counting_read_data(handler, query):
        data = read_data(handler, query)
        if isinstance(data, bytes):  # a media upload, or a chunk of a resumable one
            counts["payload"] += len(data)
        elif isinstance(data, dict) and isinstance(data.get("content"), bytes):  # multipart
            if not handler.headers.get("Content-Encoding"):
                data["content"] = _multipart_data(last_raw[0], handler.headers["Content-Type"])
            counts["payload"] += len(data["content"])
        return data

    server._read_raw_data, server._read_data = counting_read_raw_data, counting_read_data
    do_get = server.RequestHandler.do_GET

    def do_get_or_counts(handler):
        if handler.path != _RECEIVED:
            return do_get(handler)
        body = json.dumps(counts).encode()
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    server.RequestHandler.do_GET = do_get_or_counts
    server.create_server("127.0.0.1", port, False, bucket, data_dir=data_dir).run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3], *[bool(int(a)) for a in sys.argv[4:5]])
