"""Run directories that protect their results (issue 12): the recorded config, the one-writer
lock, damaged and bit-rotten checkpoints, sampling jobs that never mix settings, atomic outputs,
and one-line errors with exit status 2."""
import json
import logging
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvar import main, rundir
from bigvar.errors import UserError
from bigvar.train.checkpoints import Checkpoints, CheckpointsUnrestorable
from bigvar.storage import atomic_write
from conftest import ROOT
from test_trainer import tiny_config as tiny_train_config


def _cli(workdir, *flags, config="configs/var_tiny.py", timeout=600):
    cmd = [sys.executable, "-m", "bigvar.main", f"--config={config}", f"--workdir={workdir}", *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _tree_files(directory):
    """{relative path: bytes} of every file under `directory`."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, directory)] = fh.read()
    return out


# ---- 1. the recorded config ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_restart_with_another_architecture_refuses_and_keeps_the_run(tmp_path, caplog):
    from bigvar.train import generator
    config = tiny_train_config("var", steps=2, checkpoint_every=2)
    config.mode = "train"
    generator.run(config, str(tmp_path))
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["var"]["embed_dim"] == 128 and recorded["train"]["steps"] == 2
    before = _tree_files(tmp_path)

    changed = config.copy_and_resolve_references()
    changed.var.embed_dim = 64
    with pytest.raises(rundir.ConfigMismatch, match=r"var\.embed_dim: 128 → 64") as err:
        main.run(changed, str(tmp_path))
    assert "--config.init_from=" in str(err.value) and "another --workdir" in str(err.value)
    assert _tree_files(tmp_path) == before  # checkpoints, metrics.jsonl, events: untouched

    # Steps, logging and checkpointing may change on resume (and the change is logged).
    longer = config.copy_and_resolve_references()
    longer.train.update(steps=4, log_every=2)
    with caplog.at_level(logging.INFO):
        summary = generator.run(longer, str(tmp_path))
    assert summary["steps"] == 4
    assert any("train.steps: 2 → 4" in r.getMessage() for r in caplog.records)
    rows = [json.loads(l) for l in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 4]


def test_config_differences_separate_resumable_fields():
    recorded = {"mode": "train", "train": {"steps": 4, "lr": 1e-3}, "var": {"depth": 2, "remat": False},
                "mesh": {"data": 1}}
    current = {"mode": "export", "train": {"steps": 8, "lr": 1e-3}, "var": {"depth": 3, "remat": True},
               "mesh": {"data": 8}}
    breaking, allowed = rundir.config_differences(recorded, current)
    assert breaking == ["var.depth: 2 → 3"]
    assert allowed == ["mesh.data: 1 → 8", "mode: 'train' → 'export'", "train.steps: 4 → 8",
                       "var.remat: False → True"]


_W = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
_BITS = np.random.default_rng(1).integers(0, 2**32, 4096, dtype=np.uint32)  # incompressible: stored raw


def _small_state(value=0.0):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = {"w": jnp.asarray(_W + value), "bits": jnp.asarray(_BITS + np.uint32(value)), "b": jnp.ones((3, 5), jnp.bfloat16),
             "step": jnp.int32(7), "key": jax.random.key(0)}
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
    return state, abstract


def test_checkpoints_that_exist_but_do_not_restore_are_an_error_not_a_fresh_start(tmp_path):
    state, _ = _small_state()
    ckpts = Checkpoints(str(tmp_path), async_save=False)
    ckpts.save(2, state, {"position": 2})
    ckpts.close()
    other = {"w": jax.ShapeDtypeStruct((10,), jnp.float32)}  # another model's state
    with pytest.raises(CheckpointsUnrestorable, match=r"none of the 1 checkpoints .* \(steps \[2\]\) could be restored"):
        Checkpoints(str(tmp_path)).restore_latest(other)
    assert Checkpoints(str(tmp_path)).steps() == [2]  # nothing moved or deleted


# ---- 3. and 8. damaged checkpoints ---------------------------------------------------------------


def _save_two(directory):
    ckpts = Checkpoints(str(directory), async_save=False)
    for step in (1, 2):
        ckpts.save(step, _small_state(float(step))[0], {"position": step})
    ckpts.close()


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_step_can_be_saved_again(tmp_path, caplog):
    _save_two(tmp_path)
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for f in files:
            path = os.path.join(root, f)
            os.truncate(path, os.path.getsize(path) // 2)
    ckpts = Checkpoints(str(tmp_path), async_save=False)
    step, restored, data = ckpts.restore_latest(_small_state()[1])
    assert step == 1 and data == {"position": 1}
    np.testing.assert_array_equal(restored["w"], _W + 1)
    assert ckpts.steps() == [1] and (tmp_path / "corrupt-2").is_dir()
    ckpts.save(2, restored, {"position": 2})  # was StepAlreadyExistsError on every restart
    ckpts.close()
    assert Checkpoints(str(tmp_path)).steps() == [1, 2]
    # One line about the damage and one about the move, not pages of TensorStore specs.
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 2 and all(len(m) < 400 for m in logged), logged
    assert "could not be restored" in logged[0] and "corrupt-2" in logged[1]


def test_bit_rot_in_an_array_file_is_detected_by_its_checksum(tmp_path):
    _save_two(tmp_path)
    pattern = (_BITS + np.uint32(2))[1000:1004].tobytes()
    hits = 0
    for root, _, files in os.walk(tmp_path / "2"):
        for f in files:
            path = os.path.join(root, f)
            data = bytearray(open(path, "rb").read())
            at = data.find(pattern)
            if at >= 0:
                data[at:at + 8] = b"\xff" * 8
                open(path, "wb").write(bytes(data))
                hits += 1
    assert hits == 1, "the array's bytes are not stored raw: the test cannot flip them"
    step, restored, _ = Checkpoints(str(tmp_path)).restore_latest(_small_state()[1])
    assert step == 1  # checkpoint 2 restored silently with two wrong words before checksums
    np.testing.assert_array_equal(restored["bits"], _BITS + np.uint32(1))
    assert (tmp_path / "corrupt-2").is_dir()


def test_checksums_do_not_depend_on_the_sharding():
    from bigvar.checksums import array_checksums
    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6) / 7
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b")))
    assert array_checksums({"x": x}) == array_checksums({"x": sharded})
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])  # same words, other places
    assert array_checksums({"x": swapped}) != array_checksums({"x": x})


# ---- 4. one writer -------------------------------------------------------------------------------


def _hold_lock(directory):
    code = ("import sys, time; from bigvar.rundir import RunLock; "
            f"RunLock({str(directory)!r}, 'train var').acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_writer_is_refused_with_the_holders_name(tmp_path):
    from bigvar.train import generator
    holder = _hold_lock(tmp_path)
    try:
        config = tiny_train_config("var", steps=2)
        config.mode = "train"
        with pytest.raises(rundir.RunDirectoryLocked) as err:
            generator.run(config, str(tmp_path))
        assert f"pid {holder.pid}" in str(err.value) and socket.gethostname() in str(err.value)
        assert "train var" in str(err.value)
        assert not (tmp_path / "checkpoints").exists()
        export = config.copy_and_resolve_references()
        export.mode = "export"
        with pytest.raises(rundir.RunDirectoryLocked):
            main.run(export, str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is stale and the next writer takes it over.
    with rundir.writing(str(tmp_path), config, what="train var"):
        assert json.loads((tmp_path / rundir.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / rundir.LOCK_FILE).exists()


def test_a_lock_from_another_host_is_stale_only_when_its_heartbeat_stopped(tmp_path):
    path = tmp_path / rundir.LOCK_FILE
    path.write_text(json.dumps({"host": "tpu-worker-7", "pid": 1, "started": time.time(), "what": "x"}))
    with pytest.raises(rundir.RunDirectoryLocked, match="host tpu-worker-7, pid 1"):
        rundir.RunLock(str(tmp_path), "test").acquire()
    old = time.time() - rundir.STALE_AFTER_S - 60
    os.utime(path, (old, old))
    lock = rundir.RunLock(str(tmp_path), "test")
    lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


# ---- 2. and 7. sampling jobs ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_sampling_rerun_with_other_settings_refuses_and_damaged_parts_are_resampled(tmp_path, caplog):
    config = tiny_train_config("var")  # 64 px
    config.sample.update(classes=(1, 2, 3), images_per_class=1, batch_size=2)
    first = main.run(config, str(tmp_path))
    with np.load(first["npz"]) as npz:
        expected = dict(npz)
    out = tmp_path / "samples"
    before = _tree_files(out)
    # … any field of the sections the images come from, the model's included (a rerun in
    # bfloat16 was accepted and mixed fp32 and bf16 rows in one samples.npz).
    for section, field, value in (("sample", "seed", 1), ("sample", "cfg", 2.0),
                                  ("var", "dtype", "bfloat16")):
        other = config.copy_and_resolve_references()
        other[section][field] = value
        with pytest.raises(UserError, match=f"holds samples made with other {section}.{field}"):
            main.run(other, str(tmp_path))
    weights = config.copy_and_resolve_references()
    weights.seed = 1  # random init from another seed: other weights
    with pytest.raises(UserError, match="other weights"):
        main.run(weights, str(tmp_path))
    assert _tree_files(out) == before

    # A finished part of this job is read back, not sampled again (marked here by zeroing its
    # images); a damaged one is sampled again with a warning naming it, to the same tokens.
    with np.load(out / "parts" / "batch_00000.npz") as part:
        saved = dict(part)
    np.savez(out / "parts" / "batch_00000.npz", **{**saved, "images": np.zeros_like(saved["images"])})
    (out / "parts" / "batch_00001.npz").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING):
        again = main.run(config, str(tmp_path))
    assert any("batch_00001.npz does not load" in r.getMessage() for r in caplog.records)
    with np.load(again["npz"]) as npz:
        assert not npz["arr_0"][:2].any() and npz["arr_0"][2].any()
        np.testing.assert_array_equal(npz["tokens"], expected["tokens"])
        np.testing.assert_array_equal(npz["labels"], expected["labels"])

    # 10. The guarantee the README states: whatever the batch size, the same tokens, and pixels
    # within 1/255 (the decoder's float rounding follows the per-device batch).
    single = config.copy_and_resolve_references()
    single.sample.batch_size = 1
    alone = main.run(single, str(tmp_path / "batch1"))
    with np.load(alone["npz"]) as npz:
        np.testing.assert_array_equal(npz["tokens"], expected["tokens"])
        assert np.abs(npz["arr_0"].astype(int) - expected["arr_0"].astype(int)).max() <= 1
    assert sorted(os.listdir(tmp_path / "batch1" / "samples" / "parts")) == [
        "batch_00000.npz", "batch_00001.npz", "batch_00002.npz"]
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "its tokens are the same whatever the batch" in readme
    assert "its pixels agree within 1/255" in readme


@pytest.mark.slow
def test_a_sampling_rerun_writes_missing_pngs_and_survives_a_damaged_job_file(tmp_path, caplog):
    """A first run without PNGs, then one with: the PNGs are written from the finished parts
    (the folder was empty). An empty or cut-short job.json is rebuilt, not a JSONDecodeError that
    no rerun gets past; the finished parts are kept, not sampled again."""
    from PIL import Image
    config = tiny_train_config("var")  # 64 px
    config.sample.update(classes=(1, 2, 3), images_per_class=1, batch_size=2, save_pngs=False)
    first = main.run(config, str(tmp_path))
    out = tmp_path / "samples"
    assert not (out / "images").exists()
    parts = _tree_files(out / "parts")
    with np.load(first["npz"]) as npz:
        images = npz["arr_0"]

    config.sample.save_pngs = True
    with caplog.at_level(logging.INFO):
        main.run(config, str(tmp_path))
    assert "wrote 3 PNGs of batches finished without them" in caplog.text
    assert sorted(os.listdir(out / "images")) == ["000000_c1.png", "000001_c2.png", "000002_c3.png"]
    for i, name in enumerate(sorted(os.listdir(out / "images"))):
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / name)), images[i])

    recorded = (out / "job.json").read_text()
    for damaged in ("", recorded[:len(recorded) // 2], "[]"):
        (out / "job.json").write_text(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = main.run(config, str(tmp_path))
        assert "job.json is damaged" in caplog.text
        assert json.loads((out / "job.json").read_text()) == json.loads(recorded)
        assert _tree_files(out / "parts") == parts  # read back, not sampled again
        with np.load(again["npz"]) as npz:
            np.testing.assert_array_equal(npz["arr_0"], images)


def test_of_two_jobs_claiming_one_samples_dir_at_once_exactly_one_wins(tmp_path):
    import concurrent.futures
    from bigvar.sampling.job import claim_samples_dir
    for attempt in range(20):
        out = tmp_path / str(attempt)
        out.mkdir()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(claim_samples_dir, str(out), {"seed": seed}) for seed in (0, 1)]
        errors = [f.exception() for f in futures]
        assert sum(e is None for e in errors) == 1, errors
        assert all(e is None or isinstance(e, UserError) for e in errors)
        assert os.listdir(out) == ["job.json"]


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=np.zeros(3))

    class DiskFull(OSError):
        pass

    with pytest.raises(DiskFull):
        with atomic_write(str(path)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise DiskFull(28, "No space left on device")
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["arr_0"], np.zeros(3))
    assert os.listdir(tmp_path) == ["samples.npz"]


# ---- 11. messages --------------------------------------------------------------------------------


def test_cli_user_errors_are_one_line_with_exit_status_2(tmp_path):
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    cases = [
        (("--config.var.embd_dim=64",), str(tmp_path / "w"),
         "error: --config.var.embd_dim: the config has no field 'var.embd_dim'; did you mean 'embed_dim'?"),
        ((), str(a_file), f"error: --workdir={a_file} is a file, not a directory"),
        (("--config.sample.cfg=strong",), str(tmp_path / "w"),
         "error: flag --config.sample.cfg=strong: could not convert string to float: 'strong'"),
        (("--config.mode=serve",), str(tmp_path / "w"), "error: config.mode = 'serve' is invalid"),
        (("--config.init_from=/nowhere",), str(tmp_path / "w"),
         "error: /nowhere/config.json not found: --config.init_from must be a directory"),
        (("--num_processes=2",), str(tmp_path / "w"),
         "error: --coordinator_address, --num_processes and --process_id go with --multihost"),
        (("--sample_cfg=4",), str(tmp_path / "w"), "error: Unknown command line flag 'sample_cfg'"),
        (("--config=configs/var_tiny.py:huge",), str(tmp_path / "w"),
         "error: flag --config=configs/var_tiny.py:huge: ValueError: unknown argument 'huge'"),
        (("--config=configs/var_d17.py",), str(tmp_path / "w"),
         "error: flag --config=configs/var_d17.py: 'configs/var_d17.py' is neither a config file "
         "nor the name of one shipped with bigvar (bae, bae_tiny, bigr,"),
        (("--config=configs/var_d30.py",), str(tmp_path / "w" / "new"),
         "error: no weights: convert the official var d30 once, `python -m bigvar.convert var "
         "--from_hub=d30 --out=ckpt/var_d30` (or from files at hand: --vae=vae_ch160v4096z32.pth "
         "--var=var_d30.pth), then add --config.init_from=ckpt/var_d30"),
        (("--config=configs/bigr_xl_d24.py",), str(tmp_path / "w" / "new"),
         "error: no weights: convert the official bigr xl_d24 once, `python -m bigvar.convert bigr "
         "--from_hub=xl_d24 --out=ckpt/bigr_xl_d24` (or from files at hand: "
         "--bae=binaryae_ema_1000000.th --gpt=bigr_XL_d24.pt)"),
    ]
    for flags, workdir, message in cases:
        config = [f.split("=", 1)[1] for f in flags if f.startswith("--config=")]
        result = _cli(workdir, *[f for f in flags if not f.startswith("--config=")],
                      config=config[0] if config else "configs/var_tiny.py")
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "w").exists(), f"a refused start left {tmp_path / 'w'} behind"


def test_the_workdir_defaults_to_runs_and_the_config_name(tmp_path):
    from bigvar import main
    assert main.default_workdir("configs/var_d30.py") == "runs/var_d30"
    assert main.default_workdir("/x/configs/bigr.py:l_d24") == "runs/bigr-l_d24"
    result = subprocess.run([sys.executable, "-m", "bigvar.main",
                             f"--config={ROOT}/configs/var_tiny.py", "--config.mode=serve"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "workdir: runs/var_tiny (--workdir=DIR to choose another)" in result.stdout, result.stderr
    assert result.returncode == 2
    assert not (tmp_path / "runs").exists(), "a refused start left its run directory behind"


def test_a_workdir_that_cannot_be_written_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits: a read-only file system, else a
        # directory that cannot be created (its parent is a file)
        readonly = "/sys/bigvar-workdir"
        if not os.path.isdir("/sys") or _writable("/sys"):
            (tmp_path / "a_file").write_text("x")
            readonly = str(tmp_path / "a_file" / "run")
    else:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        readonly = str(tmp_path / "ro" / "run")
    with pytest.raises(UserError, match=r"is not writable .*choose another directory"):
        rundir.prepare(readonly)


def _writable(directory):
    try:
        with open(os.path.join(directory, ".bigvar-probe"), "w"):
            pass
    except OSError:
        return False
    os.remove(os.path.join(directory, ".bigvar-probe"))
    return True


def test_the_converter_explains_a_directory_given_as_a_checkpoint(tmp_path, capsys):
    from bigvar.convert.__main__ import main as convert
    assert convert(["var", f"--vae={tmp_path}", f"--var={tmp_path}", f"--out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path} is a directory: give the checkpoint file inside it (e.g. …/var_d16.pth)"
    assert not (tmp_path / "out").exists()
