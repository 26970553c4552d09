"""The generator trainer: sharded == one device, gradient accumulation, mesh-to-mesh restore,
corrupt-checkpoint fallback, non-finite stop, fine-tuning with new classes, export → sample,
and a SIGKILLed run that resumes to the bitwise-identical result."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvar import parallel, weights
from bigvar.train.checkpoints import Checkpoints
from bigvar.train.generator import Trainer, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(model: str, **train):
    """64-px tiny models: VAR patch_nums (1, 2, 3, 4), BiGR 4×4 tokens."""
    import importlib.util
    path = os.path.join(ROOT, "configs", "var_tiny.py" if model == "var" else "bigr_tiny.py")
    spec = importlib.util.spec_from_file_location("tiny_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if model == "var":
        config.var.patch_nums = (1, 2, 3, 4)
    else:
        config.bae.img_size, config.bigr.seq_len = 64, 16
    config.data.update(source="procedural", num_classes=10, num_records=64)
    config.train.update(batch_size=8, steps=3, log_every=1, checkpoint_every=2, sample_every=0,
                        async_checkpoints=False)
    config.train.update(train)
    config.sample.update(classes=(0, 1), images_per_class=1, batch_size=2)
    return config


def random_batch(trainer, n=8, seed=0):
    r = trainer.image_size()
    rng = np.random.RandomState(seed)
    lo = -1.0 if trainer.model == "var" else 0.0
    return {"image": rng.uniform(lo, 1, (n, r, r, 3)).astype(np.float32),
            "label": (np.arange(n) % 10).astype(np.int32)}


def run_steps(config, mesh_spec, steps=3):
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_spec)
    n = int(np.prod([mesh_spec[a] for a in ("data", "fsdp", "tensor")]))
    mesh = parallel.make_mesh(config.mesh, jax.devices()[:n])
    trainer = Trainer(config, mesh, dataset_size=64)
    state = trainer.init_state(config.seed)
    tok = load_tokenizer(config, trainer)
    history = []
    for i in range(steps):
        batch = parallel.global_batch(random_batch(trainer, seed=i), mesh)
        state, metrics = trainer.step_fn(trainer.schedules.stage(i)[0])(state, tok, batch, jnp.float32(1))
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


@pytest.mark.slow
@pytest.mark.parametrize("model", ["var", "bigr"])
def test_three_sharded_steps_equal_one_device(model):
    config = tiny_config(model)
    one_state, one_hist = run_steps(config, dict(data=1, fsdp=1, tensor=1), steps=3)
    config.mesh.update(data=2, fsdp=2, tensor=2)
    sharded_state, sharded_hist = run_steps(config.copy_and_resolve_references(),
                                            dict(data=2, fsdp=2, tensor=2), steps=3)
    for a, b in zip(one_hist, sharded_hist):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
    flat_a = jax.tree_util.tree_leaves(one_state["params"])
    flat_b = jax.tree_util.tree_leaves(sharded_state["params"])
    for a, b in zip(flat_a, flat_b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
    assert int(sharded_state["step"]) == 3


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch():
    """Two micro-batches of 4 give the full batch's gradient (no dropout, no label drop)."""
    config = tiny_config("var")
    config.var.update(cond_drop_rate=0.0, drop_path_rate=0.0)
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    grads = []
    for accum in (1, 2):
        config.train.grad_accum = accum
        trainer = Trainer(config, mesh, dataset_size=64)
        state = trainer.init_state(0)
        tok = load_tokenizer(config, trainer)
        batch = jax.tree_util.tree_map(jnp.asarray, random_batch(trainer))
        g, m = jax.jit(lambda p, b: trainer.grads(p, tok, b, jax.random.PRNGKey(0), 3, 1.0))(
            state["params"], batch)
        grads.append((g, m))
    for a, b in zip(jax.tree_util.tree_leaves(grads[0][0]), jax.tree_util.tree_leaves(grads[1][0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grads[0][1]["loss"], grads[1][1]["loss"], rtol=1e-6)


def test_checkpoint_restores_on_another_mesh_and_skips_a_corrupt_latest(tmp_path, caplog):
    config = tiny_config("var")
    mesh_a = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
    trainer_a = Trainer(config, mesh_a, dataset_size=64)
    state = trainer_a.init_state(0)
    ckpts = Checkpoints(str(tmp_path), keep=3, async_save=False)
    ckpts.save(1, state, {"position": 1})
    state2 = jax.tree_util.tree_map(lambda x: x + 1 if x.dtype == jnp.float32 else x, state)
    ckpts.save(2, state2, {"position": 2})
    ckpts.wait()

    # Another mesh: 8-way data parallel (params replicated), and one device.
    for spec, devices in ((dict(data=8, fsdp=1, tensor=1), None), (dict(data=1), jax.devices()[:1])):
        mesh_b = parallel.make_mesh(spec, devices)
        trainer_b = Trainer(config, mesh_b, dataset_size=64)
        step, restored, data = ckpts.restore_latest(trainer_b.abstract_state())
        assert step == 2 and data == {"position": 2}
        for a, b in zip(jax.tree_util.tree_leaves(state2), jax.tree_util.tree_leaves(restored)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        leaf = jax.tree_util.tree_leaves(restored["params"])[0]
        assert leaf.sharding.mesh.shape == mesh_b.shape

    # Damage checkpoint 2: the restore warns and falls back to checkpoint 1.
    damaged = 0
    for root, _, files in os.walk(os.path.join(str(tmp_path), "2")):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) > 0 and "state" in root:
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                damaged += 1
    assert damaged
    step, restored, data = Checkpoints(str(tmp_path), keep=3, async_save=False).restore_latest(
        trainer_a.abstract_state())
    assert step == 1 and data == {"position": 1}
    assert any("could not be restored" in r.getMessage() for r in caplog.records)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpts.close()


def _train(workdir, *overrides, wait=True):
    cmd = [sys.executable, "-m", "bigvar.main", "--config=configs/var_tiny.py",
           f"--workdir={workdir}", "--config.mode=train", "--config.var.patch_nums=(1,2,3,4)",
           "--config.train.batch_size=16", "--config.train.steps=8", "--config.train.lr=1e-3",
           "--config.train.log_every=1", "--config.train.checkpoint_every=2",
           "--config.train.sample_every=0", *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        proc.output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, proc.output[-3000:]
    return proc


def _losses(workdir):
    from bigvar.train.metric_writer import read_jsonl
    return [(r["step"], r["loss"], r["Lm"], r["grad_norm"]) for r in read_jsonl(str(workdir / "logs"))]


def _final_state(workdir):
    config = tiny_config("var")
    trainer = Trainer(config, parallel.make_mesh({"data": -1}), dataset_size=10000)
    step, state, data = Checkpoints(str(workdir / "checkpoints")).restore_latest(trainer.abstract_state())
    return step, jax.device_get(state), data


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_params_and_metrics(tmp_path):
    """SIGKILL at a random step (a checkpoint save may be in flight), restart: the final params,
    optimizer state, data position and logged losses equal an uninterrupted run's bit for bit."""
    _train(tmp_path / "straight")
    kill_at = int(np.random.default_rng().integers(3, 8))
    proc = _train(tmp_path / "killed", wait=False)
    metrics = tmp_path / "killed" / "logs" / "metrics.jsonl"
    deadline = time.time() + 600
    ckpt_dir = tmp_path / "killed" / "checkpoints"

    def reached():  # the kill step is logged and a checkpoint is complete (a later may be in flight)
        done = ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return done and any(json.loads(l)["step"] >= kill_at for l in lines if l.strip())

    while time.time() < deadline and proc.poll() is None and not reached():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {kill_at}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _train(tmp_path / "killed").output
    assert "resumed from step" in resumed, resumed[-3000:]

    step_a, state_a, data_a = _final_state(tmp_path / "straight")
    step_b, state_b, data_b = _final_state(tmp_path / "killed")
    assert step_a == step_b == 8 and data_a == data_b, f"killed at step {kill_at}"
    for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)):
        np.testing.assert_array_equal(a, b, err_msg=f"killed at step {kill_at}")
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "killed"), f"killed at step {kill_at}"


