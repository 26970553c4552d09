"""Official BiGR checkpoints (`binaryae_ema_*.th`, `bigr_*.pt`) → bigvar params, as the official
loaders read them (`bae/binaryae.py`, `load_pretrain`; `llama/load_bigr.py`).

* B-AE: the EMA BinaryGAN state dict; only `ae.*` is the autoencoder (`disc.*` and `perceptual.*`
  are the GAN's discriminator and LPIPS, ignored). `generator.logsigma` is unused at inference and
  skipped, as are the `conv_out` shortcut convs of res-blocks that keep their width (created but
  never applied by the official code).
* Generator: `['ema']` (or a bare state dict); `diffusion_processor._denoise_fn.*` duplicates
  `denoise_mlp.*` and is dropped after checking it is identical; the scheduler buffers are
  recomputed.
"""
from __future__ import annotations

import math
import re

import ml_collections
import numpy as np

from bigvar import models, weights
from bigvar.convert import torch_pickle
from bigvar.convert.common import (ConversionError, NameTable, check_against, convert_conv_net,
                                   find_state_dict, flatten, linear, looks_like, same, set_path)
from bigvar.models.bigr import config_section as bigr_section, ffn_hidden_dim
from bigvar.tokenizers.bae import config_section as bae_section

BIGR_TABLE = [
    ("mask_tok", "mask_tok", same),
    ("cls_embedding.embedding_table.weight", "cls_embedding/embedding_table/embedding", same),
    ("tok_embeddings.weight", "tok_embeddings/kernel", linear),
    ("tok_embeddings.bias", "tok_embeddings/bias", same),
    ("adaLN.1.weight", "adaLN/kernel", linear),
    ("adaLN.1.bias", "adaLN/bias", same),
    ("norm.weight", "norm/weight", same),
    ("diffusion_pos_embed_learned", "diffusion_pos_embed_learned", same),
    ("layers.{i}.ada_gss", "layers/ada_gss", same),
    ("layers.{i}.attention.wqkv.weight", "layers/attention/wqkv/kernel", linear),
    ("layers.{i}.attention.wo.weight", "layers/attention/wo/kernel", linear),
    ("layers.{i}.feed_forward.w1.weight", "layers/feed_forward/w1/kernel", linear),
    ("layers.{i}.feed_forward.w2.weight", "layers/feed_forward/w2/kernel", linear),
    ("layers.{i}.feed_forward.w3.weight", "layers/feed_forward/w3/kernel", linear),
    ("layers.{i}.attention_norm.weight", "layers/attention_norm/weight", same),
    ("layers.{i}.ffn_norm.weight", "layers/ffn_norm/weight", same),
    ("denoise_mlp.t_embedder.mlp.0.weight", "denoise_mlp/t_embedder/mlp_0/kernel", linear),
    ("denoise_mlp.t_embedder.mlp.0.bias", "denoise_mlp/t_embedder/mlp_0/bias", same),
    ("denoise_mlp.t_embedder.mlp.2.weight", "denoise_mlp/t_embedder/mlp_2/kernel", linear),
    ("denoise_mlp.t_embedder.mlp.2.bias", "denoise_mlp/t_embedder/mlp_2/bias", same),
    ("denoise_mlp.x_embedder.weight", "denoise_mlp/x_embedder/kernel", linear),
    ("denoise_mlp.x_embedder.bias", "denoise_mlp/x_embedder/bias", same),
    ("denoise_mlp.c_embedder.weight", "denoise_mlp/c_embedder/kernel", linear),
    ("denoise_mlp.c_embedder.bias", "denoise_mlp/c_embedder/bias", same),
    ("denoise_mlp.blocks.{j}.mlp.0.weight", "denoise_mlp/blocks_{j}/mlp_0/kernel", linear),
    ("denoise_mlp.blocks.{j}.mlp.0.bias", "denoise_mlp/blocks_{j}/mlp_0/bias", same),
    ("denoise_mlp.blocks.{j}.mlp.2.weight", "denoise_mlp/blocks_{j}/mlp_2/kernel", linear),
    ("denoise_mlp.blocks.{j}.mlp.2.bias", "denoise_mlp/blocks_{j}/mlp_2/bias", same),
    ("denoise_mlp.blocks.{j}.adaLN_modulation.1.weight", "denoise_mlp/blocks_{j}/adaLN_modulation/kernel", linear),
    ("denoise_mlp.blocks.{j}.adaLN_modulation.1.bias", "denoise_mlp/blocks_{j}/adaLN_modulation/bias", same),
    ("denoise_mlp.final_layer.linear.weight", "denoise_mlp/final_layer/linear/kernel", linear),
    ("denoise_mlp.final_layer.linear.bias", "denoise_mlp/final_layer/linear/bias", same),
    ("denoise_mlp.final_layer.adaLN_modulation.1.weight", "denoise_mlp/final_layer/adaLN_modulation/kernel", linear),
    ("denoise_mlp.final_layer.adaLN_modulation.1.bias", "denoise_mlp/final_layer/adaLN_modulation/bias", same),
]
BIGR_SKIP = ["diffusion_processor.scheduler.k_final", "diffusion_processor.scheduler.b_final",
             "diffusion_processor.scheduler.beta", "diffusion_processor.scheduler.cumbeta", "freqs_cis"]
