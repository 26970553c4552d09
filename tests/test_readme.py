"""The README's Python example runs as written: the same lines, with the shipped VAR-d16 config
swapped for a tiny VAR of 1000 classes and the converted weights for random ones in the
directory the example names (so a renamed function or argument fails here, not for a user)."""
import os
import re

import numpy as np
import pytest

from bigvar import config_lib
from bigvar.notebook import _random_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow  # (a minute of compiling on 2 cores)
def test_the_readmes_sampling_example_runs(tmp_path, monkeypatch):
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = [b for b in _python_blocks(readme) if "VARSampler" in b]
    assert len(blocks) == 1, "README should have one Python example of VARSampler"
    example = blocks[0]
    match = re.search(r'load_config_file\("(\w+)"\)', example)
    weights_dir = re.search(r'load_weights\("([^"]+)"\)', example)
    assert match and weights_dir, example

    load_shipped = config_lib.load_config_file

    def tiny(path, arg=None):
        if path != match.group(1):  # the tiny config's own loading of its parents
            return load_shipped(path, arg)
        config = load_shipped("var_tiny")
        config.var.update(num_classes=1000, patch_nums=(1, 2, 4))  # 64 px: compiles in seconds
        return config

    monkeypatch.setattr(config_lib, "load_config_file", tiny)
    monkeypatch.chdir(tmp_path)
    _random_weights(tiny(match.group(1)), weights_dir.group(1))
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    out, edited = scope["out"], scope["edited"]
    assert out.images.dtype == np.uint8 and out.images.shape == (4, 64, 64, 3)
    assert edited.images.shape == out.images.shape
    # The in-painted box changed.
    inside = np.abs(edited.images[:, 16:48, 16:48].astype(int) - out.images[:, 16:48, 16:48])
    assert inside.mean() > 1
