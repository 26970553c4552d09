"""bigvar/cpu_tuning.py: XLA:CPU convolutions kept off YNNPACK (1.2–4× faster tokenizer steps on
jaxlib 0.10–0.12) and the CLI's re-execution with glibc's huge-page tunable (a quarter less CPU
time in page faults). Speed itself is measured by benchmarks/, not here; these pin the
mechanisms."""
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from bigvar import cpu_tuning
from conftest import ROOT


def ynn_convolution_fusions(hlo_text: str) -> list[str]:
    """Names of the computations that XLA hands to YNNPACK and that contain a convolution."""
    called = re.findall(r"calls=(%[\w.\-]+), backend_config=\{[^\n]*__ynn_fusion", hlo_text)
    bodies = dict(re.findall(r"^(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S))
    return [name for name in called if "convolution(" in bodies.get(name, "")]


def test_convolution_gradients_compile_to_xla_kernels():
    """The weight and input gradients of a 3×3 conv at the demo tokenizer's size: without the
    flag, jaxlib 0.10.2 and 0.12 both compile all three convolutions into YNNPACK fusions."""
    assert jax.default_backend() == "cpu"
    assert cpu_tuning.should_set_ynn_flag({"XLA_FLAGS": ""}), (
        f"jaxlib {cpu_tuning._jaxlib_version()} is outside the releases checked to have the flag "
        f"{cpu_tuning.KNOWN_JAXLIB}: check that it exists and still helps (benchmarks/), then "
        "extend KNOWN_JAXLIB in bigvar/cpu_tuning.py")
    x, w = jnp.ones((32, 32, 32, 64)), jnp.ones((3, 3, 64, 64))

    def loss(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.square(y))

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
    assert len(re.findall(r"convolution\(", hlo)) == 3
    assert ynn_convolution_fusions(hlo) == []


def test_when_the_ynn_flag_is_set(monkeypatch):
    monkeypatch.setattr(cpu_tuning, "_jaxlib_version", lambda: (0, 12, 0))
    monkeypatch.setattr(cpu_tuning, "_accelerator_plugin_installed", lambda: False)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    cpu_tuning.prefer_xla_convolutions(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {cpu_tuning.YNN_FLAG}"
    cpu_tuning.prefer_xla_convolutions(env)  # idempotent: the flag is there now
    assert env["XLA_FLAGS"].count(cpu_tuning.YNN_FLAG_NAME) == 1

    user = {"XLA_FLAGS": f"--{cpu_tuning.YNN_FLAG_NAME}=+individual_convolution"}
    assert not cpu_tuning.should_set_ynn_flag(user)  # the user's choice wins
    assert not cpu_tuning.should_set_ynn_flag({"JAX_PLATFORMS": "tpu"})
    assert cpu_tuning.should_set_ynn_flag({"JAX_PLATFORMS": "cpu"})
    assert cpu_tuning.should_set_ynn_flag({})

    monkeypatch.setattr(cpu_tuning, "_accelerator_plugin_installed", lambda: True)
    assert not cpu_tuning.should_set_ynn_flag({})  # XLA on the accelerator parses XLA_FLAGS too
    assert cpu_tuning.should_set_ynn_flag({"JAX_PLATFORMS": "cpu"})

    for version in [(0, 9, 0), (0, 13, 0), None]:  # an unknown flag in XLA_FLAGS aborts: don't
        monkeypatch.setattr(cpu_tuning, "_jaxlib_version", lambda v=version: v)
        assert not cpu_tuning.should_set_ynn_flag({"JAX_PLATFORMS": "cpu"})


def test_huge_pages_environment(monkeypatch):
    monkeypatch.setattr(cpu_tuning, "_accelerator_plugin_installed", lambda: False)
    env = cpu_tuning.huge_pages_environment({"PATH": "/bin"}, platform="linux")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = cpu_tuning.huge_pages_environment({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}, "linux")
    assert env["GLIBC_TUNABLES"] == "glibc.rtld.nns=2:glibc.malloc.hugetlb=1"
    assert cpu_tuning.huge_pages_environment(env, "linux") is None  # set: no second exec
    assert cpu_tuning.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                                             "linux") is None  # the user's choice
    assert cpu_tuning.huge_pages_environment({}, "darwin") is None
    assert cpu_tuning.huge_pages_environment({"JAX_PLATFORMS": "cuda"}, "linux") is None


def test_cli_reexecutes_itself_with_huge_pages(tmp_path):
    """The same process (pid) carries the tunable shortly after `python -m bigvar.main` starts."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    cmd = [sys.executable, "-m", "bigvar.main", "--config=configs/var_tiny.py",
           f"--workdir={tmp_path}", "--config.allow_random_init=True"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline, seen = time.time() + 60, b""
        while time.time() < deadline and proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/environ", "rb") as f:
                    seen = f.read()
            except OSError:
                pass
            if b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in seen.split(b"\0"):
                break
            time.sleep(0.05)
        assert b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in seen.split(b"\0")
    finally:
        proc.kill()
        proc.wait()