BIGR_NAMES = NameTable(BIGR_TABLE, skip=BIGR_SKIP)
_DUPLICATE = "diffusion_processor._denoise_fn."

BAE_RULES = [
    (r"^quantize\.embed\.weight$", "quantize/embed/embedding"),
    (r"^quantize\.proj\.0\.weight$", "quantize/proj_0/kernel"),
    (r"^quantize\.proj\.0\.bias$", "quantize/proj_0/bias"),
]

_HINTS = {
    "blocks.": "It looks like a VAR checkpoint: use `python -m bigvar.convert var`.",
    "pos_1LC": "It looks like a VAR checkpoint: use `python -m bigvar.convert var`.",
    "encoder.conv_in": "It looks like VAR's VQ-VAE: use `python -m bigvar.convert var`.",
}


# ---- generator ----------------------------------------------------------------------------------
def dedupe_denoiser(sd: dict, path: str) -> dict:
    """Drops the `diffusion_processor._denoise_fn.*` copy after checking it equals `denoise_mlp.*`."""
    out = {}
    for key, value in sd.items():
        if key.startswith(_DUPLICATE):
            twin = "denoise_mlp." + key[len(_DUPLICATE):]
            if twin not in sd or sd[twin].shape != value.shape or not np.array_equal(sd[twin], value):
                raise ConversionError(f"{path}: {key} differs from {twin}; the two copies of the "
                                      "transcoder must be identical in an official checkpoint")
            continue
        out[key] = value
    return out


def detect_bigr(sd: dict, path: str) -> dict:
    looks_like(sd, ["mask_tok", "tok_embeddings.weight", "cls_embedding.embedding_table.weight",
                    "layers.0.attention.wqkv.weight", "denoise_mlp.x_embedder.weight",
                    "diffusion_pos_embed_learned"], "BiGR generator", path, _HINTS)
    if "adaLN.1.weight" not in sd:
        raise ConversionError(f"{path}: no shared adaLN (`adaLN.1.weight`); only BiGR models "
                              "trained with --use_adaLN (every release) are supported")
    dim = sd["mask_tok"].shape[-1]
    n_layer = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k)))
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"denoise_mlp\.blocks\.(\d+)\.", k))}
    ffn = sd["layers.0.feed_forward.w1.weight"].shape[0]
    if ffn != ffn_hidden_dim(dim):
        raise ConversionError(f"{path}: SwiGLU width {ffn} is not the LLaMA rule for dim {dim} "
                              f"({ffn_hidden_dim(dim)}); this is not a released BiGR configuration")
    seq_len = sd["diffusion_pos_embed_learned"].shape[1]
    if math.isqrt(seq_len) ** 2 != seq_len:
        raise ConversionError(f"{path}: {seq_len} tokens is not a square grid")
    return dict(binary_size=sd["tok_embeddings.weight"].shape[1],
                num_classes=sd["cls_embedding.embedding_table.weight"].shape[0] - 1,
                dim=dim, n_layer=n_layer, n_head=dim // 64,  # head_dim 64 in every release
                seq_len=seq_len, denoise_hidden=sd["denoise_mlp.x_embedder.weight"].shape[0],
                num_block_mlp=len(blocks))


def convert_bigr_state_dict(sd: dict, n_layer: int, path: str) -> dict:
    return BIGR_NAMES.convert(dedupe_denoiser(sd, path), n_layer, f"{path}: the BiGR state dict")


# ---- binary autoencoder -------------------------------------------------------------------------
def autoencoder_keys(sd: dict, path: str) -> dict:
    """The `ae.` part of an EMA BinaryGAN state dict, prefix stripped (or a bare autoencoder)."""
    if any(k.startswith("ae.") for k in sd):
        return {k[3:]: v for k, v in sd.items() if k.startswith("ae.")}
    return dict(sd)


def _block_kinds(sd: dict, prefix: str) -> list[str]:
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.blocks\.(\d+)\.", k))})
    if indices != list(range(len(indices))):
        raise ConversionError(f"{prefix}.blocks indices are not contiguous: {indices}")
    kinds = []
    for i in indices:
        key = f"{prefix}.blocks.{i}"
        if f"{key}.conv1.weight" in sd:
            kinds.append("res")
        elif f"{key}.q.weight" in sd:
            kinds.append("attn")
        elif f"{key}.conv.weight" in sd:
            kinds.append("resample")
        elif sd[f"{key}.weight"].ndim == 1:
            kinds.append("norm")
        else:
            kinds.append("conv")
    return kinds


