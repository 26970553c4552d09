"""Area / bicubic / bilinear resizes equal torch.nn.functional.interpolate (float64 fixtures) for
every size pair VAR uses at 256 and 512 px."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from bigvar.nn.resize import resize_matrix, resize_nhwc

from conftest import FIXTURES

SETS = {16: (1, 2, 3, 4, 5, 6, 8, 10, 13), 32: (1, 2, 3, 4, 6, 9, 13, 18, 24)}


@pytest.fixture(scope="module")
def fx():
    return np.load(os.path.join(FIXTURES, "var", "resize.npz"))


def apply(mode, x_nchw, size):
    m_h = resize_matrix(mode, x_nchw.shape[2], size)
    return np.einsum("oh,bchw,pw->bcop", m_h, x_nchw, m_h)


@pytest.mark.parametrize("n", sorted(SETS))
def test_matrices_equal_torch_in_float64(fx, n):
    for pn in SETS[n]:
        for mode, key_in, size in (("area", f"area_{n}_{pn}", pn), ("bicubic", f"bicubic_{pn}_{n}", n),
                                   ("bilinear", f"bilinear_{n}_{pn}", pn)):
            got = apply(mode, fx[key_in + "_in"], size)
            np.testing.assert_allclose(got, fx[key_in + "_out"], rtol=0, atol=1e-12, err_msg=key_in)


def test_jax_resize_is_the_same_in_float32(fx):
    x = fx["bicubic_13_16_in"]
    got = resize_nhwc(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), 16, "bicubic")
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), fx["bicubic_13_16_out"], atol=1e-5)
    x = fx["area_32_9_in"]
    got = resize_nhwc(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), 9, "area")
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), fx["area_32_9_out"], atol=1e-6)


def test_area_only_shrinks():
    with pytest.raises(ValueError, match="only shrinks"):
        resize_matrix("area", 4, 8)
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_matrix("lanczos", 4, 8)
