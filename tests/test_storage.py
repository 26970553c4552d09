"""Remote paths (gs://) against a real GCS API on localhost (tests/gcs_emulator.py), and the same
functions on local paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gcs_emulator
from bigvar import rundir, storage
from bigvar.train.metric_writer import MetricWriter, read_jsonl

BUCKET = "bigvar-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator for this module's tests; its environment set in this process too."""
    with gcs_emulator.running(tmp_path_factory.mktemp("gcs") / "data", bucket=BUCKET) as env:
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    """A fresh folder: local, or a prefix in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("gcs")
    return f"gs://{BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}"


def test_files_are_written_whole_listed_moved_and_removed(root):
    path = f"{root}/a/b.json"
    assert not storage.exists(path)
    storage.makedirs(f"{root}/a")
    with storage.atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write('{"x": 1}')
    assert storage.isfile(path) and storage.isdir(f"{root}/a") and not storage.isfile(f"{root}/a")
    assert json.loads(storage.read_text(path)) == {"x": 1}
    assert storage.listdir(f"{root}/a") == ["b.json"]  # (no temporary left behind)
    before = storage.getmtime(path)
    storage.touch(path)
    assert storage.getmtime(path) >= before and storage.read_text(path) == '{"x": 1}'

    storage.replace(path, f"{root}/a/c.json")
    assert storage.listdir(f"{root}/a") == ["c.json"]
    with pytest.raises(FileNotFoundError):
        storage.remove(path)
    with pytest.raises(FileNotFoundError):
        storage.listdir(f"{root}/nothing")

    with storage.atomic_write(f"{root}/a/x.npz") as tmp:
        np.savez(tmp, images=np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(storage.load_npz(f"{root}/a/x.npz")["images"], [[0, 1, 2], [3, 4, 5]])
    storage.rmtree(f"{root}/a")
    assert not storage.exists(f"{root}/a/c.json")


def test_exclusive_creation_has_one_winner(root):
    storage.makedirs(root)
    assert storage.create_exclusive(f"{root}/lock", b"first")
    assert not storage.create_exclusive(f"{root}/lock", b"second")
    assert storage.read_text(f"{root}/lock") == "first"
    assert [n for n in storage.listdir(root)] == ["lock"]


def test_run_directory_lock_and_config_in_a_bucket(gcs):
    import ml_collections
    workdir = f"gs://{BUCKET}/locked-run"
    assert rundir.prepare(workdir + "/") == workdir
    config = ml_collections.ConfigDict({"model": "var", "train": {"steps": 4}})
    with rundir.exclusive(workdir, "train", config):
        assert json.loads(storage.read_text(f"{workdir}/config.json"))["model"] == "var"
        with pytest.raises(rundir.RunDirectoryLocked, match="in use by another run"):
            rundir.RunLock(workdir, "train").acquire()
    assert storage.listdir(workdir) == ["config.json"]  # the lock is gone, the config kept
    config.model = "bigr"
    with pytest.raises(rundir.ConfigMismatch, match="model"):
        with rundir.exclusive(workdir, "train", config):
            pass


def test_metrics_in_a_bucket_survive_a_resume(gcs):
    logdir = f"gs://{BUCKET}/metrics-run/logs"
    with MetricWriter(logdir) as writer:
        for step in (1, 2, 3):
            writer.write_scalars(step, {"loss": 1.0 / step})
        assert [r["step"] for r in read_jsonl(logdir)] == [1, 2, 3]  # uploaded at each write
        writer.write_images(3, {"grid": np.zeros((4, 4, 3), np.uint8)})
    with MetricWriter(logdir) as writer:  # resumed from the checkpoint of step 2
        writer.truncate_after(2)
        writer.write_scalars(3, {"loss": 0.25})
    assert [(r["step"], r["loss"]) for r in read_jsonl(logdir)] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert sum(n.startswith("events.out.tfevents") for n in storage.listdir(logdir)) == 2


def test_files_another_process_writes_are_seen_at_once(gcs):
    """No listings cache: the jobs poll for files that other processes write."""
    import fsspec
    other = fsspec.filesystem("gcs", skip_instance_cache=True, use_listings_cache=False)
    folder = f"gs://{BUCKET}/polled"
    other.pipe_file(f"{folder}/a", b"a")
    assert storage.listdir(folder) == ["a"] and not storage.exists(f"{folder}/b")
    other.pipe_file(f"{folder}/b", b"b")
    assert storage.listdir(folder) == ["a", "b"] and storage.isfile(f"{folder}/b")
    other.rm_file(f"{folder}/a")
    assert storage.listdir(folder) == ["b"] and not storage.exists(f"{folder}/a")


def test_gs_paths_never_import_tensorflow_even_where_it_is_installed(gcs, tmp_path):
    """etils.epath picks tf.io.gfile for gs:// when TensorFlow is installed, unless told not to."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('TF imported')\n")
    code = (f"import sys; from bigvar import storage; root = 'gs://{BUCKET}/no-tf'\n"
            "storage.makedirs(root)\n"
            "with storage.open(root + '/a.txt', 'w') as f: f.write('ü')\n"
            "assert storage.read_text(root + '/a.txt') == 'ü' and storage.isdir(root)\n"
            "assert storage.listdir(root) == ['a.txt']; storage.rmtree(root)\n"
            "assert 'tensorflow' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **gcs, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]


def _append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _remote(url) -> bytes:
    return storage.filesystem(url).cat_file(url)


def test_an_appended_file_is_mirrored_at_the_cost_of_its_new_bytes(gcs, tmp_path):
    local, url = str(tmp_path / "log"), f"gs://{BUCKET}/mirrored/log"
    mirror = storage.AppendMirror(local, url)
    before = gcs_emulator.received(gcs)["payload"]
    for i in range(30):
        _append(local, b"%d\r" % i * (i + 1))  # (binary data: an event file's may end in "\r")
        mirror.sync()
        assert _remote(url) == open(local, "rb").read()
    assert gcs_emulator.received(gcs)["payload"] - before == os.path.getsize(local)
    assert storage.listdir(f"gs://{BUCKET}/mirrored") == ["log"]  # (no temporary left)

    with open(local + ".new", "wb") as f:  # replaced by a shorter file, as truncate_after does
        f.write(b"new\n")
    os.replace(local + ".new", local)
    mirror.sync()
    assert _remote(url) == b"new\n"
    _append(local, b"more\n")
    mirror.sync()
    assert _remote(url) == b"new\nmore\n"
    with open(local, "rb+") as f:  # shortened in place
        f.truncate(2)
    mirror.sync()
    assert _remote(url) == b"ne"

    # Another process picks the object up and appends to it: only its new bytes go up.
    again = storage.AppendMirror(str(tmp_path / "copy"), url)
    assert again.pull() and open(tmp_path / "copy", "rb").read() == b"ne"
    before = gcs_emulator.received(gcs)["payload"]
    _append(tmp_path / "copy", b"w\n")
    again.sync()
    assert _remote(url) == b"new\n"
    assert gcs_emulator.received(gcs)["payload"] - before == 2
    assert not storage.AppendMirror(str(tmp_path / "none"), url + "-none").pull()


def test_a_mirror_append_sent_twice_does_not_duplicate_bytes(gcs, tmp_path, monkeypatch, caplog):
    """A retried compose (its first answer lost) fails on the generation precondition instead of
    appending twice, and the object is uploaded whole."""
    local, url = str(tmp_path / "log"), f"gs://{BUCKET}/retried/log"
    mirror = storage.AppendMirror(local, url)
    _append(local, b"first\n")
    mirror.sync()
    call = storage.filesystem(url).call

    def sent_twice(*args, **kwargs):
        call(*args, **kwargs)
        return call(*args, **kwargs)

    monkeypatch.setattr(storage.filesystem(url), "call", sent_twice)
    _append(local, b"second\n")
    mirror.sync()
    assert _remote(url) == b"first\nsecond\n"
    assert "uploading it whole" in caplog.text
    _append(local, b"third\n")
    mirror.sync()
    assert _remote(url) == b"first\nsecond\nthird\n"


def _files(folder) -> dict[str, bytes]:
    """{name: bytes} of a local folder or a bucket prefix; event files named by their order."""
    names = storage.listdir(folder)
    events = iter(range(len(names)))
    out = {}
    for name in names:
        with storage.open(f"{folder}/{name}", "rb") as f:
            out[f"events-{next(events)}" if ".tfevents." in name else name] = f.read()
    return out


def test_logs_in_a_bucket_equal_a_local_logdir_byte_for_byte(gcs, tmp_path, monkeypatch):
    """The same calls to a local and a gs:// logdir (the clock stopped, so that the bytes agree)
    leave the same files, after a resume with `truncate_after` too."""
    import time
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    local, remote = str(tmp_path / "logs"), f"gs://{BUCKET}/same-bytes/logs"
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)

    def run(steps, truncate=None):
        with MetricWriter(local) as a, MetricWriter(remote) as b:
            for writer in (a, b):
                if truncate is not None:
                    writer.truncate_after(truncate)
            for step in steps:
                for writer in (a, b):
                    writer.write_scalars(step, {"loss": 1.0 / (step + 1), "lr": step * 1e-4})
                    if step % 5 == 0:
                        writer.write_images(step, {"grid": image})
                remote_jsonl = storage.read_text(f"{remote}/metrics.jsonl")
                assert remote_jsonl == (tmp_path / "logs" / "metrics.jsonl").read_text()
        return _files(local), _files(remote)

    first_local, first_remote = run(range(12))
    assert list(first_remote) == ["events-0", "metrics.jsonl"]
    assert first_remote == first_local
    resumed_local, resumed_remote = run(range(8, 15), truncate=7)  # from the checkpoint of step 7
    assert list(resumed_remote) == ["events-0", "events-1", "metrics.jsonl"]
    assert resumed_remote == resumed_local
    assert [r["step"] for r in read_jsonl(remote)] == list(range(15))


