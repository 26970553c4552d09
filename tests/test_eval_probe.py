"""`mode=probe` (`bigvar.eval.probe`): BiGR features → a linear classifier, offline on the
procedural data; sharded features equal unsharded ones, a rerun reuses every feature batch."""
import json

import jax
import numpy as np
import pytest

from bigvar import config_lib, main, parallel
from bigvar.errors import UserError
from bigvar.eval import probe
from bigvar.models import bigr


def tiny(**probe_fields):
    config = config_lib.load_config_file("bigr_tiny.py")
    config.bae.img_size, config.bigr.seq_len = 64, 16  # 4×4 tokens: quick on a CPU
    config.mode = "probe"
    config.probe.update(train_images=48, val_images=32, batch_size=16, **probe_fields)
    return config


@pytest.mark.slow
def test_features_are_the_pooled_residual_stream_on_any_device_count():
    config = tiny(layer=0)
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    one = probe.FeatureFn(config, parallel.make_mesh(devices=jax.devices()[:1]), layer=0)
    params = (one.sampler.gen_params, one.sampler.tok_params)
    eight = probe.FeatureFn(config, parallel.make_mesh(), layer=0, params=params)
    a, b = one(images)["features"], eight(images)["features"]
    assert a.shape == (5, config.bigr.dim)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # … and they are `models.bigr.features` of the deterministic bits, mean-pooled, null class.
    from bigvar import models
    from bigvar.tokenizers import bae as bae_lib
    model, tokenizer = models.build(config)
    gen_params, tok_params = one.sampler.gen_params, one.sampler.tok_params
    probs = tokenizer.apply(tok_params, images[:2] / 255.0, method=tokenizer.encode_probs)
    tokens = bae_lib.to_tokens(bae_lib.deterministic_bits(probs))
    want = bigr.features(model, gen_params, tokens, np.full(2, config.bigr.num_classes), 0).mean(1)
    np.testing.assert_allclose(a[:2], np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_probe_learns_and_resumes(tmp_path, capsys):
    summary = main.run(tiny(), str(tmp_path))
    result = json.load(open(tmp_path / "probe" / "result.json"))
    assert summary["top1"] == result["top1"]
    assert result["layer"] == 1 and result["n_layer"] == 2  # -1: the middle block
    assert (result["train_images"], result["val_images"]) == (48, 32)
    assert result["feature_batches_computed"] == {"train": 3, "val": 2}
    # Random weights, but the classes differ in colour: the probe must beat chance clearly.
    assert result["train_top1"] >= 0.4 and result["top1"] > 2 * result["chance"]
    assert "linear probe, block 1 of 2: top-1" in capsys.readouterr().out
    again = main.run(tiny(), str(tmp_path))
    second = json.load(open(tmp_path / "probe" / "result.json"))
    assert second["feature_batches_computed"] == {"train": 0, "val": 0}
    assert again["top1"] == result["top1"]


@pytest.mark.parametrize("change, message", [
    (dict(layer=2), r"probe.layer = 2 is invalid: expected a block index in \[0, 2\)"),
    (dict(epochs=0), r"probe.epochs = 0 is invalid"),
])
def test_bad_probe_settings(change, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        main.run(tiny(**change), str(tmp_path))


def test_probe_needs_validation_images_and_a_bigr_config(tmp_path):
    config = tiny()
    config.data.update(source="folder", path=str(tmp_path))
    with pytest.raises(UserError, match="needs --config.probe.val_path"):
        main.run(config, str(tmp_path / "w"))
    var = config_lib.load_config_file("var_tiny.py")
    var.mode = "probe"
    with pytest.raises(ValueError, match="'probe' only with a BiGR config"):
        main.run(var, str(tmp_path / "w2"))
