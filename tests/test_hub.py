"""`python -m bigvar.convert {var,bigr} --from_hub=NAME`: the files come through huggingface_hub
from a local stand-in for the Hub (http.server on 127.0.0.1, HF_ENDPOINT pointed at it, HF_HOME
in a tmp dir), are verified and converted exactly as the same files given by path; a second run
uses the cache, also offline; corrupted downloads, other releases, unknown names and a missing
network are errors that say what to do. No network beyond 127.0.0.1."""
import hashlib
import http.server
import json
import os
import re
import socket
import threading
import urllib.parse

import numpy as np
import pytest

from bigvar import weights
from bigvar.convert import __main__ as convert_cli
from bigvar.convert import hub
from bigvar.convert.common import flatten

from conftest import FIXTURES

VAE_PTH = os.path.join(FIXTURES, "var", "vqvae_tiny.pth")
VAR_PTH = os.path.join(FIXTURES, "var", "var_d2_256.pth")
BAE_TH = os.path.join(FIXTURES, "bigr", "bae_tiny_256_k24.th")
GPT_PT = os.path.join(FIXTURES, "bigr", "bigr_tiny_k24.pt")

# A tiny model registered only in these tests; the BiGR tests use the real table entry l_d24.
TINY_REPO = "bigvar-tests/var-tiny"
TINY = hub.HubModel(TINY_REPO, {"vae": hub.HubFile("vqvae_tiny.pth"), "var": hub.HubFile("var_d2_256.pth")})


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """Answers HEAD and GET on `/{repo_id}/resolve/{revision}/{filename}` with the headers
    `hf_hub_download` reads: X-Repo-Commit, ETag, and for LFS files X-Linked-Etag (the sha256 it
    names the cached blob after) and X-Linked-Size; Content-Length. Unknown files are a 404 with
    X-Error-Code: EntryNotFound, as on the Hub."""
    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self):
        self.files = {}  # (repo_id, filename) -> (served bytes, published sha256 or None)
        self.requests = []  # (method, path)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self._answer(send_body=False)

            def do_GET(self):
                self._answer(send_body=True)

            def _answer(self, send_body):
                fake.requests.append((self.command, self.path))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urllib.parse.urlsplit(self.path).path)
                entry = fake.files.get((m[1], urllib.parse.unquote(m[3]))) if m else None
                if entry is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", FakeHub.COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, published = entry
                self.send_response(200)
                self.send_header("X-Repo-Commit", FakeHub.COMMIT)
                self.send_header("ETag", f'"{published or hashlib.sha1(body).hexdigest()}"')
                if published:  # an LFS file
                    self.send_header("X-Linked-Etag", f'"{published}"')
                    self.send_header("X-Linked-Size", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, repo_id, filename, body, published=None):
        """Serves `body` as an LFS file whose published sha256 is `published` (default: the
        body's own)."""
        self.files[(repo_id, filename)] = (body, published or _sha256(body))

    def gets(self):
        return [p for m, p in self.requests if m == "GET"]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """HF_HOME in tmp (an empty cache), online, no proxy for 127.0.0.1; huggingface_hub's
    import-time offline flag forced off (bigvar.convert.hub reads the environment at call time)."""
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setitem(hub.HUB_MODELS["var"], "tiny", TINY)
    return tmp_path / "hf_home" / "hub"


