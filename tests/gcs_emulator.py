"""A Google Cloud Storage API on localhost for the tests (gcp-storage-emulator, from the test extra).

    with gcs_emulator.running(tmp_path / "gcs", bucket="bigvar-test") as env:
        subprocess.run([... "--workdir=gs://bigvar-test/run"], env={**os.environ, **env})

`env` points the clients at the emulator: gcsfs (bigvar's own files) reads
STORAGE_EMULATOR_HOST, TensorStore (orbax's checkpoints) TENSORSTORE_GCS_HTTP_URL, and both take
the fixed testing token instead of looking for Google credentials (no network is touched).

Run as a script, it serves until killed: `python tests/gcs_emulator.py PORT DATA_DIR BUCKET`.
The emulator's downloads lack the `x-goog-generation` header that the real service sends and
TensorStore requires; the script adds it.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(data_dir, bucket: str = "bigvar-test", timeout: float = 30) -> Iterator[dict]:
    """Serves a GCS API (bucket `bucket` created, objects kept under `data_dir`) for the block;
    yields the environment variables that point gcsfs and TensorStore at it."""
    port = _free_port()
    os.makedirs(data_dir, exist_ok=True)
    log = open(os.path.join(data_dir, "..", "gcs_emulator.log"), "w")
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port), str(data_dir),
                               bucket], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the GCS emulator did not start (see {log.name})")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        yield {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
               # gcsfs's probe of the bucket type (a gRPC API the emulator lacks) off
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    finally:
        server.kill()
        server.wait()
        log.close()


def _serve(port: int, data_dir: str, bucket: str) -> None:
    from gcp_storage_emulator.handlers import objects

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        with contextlib.suppress(Exception):  # (not found: the handler answered 404)
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])

    objects.download = download_with_generation  # before the server module binds its routes
    from gcp_storage_emulator.server import create_server
    create_server("127.0.0.1", port, False, bucket, data_dir=data_dir).run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
