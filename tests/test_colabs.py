"""The Colab notebooks (colabs/): each .ipynb is its jupytext .py source with outputs cleared, has
its Open-in-Colab badge, README line and Colab metadata (the runtime it opens on), valid Colab
forms and a title on every code cell; the install cell (the same in every notebook) picks the
right pip install for Colab's runtimes; and each runs top to bottom headless in the offline mode
(BIGVAR_COLAB_OFFLINE=1: tiny random or quickly trained models instead of the Hub's)."""
from __future__ import annotations

import ast
import fnmatch
import glob
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

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


with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    HOMEPAGE = tomllib.load(_f)["project"]["urls"]["Homepage"]  # the badges' and pip's address
SOURCE = f"git+{HOMEPAGE}"


def _source(name):
    import jupytext
    return jupytext.read(os.path.join(ROOT, "colabs", f"{name}.py"))


def test_every_notebook_is_its_source_with_outputs_cleared_and_linked():
    import nbformat
    assert sorted(EXPECTED) == NOTEBOOKS
    readme = open(os.path.join(ROOT, "README.md")).read()
    for name in NOTEBOOKS:
        source = _source(name)
        stored = nbformat.read(os.path.join(ROOT, "colabs", f"{name}.ipynb"), as_version=4)
        assert [(c.cell_type, c.source) for c in stored.cells] == \
            [(c.cell_type, c.source) for c in source.cells], \
            f"colabs/{name}.ipynb differs from its source: jupytext --to ipynb colabs/{name}.py"
        for cell in stored.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: outputs in git"
        repo = HOMEPAGE.removeprefix("https://github.com/")
        badge = f"https://colab.research.google.com/github/{repo}/blob/main/colabs/{name}.ipynb"
        assert badge in stored.cells[0].source, f"{name}: no Open-in-Colab badge for {badge}"
        assert badge in readme, f"README does not link {name}"


def test_notebooks_open_on_a_colab_tpu_with_titled_cells_and_valid_forms():
    import nbformat
    for name in NOTEBOOKS:
        stored = nbformat.read(os.path.join(ROOT, "colabs", f"{name}.ipynb"), as_version=4)
        # "Open in Colab" starts the runtime these name, as Colab itself writes them.
        assert stored.metadata.accelerator in ("TPU", "GPU"), name
        colab = stored.metadata.colab
        assert colab.provenance == [], name
        assert colab.gpuType in {"TPU": ("V5E1", "V6E1"), "GPU": ("T4", "L4", "A100")}[
            stored.metadata.accelerator], name
        for cell in stored.cells:
            if cell.cell_type != "code":
                continue
            assert re.match(r"# @title \S", cell.source), \
                f"{name}: a code cell without a `# @title` first line:\n{cell.source}"
            for line in cell.source.splitlines():
                if "@param" in line:
                    _check_form_field(line, f"{name}: {line!r}")


# The Colab form field types the notebooks use, and the Python values they hold.
FIELD_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool,
               "slider": (int, float)}


def _check_form_field(line, where):
    """One name, one literal value, and a `# @param` annotation that Colab parses."""
    match = re.fullmatch(r"(?P<name>[A-Za-z_]\w*) = (?P<value>.+?)  # @param (?P<spec>.+)", line)
    assert match, f"{where}: a form field is `NAME = value  # @param ...` at the top of a cell"
    value = ast.literal_eval(match["value"])
    spec = match["spec"].strip()
    if spec.startswith("["):  # a dropdown: the value is one of the options
        options = ast.literal_eval(spec)
        assert isinstance(options, list) and value in options, where
        return
    # {type:"slider", min:0, max:1, step:0.05}: JavaScript-style keys, made JSON here
    fields = json.loads(re.sub(r"([{,]\s*)([A-Za-z_-]+)\s*:", r'\1"\2":', spec))
    kind = fields.pop("type")
    assert kind in FIELD_TYPES, f"{where}: type is one of {sorted(FIELD_TYPES)}"
    assert isinstance(value, FIELD_TYPES[kind]), f"{where}: not a {kind}"
    assert kind == "boolean" or not isinstance(value, bool), f"{where}: not a {kind}"
    if kind == "slider":
        assert fields["min"] <= value <= fields["max"] and fields["step"] > 0, where
    else:
        assert not fields, f"{where}: unknown options {fields}"


