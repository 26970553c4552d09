"""What every job config shares, for the files in `configs/`: the job sections (`train`, `loss`,
`mesh`), loading one config file from another, and `validate`, which asks each part to check its
own section once per job.

A config is an `ml_collections.ConfigDict`: `model` (var | bigr | vqvae | bae | demo), `mode`,
`seed`, `init_from`, the model sections (`var` + `vae`, `bigr` + `bae`: each a module's own fields,
see `bigvar.models.build`), and `sample`, `train`, `data` (`bigvar.data.data_section`), `loss`
(tokenizers), `mesh`, `axis_rules`. The recipes and size tables are in the config files.
"""
from __future__ import annotations

import importlib.util
import math
import os
import runpy

import ml_collections
from absl import flags
from ml_collections import config_flags

from bigvar import parallel
from bigvar.errors import UserError, invalid

MODES = ("sample", "train", "export", "eval", "probe")
TOKENIZERS = ("vqvae", "bae")


def config_dir() -> str:
    """The folder of the configs that ship with bigvar: the package `bigvar.configs` (in a
    checkout, its top-level `configs/`, which `pyproject.toml` maps to that package)."""
    spec = importlib.util.find_spec("bigvar.configs")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    # A checkout on sys.path without an install: the folder beside the package.
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
    """The names of the shipped config files (`var_d30.py`, …)."""
    return sorted(name for name in os.listdir(config_dir())
                  if name.endswith(".py") and not name.startswith("_"))


def resolve_config_path(path: str) -> str:
    """The file a `--config=path` names. A file that exists there is used as it is (your own
    config, or the checkout's); otherwise `configs/NAME.py`, `NAME.py` and `NAME` name the config
    shipped with bigvar, so the same flag works from any directory after `pip install`."""
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    name = name if name.endswith(".py") else f"{name}.py"
    folder = os.path.dirname(os.path.normpath(path))
    shipped = os.path.join(config_dir(), name)
    if folder in ("", "configs") and os.path.isfile(shipped):
        return shipped
    raise UserError(f"{path!r} is neither a config file nor the name of one shipped with bigvar "
                    f"({', '.join(n[:-3] for n in shipped_configs())}; e.g. configs/var_d16.py "
                    "or var_d16)")


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, as `--config=path:arg` loads it: a path, or the name
    of a shipped config (`"var.py"`, `"configs/var.py"`, `"var"`)."""
    return runpy.run_path(resolve_config_path(path))["get_config"](arg)


class _ShippedConfigParser(flags.ArgumentParser):
    """ml_collections' `--config=path[:arg]` parser, with the path resolved by
    `resolve_config_path` first."""

    def __init__(self, parser: flags.ArgumentParser):
        self._parser = parser

    def parse(self, argument):
        path, colon, arg = argument.partition(":")
        return self._parser.parse(resolve_config_path(path) + colon + arg)

    def flag_type(self):
        return self._parser.flag_type()


def define_config_flag(name: str = "config", flag_values=flags.FLAGS, **kwargs):
    """`config_flags.DEFINE_config_file` whose file may also be a shipped config's name."""
    holder = config_flags.DEFINE_config_file(name, None, "A config file, or the name of one that "
                                             "ships with bigvar (configs/var_d16.py, var_d16).",
                                             flag_values=flag_values, **kwargs)
    flag_values[name].parser = _ShippedConfigParser(flag_values[name].parser)
    return holder


