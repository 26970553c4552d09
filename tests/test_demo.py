"""The README's main command end to end, with every stage cut to a few steps (`demo.py:quick`):
tokenizer → generator → judge → samples → summary, then a re-run that reuses every stage."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(config: str, workdir) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # one device, like a user's laptop
    return subprocess.run(
        [sys.executable, "-m", "bigvar.main", f"--config={config}", f"--workdir={workdir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def check_outputs(workdir, out: str, tokenizer: str) -> dict:
    summary = json.load(open(workdir / "summary.json"))
    assert 0.0 <= summary["class_agreement"] <= 1.0
    assert 0.0 <= summary["judge_heldout_accuracy"] <= 1.0
    assert np.isfinite(summary["tokenizer_heldout_psnr_db"])
    assert summary["num_samples"] == 20 and summary["tokenizer"] == tokenizer
    assert set(summary["frechet_distance_judge"]) == {"samples", "real_floor", "reconstructions"}
    for line in ("class agreement", "judge accuracy", "tokenizer PSNR", "Fréchet distance", "samples grid"):
        assert line in out, out[-3000:]
    grid = np.asarray(Image.open(summary["grid"]))
    assert grid.ndim == 3 and grid.shape[0] > grid.shape[1]  # 10 rows (classes) of 2 images
    assert os.path.exists(summary["reconstructions"])
    for stage in ("tokenizer", "generator"):
        lines = [json.loads(l) for l in open(workdir / stage / "logs" / "metrics.jsonl")]
        assert lines[-1]["step"] == 4
        assert os.path.exists(workdir / stage / "export" / "config.json")
    return summary


@pytest.mark.slow
def test_quick_var_demo_runs_end_to_end_and_a_rerun_reuses_every_stage(tmp_path):
    result = run_demo("configs/demo.py:quick", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    first = check_outputs(tmp_path, result.stdout, "vqvae")

    began = time.time()
    again = run_demo("configs/demo.py:quick", tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    second = check_outputs(tmp_path, again.stdout, "vqvae")
    for key in ("class_agreement", "judge_heldout_accuracy", "tokenizer_heldout_psnr_db"):
        assert first[key] == second[key], key
    assert "train vqvae" not in again.stderr and "train var" not in again.stderr  # nothing retrained
    assert "train judge" not in again.stderr
    assert time.time() - began < 120


@pytest.mark.slow
def test_quick_bigr_demo_runs_end_to_end(tmp_path):
    result = run_demo("configs/demo_bigr.py:quick", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    check_outputs(tmp_path, result.stdout, "bae")


@pytest.mark.slow
def test_judge_frechet_distance_ranks_image_sets():
    """The demo's quality figure: Fréchet distance in the judge's feature space. Near 0 for two
    real sets, larger for images of the wrong colours, None for too few images."""
    import jax
    import jax.numpy as jnp
    from bigvar.eval import shape_classifier
    model = shape_classifier.ShapeClassifier(10, width=8)  # an untrained judge is enough here
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    judge = shape_classifier.Judge(10, 8, params)
    real = [np.round(shape_classifier.heldout_set(10, 16, 200, seed)[0] * 255).astype(np.uint8)
            for seed in (0, 1)]
    swapped = real[1][..., ::-1]  # RGB → BGR: every class in the wrong colour
    same, wrong = judge.frechet_distance(real[0], real[1]), judge.frechet_distance(real[0], swapped)
    assert 0 <= same < wrong
    assert judge.frechet_distance(real[0][:16], real[1]) is None  # 16 images, 16 dimensions
