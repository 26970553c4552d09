"""benchmarks/gpu_suite.py: its FLOP counts, and every section run on tiny configs (--smoke), so
that the suite works the day an accelerator is available."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_var_sampling_flops_follow_the_stated_formula():
    import gpu_suite
    # One scale of one token, no CFG: depth · 12·d² + 2·1·d (attention to itself) + d·V, × 2.
    assert gpu_suite.var_sampling_flops(1, 4, (1,), vocab=10, cfg=False) == 2 * (12 * 16 + 2 * 4 + 40)
    assert gpu_suite.var_sampling_flops(1, 4, (1,), vocab=10) == 2 * gpu_suite.var_sampling_flops(
        1, 4, (1,), vocab=10, cfg=False)
    assert gpu_suite.var_sampling_flops(30, 1920) == pytest.approx(3.763e12, rel=1e-3)
    assert gpu_suite.var_sampling_flops(16, 1024) == pytest.approx(0.5966e12, rel=1e-3)
    assert gpu_suite.train_flops(params=10, tokens=3, depth=2, width=5, attended=7) == 6 * 30 + 12 * 2 * 7 * 5


@pytest.mark.slow
def test_smoke_run_measures_every_section(tmp_path):
    out = tmp_path / "suite.json"
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    proc = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--smoke", f"--out={out}"],
                          cwd=ROOT, env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(out.read_text())
    rows = table["rows"]
    assert [r["what"] for r in rows] == ["var sample", "var sample", "bigr sample", "train step",
                                         "train step", "tokenizer step"]
    assert not [r for r in rows if "error" in r], rows
    measured = [r for r in rows if "note" not in r]
    assert all(r["images_per_s"] > 0 and r["compile_s"] > 0 for r in measured)
    assert rows[0]["tflops"] > 0 and "kernels need a GPU or a TPU" in rows[1]["note"]
    assert {r["model"] for r in rows if r["what"] == "train step"} == {"var_tiny.py", "bigr_tiny.py"}
    assert table["smoke"] and table["device"].startswith("cpu")
    assert "6 rows" in proc.stdout