def test_the_form_field_check_rejects_what_colab_does_not_parse():
    _check_form_field('CFG = 2.5  # @param {type:"slider", min:1, max:6, step:0.5}', "ok")
    _check_form_field('DEPTH = "d16"  # @param ["d16", "d20"]', "ok")
    for bad in ['TOP, LEFT = 0.25, 0.5  # @param',  # two names
                'A = 0.25  # @param',  # no type
                'STEPS = 20  # @param {type:"string"}',  # a number in a string field
                'CFG = 9.0  # @param {type:"slider", min:1, max:6, step:0.5}',
                'DEPTH = "d12"  # @param ["d16", "d20"]',
                '    A = 1  # @param {type:"integer"}']:  # not at the top of the cell
        with pytest.raises((AssertionError, ValueError, SyntaxError)):
            _check_form_field(bad, bad)


# ---------------------------------------------------------------------------------------------
# The install cell: it runs before bigvar is installed, so its logic lives in the cell; the tests
# run the cell's own source with a fake environment.


def _install_cell():
    return _source(NOTEBOOKS[0]).cells[1].source


def test_every_notebook_has_the_same_install_cell_for_the_homepage():
    cell = _install_cell()
    for name in NOTEBOOKS:
        assert _source(name).cells[1].source == cell, \
            f"colabs/{name}.py: the install cell differs from colabs/{NOTEBOOKS[0]}.py's (copy it)"
    assert f'BIGVAR_SOURCE = "{SOURCE}"  # @param' in cell


_REAL_FIND_SPEC = importlib.util.find_spec  # (before any test replaces it)


def _run_install_cell(monkeypatch, *, bigvar=False, environ=(), devices=(), nvidia_smi=False,
                      versions=()):
    """Executes the install cell as Colab would, in the given environment; returns the pip
    command it ran (None when it ran none) and its namespace."""
    versions, commands = dict(versions), []
    source = _install_cell()  # before importlib is faked: reading it imports jupytext, nbformat

    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (_REAL_FIND_SPEC(name, *a) if bigvar else None)
                        if name == "bigvar" else _REAL_FIND_SPEC(name, *a))
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(glob, "glob", lambda pattern: fnmatch.filter(devices, pattern))
    monkeypatch.setattr(shutil, "which", lambda tool: "/usr/bin/nvidia-smi" if nvidia_smi and
                        tool == "nvidia-smi" else None)
    monkeypatch.setattr(os, "environ", dict(environ))
    monkeypatch.setattr(subprocess, "run", lambda command, check: commands.append(command))
    namespace = {}
    exec(compile(source, "install cell", "exec"), namespace)
    assert len(commands) <= 1
    return (commands[0] if commands else None), namespace


# What Colab's runtimes look like (v5e-1/v6e-1 are TPU VMs: no /dev/accel0, no COLAB_TPU_ADDR).
COLAB_TPU_V5E = dict(environ={"COLAB_TPU_1VM": "1", "TPU_ACCELERATOR_TYPE": "v5e-1"},
                     devices=["/dev/null", "/dev/vfio", "/dev/vfio/0", "/dev/vfio/vfio"])
COLAB_TPU_V6E = dict(environ={"COLAB_TPU_1VM": "1", "TPU_ACCELERATOR_TYPE": "v6e-1"},
                     devices=["/dev/null", "/dev/vfio", "/dev/vfio/0", "/dev/vfio/vfio"])
COLAB_GPU = dict(environ={"COLAB_TPU_1VM": "", "COLAB_GPU": "1"}, nvidia_smi=True,
                 devices=["/dev/null", "/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"])
COLAB_CPU = dict(environ={"COLAB_TPU_1VM": "", "COLAB_GPU": "0"},
                 devices=["/dev/null", "/dev/vfio", "/dev/vfio/vfio"])


@pytest.mark.parametrize("runtime, expected", [
    (COLAB_TPU_V5E, "tpu"), (COLAB_TPU_V6E, "tpu"),
    (dict(devices=["/dev/vfio/0", "/dev/vfio/vfio"]), "tpu"),  # the chip, without the variables
    (dict(environ={"TPU_ACCELERATOR_TYPE": "v6e-1"}), "tpu"),  # the variables, without the chip
    (dict(devices=["/dev/accel0", "/dev/accel1"]), "tpu"),  # a v4 TPU VM
    (COLAB_GPU, "cuda12"),
    (dict(nvidia_smi=True), "cuda12"),
    (dict(devices=["/dev/nvidia0", "/dev/accel0"]), "cuda12"),  # drivers ≥ 570 make /dev/accel*
    (COLAB_CPU, None), ({}, None),
])
def test_the_install_cell_recognises_colab_runtimes(runtime, expected, monkeypatch):
    _, cell = _run_install_cell(monkeypatch, bigvar=True)
    spec = dict(environ={}, devices=[], nvidia_smi=False) | runtime
    assert cell["detect_runtime"](spec["environ"], spec["devices"], spec["nvidia_smi"]) == expected


