"""bigvar as users get it: the sdist and wheel built from this checkout, the wheel installed (not
editable) into a fresh virtual environment, and used from an empty directory far from the
checkout — the CLI with the README's `--config=configs/…` form and the short form, the planner,
and a Colab notebook run headless offline. An editable install inside the checkout cannot see
what the wheel lacks; this does.

The fresh environment has no pip and no packages of its own: a `.pth` file adds this test
environment's site-packages for the dependencies (a `.pth` line only extends `sys.path`, so the
editable install's import hook there is not run), and bigvar itself comes from the wheel alone.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

pytestmark = pytest.mark.slow  # builds, installs and runs end to end (minutes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a build needs from the checkout (a copy: building writes egg-info and build/ next to it).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "bigvar", "configs")


def _checkout_packages() -> set[str]:
    """Every package of the checkout, as it is named once installed (configs/ → bigvar.configs)."""
    names = {"bigvar.configs"}
    for init in glob.glob(os.path.join(ROOT, "bigvar", "**", "__init__.py"), recursive=True):
        names.add(os.path.relpath(os.path.dirname(init), ROOT).replace(os.sep, "."))
    return names


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist, wheel) built the way PyPI's tools build them: the sdist from the checkout, the wheel
    from the unpacked sdist (so a file the sdist forgets is missing from the wheel too)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                   check=True, capture_output=True, text=True, timeout=600)
    (sdist,) = glob.glob(str(out / "*.tar.gz"))
    (wheel,) = glob.glob(str(out / "*.whl"))
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    """The python of a fresh venv holding the wheel (its dependencies from this environment)."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = str(env / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "dependencies-from-the-test-environment.pth"), "w") as f:
        f.write("\n".join(sorted(here)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-index", "--no-cache-dir", "-q", dist[1]],
                   check=True, capture_output=True, text=True, timeout=300)
    return python


def _run(python, *args, cwd, env=None, timeout=900):
    environ = dict(os.environ, **(env or {}))
    environ.pop("PYTHONPATH", None)
    result = subprocess.run([python, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_and_sdist_hold_the_package_its_configs_and_license(dist):
    sdist, wheel = dist
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {os.path.dirname(n).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == _checkout_packages(), "packages missing from pyproject.toml's list"
    shipped = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
    assert {n.split("/")[-1] for n in names if n.startswith("bigvar/configs/")} == shipped
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "configs/"))]
    assert "License-Expression: Apache-2.0" in metadata
    requirements = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    core = [r for r in requirements if "extra ==" not in r]
    assert core and all(">=" in r for r in core), f"a dependency without a lower bound: {core}"
    assert any(r.startswith("tensorflow-datasets") and "extra == \"tfds\"" in r for r in requirements)

    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "LICENSE", "configs/var_d30.py",
            "bigvar/config_lib.py"} <= members
    assert not [m for m in members if m.startswith(("tests/", ".venv", ".git/"))]


def test_the_cli_and_the_planner_run_from_the_installed_wheel_anywhere(venv, tmp_path):
    where = _run(venv, "-c", "import bigvar, bigvar.configs; print(bigvar.__file__); "
                 "print(bigvar.configs.__file__)", cwd=tmp_path).stdout.split()
    assert all(path.startswith(os.path.dirname(os.path.dirname(venv))) for path in where), where
    assert not any(path.startswith(ROOT) for path in where), where

    # The README's form, from a directory that has no configs/ of its own.
    tiny = ["--config.mode=sample", "--config.var.patch_nums=(1, 2, 3, 4)",
            "--config.sample.classes=(0, 1)", "--config.sample.images_per_class=1"]
    sample = _run(venv, "-m", "bigvar.main", "--config=configs/var_tiny.py", "--workdir=run", *tiny,
                  cwd=tmp_path, env={"JAX_PLATFORMS": "cpu"})
    assert "num_images: 2" in sample.stdout
    assert (tmp_path / "run" / "samples" / "samples.npz").is_file()
    assert "Unable to initialize backend" not in sample.stderr  # JAX's probing, not for users

    # The short form, and a config file of the user's own beside it (used as it is).
    (tmp_path / "mine.py").write_text(
        "from bigvar import config_lib\n\n\ndef get_config(arg=None):\n"
        "    config = config_lib.load_config_file('var_tiny')\n"
        "    config.sample.seed = 7\n    return config\n")
    for flag in ("--config=var_tiny", "--config=mine.py"):
        result = subprocess.run([venv, "-m", "bigvar.main", flag, "--config.mode=serve"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "config.mode = 'serve' is invalid" in result.stderr

    plan = _run(venv, "-m", "bigvar.plan", "--config=configs/var_tiny.py", "--devices=2",
                "--batch=4", cwd=tmp_path, env={"JAX_PLATFORMS": "cpu"})
    assert "GiB" in plan.stdout, plan.stdout


def test_a_colab_notebook_runs_headless_from_the_installed_wheel(venv, tmp_path, monkeypatch):
    """What Colab does after `pip install "bigvar @ git+…"`: the notebook's code against the
    installed package, in a kernel of the fresh environment (offline: tiny random weights)."""
    import nbclient
    import nbformat
    kernels = tmp_path / "jupyter" / "kernels" / "bigvar-wheel"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [venv, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bigvar (installed wheel)", "language": "python"}))
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(BIGVAR_COLAB_OFFLINE="1", XLA_FLAGS=flags, MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # where the client finds kernels
    work = tmp_path / "colab"
    work.mkdir()
    notebook = nbformat.read(os.path.join(ROOT, "colabs", "var_sampling.ipynb"), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="bigvar-wheel",
                                     resources={"metadata": {"path": str(work)}})
    client.execute(env=env)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], outputs
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "images (8, 64, 64, 3) uint8" in text, text[-3000:]
    assert (work / "var_samples.png").stat().st_size > 1000
