"""Two settings that make JAX's CPU backend faster for bigvar; both are measured, neither changes
what is computed beyond float rounding.

1. Convolutions and matmuls on XLA's own kernels, not YNNPACK (set at `import bigvar`).
   jaxlib 0.10–0.12 hand convolutions to YNNPACK ("individual convolution" fusions), which is
   slow for the shapes our tokenizers and CNNs use, worst for the weight gradients of 3×3
   convolutions (a window as large as the image). On 2 CPU cores, fp32, without → with:

     demo VQ-VAE train step (32 px, batch 32)   jax 0.10.2: 2.39 s → 0.74 s; 0.12.0.1: 1.0–1.3 s → 0.75 s
       of which one weight-gradient conv        jax 0.10.2: 0.73–0.78 s;     0.12.0.1: 0.17 s
     VAR's VQ-VAE reconstruction, 4 × 256 px    jax 0.10.2: 38.7 s → 24.7 s; 0.12.0.1: 28.6 s → 24.2 s

   Matmuls ("individual dot" fusions) too: jaxlib 0.12.1 fails to compile bfloat16 ones on CPUs
   without AVX-512 (LLVM "Cannot select … v8bf16 = X86ISD::VBROADCAST" in the transposes that
   feed them: the process aborts), and XLA's own matmuls were faster here anyway (jax 0.12.1, a
   5440×1024 @ 1024×4096 matmul + GELU: fp32 0.86 s → 0.70 s, bf16 1.01 s → 0.76 s).

   So when JAX will run on the CPU, `import bigvar` adds
   `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot` to XLA_FLAGS, which JAX reads
   when it starts its backend (so bigvar must be imported before the first computation). Nothing
   is changed when the user's XLA_FLAGS already name that flag (their choice wins), when an
   accelerator plugin is installed and JAX_PLATFORMS does not pin the CPU (the convolutions run on
   the accelerator, whose XLA parses XLA_FLAGS too), or when the installed jaxlib is not one
   checked to have the flag (an unknown flag aborts the process): extend KNOWN_JAXLIB when a new
   release is checked (tests/test_cpu_tuning.py fails until then).

2. Transparent huge pages for XLA's per-step buffers (the `python -m bigvar.main` process).
   XLA:CPU allocates each execution's temporary buffer anew (392 MB for the demo's VAR step) with
   malloc, which maps blocks that large freshly every time: 95,000 page faults per step, a quarter
   of the CPU time spent in the kernel. glibc's `glibc.malloc.hugetlb=1` tunable makes malloc ask
   for huge pages on those maps: 726 faults per step; the demo's VAR step takes 0.59 s instead of
   0.74 s. The tunable is read when a process starts, so `bigvar.main` re-executes itself once
   with it set (same pid, arguments and environment otherwise) when JAX will run on the CPU of a
   Linux machine. Older glibc ignores it; THP set to `never` makes it a no-op.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from importlib import metadata

YNN_FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
YNN_FLAG = f"--{YNN_FLAG_NAME}=-individual_convolution,-individual_dot"
KNOWN_JAXLIB = ((0, 10), (0, 13))  # [from, to): releases checked to have YNN_FLAG_NAME
HUGE_PAGES = "glibc.malloc.hugetlb=1"


def _jaxlib_version() -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in re.findall(r"\d+", metadata.version("jaxlib"))[:3])
    except metadata.PackageNotFoundError:
        return None


def _accelerator_plugin_installed() -> bool:
    return (bool(metadata.entry_points(group="jax_plugins"))
            or importlib.util.find_spec("jax_plugins") is not None
            or importlib.util.find_spec("libtpu") is not None)


def runs_on_cpu(environ=os.environ) -> bool:
    """Whether JAX will pick the CPU backend (decided without starting JAX)."""
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return "cpu" in platforms
    return not _accelerator_plugin_installed()


def should_set_ynn_flag(environ=os.environ) -> bool:
    if YNN_FLAG_NAME in environ.get("XLA_FLAGS", "") or not runs_on_cpu(environ):
        return False
    version = _jaxlib_version()
    return version is not None and KNOWN_JAXLIB[0] <= version < KNOWN_JAXLIB[1]


def prefer_xla_convolutions(environ=os.environ) -> None:
    """Setting 1: adds YNN_FLAG to XLA_FLAGS where `should_set_ynn_flag`."""
    if should_set_ynn_flag(environ):
        environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {YNN_FLAG}".strip()


def huge_pages_environment(environ=os.environ, platform: str = sys.platform) -> dict | None:
    """Setting 2: the environment to re-execute with, or None when there is nothing to do (not
    Linux, not on the CPU, or the tunable already set — by us or by the user)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if not platform.startswith("linux") or "glibc.malloc.hugetlb" in tunables:
        return None
    if not runs_on_cpu(environ):
        return None
    return dict(environ, GLIBC_TUNABLES=f"{tunables}:{HUGE_PAGES}" if tunables else HUGE_PAGES)


def reexec_with_huge_pages() -> None:
    """Re-executes this process (`sys.orig_argv`) with the huge-page tunable, if it applies.
    Call first thing in a `__main__`, before any threads or JAX computations."""
    env = huge_pages_environment()
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)