def detect_bae(sd: dict, path: str, seq_len: int | None = None) -> dict:
    looks_like(sd, ["encoder.blocks.0.weight", "quantize.proj.0.weight", "quantize.embed.weight"],
               "BiGR binary autoencoder", path, _HINTS)
    nf = sd["encoder.blocks.0.weight"].shape[0]
    kinds = _block_kinds(sd, "encoder")
    # Levels are separated by the downsamples; the last three res/attn/res are the middle.
    levels, current = [], []
    for i, kind in enumerate(kinds[1:-5], start=1):
        if kind == "resample":
            levels.append(current)
            current = []
        else:
            current.append((i, kind))
    levels.append(current)
    res_blocks = sum(k == "res" for _, k in levels[0])
    ch_mult = tuple(sd[f"encoder.blocks.{[i for i, k in lvl if k == 'res'][-1]}.conv2.weight"].shape[0] // nf
                    for lvl in levels)
    attn_levels = [n for n, lvl in enumerate(levels) if any(k == "attn" for _, k in lvl)]
    down = 2 ** (len(ch_mult) - 1)
    if attn_levels:
        img_size = 16 * 2 ** attn_levels[0]  # attention runs at 16×16 (attn_resolutions = [16])
    elif seq_len is not None:
        img_size = math.isqrt(seq_len) * down
    else:
        raise ConversionError(f"{path}: no attention level, so the image size is ambiguous; "
                              "pass the generator checkpoint too")
    return dict(codebook_size=sd["quantize.embed.weight"].shape[0],
                emb_dim=sd["quantize.embed.weight"].shape[1], nf=nf, ch_mult=ch_mult,
                res_blocks=res_blocks, attn_resolutions=(16,), img_size=img_size,
                norm_first=_block_kinds(sd, "generator")[0] == "norm")


def convert_bae_state_dict(sd: dict, expected: dict, path: str) -> dict:
    """Converts, then drops what the official model holds but never uses: logsigma, and
    `conv_out` of res-blocks that keep their width."""
    params = flatten(convert_conv_net({k: v for k, v in sd.items()
                                       if not k.startswith("generator.logsigma.")}, BAE_RULES))
    want = flatten(expected)
    unused = {k.rsplit("/", 1)[0] for k in params if k not in want and k.endswith("/conv_out/kernel")
              and params[k].shape[:2] == (1, 1) and params[k].shape[2] == params[k].shape[3]}
    nested: dict = {}
    for key, value in params.items():
        if key.rsplit("/", 1)[0] not in unused:
            set_path(nested, key, value)
    return nested


# ---- both -----------------------------------------------------------------------------------------
def config_from_detected(gpt_arch: dict, bae_arch: dict) -> ml_collections.ConfigDict:
    """The model sections (`bigr`, `bae`) of the detected architecture, other fields at their
    defaults."""
    if gpt_arch["binary_size"] != bae_arch["codebook_size"]:
        raise ConversionError(f"the generator models K={gpt_arch['binary_size']} bits per token but "
                              f"the B-AE produces K={bae_arch['codebook_size']}: these files do not "
                              "belong together (bigr_*_d24 needs the d24 B-AE)")
    grid = bae_arch["img_size"] // 2 ** (len(bae_arch["ch_mult"]) - 1)
    if grid * grid != gpt_arch["seq_len"]:
        raise ConversionError(f"the generator has {gpt_arch['seq_len']} tokens but the B-AE makes "
                              f"a {grid}×{grid} grid: these files do not belong together")
    return ml_collections.ConfigDict(dict(
        model="bigr", bigr=bigr_section(**gpt_arch),
        bae=dict(bae_section(codebook_size=gpt_arch["binary_size"]), **bae_arch)))


def _expected_shapes(config):
    gpt, bae = models.param_shapes(*models.build(config))
    return gpt["params"], bae["params"]


def convert_state_dicts(gpt_sd: dict, bae_sd: dict, gpt_name: str = "BiGR", bae_name: str = "B-AE",
                        expected_config=None):
    gpt_arch = detect_bigr(gpt_sd, gpt_name)
    ae_sd = autoencoder_keys(bae_sd, bae_name)
    config = config_from_detected(gpt_arch, detect_bae(ae_sd, bae_name, gpt_arch["seq_len"]))
    if expected_config is not None:
        weights.check_architecture(expected_config, config.to_dict(), f"{gpt_name} + {bae_name}")
    want_gpt, want_bae = _expected_shapes(config)
    gpt_params = convert_bigr_state_dict(gpt_sd, gpt_arch["n_layer"], gpt_name)
    bae_params = convert_bae_state_dict(ae_sd, want_bae, bae_name)
    check_against(want_gpt, gpt_params, f"{gpt_name}: the BiGR weights", BIGR_NAMES.torch_name)
    check_against(want_bae, bae_params, f"{bae_name}: the B-AE weights", BIGR_NAMES.torch_name)
    return config, {"bigr": {"params": gpt_params}, "bae": {"params": bae_params}}


def convert(bae_path: str, gpt_path: str, expected_config=None):
    """Reads both official files (no torch) and converts them; see `convert_state_dicts`."""
    gpt_sd = find_state_dict(torch_pickle.load(gpt_path), [("ema",), ("model",), ("state_dict",)], gpt_path)
    bae_sd = find_state_dict(torch_pickle.load(bae_path), [("ema",), ("model",), ("state_dict",)], bae_path)
    return convert_state_dicts(gpt_sd, bae_sd, gpt_path, bae_path, expected_config)
