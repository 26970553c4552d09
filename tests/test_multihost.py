"""Multi-host for real: the CLI as 2 processes × 4 CPU devices forming one JAX distributed job
on localhost (`tests/distributed_cli.py`), against the same command as 1 process × 8 devices.

Training (VAR, BiGR, a tokenizer), checkpoints moving between process counts, SIGTERM to one
process, SIGKILL of one process, export, the sampling job and the evaluation: the behaviour a
pod slice or a SLURM job relies on, with tiny configs."""
import json
import os
import re
import shutil
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import distributed_cli
from bigvar import config_lib, models, parallel
from bigvar.eval import job as eval_job
from bigvar.sampling import job as sampling_job
from bigvar.sampling import memory
from test_eval_job import smooth_images

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def compilation_cache(tmp_path_factory):
    distributed_cli.COMPILATION_CACHE = str(tmp_path_factory.mktemp("jax_cache"))
    yield
    distributed_cli.COMPILATION_CACHE = None

VAR_TRAIN = ["--config=configs/var_tiny.py", "--config.mode=train",
             "--config.var.patch_nums=(1,2,3,4)", "--config.train.batch_size=8",
             "--config.train.log_every=1", "--config.train.sample_every=0"]
STEPS = ["--config.train.steps=8", "--config.train.checkpoint_every=4"]