def test_the_install_cell_keeps_a_good_jax_and_installs_the_chips_jax_otherwise(monkeypatch):
    _, cell = _run_install_cell(monkeypatch, bigvar=True)
    plan, minimum = cell["pip_requirements"], cell["JAX_MIN"]
    new, old = "0.12.1", "0.5.2"

    def bigvar(extras):
        return f"bigvar[{extras}] @ {SOURCE}"
    assert plan("tpu", {"jax": new, "libtpu": "0.0.30"}) == [bigvar("colab"), f"jax=={new}"]
    assert plan("tpu", {"jax": new}) == [bigvar("colab,tpu"), f"jax=={new}"]  # no libtpu
    assert plan("tpu", {"jax": old, "libtpu": "0.0.9"}) == [bigvar("colab,tpu"), f"jax>={minimum}"]
    assert plan("tpu", {}) == [bigvar("colab,tpu"), f"jax>={minimum}"]
    assert plan("cuda12", {"jax": new, "jax-cuda12-plugin": new}) == \
        [bigvar("colab"), f"jax=={new}"]
    assert plan("cuda12", {"jax": new}) == [bigvar("colab,cuda12"), f"jax=={new}"]
    assert plan("cuda12", {"jax": old, "jax-cuda12-plugin": old}) == \
        [bigvar("colab,cuda12"), f"jax>={minimum}"]
    assert plan(None, {"jax": new}) == [bigvar("colab"), f"jax=={new}"]
    assert plan(None, {"jax": old}) == [bigvar("colab"), f"jax>={minimum}"]
    assert plan(None, {}) == [bigvar("colab"), f"jax>={minimum}"]
    assert plan(None, {"jax": minimum})[1] == f"jax=={minimum}"  # new enough
    assert plan(None, {"jax": f"{minimum}.1"})[1] == f"jax=={minimum}.1"
    assert plan(None, {"jax": "0.9.9"})[1] == f"jax>={minimum}"
    assert plan(None, {"jax": new}, source="file:///w.whl") == ["bigvar[colab] @ file:///w.whl",
                                                                f"jax=={new}"]


@pytest.mark.parametrize("runtime, versions, requirements", [
    (COLAB_TPU_V6E, {"jax": "0.12.0", "jaxlib": "0.12.0", "libtpu": "0.0.31"},
     ["bigvar[colab] @ SOURCE", "jax==0.12.0"]),
    (COLAB_TPU_V5E, {"jax": "0.5.2", "libtpu": "0.0.9"},
     ["bigvar[colab,tpu] @ SOURCE", "jax>=MIN"]),
    (COLAB_GPU, {"jax": "0.12.0", "jax-cuda12-plugin": "0.12.0"},
     ["bigvar[colab] @ SOURCE", "jax==0.12.0"]),
    (COLAB_CPU, {}, ["bigvar[colab] @ SOURCE", "jax>=MIN"]),
])
def test_the_install_cell_runs_one_pip_install_when_bigvar_is_missing(
        runtime, versions, requirements, monkeypatch, capsys):
    command, cell = _run_install_cell(monkeypatch, versions=versions, **runtime)
    expected = [r.replace("SOURCE", SOURCE).replace("MIN", cell["JAX_MIN"]) for r in requirements]
    assert command == [sys.executable, "-m", "pip", "install", "-q", *expected]
    assert "pip install" in capsys.readouterr().out  # says what it does
    command, _ = _run_install_cell(monkeypatch, bigvar=True, versions=versions, **runtime)
    assert command is None  # installed already: nothing to do


def test_the_install_cells_jax_minimum_is_bigvars():
    """The cell runs before bigvar is installed, so it keeps its own copy of bigvar's jax bound."""
    minimum = re.search(r'JAX_MIN = "([\d.]+)"', _install_cell()).group(1)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    assert f"jax>={minimum}" in dependencies, \
        f"the install cell's JAX_MIN = {minimum!r} is not pyproject.toml's jax>= bound: copy it"


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
    # tqdm.auto without ipywidgets (this kernel): text bars, after one warning at most
    assert text.count("IProgress not found") <= 1, text[-3000:]
    printed, saved = EXPECTED[name]
    for line in printed:
        assert line in text, f"{name} did not print {line!r}:\n{text[-3000:]}"
    for figure in saved:
        assert (tmp_path / figure).stat().st_size > 1000, figure
    print(f"{name}: {seconds:.0f} s")
