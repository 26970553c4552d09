"""LPIPS-VGG (bigvar/tokenizers/lpips.py) and its converter (bigvar/convert/lpips.py) against the
official taming-transformers LPIPS and the `lpips` package BinaryLatentDiffusion uses (golden
fixture from tests/fixtures/make_lpips_fixture.py: random full-width VGG16 + lin weights as tiny
.pth files with the official key names, image pairs, distances and an input gradient)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES
from bigvar.convert import __main__ as convert_cli
from bigvar.convert import lpips as convert_lpips
from bigvar.convert import torch_pickle
from bigvar.convert.common import ConversionError, flatten
from bigvar.tokenizers.lpips import LPIPS, load_lpips

DIR = os.path.join(FIXTURES, "lpips")
VGG_PTH = os.path.join(DIR, "vgg16.pth")
LIN_PTH = os.path.join(DIR, "vgg_lin.pth")
VQGAN_CKPT = os.path.join(DIR, "vqgan_ckpt.pth")
RTOL = 1e-5


@pytest.fixture(scope="module")
def fx():
    with np.load(os.path.join(DIR, "lpips.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def state_dicts():
    return torch_pickle.load(VGG_PTH), torch_pickle.load(LIN_PTH)


@pytest.fixture(scope="module")
def variables():
    return convert_lpips.convert(VGG_PTH, LIN_PTH)[1]


def nhwc(x):
    return jnp.asarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))


_apply = jax.jit(lambda v, x, y: LPIPS().apply(v, x, y, mutable=["intermediates"]))
_grad_x = jax.jit(jax.grad(lambda x, y, v: LPIPS().apply(v, x, y).sum()))  # d Σ LPIPS(x, y) / dx


def assert_same_params(a, b):
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


# ---- numerics against the official code ---------------------------------------------------------
@pytest.mark.parametrize("size", ["32", "64"])
def test_matches_official(fx, variables, size):
    d, state = _apply(variables, nhwc(fx[f"x{size}"]), nhwc(fx[f"y{size}"]))
    assert d.shape == (fx[f"x{size}"].shape[0],) and d.dtype == jnp.float32
    np.testing.assert_allclose(d, fx[f"taming/d{size}"].reshape(-1), rtol=RTOL, atol=0)
    np.testing.assert_allclose(d, fx[f"lpips_pkg/d{size}"].reshape(-1), rtol=RTOL, atol=0)
    if size == "32":  # the five per-tap terms (the lpips package's retPerLayer)
        taps = np.stack([state["intermediates"][f"tap_{k}"][0] for k in range(5)])
        np.testing.assert_allclose(taps, fx["lpips_pkg/taps32"], rtol=5e-5, atol=0)


def test_input_gradient_matches_official(fx, variables):
    x, y = nhwc(fx["x32"]), nhwc(fx["y32"])
    grad = _grad_x(x, y, variables)
    want = fx["taming/grad32"].transpose(0, 2, 3, 1)
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(grad, want, rtol=0, atol=2e-5 * scale)


def test_identical_images_and_finite_gradients(fx, variables):
    x, y = nhwc(fx["x32"]), nhwc(fx["y32"])
    d, _ = _apply(variables, x, x)
    np.testing.assert_array_equal(d, np.zeros(2, np.float32))
    # Inside a loss it is differentiated w.r.t. the reconstruction (and must not NaN where a
    # whole feature column is zero after ReLU, e.g. on a constant image).
    g = _grad_x(y, x, variables)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    g0 = _grad_x(x, x, variables)
    assert np.all(np.isfinite(g0)) and np.abs(g0).max() == 0
    flat = jnp.full_like(x, -1.0)  # dark constant image vs noise
    assert np.all(np.isfinite(_grad_x(flat, x, variables)))


def test_train_mode_dropout(fx, variables):
    x, y = nhwc(fx["x32"]), nhwc(fx["y32"])
    eval_d, _ = _apply(variables, x, y)
    train_d = jax.jit(lambda v, x, y, key: LPIPS().apply(v, x, y, deterministic=False,
                                                         rngs={"dropout": key}))(
        variables, x, y, jax.random.key(0, impl="rbg"))  # rbg: compiles faster than threefry
    assert np.all(np.isfinite(train_d)) and not np.allclose(train_d, eval_d)
    with pytest.raises(ValueError, match=r"same shape \(B, H, W, 3\)"):
        LPIPS().apply(variables, x, y[:1])
    with pytest.raises(ValueError, match="at least 16"):
        LPIPS().apply(variables, x[:, :8, :8], y[:, :8, :8])


# ---- converter ----------------------------------------------------------------------------------
def test_layouts(state_dicts, variables):
    vgg, lin = state_dicts
    p = variables["params"]
    np.testing.assert_array_equal(p["vgg"]["conv_12"]["kernel"], vgg["features.28.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["vgg"]["conv_2"]["bias"], vgg["features.5.bias"])
    np.testing.assert_array_equal(p["lin_3"]["kernel"], lin["lin3.model.1.weight"].transpose(2, 3, 1, 0))
    assert p["lin_4"]["kernel"].shape == (1, 1, 512, 1)


def test_cli_round_trip_and_combined_checkpoints(tmp_path, fx, state_dicts, variables):
    out = tmp_path / "lpips"
    assert convert_cli.main(["lpips", f"--vgg={VGG_PTH}", f"--lin={LIN_PTH}", f"--out={out}"]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == "lpips"
    assert_same_params(load_lpips(str(out)), variables)

    # A taming VQGAN checkpoint with the whole LPIPS under `loss.perceptual_loss.`.
    out2 = tmp_path / "from_vqgan"
    assert convert_cli.main(["lpips", f"--lpips={VQGAN_CKPT}", f"--out={out2}"]) == 0
    assert_same_params(load_lpips(str(out2)), variables)

    # The official key names of both LPIPS implementations (incl. the lpips package's duplicate
    # `lins.*` and the scaling buffers), bare and under BiGR's B-AE prefix `perceptual.`.
    vgg, lin = state_dicts
    taming_sd = torch_pickle.load(VQGAN_CKPT)["state_dict"]
    for keys, prefix in ((fx["keys/taming"], ""), (fx["keys/lpips_pkg"], "perceptual.")):
        sd = {}
        for key in map(str, keys):
            if key.startswith("lins."):
                value = lin["lin" + key.split(".", 2)[1] + ".model.1.weight"]
            else:
                value = taming_sd["loss.perceptual_loss." + key]
            sd[prefix + key] = value
        if prefix:  # the rest of the B-AE checkpoint is ignored
            sd["ae.encoder.blocks.0.weight"] = np.zeros((2, 3, 3, 3), np.float32)
        assert_same_params(convert_lpips.convert_lpips_state_dict(sd, "sd"), variables["params"])


def test_missing_and_misshaped_keys_are_named(state_dicts):
    vgg, lin = state_dicts
    bad = dict(vgg)
    del bad["features.28.bias"]
    with pytest.raises(ConversionError, match=r"(?s)missing.*features\.28\.bias"):
        convert_lpips.convert_vgg_state_dict(bad, "vgg16.pth")
    bad = dict(vgg, **{"features.7.weight": np.zeros((128, 128, 1, 1), np.float32)})
    with pytest.raises(ConversionError, match=r"features\.7\.weight: expected \(128, 128, 3, 3\), "
                                              r"found \(128, 128, 1, 1\)"):
        convert_lpips.convert_vgg_state_dict(bad, "vgg16.pth")
    bad = dict(lin, **{"lin2.model.1.weight": np.zeros((1, 128, 1, 1), np.float32)})
    with pytest.raises(ConversionError, match=r"lin2\.model\.1\.weight: expected \(1, 256, 1, 1\)"):
        convert_lpips.convert_lin_state_dict(bad, "vgg.pth")
    with pytest.raises(ConversionError, match=r"(?s)unexpected.*lin0\.model\.1\.weight.*pass it as --lin"):
        convert_lpips.convert_vgg_state_dict(lin, "vgg.pth")
    with pytest.raises(ConversionError, match="pass it as --vgg"):
        convert_lpips.convert_lin_state_dict(vgg, "vgg16.pth")

    taming_sd = torch_pickle.load(VQGAN_CKPT)["state_dict"]
    bad = dict(taming_sd, **{"loss.perceptual_loss.scaling_layer.scale": np.ones((1, 3, 1, 1), np.float32)})
    with pytest.raises(ConversionError, match=r"scaling_layer\.scale is \[1\.0, 1\.0, 1\.0\]"):
        convert_lpips.convert_lpips_state_dict(bad, "last.ckpt")
    bad = {k: v for k, v in taming_sd.items() if k != "loss.perceptual_loss.net.slice5.28.weight"}
    with pytest.raises(ConversionError, match=r"(?s)loss\.perceptual_loss\..*missing.*net\.slice5\.28\.weight"):
        convert_lpips.convert_lpips_state_dict(bad, "last.ckpt")
    with pytest.raises(ConversionError, match="holds no LPIPS network"):
        convert_lpips.convert_lpips_state_dict(dict(vgg), "vgg16.pth")


def test_cli_failures_and_missing_weights(tmp_path, capsys):
    out = tmp_path / "o"
    assert convert_cli.main(["lpips", f"--vgg={LIN_PTH}", f"--lin={LIN_PTH}", f"--out={out}"]) == 2
    assert convert_cli.main(["lpips", f"--vgg={VGG_PTH}", f"--out={out}"]) == 2
    legacy = tmp_path / "vgg.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")  # a truncated pre-1.6 file
    assert convert_cli.main(["lpips", f"--vgg={VGG_PTH}", f"--lin={legacy}", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert "pass it as --lin" in err and "both --vgg and --lin" in err and "truncated" in err
    assert not out.exists()

    with pytest.raises(FileNotFoundError, match=r"python -m bigvar\.convert lpips --vgg="):
        load_lpips(str(tmp_path / "nowhere"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model": "var"}))
    with pytest.raises(ValueError, match=r"holds 'var' weights, not LPIPS"):
        load_lpips(str(other))