def test_logging_to_a_bucket_uploads_each_byte_about_once(gcs):
    """100 writes upload about the logs' final size, not one whole upload per write (~50x)."""
    logdir = f"gs://{BUCKET}/upload-bytes/logs"
    before = gcs_emulator.received(gcs)["payload"]
    with MetricWriter(logdir) as writer:
        for step in range(100):
            writer.write_scalars(step, {"loss": 1.0 / (step + 1), "lr": 1e-4, "grad_norm": 0.5})
    uploaded = gcs_emulator.received(gcs)["payload"] - before
    size = sum(storage.filesystem(logdir).du(logdir, total=False).values())
    assert size > 100 * 100 and uploaded <= 2 * size, (uploaded, size)


def test_a_line_cut_by_a_crash_is_cut_in_the_bucket_before_appending(gcs):
    logdir = f"gs://{BUCKET}/cut-line/logs"
    with storage.open(f"{logdir}/metrics.jsonl", "wb") as f:
        f.write(b'{"step": 1, "time": 1.0, "x": 1.0}\n{"step": 2, "time": 2.0, "x"')
    with MetricWriter(logdir, tensorboard=False) as writer:
        writer.write_scalars(2, {"x": 2.0})
        writer.write_scalars(3, {"x": 3.0})
    assert [(r["step"], r["x"]) for r in read_jsonl(logdir)] == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_an_image_folder_in_a_bucket_lists_as_a_local_one(gcs, tmp_path):
    from bigvar.data.sources import ImageFolderSource
    for name in ("b/2.png", "a/1.jpg", "a/0.PNG", "a/notes.txt", ".hidden/3.png"):
        for root in (str(tmp_path), f"gs://{BUCKET}/folder"):
            storage.makedirs(os.path.dirname(f"{root}/{name}"))
            with storage.open(f"{root}/{name}", "wb") as f:
                f.write(name.encode())
    local, remote = ImageFolderSource(str(tmp_path)), ImageFolderSource(f"gs://{BUCKET}/folder")
    assert remote.class_names == local.class_names == ["a", "b"]
    assert len(remote) == len(local) == 3
    for i in range(3):
        assert remote[i]["image_bytes"] == local[i]["image_bytes"]
        assert remote[i]["label"] == local[i]["label"]


