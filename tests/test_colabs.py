"""The Colab notebooks (colabs/): each .ipynb is its jupytext .py source with outputs cleared, has
its Open-in-Colab badge and README line, and runs top to bottom headless in the offline mode
(BIGVAR_COLAB_OFFLINE=1: tiny random or quickly trained models instead of the Hub's)."""
from __future__ import annotations

import glob
import os
import re
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(os.path.splitext(os.path.basename(p))[0]
                   for p in glob.glob(os.path.join(ROOT, "colabs", "*.py")))
# What each notebook must print and save (the figures are written next to it).
EXPECTED = {
    "var_sampling": (["images (8, 64, 64, 3) uint8", "progression (3, 4, 64, 64, 3)", "images/s"],
                     ["var_samples.png", "var_progression.png"]),
    "var_zero_shot_editing": (["edited (3, 64, 64, 3) (3, 64, 64, 3) (3, 64, 64, 3)"], ["var_editing.png"]),
    "bigr_apps": (["generated (4, 64, 64, 3)", "edited (3, 64, 64, 3) (3, 64, 64, 3)",
                   "interpolated (6, 64, 64, 3)", "enriched (2, 64, 64, 3)", "features (32, 128)"],
                  ["bigr_generated.png", "bigr_editing.png", "bigr_interpolation.png",
                   "bigr_enrich.png", "bigr_features.png"]),
    "train_your_own": (["tokenizer exported to", "generator exported to", "samples (80, 32, 32, 3)",
                        "class agreement"], ["train_your_own_samples.png"]),
}


def test_every_notebook_is_its_source_with_outputs_cleared_and_linked():
    import jupytext
    import nbformat
    assert sorted(EXPECTED) == NOTEBOOKS
    readme = open(os.path.join(ROOT, "README.md")).read()
    homepage = re.search(r'Homepage = "https://github.com/([^"]+)"',
                         open(os.path.join(ROOT, "pyproject.toml")).read()).group(1)
    for name in NOTEBOOKS:
        source = jupytext.read(os.path.join(ROOT, "colabs", f"{name}.py"))
        stored = nbformat.read(os.path.join(ROOT, "colabs", f"{name}.ipynb"), as_version=4)
        assert [(c.cell_type, c.source) for c in stored.cells] == \
            [(c.cell_type, c.source) for c in source.cells], \
            f"colabs/{name}.ipynb differs from its source: jupytext --to ipynb colabs/{name}.py"
        for cell in stored.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: outputs in git"
        badge = (f"https://colab.research.google.com/github/{homepage}/blob/main/colabs/"
                 f"{name}.ipynb")
        assert badge in stored.cells[0].source, f"{name}: no Open-in-Colab badge for {badge}"
        assert badge in readme, f"README does not link {name}"
        assert "pip" in stored.cells[1].source and "bigvar[" in stored.cells[1].source


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless_offline(name, tmp_path):
    import nbclient
    import nbformat
    notebook = nbformat.read(os.path.join(ROOT, "colabs", f"{name}.ipynb"), as_version=4)
    # One CPU device in the kernel (the tests' 8 fake ones only slow a notebook down).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = dict(os.environ, BIGVAR_COLAB_OFFLINE="1", XLA_FLAGS=flags, MPLBACKEND="Agg",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    began = time.time()
    client.execute(env=env)
    seconds = time.time() - began
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    printed, saved = EXPECTED[name]
    for line in printed:
        assert line in text, f"{name} did not print {line!r}:\n{text[-3000:]}"
    for figure in saved:
        assert (tmp_path / figure).stat().st_size > 1000, figure
    print(f"{name}: {seconds:.0f} s")
