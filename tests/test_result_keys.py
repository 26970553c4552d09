"""The keys of resumable results (`bigvar.result_keys`): every field of the sections that feed a
result changes its key, whatever the field (so one added later is covered), and only the named
logistics fields do not."""
import pytest

from bigvar import config_lib, result_keys
from bigvar.models import SECTIONS


def _changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, (tuple, list)):
        return tuple(value) + (7,)
    raise TypeError(f"no other value for {value!r}")


def _each_field_changed(config, section):
    for name, value in config[section].items():
        other = config.copy_and_resolve_references()
        with other.unlocked():
            other[section][name] = _changed(value)
        yield name, other


KEYS = {
    "samples": (lambda c: result_keys.samples_key(c, weights="w", batch_size=4),
                lambda c: [*SECTIONS[c.model], "sample"],
                {"sample": result_keys.SAMPLING_LOGISTICS}),
    "eval features": (lambda c: result_keys.eval_features_key(c, network="n"),
                      lambda c: ["eval"], {"eval": result_keys.EVAL_LOGISTICS}),
    "probe features": (lambda c: result_keys.probe_features_key(c, weights="w", layer=1),
                       lambda c: list(SECTIONS[c.model]), {}),
}


@pytest.mark.parametrize("config_name", ["var_tiny", "bigr_tiny"])
@pytest.mark.parametrize("kind", list(KEYS))
def test_every_content_field_changes_the_key_and_logistics_do_not(config_name, kind):
    key_of, sections_of, logistics = KEYS[kind]
    config = config_lib.load_config_file(config_name)
    base = key_of(config)
    assert base == key_of(config.copy_and_resolve_references())  # deterministic
    for section in sections_of(config):
        leave_out = logistics.get(section, result_keys.TRAINING_ONLY if section in
                                  SECTIONS[config.model] else frozenset())
        for name, other in _each_field_changed(config, section):
            changed = key_of(other) != base
            assert changed == (name not in leave_out), (
                f"{kind}: {section}.{name} {'changes' if changed else 'does not change'} the key")
            if changed:
                assert f"{section}.{name}" in result_keys.differences(base, key_of(other))


def test_a_recorded_key_reads_back_equal():
    import json
    config = config_lib.load_config_file("var_tiny")
    key = result_keys.samples_key(config, weights="w", batch_size=4)
    assert json.loads(json.dumps(key)) == key  # (tuples are recorded as lists)
    assert result_keys.digest(key) == result_keys.digest(json.loads(json.dumps(key)))


def test_a_samples_directory_refuses_a_job_of_another_model_dtype(tmp_path):
    from bigvar.errors import UserError
    from bigvar.sampling.job import claim_samples_dir
    config = config_lib.load_config_file("var_tiny")
    claim_samples_dir(str(tmp_path), result_keys.samples_key(config, weights="w", batch_size=4))
    config.var.dtype = "bfloat16"
    with pytest.raises(UserError, match=r"holds samples made with other var.dtype \("):
        claim_samples_dir(str(tmp_path), result_keys.samples_key(config, weights="w", batch_size=4))