def test_array_record_urls_are_refused_with_what_to_do():
    from bigvar.data.sources import expand_paths
    with pytest.raises(ValueError, match="gcsfuse"):
        expand_paths("gs://bucket/train-*.array_record")


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "bigvar.main", *args], cwd=root, timeout=900,
                          env={**os.environ, **env, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def test_an_unusable_bucket_is_one_line_of_error(gcs):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "bigvar.main", "--config=configs/var_tiny.py",
                           "--workdir=gs://no-such-bucket/run"], cwd=root, timeout=300,
                          env={**os.environ, **gcs, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --workdir=gs://no-such-bucket/run ") and "bucket" in last, last


def test_an_operation_waits_out_an_outage_and_gives_up_after_the_limit(caplog):
    """What every operation on a URL goes through: errors that mean "no answer" are retried
    (reported with what waits and since when) until the limit; answers (a missing file) are not;
    once one operation has given up, the job's cleanup does not wait out another limit."""
    calls = []

    def flaky(fails: int, error=ConnectionRefusedError("connect call failed")):
        def operation():
            calls.append(1)
            if len(calls) <= fails:
                raise error
            return "answer"
        return operation

    try:
        storage.set_outage_limit(60)
        with caplog.at_level("WARNING"):
            assert storage.retried_call(flaky(1), "gs://b/x", what="reading") == "answer"
        assert "storage did not answer reading gs://b/x since" in caplog.text
        assert "storage answers again (reading gs://b/x" in caplog.text

        calls.clear()
        with pytest.raises(FileNotFoundError):
            storage.retried_call(flaky(1, FileNotFoundError("gs://b/x")), "gs://b/x")
        assert len(calls) == 1

        storage.set_outage_limit(0.5)
        calls.clear()
        with pytest.raises(storage.StorageUnavailable, match="did not answer for .* --storage_timeout"):
            storage.retried_call(flaky(100), "gs://b/x")
        assert len(calls) >= 2
        calls.clear()
        with pytest.raises(storage.StorageUnavailable, match="^gs://b/x: storage did not answer"):
            storage.retried_call(flaky(0), "gs://b/y")  # (the first one's reason, untried)
        assert calls == []
    finally:
        storage.set_outage_limit(600)


def test_no_answer_is_told_from_an_answer():
    assert storage.is_transient(ConnectionRefusedError())
    assert storage.is_transient(TimeoutError())
    assert not storage.is_transient(FileNotFoundError("gs://b/x"))
    assert not storage.is_transient(PermissionError("gs://b/x"))
    # TensorStore (orbax's array writes) raises ValueError carrying a status code
    assert storage.is_transient(ValueError("UNAVAILABLE: Error writing gs://b/x"))
    assert storage.is_transient(ValueError(
        "ABORTED: Error reading gs://b/x: All 32 retry attempts failed: CURL error"))
    assert not storage.is_transient(ValueError("INVALID_ARGUMENT: bad spec"))
    assert not storage.is_transient(ValueError("could not broadcast"))


@pytest.mark.slow
def test_train_resume_export_and_sample_with_everything_in_a_bucket(gcs):
    """The whole path of a user's run on gs://: training stops, the same command with more steps
    resumes from the bucket's checkpoint, the export and a sampling job write there too."""
    run, out = f"gs://{BUCKET}/e2e/run", f"gs://{BUCKET}/e2e/sampled"
    train = ["--config=configs/var_tiny.py", "--config.mode=train", f"--workdir={run}",
             "--config.var.patch_nums=(1,2,3,4)", "--config.train.batch_size=8",
             "--config.train.log_every=1", "--config.train.checkpoint_every=2",
             "--config.train.sample_every=2"]
    _cli(train + ["--config.train.steps=2"], gcs)
    resumed = _cli(train + ["--config.train.steps=4"], gcs)
    assert "resumed from step 2" in resumed.stderr
    assert [r["step"] for r in read_jsonl(f"{run}/logs")] == [1, 2, 3, 4]
    assert {"2", "4"} <= set(storage.listdir(f"{run}/checkpoints"))
    assert storage.listdir(f"{run}/samples") == ["samples_00000002.png", "samples_00000004.png"]
    assert "run.lock" not in storage.listdir(run)

    _cli(train + ["--config.train.steps=4", "--config.mode=export"], gcs)
    assert storage.listdir(f"{run}/export") == ["checksums.json", "config.json", "params"]

    sample = ["--config=configs/var_tiny.py", "--config.mode=sample", f"--workdir={out}",
              "--config.var.patch_nums=(1,2,3,4)", f"--config.init_from={run}/export",
              "--config.sample.classes=(1,2,3)", "--config.sample.images_per_class=2",
              "--config.sample.batch_size=4"]
    _cli(sample, gcs)
    samples = storage.load_npz(f"{out}/samples/samples.npz")
    assert samples["arr_0"].shape[0] == 6 and list(samples["labels"]) == [1, 1, 2, 2, 3, 3]
    assert len(storage.listdir(f"{out}/samples/images")) == 6
    assert storage.isfile(f"{out}/samples/grid.png")
    again = _cli(sample, gcs)  # a rerun finds every batch made
    assert "2 of 2 batches were finished" in again.stderr


def _sample_through_an_outage(emulator, data_dir, run: str, outage_s: float | None,
                              storage_timeout: float) -> subprocess.CompletedProcess:
    """A sampling job in gs://BUCKET/run whose storage goes away once its first part is
    written, for `outage_s` seconds (None: until the job has ended)."""
    return _through_an_outage(
        emulator, data_dir, run, "samples/parts/batch_00000.npz", outage_s,
        ["--config.mode=sample", "--config.allow_random_init=True",
         "--config.sample.classes=(1,2,3,4,5,6,7,8)", "--config.sample.images_per_class=2",
         "--config.sample.batch_size=2", f"--storage_timeout={storage_timeout}"])


def _through_an_outage(emulator, data_dir, run: str, after: str, outage_s: float | None,
                       flags: list[str]) -> subprocess.CompletedProcess:
    """`configs/var_tiny.py` with `flags` in gs://BUCKET/run; storage goes away once the job has
    written `after` (an object in the run), for `outage_s` seconds (None: until the job ends)."""
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "bigvar.main", "--config=configs/var_tiny.py",
            f"--workdir=gs://{BUCKET}/{run}", *flags]
    log = data_dir.parent / f"{run}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **emulator.env, "JAX_PLATFORMS": "cpu"})
    while not os.path.exists(_object(data_dir, run, after)) and proc.poll() is None:
        time.sleep(0.05)
    emulator.stop()
    if outage_s is None:
        proc.wait(600)
    else:
        time.sleep(outage_s)
    emulator.start()
    proc.wait(600)
    return subprocess.CompletedProcess(args, proc.returncode, log.read_text())