def sibling(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of file `name` in the same folder as `config_file` (a config file's
    `__file__`): how the tiny and demo configs start from the full ones."""
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), name), arg)


def alias(config_file: str, target: str, first_arg: str):
    """`get_config` of a config file that is another one with a fixed first argument: in
    configs/var_d30.py, `get_config = alias(__file__, "var.py", "d30")` makes
    `configs/var_d30.py:fid` the same as `configs/var.py:d30,fid`."""
    def get_config(arg=None):
        return sibling(config_file, target, ",".join(a for a in (first_arg, arg) if a))
    return get_config


def mesh_section() -> ml_collections.ConfigDict:
    """`config.mesh`: sizes of the (data, fsdp, tensor) mesh axes; -1 takes the other devices."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def common_sections(config: ml_collections.ConfigDict) -> None:
    """Adds the fields every generator config has (mesh, axis rules, weights and tokenizer
    directories, seeds) to `config`."""
    config.mode = "sample"
    config.seed = 0
    config.init_from = ""  # a weights directory (`python -m bigvar.convert ...` or an export)
    config.allow_random_init = False  # sampling from random weights: smoke tests only
    config.tokenizer_from = ""  # training: weights dir holding the frozen tokenizer
    config.mesh = mesh_section()
    config.axis_rules = parallel.DEFAULT_AXIS_RULES
    config.eval = eval_section()


def eval_section(**overrides) -> ml_collections.ConfigDict:
    """`config.eval`: what `mode=eval` (`bigvar.eval.job`) compares, with which network."""
    section = ml_collections.ConfigDict(dict(
        inception="",  # weights dir: `python -m bigvar.convert inception --pth=… | --graph=…`
        reference="",  # ADM reference batch (VIRTUAL_imagenet256_labeled.npz), or bigvar.eval.reference's
        samples="",  # evaluate this ADM-format npz instead of sampling
        preprocessing="adm",  # adm: TF1 resize in the graph; pytorch-fid: torch's bilinear resize
        batch_size=100,  # images per Inception pass, over all devices
        precision_recall=True,  # k-NN precision/recall (holds both sets' pool features)
    ))
    section.update(overrides)
    return section


def probe_section(**overrides) -> ml_collections.ConfigDict:
    """`config.probe` (BiGR): `mode=probe`, the linear probe of `bigvar.eval.probe`."""
    section = ml_collections.ConfigDict(dict(
        layer=-1,  # the generator block whose output is pooled (inclusive); -1: the middle one
        train_images=0, val_images=0,  # images of each split (0 = every record)
        val_path="",  # validation images (folder / ArrayRecord glob); procedural data: another seed
        batch_size=64,  # images per feature batch, over all devices
        # The classifier: MAE's linear probe (unverified for BiGR; docs/official_behaviour.md)
        probe_batch_size=16384, epochs=90, blr=0.1, warmup_epochs=10, weight_decay=0.0, seed=0,
    ))
    section.update(overrides)
    return section


def train_section(**overrides) -> ml_collections.ConfigDict:
    """`config.train`: optimisation, schedules, logging and checkpointing of a training run.

    Steps are optimizer steps on the global batch (`grad_accum` micro-batches each); epochs
    convert to steps with the training set's size.
    """
    train = ml_collections.ConfigDict(dict(
        batch_size=768, grad_accum=1, epochs=200, steps=0,  # steps > 0 overrides epochs
        lr=0.0, tblr=1e-4,  # lr = 0: tblr · batch_size / 256 (the official rule)
        schedule="lin0", warmup_epochs=0.0, wp0=0.005, wpe=0.1,  # warmup 0: epochs / 50
        twd=0.05, twde=0.0,  # weight decay from twd to twde along a cosine (twde 0: constant)
        b1=0.9, b2=0.95, eps=1e-8, clip=2.0, label_smoothing=0.0,
        pg=0.0, pg0=4, pgwp=0.0,  # progressive training (VAR): off by default, pgwp 0: epochs/300
        official_init=True, init_adaln=0.5, init_adaln_gamma=1e-3, init_head=0.02,
        ema_decay=0.0,  # > 0: keep an EMA of the generator (BiGR: 0.9999); export uses it
        log_every=50, checkpoint_every=2000, keep_checkpoints=3, async_checkpoints=True,
        sample_every=5000, sample_images=16,
    ))
    train.update(overrides)
    return train


def loss_section(**overrides) -> ml_collections.ConfigDict:
    """`config.loss` of a tokenizer-training config: the weight of each term."""
    loss = ml_collections.ConfigDict(dict(
        l1=0.0, l2=1.0,  # pixel reconstruction terms (images in the tokenizer's range)
        beta=0.25,  # VQ-VAE: commitment weight of the multi-scale VQ loss (official VAR `quant.py`)
        lpips=0.0, lpips_from="",  # LPIPS-VGG weight; its weights dir (`python -m bigvar.convert lpips`)
        gan=0.0,  # PatchGAN hinge loss weight (0 = no discriminator), times the adaptive weight
        gan_start=0,  # step at which the discriminator and the adversarial term start
        gan_max_weight=1e4,  # clamp of the adaptive weight (taming 1e4; BLD's disc_weight_max 1)
        disc_ndf=64, disc_layers=3, disc_lr=0.0,  # discriminator width/depth; lr 0 = same as G
        disc_init="taming",  # taming: N(0, 0.02) convs; torch_default: BLD's (no weights_init)
        dead_code_every=0,  # VQ-VAE: every N steps, re-seed unused codes from the batch (0 = off)
    ))
    loss.update(overrides)
    return loss


def image_size(config: ml_collections.ConfigDict) -> int:
    """Training/sampling resolution of a VAR, BiGR, VQ-VAE or B-AE config."""
    if config.model in ("bigr", "bae"):
        return config.bae.img_size
    patch_nums = config.var.patch_nums if "var" in config else config.vae.patch_nums
    return patch_nums[-1] * 2 ** (len(config.vae.ch_mult) - 1)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks the values a user can get wrong, each by the code that owns the section; raises
    `UserError` naming the field and the fix. Called once, at the start of each job."""
    # Imported here, not at the top: the jobs import this module, and config files (which
    # import it too) stay free of the trainers and samplers.
    from bigvar.models import bigr, var
    from bigvar.sampling import job
    from bigvar.sampling.bigr import BiGRSamplingSettings
    from bigvar.sampling.var import SamplingSettings
    from bigvar.tokenizers import bae, msvq
    from bigvar.train import loop

    if config.mode not in MODES:
        invalid("mode", config.mode, f"one of {MODES}")
    _check_finite(config)
    if config.model in TOKENIZERS:
        return _validate_tokenizer_job(config)
    if config.model == "var":
        var.validate_section(config.var)
        msvq.validate_section(config.vae)
        SamplingSettings.from_config(config.sample)
        num_classes = config.var.num_classes
    elif config.model == "bigr":
        bigr.validate_section(config.bigr, config.bae)
        bae.validate_section(config.bae)
        BiGRSamplingSettings.from_config(config.sample)
        num_classes = config.bigr.num_classes
    else:
        invalid("model", config.model, "'var', 'bigr', 'vqvae' or 'bae'")
    job.validate_sample_section(config.sample, num_classes)
    if config.mode == "eval":
        from bigvar.eval.job import validate_eval_section
        validate_eval_section(config.eval)
    if config.mode == "probe":
        if "probe" not in config:
            invalid("mode", config.mode, "'probe' only with a BiGR config (configs/bigr*.py)")
        from bigvar.eval.probe import validate_probe_section
        validate_probe_section(config.probe, config.bigr.n_layer)
    if config.mode == "train":
        loop.validate_train_section(config, num_classes)
    return config


def _check_finite(value, field: str = "") -> None:
    """No setting means anything as NaN or ±inf (`--config.sample.cfg=nan` would run): every float
    in the config, at any depth, is finite."""
    if isinstance(value, (dict, ml_collections.ConfigDict)):
        for key, item in value.items():
            _check_finite(item, f"{field}.{key}" if field else key)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, float) and not math.isfinite(item):
                invalid(field, tuple(value), "finite numbers")
    elif isinstance(value, float) and not math.isfinite(value):
        invalid(field, value, "a finite number")


def _validate_tokenizer_job(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    from bigvar.tokenizers import bae, msvq
    from bigvar.train import loop, tokenizer

    if config.mode not in ("train", "export"):
        invalid("mode", config.mode, "'train' or 'export' for a tokenizer config (sample with the "
                "generator config that loads it via --config.tokenizer_from)")
    tokenizer.validate_loss_section(config.loss)
    if config.model == "vqvae":
        msvq.validate_section(config.vae)
    else:
        bae.validate_section(config.bae)
    loop.validate_train_section(config, config.data.num_classes)
    return config