def _config_for_run(model, **train):
    config = tiny_config(model, **train)
    config.mode = "train"
    return config


@pytest.fixture(scope="module")
def trained_bigr(tmp_path_factory):
    """A tiny BiGR trained 3 steps in-process (EMA kept), then exported."""
    from bigvar.train import generator
    workdir = tmp_path_factory.mktemp("bigr_run")
    config = _config_for_run("bigr", steps=3, lr=1e-3, ema_decay=0.5, sample_every=3)
    summary = generator.run(config, str(workdir))
    assert summary["steps"] == 3
    return config, workdir


@pytest.mark.slow
def test_bigr_run_writes_logs_grid_and_exports_the_ema_for_sampling(trained_bigr, tmp_path):
    from bigvar.main import run as main_run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from bigvar.train.metric_writer import read_jsonl
    config, workdir = trained_bigr
    assert os.path.exists(workdir / "samples" / "samples_00000003.png")
    rows = read_jsonl(str(workdir / "logs"))
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    events = EventAccumulator(str(workdir / "logs"))
    events.Reload()
    assert "loss" in events.Tags()["scalars"] and "samples" in events.Tags()["images"]

    export = config.copy_and_resolve_references()
    export.mode = "export"
    out = main_run(export, str(workdir))["exported"]
    trainer = Trainer(config, parallel.make_mesh({"data": -1}), dataset_size=64)
    _, state, _ = Checkpoints(str(workdir / "checkpoints")).restore_latest(trainer.abstract_state())
    exported = weights.load_weights(out)
    for a, b in zip(jax.tree_util.tree_leaves(state["ema"]), jax.tree_util.tree_leaves(exported["bigr"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(state["ema"]), jax.tree_util.tree_leaves(state["params"])))

    sample = config.copy_and_resolve_references()
    sample.update(mode="sample", init_from=out, allow_random_init=False)
    summary = main_run(sample, str(tmp_path))
    with np.load(os.path.join(tmp_path, "samples", "samples.npz")) as f:
        assert f["arr_0"].shape == (2, 64, 64, 3)
    assert summary


@pytest.mark.slow
def test_finetune_with_a_new_number_of_classes_keeps_everything_but_the_class_table(trained_bigr):
    from bigvar.main import run as main_run
    from bigvar.train.generator import load_finetune_params
    config, workdir = trained_bigr
    export = config.copy_and_resolve_references()
    export.mode = "export"
    out = main_run(export, str(workdir))["exported"]
    tuned = config.copy_and_resolve_references()
    tuned.update(init_from=out)
    tuned.bigr.num_classes = 4
    tuned.data.num_classes = 4
    trainer = Trainer(tuned, parallel.make_mesh({"data": -1}), dataset_size=64)
    params = load_finetune_params(tuned, trainer)
    stored = weights.load_weights(out)["bigr"]
    table = params["params"]["cls_embedding"]["embedding_table"]["embedding"]
    assert table.shape == (5, stored["params"]["cls_embedding"]["embedding_table"]["embedding"].shape[1])
    np.testing.assert_array_equal(params["params"]["layers"]["attention"]["wqkv"]["kernel"],
                                  stored["params"]["layers"]["attention"]["wqkv"]["kernel"])
    tuned.bigr.n_layer = 3  # an architecture change is an error naming the field
    with pytest.raises(ValueError, match="n_layer"):
        load_finetune_params(tuned, Trainer(tuned, parallel.make_mesh({"data": -1}), 64))


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    from bigvar.train import generator, loop
    config = _config_for_run("var", steps=6, lr=1e12, checkpoint_every=1, clip=0.0)
    with pytest.raises(loop.NonFiniteLoss, match="non-finite at step") as err:
        generator.run(config, str(tmp_path))
    good = Checkpoints(str(tmp_path / "checkpoints")).steps()
    assert good and max(good) < 6, err.value
    trainer = Trainer(config, parallel.make_mesh({"data": -1}), dataset_size=64)
    _, state, _ = Checkpoints(str(tmp_path / "checkpoints")).restore_latest(trainer.abstract_state())
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state["params"]))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_75(tmp_path):
    proc = _train(tmp_path, "--config.train.steps=1000", "--config.train.checkpoint_every=500",
                  wait=False)
    metrics = tmp_path / "logs" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-3000:]  # EX_TEMPFAIL: the launchers restart the job
    steps = Checkpoints(str(tmp_path / "checkpoints")).steps()
    assert len(steps) == 1 and 3 <= steps[0] < 500, (steps, out[-2000:])


