"""What the Colab notebooks (`colabs/`) share: which weights to use, figures, timing, a sample image.

    from bigvar import notebook
    config, weights_dir = notebook.var_model("d16")     # the official VAR-d16, converted once
    fig = notebook.grid_figure(images, cols=4, titles=[...])

`BIGVAR_COLAB_OFFLINE=1` swaps the official checkpoints for tiny random-weight models of the
same kind (same code paths, seconds to compile on a CPU, no network): how the tests run every
notebook headless, and a way to try a notebook on a laptop without downloads.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np

OFFLINE_ENV = "BIGVAR_COLAB_OFFLINE"


def offline() -> bool:
    """True when `BIGVAR_COLAB_OFFLINE` is set (to anything but "", "0" or "false")."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false")


def accelerator() -> str:
    """"TPU", "GPU" or "CPU": what JAX runs on here, with the device count."""
    import jax
    kind = jax.default_backend().upper()
    return f"{kind} × {jax.device_count()}" if jax.device_count() > 1 else kind


# ---------------------------------------------------------------------------------------------
# Weights


def var_model(depth: str = "d16", root: str = "ckpt"):
    """(config, weights directory) of the official VAR of `depth` ("d16" … "d36"), downloaded from
    the Hub and converted into `root/var_<depth>` the first time. Offline: a tiny random VAR
    (configs/var_tiny.py, 4 scales, 8 px) in `root/var_tiny_random`."""
    from bigvar import config_lib
    if offline():
        config = config_lib.load_config_file("var_tiny.py")
        config.var.patch_nums = (1, 2, 3, 4)
        return config, _random_weights(config, os.path.join(root, "var_tiny_random"))
    out = os.path.join(root, f"var_{depth}")
    _convert_from_hub("var", depth, out)
    return config_lib.load_config_file("var.py", depth), out


def bigr_model(name: str = "l_d24", root: str = "ckpt"):
    """(config, weights directory) of the official BiGR `name` ("l_d24", "xl_d24", …), from the
    Hub into `root/bigr_<name>` the first time. Offline: a tiny random BiGR (configs/bigr_tiny.py,
    4×4 tokens, 64 px) in `root/bigr_tiny_random`."""
    from bigvar import config_lib
    if offline():
        config = config_lib.load_config_file("bigr_tiny.py")
        config.bae.img_size, config.bigr.seq_len = 64, 16
        return config, _random_weights(config, os.path.join(root, "bigr_tiny_random"))
    out = os.path.join(root, f"bigr_{name}")
    _convert_from_hub("bigr", name, out)
    return config_lib.load_config_file("bigr.py", name), out


def _convert_from_hub(kind: str, name: str, out: str) -> None:
    from bigvar import weights
    if os.path.isfile(os.path.join(out, weights.CONFIG)):
        return
    from bigvar.convert.__main__ import main as convert
    if convert([kind, f"--from_hub={name}", f"--out={out}"]) != 0:
        raise RuntimeError(f"converting {kind} {name} from the Hub failed (the message is above)")


def _random_weights(config, out: str, seed: int = 0) -> str:
    """A weights directory of random params for the config's generator and tokenizer (made once)."""
    from bigvar import models, weights
    if os.path.isfile(os.path.join(out, weights.CONFIG)):
        return out
    generator, tokenizer = models.build(config)
    gen_params, tok_params = models.init_params(generator, tokenizer, seed)
    gen_section, tok_section = ("var", "vae") if config.model == "var" else ("bigr", "bae")
    weights.save_weights(out, {gen_section: gen_params, tok_section: tok_params},
                         {"model": config.model, gen_section: config[gen_section].to_dict(),
                          tok_section: config[tok_section].to_dict(), "source": {"random": seed}},
                         overwrite=True)
    return out


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, imported when first drawn)


def grid_figure(images: np.ndarray, cols: int | None = None, titles: Sequence[str] | None = None,
                size: float = 2.0, suptitle: str | None = None):
    """A matplotlib Figure of uint8 images (N, H, W, 3) in rows of `cols`, one title each."""
    import matplotlib.pyplot as plt
    images = np.asarray(images)
    n = len(images)
    cols = cols or n
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def progression_figure(steps: np.ndarray, patch_nums: Sequence[int], size: float = 1.6):
    """Rows of samples, columns of scales: `VARSampler.progression`'s (B, K, H, W, 3) images, each
    column titled with its token grid (1×1 … 16×16)."""
    steps = np.asarray(steps)
    b, k = steps.shape[:2]
    titles = [f"{pn}×{pn}" if row == 0 else "" for row in range(b) for pn in patch_nums]
    return grid_figure(steps.reshape(b * k, *steps.shape[2:]), cols=k, titles=titles, size=size)


