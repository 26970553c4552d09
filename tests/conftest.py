"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere."""
import os

from bigvar import cpu_tuning

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
cpu_tuning.prefer_xla_convolutions()  # `import bigvar` did it already unless XLA_FLAGS changed
# The test worker processes (pytest-xdist), started after this runs, get the huge-page tunable
# that `python -m bigvar.main` gives itself (bigvar/cpu_tuning.py).
os.environ.update(cpu_tuning.huge_pages_environment() or {})

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