# One of two `jax.distributed` processes: a resumed run (start 1000) whose processes step at
# different speeds; it prints the step at which `reached` turned True (or the last one).
_PREEMPTED_PROCESS = """
import sys, time
import jax
jax.distributed.initialize(f"localhost:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
from bigvar.train.checkpoints import PreemptionFlag
step = 1000
flag = PreemptionFlag(step)
print("ready", flush=True)
while step < 4000:
    time.sleep(0.01 * (1 + jax.process_index()))
    step += 1
    if flag.reached(step):
        break
flag.restore_handlers()
print(f"stopped at {step}", flush=True)
"""


@pytest.mark.parametrize("sig,target", [(signal.SIGTERM, 1), (signal.SIGINT, 0)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(sig, target):
    """Two processes on localhost: SIGTERM (through JAX's preemption sync manager) or SIGINT
    to one of them makes `PreemptionFlag.reached` True at the same step on both."""
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", _PREEMPTED_PROCESS, str(port), str(i)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        for proc in procs:
            while (line := proc.stdout.readline()) and not line.startswith("ready"):
                pass
        time.sleep(1)
        procs[target].send_signal(sig)
        outs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], outs
    stops = [[line for line in out.splitlines() if line.startswith("stopped at")] for out in outs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, outs
    assert 1000 < int(stops[0][0].split()[-1]) < 4000, stops


@pytest.mark.slow
def test_progressive_training_steps_a_cropped_sequence_with_the_ramped_weight():
    """With pg > 0 the early stages train a shorter sequence (their own compiled step) and the
    schedule switches to lin{pg}; the full stage logs Lt/Acct again."""
    config = tiny_config("var", steps=40, pg=0.5, pg0=1, pgwp=0.0)
    mesh = parallel.make_mesh(dict(data=1), jax.devices()[:1])
    trainer = Trainer(config, mesh, dataset_size=64)
    assert trainer.schedules.schedule == "lin0.5"
    stages = [trainer.schedules.stage(i)[0] for i in range(40)]
    assert stages[0] == 1 and stages[-1] == 3 and stages == sorted(stages)
    state = trainer.init_state(0)
    tok = load_tokenizer(config, trainer)
    batch = parallel.global_batch(random_batch(trainer), mesh)
    state, early = trainer.step_fn(1)(state, tok, batch, jnp.float32(0.5))
    state, full = trainer.step_fn(3)(state, tok, batch, jnp.float32(1.0))
    assert "Lt" not in early and "Lt" in full and int(state["step"]) == 2
    assert np.isfinite(float(early["loss"])) and np.isfinite(float(full["loss"]))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["var_tiny", "bigr_tiny"])
def test_a_tiny_config_trains_with_its_own_defaults(config, tmp_path):
    """The tiny configs are smoke runs on one CPU: before, their training inherited the full
    model's global batch (768 for VAR-d16) and died allocating 58 GB at the first step."""
    proc = subprocess.run([sys.executable, "-m", "bigvar.main", f"--config=configs/{config}.py",
                           f"--workdir={tmp_path / 'run'}", "--config.mode=train",
                           "--config.train.steps=1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
