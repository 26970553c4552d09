"""The sampling job's batch from memory (`sample.batch_size=0`): the compiled sampler's bytes per
image, the largest batch that fits, and a resumed job keeping the batch it started with."""
import json
import os

import numpy as np
import pytest

from bigvar import main, models, parallel
from bigvar.errors import UserError
from bigvar.sampling import job, memory
from test_main import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_largest_batch_fills_the_budget_in_whole_tiles_up_to_the_cap():
    per_image, fixed = 100.0, 50.0
    assert memory.largest_batch(fixed, per_image, budget=fixed + 3 * per_image + 99, cap=64) == 3
    assert memory.largest_batch(fixed, per_image, budget=fixed + 23 * per_image, cap=64) == 16
    assert memory.largest_batch(fixed, per_image, budget=fixed + 23 * per_image, cap=20) == 20
    assert memory.largest_batch(fixed, per_image, budget=fixed + 23 * per_image, cap=12) == 12
    assert memory.largest_batch(fixed, per_image, budget=fixed + 99, cap=64) == 0
    assert memory.largest_batch(fixed, per_image, budget=fixed - 1, cap=64) == 0


def test_free_device_memory_is_at_most_the_host_memory():
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < memory.free_device_memory() <= host


def _abstract_sampler(config_name: str):
    config = _config(config_name)
    generator, tokenizer = models.build(config)
    return job.make_sampler_from_params(config, generator, tokenizer,
                                        *models.param_shapes(generator, tokenizer),
                                        parallel.make_mesh(config.mesh))


def _config(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _assert_linear(sampler):
    """The fitted line predicts a third compiled batch size within 2 %."""
    fixed, per_image = memory.sampling_memory(sampler)
    assert per_image > 0 and fixed >= 0
    shards = parallel.data_parallel_size(sampler.mesh)  # the bytes are per device
    predicted, compiled = fixed + 24 * per_image, sampler.generate_bytes(24 * shards)
    assert abs(predicted - compiled) / compiled < 0.02, (predicted, compiled)
    return fixed, per_image


@pytest.mark.slow
def test_bigr_sampling_memory_is_the_line_through_the_compiled_batch_sizes():
    _assert_linear(_abstract_sampler("bigr_tiny"))  # abstract weights: lowered, never run


@pytest.mark.slow
def test_sample_job_picks_the_largest_batch_that_fits_and_keeps_it_when_resumed(tmp_path, caplog):
    config = tiny_config()
    config.allow_random_init = True
    config.sample.update(classes=(0, 1, 2, 3), images_per_class=2, batch_size=0, save_pngs=False)
    config.mesh.update(data=2, tensor=-1)  # the batch is split over 2 devices
    generator, tokenizer = models.build(config)
    sampler = job.make_sampler_from_params(config, generator, tokenizer,
                                           *models.param_shapes(generator, tokenizer),
                                           parallel.make_mesh(config.mesh))
    fixed, per_image = _assert_linear(sampler)
    weights = memory.weight_bytes(sampler)

    def gib_for(images: float) -> float:  # a device with room for `images` beside the weights
        return (weights + (fixed + images * per_image) / memory.MEMORY_HEADROOM) / memory.GIB

    assert job.auto_batch_size(sampler, 8, gib_for(1.5)) == 2
    assert job.auto_batch_size(sampler, 8, gib_for(9.5)) == 8  # never more than the job's images
    with pytest.raises(UserError, match=r"sampling one image needs .* GiB per device beyond the "
                                        r"weights.*--config.var.dtype=bfloat16"):
        job.auto_batch_size(sampler, 8, gib_for(0.5))

    config.sample.memory_gib = gib_for(3.5)
    main.run(config, str(tmp_path))
    out = tmp_path / "samples"
    recorded = json.loads((out / "job.json").read_text())
    assert recorded["batch_size"] == 6  # 3 images per device fit: 8 images in batches of 6 and 2
    assert sorted(os.listdir(out / "parts")) == ["batch_00000.npz", "batch_00001.npz"]
    with np.load(out / "samples.npz") as npz:
        assert npz["tokens"].shape == (8, 680)
        np.testing.assert_array_equal(npz["labels"], [0, 0, 1, 1, 2, 2, 3, 3])

    # On a machine with other free memory, the job resumes with the batches it started with.
    config.sample.memory_gib = 0.0
    caplog.clear()
    with caplog.at_level("INFO"):
        main.run(config, str(tmp_path))
    assert "sample.batch_size=0: 6, as recorded by this job's earlier run" in caplog.text
    assert "2 of 2 batches were finished" in caplog.text