def curves_figure(series: dict[str, Sequence[tuple[int, float]]], title: str = "", log: bool = True):
    """One panel per name: (step, value) points, e.g. {"loss": [(1, 5.5), …]} from metrics.jsonl."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for ax, (name, points) in zip(axes.flat, series.items()):
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values)
        ax.set_title(name)
        ax.set_xlabel("step")
        if log and values and min(values) > 0:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def scatter_figure(points: np.ndarray, labels: np.ndarray, names: dict[int, str] | None = None,
                   title: str = ""):
    """A 2-D scatter of `points` (N, 2) coloured by `labels`, with a legend of class names."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for label in np.unique(labels):
        chosen = labels == label
        ax.scatter(points[chosen, 0], points[chosen, 1], s=18,
                   label=(names or {}).get(int(label), str(label)))
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def draw_box(image: np.ndarray, box: Sequence[float], color=(255, 64, 64), width: int = 2) -> np.ndarray:
    """A copy of uint8 `image` (H, W, 3) with the outline of `box` (y0, x0, y1, x1, fractions of
    the side, as the samplers' `inpaint`/`outpaint` take it) drawn in."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    y0, x0, y1, x1 = (int(round(f * s)) for f, s in zip(box, (h, w, h, w)))
    y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)
    out[y0:min(y0 + width, y1), x0:x1] = color
    out[max(y1 - width, y0):y1, x0:x1] = color
    out[y0:y1, x0:min(x0 + width, x1)] = color
    out[y0:y1, max(x1 - width, x0):x1] = color
    return out


def pca_2d(features: np.ndarray) -> np.ndarray:
    """(N, 2): `features` (N, D) projected on their two principal axes (largest variance first)."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


# ---------------------------------------------------------------------------------------------
# Training with live figures


def train_live(train: Callable[[], Any], workdir: str, metrics: Sequence[str] = ("loss",),
               every_s: float = 10.0, title: str = ""):
    """Runs `train()` (e.g. `lambda: tokenizer.run(config, workdir)`) in a thread and, every
    `every_s` seconds until it ends, redraws the loss curves from `workdir/logs/metrics.jsonl` and
    the newest grid in `workdir/samples/`; returns what `train()` returned (its error is raised
    here). The run itself is the CLI's: resumable, checkpointed, the same schedule as one call."""
    import threading

    result: dict = {}
    # Display handles, updated in place: clearing the output would also clear the training's
    # progress bar (a notebook widget, drawn once).
    shown: dict = {}

    def target():
        try:
            result["value"] = train()
        except BaseException as e:  # noqa: BLE001 (raised again in the caller's thread)
            result["error"] = e
    thread = threading.Thread(target=target, name="bigvar-train", daemon=True)
    thread.start()
    while True:
        thread.join(every_s)
        _show_progress(workdir, metrics, title, shown)  # (once more at the end: the final curves)
        if not thread.is_alive():
            break
    if "error" in result:
        raise result["error"]
    return result["value"]


def _show_progress(workdir: str, metrics: Sequence[str], title: str, shown: dict) -> None:
    from bigvar.train.metric_writer import read_jsonl
    path = os.path.join(workdir, "logs", "metrics.jsonl")
    if not os.path.exists(path):
        return
    records = read_jsonl(path)
    series = {name: [(r["step"], r[name]) for r in records if name in r] for name in metrics}
    grids = sorted(f for f in os.listdir(os.path.join(workdir, "samples"))
                   if f.endswith(".png")) if os.path.isdir(os.path.join(workdir, "samples")) else []
    try:
        from IPython import get_ipython
        from IPython.display import Pretty, display
        in_notebook = get_ipython() is not None
    except ImportError:
        in_notebook = False
    if not in_notebook:
        last = records[-1] if records else {}
        print(f"{title} step {last.get('step', 0)}: " + ", ".join(
            f"{name} {last[name]:.4g}" for name in metrics if name in last))
        return
    import matplotlib.pyplot as plt
    from PIL import Image

    def show(name, content):
        if name in shown:
            shown[name].update(content)
        else:
            shown[name] = display(content, display_id=True)
    figure = curves_figure(series, title=title)
    show("curves", figure)
    plt.close(figure)
    if grids:
        show("grid name", Pretty(f"newest grid: {grids[-1]}"))
        show("grid", Image.open(os.path.join(workdir, "samples", grids[-1])))


# ---------------------------------------------------------------------------------------------
# Timing and inputs


def time_calls(fn: Callable[[], Any], repeats: int = 2) -> dict[str, float]:
    """Seconds of the first call of `fn` (compiles) and the fastest of `repeats` more (runs);
    results are waited for (`jax.block_until_ready`)."""
    import jax
    began = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - began
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - began)
    return {"first_call_s": first, "run_s": min(runs)}


def sample_image(size: int, label: int = 3, seed: int = 0) -> np.ndarray:
    """A bundled image to edit when none is uploaded: a shape of the procedural dataset
    (`bigvar.data.procedural`), uint8 (size, size, 3)."""
    from bigvar.data.procedural import render
    return render(label, size, np.random.default_rng(seed))


def uploaded_image(size: int) -> np.ndarray | None:
    """In Colab: an image the user uploads, centre-cropped and resized to `size`; None elsewhere
    or when nothing was uploaded."""
    try:
        from google.colab import files  # type: ignore[import-not-found]
    except ImportError:
        return None
    import io

    from PIL import Image
    uploaded = files.upload()
    if not uploaded:
        return None
    image = Image.open(io.BytesIO(next(iter(uploaded.values())))).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(image, np.uint8)
