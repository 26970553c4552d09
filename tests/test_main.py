"""`python -m bigvar.main` in sample mode: the files a user gets, resume, and config errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bigvar import config_lib, main, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    import importlib.util
    spec = importlib.util.spec_from_file_location("var_tiny", os.path.join(ROOT, "configs", "var_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.slow
def test_cli_sample_writes_grid_pngs_and_npz(tmp_path):
    cmd = [sys.executable, "-m", "bigvar.main", "--config=configs/var_tiny.py", f"--workdir={tmp_path}",
           "--config.sample.classes=(2,5,7)", "--config.sample.images_per_class=1",
           "--config.sample.batch_size=2", "--config.sample.grid_cols=3",
           "--config.mesh.data=1", "--config.mesh.tensor=-1"]  # batches of 2, not padded to 8
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "JAX_LOG_COMPILES": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sampling" in result.stderr  # the progress bar
    # The ragged last batch (1 of 3 images) is padded: the sampler is compiled once, not twice.
    assert result.stderr.count("Finished XLA compilation of jit(fn)") == 1
    out = tmp_path / "samples"
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (3, 256, 256, 3) and npz["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(npz["labels"], [2, 5, 7])
        assert npz["tokens"].shape == (3, 680)
        images = npz["arr_0"]
    assert sorted(os.listdir(out / "images")) == ["000000_c2.png", "000001_c5.png", "000002_c7.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / "000001_c5.png")), images[1])
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 + 258, 2 + 3 * 258, 3)
    assert f"grid: {out / 'grid.png'}" in result.stdout


@pytest.mark.parametrize("field, value, message", [
    ("sample.classes", (3, 10), r"class ids in \[0, 10\) \(got \[10\]\)"),
    ("sample.top_p", 1.5, r"sample.top_p = 1.5 is invalid: expected a value in \(0, 1\]"),
    ("sample.cfg", -1.0, r"sample.cfg = -1.0 is invalid"),
    ("var.num_heads", 3, r"a divisor of var.embed_dim=128"),
    ("mode", "serve", r"config.mode = 'serve' is invalid"),
    ("var.attn_impl", "cudnn", r"cuDNN attention needs --config.var.dtype=bfloat16"),
    # Values that mean nothing: refused, not used (cfg=nan changed a quarter of the tokens, class
    # 1.5 sampled class 1, memory_gib=inf failed deep inside with a NaN conversion).
    ("sample.cfg", float("nan"), r"sample.cfg = nan is invalid: expected a finite number"),
    ("sample.top_p", float("inf"), r"sample.top_p = inf is invalid: expected a finite number"),
    ("sample.memory_gib", float("inf"), r"sample.memory_gib = inf is invalid"),
    ("train.lr", float("-inf"), r"train.lr = -inf is invalid"),
    ("sample.classes", (1.5,), r"sample.classes = \(1.5,\) is invalid: expected a tuple of integer"),
    ("sample.classes", (2.9, 3), r"sample.classes = \(2.9, 3\) is invalid"),
])
def test_bad_config_values_are_clear_errors(field, value, message, tmp_path):
    config = tiny_config()
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        main.run(config, str(tmp_path))


def test_released_configs_are_valid_and_match_the_spec():
    import importlib.util
    sizes = {}
    for depth in (16, 20, 24, 30, 36):
        spec = importlib.util.spec_from_file_location("c", os.path.join(ROOT, "configs", f"var_d{depth}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = config_lib.validate(module.get_config())
        v = config.var
        assert (v.embed_dim, v.num_heads) == (64 * depth, depth)
        assert v.shared_aln == (depth == 36)
        assert config_lib.image_size(config) == (512 if depth == 36 else 256)
        assert (config.sample.cfg, config.sample.top_k, config.sample.top_p) == (1.5, 900, 0.96)
        fid = config_lib.validate(module.get_config("fid"))
        assert fid.sample.images_per_class == 50 and tuple(fid.sample.classes) == ()
        sizes[depth] = v
    # Parameter counts of the official models (docs/official_behaviour.md), from our shapes.
    import jax
    from bigvar.models import param_shapes
    for depth, want in ((16, 310_283_520), (36, 2_353_893_904)):
        spec = importlib.util.spec_from_file_location("c", os.path.join(ROOT, "configs", f"var_d{depth}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        shapes = param_shapes(*models.build(config))
        assert sum(x.size for x in jax.tree_util.tree_leaves(shapes[0])) == want
        if depth == 16:
            assert sum(x.size for x in jax.tree_util.tree_leaves(shapes[1])) == 108_948_355


@pytest.mark.parametrize("command", [
    pytest.param(["bigvar.plan", "--config=configs/var_tiny.py", "--config.var.patch_nums=(1, 2)",
                  "--devices=1", "--batch=2"], marks=pytest.mark.slow),  # (compiles a train step)
    ["bigvar.main", "--config=configs/var_tiny.py", "--config.mode=serve"],  # refused: exit 2
])
def test_the_clis_do_not_print_jaxs_backend_probing(command):
    """Without JAX_PLATFORMS, JAX probes libtpu and the IFRT proxy on every start and logs each
    failure at INFO: noise on a CPU or GPU machine, kept out of what the user sees."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 2), result.stderr[-3000:]
    assert "Unable to initialize backend" not in result.stderr, result.stderr[-3000:]


def test_class_ids_that_are_not_numbers_are_one_line_on_the_cli(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bigvar.main", "--config=configs/var_tiny.py",
                             f"--workdir={tmp_path / 'run'}", "--config.sample.classes=abc"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "config.sample.classes = " in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
