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
    assert storage.listdir(f"{run}/export") == ["config.json", "params"]

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
