"""Test set-up: 8 fake CPU devices, set before JAX starts a backend."""
import os

import chex
import numpy as np
import pytest

from bigvar import cpu_tuning

chex.set_n_cpu_devices(8)  # through XLA_FLAGS, so the CLI processes that tests start get 8 too
os.environ.setdefault("JAX_PLATFORMS", "cpu")
cpu_tuning.prefer_xla_convolutions()  # `import bigvar` did it already unless XLA_FLAGS changed
# The test worker processes (pytest-xdist), started after this runs, get the huge-page tunable
# that `python -m bigvar.main` gives itself (bigvar/cpu_tuning.py).
os.environ.update(cpu_tuning.huge_pages_environment() or {})

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory):
    """The FID Inception's weights directory, from the small pytorch-fid-format fixture."""
    from bigvar import weights
    from bigvar.convert import inception
    out = str(tmp_path_factory.mktemp("inception") / "weights")
    config, variables = inception.convert(pth=os.path.join(FIXTURES, "eval", "pt_inception.pth"))
    weights.save_weights(out, variables, config)
    return out


def perturbed(params, scale: float, seed: int = 0):
    """`params` plus `scale` × standard normal noise (drawn with NumPy: one jax.random call per
    leaf would compile a kernel for every distinct shape, seconds each): weights away from the
    near-identity init, so that samplers' probabilities are informative."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: a + np.asarray(scale * rng.standard_normal(a.shape), a.dtype), params)