def _stopped_in_one_line_and_rerun(stopped: subprocess.CompletedProcess, url: str, emulator
                                   ) -> subprocess.CompletedProcess:
    """Checks that a job whose storage went away for good stopped with one line naming a path
    under `url` (exit 2, no traceback); reruns it with storage back, which must finish."""
    assert stopped.returncode == 2, stopped.stdout[-3000:]
    last = stopped.stdout.strip().splitlines()[-1]
    assert last.startswith(f"error: {url}") and (
        "storage did not answer for" in last and "rerun the same command" in last), last
    assert "Traceback" not in stopped.stdout
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rerun = subprocess.run(stopped.args, cwd=root, capture_output=True, text=True, timeout=600,
                           env={**os.environ, **emulator.env, "JAX_PLATFORMS": "cpu"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return rerun


def _object(data_dir, run: str, name: str) -> str:
    """Where the emulator keeps the bytes of gs://BUCKET/run/name."""
    return os.path.join(data_dir, ".cloudstorage", BUCKET, run, name)


@pytest.mark.slow
def test_a_storage_outage_is_waited_out_and_one_longer_than_the_limit_is_one_line(tmp_path):
    """gs:// storage gone for 45 s while a sampling job writes (longer than gcsfs's own ~30 s of
    retries): the job says what it waits for, goes on when storage is back and finishes; with
    --storage_timeout=20 and storage gone for good, it stops with one line (before: a
    ClientConnectorError traceback through images.save_png after ~40 s), and the rerun finishes
    the job with the same samples."""
    data_dir = tmp_path / "gcs" / "data"
    with gcs_emulator.serving(data_dir, bucket=BUCKET) as emulator:
        waited = _sample_through_an_outage(emulator, data_dir, "waits", 45, 600)
        assert waited.returncode == 0, waited.stdout[-3000:]
        assert "storage did not answer upload gs://" in waited.stdout
        assert "retrying until" in waited.stdout and "storage answers again" in waited.stdout

        stopped = _sample_through_an_outage(emulator, data_dir, "stops", None, 20)
        _stopped_in_one_line_and_rerun(stopped, f"gs://{BUCKET}/stops/samples/", emulator)
        same = [np.load(_object(data_dir, run, "samples/samples.npz"))["arr_0"]
                for run in ("waits", "stops")]
        assert same[0].shape[0] == 16
        np.testing.assert_array_equal(*same)


@pytest.mark.slow
def test_training_waits_out_a_storage_outage_and_stops_with_one_line_after_the_limit(tmp_path):
    """gs:// storage gone for 45 s from the first checkpoint on: training waits (saying for what)
    and finishes; gone for good with --storage_timeout=20, it stops with one line and exit 2
    (before: a ClientConnectorError traceback from orbax's save, or from the metrics upload),
    and the rerun resumes from the last complete checkpoint to the same final loss."""
    data_dir = tmp_path / "gcs" / "data"
    train = ["--config.mode=train", "--config.var.patch_nums=(1,2,3,4)",
             "--config.train.steps=8", "--config.train.checkpoint_every=4",
             "--config.train.log_every=1", "--config.train.sample_every=0"]
    first_checkpoint = "checkpoints/4/commit_success.txt"
    with gcs_emulator.serving(data_dir, bucket=BUCKET) as emulator:
        waited = _through_an_outage(emulator, data_dir, "train-waits", first_checkpoint, 45,
                                    train + ["--storage_timeout=600"])
        assert waited.returncode == 0, waited.stdout[-3000:]
        assert "storage did not answer" in waited.stdout and "retrying until" in waited.stdout
        assert "storage answers again" in waited.stdout and "Traceback" not in waited.stdout

        stopped = _through_an_outage(emulator, data_dir, "train-stops", first_checkpoint, None,
                                     train + ["--storage_timeout=20"])
        rerun = _stopped_in_one_line_and_rerun(stopped, f"gs://{BUCKET}/train-stops/", emulator)
        assert "resumed from step 4" in rerun.stderr
        finals = [[json.loads(line) for line in open(_object(data_dir, run, "logs/metrics.jsonl"))
                   ][-1] for run in ("train-waits", "train-stops")]
        assert finals[0]["step"] == finals[1]["step"] == 8
        assert finals[0]["loss"] == finals[1]["loss"]


_REPLACED_CHECKPOINT = """
import json, logging, os, sys, threading
import gcs_emulator
with gcs_emulator.serving(sys.argv[1], bucket=sys.argv[2]) as emulator:
    os.environ.update(emulator.env)
    import jax.numpy as jnp
    from bigvar.train.checkpoints import Checkpoints
    ckpts = Checkpoints(f"gs://{sys.argv[2]}/replaced/checkpoints")
    state = {"w": jnp.arange(6.0)}
    ckpts.save(1, state, {"position": 1})
    ckpts.wait()
    ckpts.save(2, state, {"position": 2})  # returns while the arrays are written
    emulator.stop()
    threading.Timer(40, emulator.start).start()
    ckpts.save(3, state, {"position": 3}, last=True)
    print(json.dumps(ckpts.steps()), flush=True)
    ckpts.close()
os._exit(0)  # (orbax's threads of the failed save wait minutes for a barrier: see bigvar.main)
"""


@pytest.mark.slow
def test_a_checkpoint_that_storage_failed_is_replaced_by_the_next(tmp_path):
    """An asynchronous save that storage fails (its error surfaces at the next save) is reported
    and never counted as a checkpoint; the next save waits for storage and lands."""
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", _REPLACED_CHECKPOINT, str(tmp_path / "gcs" / "data"), BUCKET],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu",
             "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [1, 3]
    assert "checkpoint 2 was not written: storage did not answer" in proc.stderr
    assert "storage answers again (writing checkpoint 3 to" in proc.stderr