@pytest.fixture
def fake_hub(hf_env, monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


def _params(out):
    return flatten(weights.load_weights(str(out)))


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_from_hub_downloads_verifies_converts_then_uses_the_cache(fake_hub, hf_env, tmp_path, capsys,
                                                                  monkeypatch):
    from huggingface_hub import constants
    fake_hub.serve(TINY_REPO, "vqvae_tiny.pth", _read(VAE_PTH))
    fake_hub.serve(TINY_REPO, "var_d2_256.pth", _read(VAR_PTH))
    out, ref = tmp_path / "from_hub", tmp_path / "by_path"
    assert convert_cli.main(["var", "--from_hub=tiny", f"--out={out}"]) == 0
    stdout = capsys.readouterr().out
    assert f"{fake_hub.url}/{TINY_REPO}" in stdout and str(hf_env) in stdout
    assert stdout.count("downloaded, ") == 2 and stdout.count("verified") == 2
    assert sorted(fake_hub.gets()) == [f"/{TINY_REPO}/resolve/main/var_d2_256.pth",
                                       f"/{TINY_REPO}/resolve/main/vqvae_tiny.pth"]
    source = json.loads((out / "config.json").read_text())["source"]
    assert source["hub"]["commit"] == FakeHub.COMMIT and source["hub"]["name"] == "tiny"
    assert source["hub"]["sha256"]["var_d2_256.pth"] == _sha256(_read(VAR_PTH))
    assert source["var"].startswith(str(hf_env))

    # The same files by path: the same weights.
    assert convert_cli.main(["var", f"--vae={VAE_PTH}", f"--var={VAR_PTH}", f"--out={ref}"]) == 0
    _assert_same_params(out, ref)

    # A second run finds both files in the cache: the Hub is asked (HEAD), nothing is downloaded.
    capsys.readouterr()
    assert convert_cli.main(["var", "--from_hub=tiny", f"--out={out}", "--overwrite"]) == 0
    assert capsys.readouterr().out.count("in the cache, ") == 2
    assert len(fake_hub.gets()) == 2

    # The Hub gone and HF_HUB_OFFLINE=1: the cache alone.
    fake_hub.stop()
    fake_hub.stop = lambda: None
    n_requests = len(fake_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as a process started offline has it
    offline_out = tmp_path / "offline"
    assert convert_cli.main(["var", "--from_hub=tiny", f"--out={offline_out}"]) == 0
    stdout = capsys.readouterr().out
    assert "HF_HUB_OFFLINE" in stdout and stdout.count("in the cache, ") == 2
    assert len(fake_hub.requests) == n_requests
    _assert_same_params(offline_out, ref)

    # The same cache reached through a symlink, by a relative path (a cache on a mounted drive):
    # still "in the cache" (before: "downloaded", as huggingface_hub resolves the path it returns).
    (tmp_path / "linked").symlink_to(hf_env)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", "linked")
    assert convert_cli.main(["var", "--from_hub=tiny", f"--out={tmp_path / 'linked_out'}"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("in the cache, ") == 2 and "downloaded" not in stdout, stdout


def test_bigr_from_hub_with_the_official_table_entry(fake_hub, tmp_path, capsys):
    """The real `l_d24` entry (nested file names bae/bae_d24/…, gpt/…), served tiny files."""
    entry = hub.HUB_MODELS["bigr"]["l_d24"]
    fake_hub.serve(entry.repo_id, entry.files["bae"].filename, _read(BAE_TH))
    fake_hub.serve(entry.repo_id, entry.files["gpt"].filename, _read(GPT_PT))
    out, ref = tmp_path / "from_hub", tmp_path / "by_path"
    assert convert_cli.main(["bigr", "--from_hub=l_d24", f"--out={out}"]) == 0
    assert "bae/bae_d24/binaryae_ema_1000000.th: downloaded" in capsys.readouterr().out
    assert convert_cli.main(["bigr", f"--bae={BAE_TH}", f"--gpt={GPT_PT}", f"--out={ref}"]) == 0
    _assert_same_params(out, ref)


def test_a_download_that_does_not_match_the_published_sha256_is_refused(fake_hub, hf_env, tmp_path, capsys):
    good = _read(VAR_PTH)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same size, other bytes
    fake_hub.serve(TINY_REPO, "vqvae_tiny.pth", _read(VAE_PTH))
    fake_hub.serve(TINY_REPO, "var_d2_256.pth", bytes(bad), published=_sha256(good))
    out = tmp_path / "ckpt"
    assert convert_cli.main(["var", "--from_hub=tiny", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert "var_d2_256.pth" in err and "corrupted" in err
    assert _sha256(good) in err and _sha256(bytes(bad)) in err
    assert "removed from the cache" in err and "run the command again" in err
    assert not out.exists()
    blobs = os.listdir(next(hf_env.glob("models--*")) / "blobs")
    assert _sha256(good) not in blobs  # the bad copy is not left under the good name

    # As the message says: once the Hub serves the right bytes, running again works.
    fake_hub.serve(TINY_REPO, "var_d2_256.pth", good)
    assert convert_cli.main(["var", "--from_hub=tiny", f"--out={out}"]) == 0


def test_a_file_other_than_the_recorded_release_is_refused(fake_hub, tmp_path, capsys):
    """d16's files have published sha256s in the table: tiny files served under those names
    (consistent with what this Hub publishes) are not the release."""
    fake_hub.serve(hub.VAR_REPO, "vae_ch160v4096z32.pth", _read(VAE_PTH))
    fake_hub.serve(hub.VAR_REPO, "var_d16.pth", _read(VAR_PTH))
    out = tmp_path / "ckpt"
    assert convert_cli.main(["var", "--from_hub=d16", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert "var_d16.pth" in err and "not the release" in err
    assert hub.HUB_MODELS["var"]["d16"].files["var"].sha256 in err and _sha256(_read(VAR_PTH)) in err
    assert "--vae=" in err and "--var=" in err
    assert not out.exists()


def test_names_and_flags_errors(hf_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")  # never reached
    out = str(tmp_path / "ckpt")
    assert convert_cli.main(["var", "--from_hub=d17", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert "--from_hub=d17" in err and "d16, d20, d24, d30, d36" in err
    assert convert_cli.main(["bigr", "--from_hub=L_d24", f"--out={out}"]) == 2
    assert "l_d24, xl_d24, xxl_d24, xxl_d32, l_d32_512" in capsys.readouterr().err

    assert convert_cli.main(["var", f"--out={out}"]) == 2  # neither
    err = capsys.readouterr().err
    assert "--vae and --var missing" in err and "--from_hub=NAME" in err
    assert convert_cli.main(["bigr", f"--bae={BAE_TH}", f"--out={out}"]) == 2  # half
    assert "--gpt missing" in capsys.readouterr().err
    assert convert_cli.main(["var", "--from_hub=d16", f"--vae={VAE_PTH}", f"--out={out}"]) == 2  # both
    assert "drop --vae" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_no_network_and_an_empty_cache_is_a_clear_error(hf_env, tmp_path, capsys, monkeypatch):
    import huggingface_hub.utils._http as hf_http
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # huggingface_hub's retry back-off
    out = tmp_path / "ckpt"
    assert convert_cli.main(["var", "--from_hub=tiny", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert "could not download vqvae_tiny.pth" in err and "ConnectError" in err
    assert "--vae=vqvae_tiny.pth --var=var_d2_256.pth" in err and "/resolve/main/var_d2_256.pth" in err
    assert not out.exists()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert convert_cli.main(["var", "--from_hub=tiny", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set and vqvae_tiny.pth is not in the cache" in err
    assert "--vae=vqvae_tiny.pth --var=var_d2_256.pth" in err
    assert not out.exists()