def losses(workdir) -> dict[int, float]:
    with open(os.path.join(workdir, "logs", "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def checkpoint_state(workdir, step: int) -> list[np.ndarray]:
    """The arrays of checkpoint `step` (whatever mesh wrote it), as NumPy, in tree order."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                    getattr(metadata, "item_metadata", metadata))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(checkpointer.restore(path, target))]


def steps_saved(workdir) -> list[int]:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def assert_close(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.astype(np.float64), y.astype(np.float64), atol=atol, rtol=0)


def assert_losses_close(a: dict, b: dict, steps, rtol: float = 1e-5) -> None:
    for step in steps:
        np.testing.assert_allclose(a[step], b[step], rtol=rtol, err_msg=f"step {step}")


def keep_only_checkpoint(src, dst, step: int) -> None:
    """A copy of run directory `src` as if the run had stopped right after checkpoint `step`."""
    shutil.copytree(src, dst)
    for saved in steps_saved(dst):
        if saved != step:
            shutil.rmtree(os.path.join(dst, "checkpoints", str(saved)))


def wait_for_logged_step(workdir, step: int, job: distributed_cli.Job, timeout: float = 600) -> None:
    path = os.path.join(workdir, "logs", "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and max(losses(workdir), default=0) >= step:
            return
        if any(p.poll() is not None for p in job.procs.values()):
            break
        time.sleep(0.1)
    raise AssertionError(f"step {step} was not logged:\n{job._tails()}")


def test_var_training_on_two_processes_equals_one_and_survives_preemption(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    distributed_cli.run_single(VAR_TRAIN + STEPS, one)
    results = distributed_cli.run(VAR_TRAIN + STEPS, two)
    assert [r.summary["steps"] for r in results] == ["8", "8"]
    # Each process read its own half of every global batch: the losses and the parameters are
    # those of one process reading the whole batch.
    reference = losses(one)
    assert_losses_close(reference, losses(two), range(1, 9))
    final = checkpoint_state(two, 8)
    assert_close(checkpoint_state(one, 8), final, atol=1e-4)
    assert not os.path.exists(f"{two}/logs/metrics.jsonl.tmp")

    # A checkpoint of 2 processes resumes in 1 (its data continues at the same global batch).
    moved = tmp_path / "two_then_one"
    keep_only_checkpoint(two, moved, 4)
    distributed_cli.run_single(VAR_TRAIN + STEPS, moved)
    assert_losses_close(reference, losses(moved), range(5, 9))
    assert_close(checkpoint_state(moved, 8), final, atol=1e-4)

    # SIGTERM to one process: both save the same step and exit 75 (restart me).
    preempted = tmp_path / "preempted"
    with distributed_cli.Job(VAR_TRAIN + STEPS, preempted) as job:
        wait_for_logged_step(preempted, 2, job)
        job.send_signal(1, signal.SIGTERM)
        results = job.wait(timeout=300)
    assert [r.returncode for r in results] == [75, 75], job._tails()
    # (the signal may come after the periodic checkpoint of step 4: the newest is the stop's)
    stopped = steps_saved(preempted)[-1]
    assert 2 <= stopped < 8, (steps_saved(preempted), job._tails())
    assert all(r.summary["steps"] == str(stopped) for r in results), job._tails()

    # SIGKILL of one process (a lost host): the other stops within the heartbeat timeout with
    # JAX's error, instead of waiting forever in a collective.
    with distributed_cli.Job(VAR_TRAIN + STEPS, preempted, heartbeat_timeout=10) as job:
        job.wait_for_line(0, r"resumed from step", timeout=600)  # (not after a step: it may be the last)
        job.procs[1].kill()
        began = time.time()
        survivor = job.wait(timeout=120)[0]
    assert survivor.returncode != 0 and time.time() - began < 120
    assert "another task died" in survivor.output or "unhealthy" in survivor.output, survivor.output[-3000:]

    # Rerunning the same command resumes from the newest checkpoint, exactly.
    distributed_cli.run(VAR_TRAIN + STEPS, preempted)
    for a, b in zip(checkpoint_state(preempted, 8), final):
        np.testing.assert_array_equal(a, b)
    assert losses(preempted) == losses(two)


def test_bigr_checkpoint_of_one_process_trains_on_two_as_on_one(tmp_path):
    args = ["--config=configs/bigr_tiny.py", "--config.mode=train", "--config.bae.img_size=64",
            "--config.bigr.seq_len=16", "--config.train.batch_size=8", "--config.train.log_every=1",
            "--config.train.sample_every=0"] + STEPS
    one = tmp_path / "one"
    distributed_cli.run_single(args, one)
    moved = tmp_path / "one_then_two"
    keep_only_checkpoint(one, moved, 4)
    distributed_cli.run(args, moved)
    assert_losses_close(losses(one), losses(moved), range(5, 9))
    assert_close(checkpoint_state(one, 8), checkpoint_state(moved, 8), atol=1e-4)


def test_tokenizer_trains_and_exports_on_two_processes(tmp_path):
    args = ["--config=configs/vqvae_tiny.py", "--config.train.batch_size=8",
            "--config.train.steps=3", "--config.train.log_every=1", "--config.train.checkpoint_every=3",
            "--config.train.sample_every=3", "--config.train.sample_images=4"]
    two = tmp_path / "two"
    distributed_cli.run(args, two)  # (its steps equal one process's as VAR's and BiGR's do)
    assert sorted(losses(two)) == [1, 2, 3] and all(np.isfinite(list(losses(two).values())))
    assert sorted(os.listdir(two / "samples")) == ["reconstructions_00000003.png"]  # the chief's

    results = distributed_cli.run(args + ["--config.mode=export"], two)
    exported = two / "export"
    assert all(r.summary["exported"] == str(exported) for r in results)
    assert sorted(os.listdir(exported)) == ["checksums.json", "config.json", "params"]
    params = jax.tree_util.tree_leaves(ocp.PyTreeCheckpointer().restore(str(exported / "params")))
    saved = {np.asarray(x).tobytes() for x in checkpoint_state(two, 3)}
    assert params and all(np.asarray(x).tobytes() in saved for x in params)


def test_sampling_and_evaluation_on_two_processes_equal_one_and_resume_after_a_kill(
        inception_dir, tmp_path):
    """mode=eval (the sampling job, then the metrics) on 2 processes: each process samples its
    share and writes the PNGs of its rows, the chief the shared files; both processes killed
    mid-job, the rerun samples only the unfinished batches; every output equals 1 process's."""
    reference = tmp_path / "ref.npz"
    np.savez(reference, arr_0=smooth_images(3, 8, size=64))
    args = ["--config=configs/var_tiny.py", "--config.var.patch_nums=(1,2,3,4)",
            "--config.mode=eval", f"--config.eval.inception={inception_dir}",
            f"--config.eval.reference={reference}", "--config.eval.batch_size=8",
            "--config.sample.classes=(1,2,3,4,5,6)", "--config.sample.images_per_class=2",
            "--config.sample.batch_size=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    single = distributed_cli.run_single(args, one)  # (also the CLI's one-process eval)
    assert "sampling" in single.output and "Inception features (samples)" in single.output
    metrics_one = json.loads((one / "eval" / "metrics.json").read_text())
    assert metrics_one["num_images"] == 12 and metrics_one["sampling"]["images_per_class"] == 2
    assert f"{'Recall':<16}{metrics_one['recall']:>12.4f}" in single.output

    first_part = two / "samples" / "parts" / "batch_00000.npz"
    with distributed_cli.Job(args, two) as job:
        deadline = time.time() + 600
        while not first_part.exists() and time.time() < deadline and job.procs[0].poll() is None:
            time.sleep(0.02)
        job.kill()  # both hosts lost at once
    assert first_part.exists(), job._tails()
    finished = len(os.listdir(two / "samples" / "parts"))
    assert finished < 6, "the job ended before it was killed: nothing to resume"

    results = distributed_cli.run(args, two)
    assert f"{finished} of 6 batches were finished by an earlier run" in results[0].output
    pngs = [int(re.search(r"it wrote (\d+) PNGs", r.output).group(1)) for r in results]
    assert sum(pngs) == 2 * (6 - finished) and min(pngs) > 0  # each process its own rows

    # The same tokens; pixels within 1/255 (the decoder's float rounding depends on how XLA
    # splits a convolution over a process's threads).
    with np.load(one / "samples" / "samples.npz") as a, np.load(two / "samples" / "samples.npz") as b:
        assert a.files == b.files == ["arr_0", "labels", "tokens"]
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert np.abs(a["arr_0"].astype(int) - b["arr_0"]).max() <= 1
        images = b["arr_0"]
    names = sorted(os.listdir(two / "samples" / "images"))
    assert names == sorted(os.listdir(one / "samples" / "images")) and len(names) == 12
    for i, name in enumerate(names):  # each PNG is its row of the npz, whichever host wrote it
        np.testing.assert_array_equal(np.asarray(Image.open(two / "samples" / "images" / name)), images[i])
    grids = [np.asarray(Image.open(d / "samples" / "grid.png")).astype(int) for d in (one, two)]
    assert grids[0].shape == grids[1].shape and np.abs(grids[0] - grids[1]).max() <= 1
    # The metrics of 2 processes are 1 process's on the same images: the same job run here in
    # one process (8 devices) finds every batch and feature done and computes the same numbers.
    two_processes = json.loads((two / "eval" / "metrics.json").read_text())
    config = config_lib.load_config_file("var_tiny.py")
    config.var.patch_nums = (1, 2, 3, 4)
    config.mode = "eval"
    config.eval.update(inception=inception_dir, reference=str(reference), batch_size=8)
    config.sample.update(classes=(1, 2, 3, 4, 5, 6), images_per_class=2, batch_size=2)
    eval_job.run(config, str(two))
    one_process = json.loads((two / "eval" / "metrics.json").read_text())
    assert one_process["feature_batches_computed"] == {"samples": 0, "reference": 0}
    for key in ("inception_score", "precision", "recall"):
        np.testing.assert_allclose(two_processes[key], one_process[key], rtol=1e-6, err_msg=key)

    # The run-directory rules hold across hosts: other settings are refused by both processes.
    with distributed_cli.Job(args + ["--config.sample.top_k=7"], two) as job:
        results = job.wait(timeout=300)
    for r in results:
        assert r.returncode == 2, r.output[-2000:]
        assert "holds samples made with other sample.top_k" in r.output, r.output[-2000:]


def test_sampling_batch_from_memory_is_the_same_on_every_process(tmp_path):
    """sample.batch_size=0 on 2 processes: each plans its devices' batch from the compiled
    sampler, they agree, and the job samples in batches of that size."""
    config = config_lib.load_config_file("var_tiny.py")
    config.var.patch_nums = (1, 2, 3, 4)
    generator, tokenizer = models.build(config)
    sampler = sampling_job.make_sampler_from_params(  # this process: the same 8-device mesh
        config, generator, tokenizer, *models.param_shapes(generator, tokenizer),
        parallel.make_mesh(config.mesh))
    fixed, per_image = memory.sampling_memory(sampler)
    room_for_1_5 = (memory.weight_bytes(sampler)
                    + (fixed + 1.5 * per_image) / memory.MEMORY_HEADROOM) / memory.GIB
    args = ["--config=configs/var_tiny.py", "--config.var.patch_nums=(1,2,3,4)",
            "--config.sample.classes=(1,2,3,4,5,6)", "--config.sample.images_per_class=2",
            "--config.sample.batch_size=0", f"--config.sample.memory_gib={room_for_1_5}",
            "--config.allow_random_init=True", "--config.sample.save_pngs=False"]
    results = distributed_cli.run(args, tmp_path)
    for r in results:
        assert "1 images per device, a batch of 8" in r.output, r.output[-3000:]
    assert json.loads((tmp_path / "samples" / "job.json").read_text())["batch_size"] == 8
    assert sorted(os.listdir(tmp_path / "samples" / "parts")) == ["batch_00000.npz", "batch_00001.npz"]
    with np.load(tmp_path / "samples" / "samples.npz") as npz:
        assert npz["tokens"].shape == (12, 30)


def test_a_locked_run_directory_stops_every_process(tmp_path):
    """The chief takes the lock for the job; its refusal is every process's (exit 2, the same
    message), not a chief that exits while the others wait in a collective."""
    import socket
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "run.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "what": "test"}))
    with distributed_cli.Job(VAR_TRAIN + STEPS, workdir) as job:
        results = job.wait(timeout=300)
    for r in results:
        assert r.returncode == 2, r.output[-2000:]
        assert f"error: {workdir} is in use by another run" in r.output


@pytest.mark.parametrize("flag, values", [
    ("--config.train.batch_size", ("8", "16")),  # each trained on its own batch, exit 0
    ("--config.seed", ("0", "1")),  # not reproducible from the recorded config
])
def test_processes_started_with_different_flags_all_refuse(tmp_path, flag, values):
    with distributed_cli.Job(VAR_TRAIN + STEPS, tmp_path / "w", extra_args={
            i: [f"{flag}={value}"] for i, value in enumerate(values)}) as job:
        results = job.wait(timeout=300)
    name = flag.removeprefix("--")
    for i, result in enumerate(results):
        assert result.returncode == 2, f"process {i}:\n{distributed_cli.readable_tail(result.output)}"
        assert (f"the processes were started with different flags ({name}: process 0 "
                f"{int(values[0])}, process 1 {int(values[1])})") in result.output
    assert not (tmp_path / "w").exists()  # refused before the run directory was made


def test_processes_that_read_different_weights_all_refuse(inception_dir, tmp_path):
    """Each host reads its own copy of a weights folder (the same relative path, here two
    working directories): process 1's copy holds other, self-consistent weights."""
    from bigvar import weights
    cwds = {i: tmp_path / f"host{i}" for i in range(2)}
    shutil.copytree(inception_dir, cwds[0] / "inception")
    variables = weights.load_weights(inception_dir)
    first = next(iter(weights._flat(variables)))
    changed = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 1 if weights.path_name(path) == first else x, variables)
    config = json.loads((cwds[0] / "inception" / "config.json").read_text())
    weights.save_weights(str(cwds[1] / "inception"), changed, config)
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=smooth_images(4, 8, size=64))
    args = ["--config=configs/var_tiny.py", "--config.mode=eval", "--config.eval.inception=inception",
            f"--config.eval.samples={samples}", f"--config.eval.reference={samples}"]
    with distributed_cli.Job(args, tmp_path / "w", cwds=cwds) as job:
        results = job.wait(timeout=300)
    for i, result in enumerate(results):
        assert result.returncode == 2, f"process {i}:\n{distributed_cli.readable_tail(result.output)}"
        assert ("error: inception holds other weights on process 1 than on process 0: give every "
                "process the same weights") in result.output
