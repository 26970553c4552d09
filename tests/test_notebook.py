"""bigvar.notebook: the helpers the Colab notebooks share."""
from __future__ import annotations

import inspect
import json
import os
import time
import types

import numpy as np
import pytest

from bigvar import models, notebook, weights


@pytest.mark.slow
def test_offline_models_are_weights_directories_of_tiny_random_models(tmp_path, monkeypatch):
    monkeypatch.setenv(notebook.OFFLINE_ENV, "1")
    assert notebook.offline()
    config, path = notebook.var_model("d30", root=str(tmp_path))
    assert path == str(tmp_path / "var_tiny_random") and config.var.depth < 16
    var, vae = models.build(config)
    params = weights.load_weights(path)
    assert sorted(params) == ["vae", "var"]
    weights.check_architecture(config, weights.load_config(path), path)
    assert notebook.var_model("d30", root=str(tmp_path))[1] == path  # made once
    config, path = notebook.bigr_model(root=str(tmp_path))
    assert sorted(weights.load_weights(path)) == ["bae", "bigr"]
    weights.check_architecture(config, weights.load_config(path), path)
    monkeypatch.setenv(notebook.OFFLINE_ENV, "0")
    assert not notebook.offline()


def test_draw_box_outlines_exactly_the_box():
    image = np.zeros((8, 8, 3), np.uint8)
    boxed = notebook.draw_box(image, (0.25, 0.25, 0.75, 0.75), color=(255, 0, 0), width=1)
    red = boxed[..., 0] == 255
    expected = np.zeros((8, 8), bool)
    expected[2, 2:6] = expected[5, 2:6] = expected[2:6, 2] = expected[2:6, 5] = True
    np.testing.assert_array_equal(red, expected)
    assert not image.any()  # a copy


def test_pca_puts_the_largest_variance_first():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([0.1, 5.0, 0.2, 2.0, 0.1])
    projected = notebook.pca_2d(x)
    assert projected.shape == (200, 2)
    np.testing.assert_allclose(projected.var(axis=0), [25, 4], rtol=0.25)


def test_figures_have_one_panel_per_image_and_curve(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    images = np.zeros((5, 4, 4, 3), np.uint8)
    fig = notebook.grid_figure(images, cols=3, titles=list("abcde"))
    assert len(fig.axes) == 6 and [a.get_title() for a in fig.axes[:5]] == list("abcde")
    steps = np.zeros((2, 3, 4, 4, 3), np.uint8)
    fig = notebook.progression_figure(steps, (1, 2, 4))
    assert [a.get_title() for a in fig.axes] == ["1×1", "2×2", "4×4", "", "", ""]
    fig = notebook.curves_figure({"loss": [(1, 2.0), (2, 1.0)], "acc": []})
    assert [a.get_title() for a in fig.axes] == ["loss", "acc"]
    fig = notebook.scatter_figure(np.zeros((4, 2)), np.array([0, 0, 1, 1]), {0: "zero", 1: "one"})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["zero", "one"]
    fig.savefig(tmp_path / "f.png")


def test_train_live_returns_the_result_and_shows_the_metrics(tmp_path, capsys):
    logs = tmp_path / "logs"

    def train():
        os.makedirs(logs)
        with open(logs / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 3, "time": 0.0, "loss": 0.5}) + "\n")
        return {"steps": 3}
    assert notebook.train_live(train, str(tmp_path), every_s=0.01, title="t") == {"steps": 3}
    assert "t step 3: loss 0.5" in capsys.readouterr().out

    def fails():
        raise ValueError("bad config")
    with pytest.raises(ValueError, match="bad config"):
        notebook.train_live(fails, str(tmp_path), every_s=0.01)


def test_time_calls_and_the_bundled_image():
    timing = notebook.time_calls(lambda: np.ones(3), repeats=2)
    assert timing["first_call_s"] >= 0 and timing["run_s"] >= 0
    image = notebook.sample_image(16)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert notebook.uploaded_image(16) is None  # (not in Colab)


def test_train_live_in_a_notebook_updates_its_figures_in_place(tmp_path, monkeypatch):
    """In a notebook the curves and the newest grid are displayed once and then updated: clearing
    the cell's output instead would also erase the training's progress bar (a widget)."""
    pytest.importorskip("matplotlib")
    IPython = pytest.importorskip("IPython")
    import IPython.display
    from PIL import Image
    shown = []

    class Handle:
        def __init__(self, content):
            self.contents = [content]

        def update(self, content):
            self.contents.append(content)

    def display(content, display_id=False):
        assert display_id, "displayed without a handle: it could not be updated in place"
        shown.append(Handle(content))
        return shown[-1]

    def clear_output(wait=False):
        raise AssertionError("cleared the output (and the progress bar with it)")
    shell = types.SimpleNamespace(events=types.SimpleNamespace(register=lambda *args: None))
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)  # (events: for matplotlib)
    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(IPython.display, "clear_output", clear_output)
    logs, samples = tmp_path / "logs", tmp_path / "samples"

    def train():
        os.makedirs(logs), os.makedirs(samples)
        for step in range(1, 4):
            with open(logs / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "time": 0.0, "loss": 1.0 / step}) + "\n")
            Image.new("RGB", (4, 4)).save(samples / f"step_{step:03d}.png")
            deadline = time.time() + 60  # the next steps wait for the first figures: updates
            while len(shown) < 3 and time.time() < deadline:
                time.sleep(0.01)
        return "done"
    assert notebook.train_live(train, str(tmp_path), every_s=0.01, title="t") == "done"
    curves, grid_name, grid = shown  # one display each, then updates
    assert len(curves.contents) >= 2
    last = curves.contents[-1]
    assert [a.get_title() for a in last.axes] == ["loss"]
    assert list(last.axes[0].lines[0].get_xdata()) == [1, 2, 3]
    assert "step_003.png" in grid_name.contents[-1].data
    assert grid.contents[-1].size == (4, 4)


def test_progress_bars_are_tqdm_auto_which_stays_text_in_a_terminal():
    """Widgets in a notebook, and outside one exactly the text bars of plain tqdm."""
    import io

    import tqdm.auto
    import tqdm.std
    from bigvar.data import write_array_record
    from bigvar.eval import job as eval_job, reference, shape_classifier
    from bigvar.sampling import job as sampling_job
    from bigvar.train import loop
    for bar in (loop.tqdm, reference.tqdm, eval_job.tqdm, sampling_job.tqdm):
        assert bar is tqdm.auto.tqdm
    assert shape_classifier.trange is tqdm.auto.trange
    assert "from tqdm.auto import tqdm" in inspect.getsource(write_array_record)
    outputs = []
    for bar in (tqdm.auto.tqdm, tqdm.std.tqdm):
        out = io.StringIO()
        for _ in bar(range(3), file=out, desc="sampling", unit="batch", mininterval=0,
                     bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit}"):
            pass
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]
    assert "\rsampling: 100%|" in outputs[0] and "| 3/3 batch" in outputs[0]
