"""Official VAR checkpoints (`vae_ch160v4096z32.pth`, `var_d*.pth`) → bigvar params.

The transformer follows a table of the official names (`models/var.py`, `models/basic_var.py`);
block rows are stacked on a leading layer axis for `nn.scan`. The VQ-VAE follows regex rename
rules (official `models/vqvae.py`, `models/basic_vae.py`). Recomputable buffers are skipped. The
architecture is detected from keys and shapes; the converted tree is then checked entry by entry
against the model built from the detected config.
"""
from __future__ import annotations

import re

import ml_collections
import numpy as np

from bigvar import models, weights
from bigvar.convert import torch_pickle
from bigvar.convert.common import (ConversionError, NameTable, check_against, convert_conv_net,
                                   find_state_dict, linear, looks_like, same)
from bigvar.models.var import PATCH_NUMS_256, PATCH_NUMS_512, config_section as var_section
from bigvar.tokenizers.msvq import config_section as vae_section

# (torch key, flax path, transform); `{i}` is the block index.
VAR_TABLE = [
    ("word_embed.weight", "word_embed/kernel", linear),
    ("word_embed.bias", "word_embed/bias", same),
    ("class_emb.weight", "class_emb/embedding", same),
    ("pos_start", "pos_start", same),
    ("pos_1LC", "pos_1LC", same),
    ("lvl_embed.weight", "lvl_embed/embedding", same),
    ("shared_ada_lin.1.weight", "shared_ada_lin/kernel", linear),
    ("shared_ada_lin.1.bias", "shared_ada_lin/bias", same),
    ("head_nm.ada_lin.1.weight", "head_nm/ada_lin/kernel", linear),
    ("head_nm.ada_lin.1.bias", "head_nm/ada_lin/bias", same),
    ("head.weight", "head/kernel", linear),
    ("head.bias", "head/bias", same),
    ("blocks.{i}.attn.mat_qkv.weight", "blocks/attn/mat_qkv/kernel", linear),
    ("blocks.{i}.attn.q_bias", "blocks/attn/q_bias", same),
    ("blocks.{i}.attn.v_bias", "blocks/attn/v_bias", same),
    ("blocks.{i}.attn.scale_mul_1H11", "blocks/attn/scale_mul_1H11", same),
    ("blocks.{i}.attn.proj.weight", "blocks/attn/proj/kernel", linear),
    ("blocks.{i}.attn.proj.bias", "blocks/attn/proj/bias", same),
    ("blocks.{i}.ffn.fc1.weight", "blocks/ffn/fc1/kernel", linear),
    ("blocks.{i}.ffn.fc1.bias", "blocks/ffn/fc1/bias", same),
    ("blocks.{i}.ffn.fc2.weight", "blocks/ffn/fc2/kernel", linear),
    ("blocks.{i}.ffn.fc2.bias", "blocks/ffn/fc2/bias", same),
    ("blocks.{i}.ada_lin.1.weight", "blocks/ada_lin/kernel", linear),
    ("blocks.{i}.ada_lin.1.bias", "blocks/ada_lin/bias", same),
    ("blocks.{i}.ada_gss", "blocks/ada_gss", same),
]
# Buffers in the official state dict that are recomputed (or, for zero_k_bias, implied).
VAR_BUFFERS = ["lvl_1L", "attn_bias_for_masking", "blocks.{i}.attn.zero_k_bias"]
VAE_BUFFERS = ["quantize.ema_vocab_hit_SV"]

# Released patch_nums by (number of scales, sequence length).
KNOWN_PATCH_NUMS = {
    (len(p), sum(x * x for x in p)): p
    for p in (PATCH_NUMS_256, PATCH_NUMS_512,
              (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64))  # --pn=1024, never released
}

# VQ-VAE rename rules (before the generic conv-net rule), applied to the dotted torch key.
VAE_RULES = [
    (r"^quantize\.embedding\.weight$", "quantize/embedding"),
    (r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.weight$", r"quantize/quant_resi/qresi_ls_\1/kernel"),
    (r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.bias$", r"quantize/quant_resi/qresi_ls_\1/bias"),
    (r"^quantize\.quant_resi\.qresi\.weight$", "quantize/quant_resi/qresi_ls_0/kernel"),  # PhiShared
    (r"^quantize\.quant_resi\.qresi\.bias$", "quantize/quant_resi/qresi_ls_0/bias"),
    (r"^quantize\.quant_resi\.(\d+)\.weight$", r"quantize/quant_resi/qresi_ls_\1/kernel"),  # NonShared
    (r"^quantize\.quant_resi\.(\d+)\.bias$", r"quantize/quant_resi/qresi_ls_\1/bias"),
]


VAR_NAMES = NameTable(VAR_TABLE, skip=VAR_BUFFERS)
torch_name = VAR_NAMES.torch_name


# ---- detection --------------------------------------------------------------------------------
_HINTS = {
    "layers.": "It looks like a BiGR checkpoint: use `python -m bigvar.convert bigr`.",
    "ae.encoder": "It looks like a BiGR B-AE: use `python -m bigvar.convert bigr`.",
    "encoder.conv_in": "It looks like the VQ-VAE: pass it as --vae, and var_d*.pth as --var.",
    "pos_1LC": "It looks like a VAR transformer: pass it as --var.",
}


def detect_var(sd: dict, path: str, patch_nums=None) -> dict:
    """Architecture of a VAR state dict, from its keys and shapes."""
    looks_like(sd, ["pos_1LC", "pos_start", "class_emb.weight", "head.weight", "lvl_embed.weight",
                    "word_embed.weight", "blocks.0.attn.mat_qkv.weight"], "VAR", path,
               {k: v for k, v in _HINTS.items() if k != "pos_1LC"})
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    c = sd["pos_start"].shape[-1]
    l2 = "blocks.0.attn.scale_mul_1H11" in sd
    heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else c // 64  # head_dim 64 rule
    num_scales, seq_len = sd["lvl_embed.weight"].shape[0], sd["pos_1LC"].shape[1]
    if patch_nums is None:
        patch_nums = KNOWN_PATCH_NUMS.get((num_scales, seq_len))
        if patch_nums is None:
            raise ConversionError(
                f"{path}: cannot infer patch_nums from {num_scales} scales and L={seq_len}; "
                "pass --patch_nums=1,2,3,...")
    patch_nums = tuple(int(p) for p in patch_nums)
    if len(patch_nums) != num_scales or sum(p * p for p in patch_nums) != seq_len:
        raise ConversionError(f"{path}: patch_nums {patch_nums} do not give {num_scales} scales "
                              f"with L={seq_len} tokens")
    return dict(
        depth=depth, embed_dim=c, num_heads=heads,
        mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / c,
        num_classes=sd["class_emb.weight"].shape[0] - 1,
        shared_aln="blocks.0.ada_gss" in sd, attn_l2_norm=l2, patch_nums=patch_nums,
        norm_eps=1e-6, vocab_size=sd["head.weight"].shape[0], cvae=sd["word_embed.weight"].shape[1])


def detect_vae(sd: dict, path: str) -> dict:
    looks_like(sd, ["encoder.conv_in.weight", "encoder.conv_out.weight", "quantize.embedding.weight",
                    "decoder.conv_out.weight", "quant_conv.weight"], "VQ-VAE", path,
               {k: v for k, v in _HINTS.items() if k != "encoder.conv_in"})
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight", k))})
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    num_res_blocks = len({m.group(1) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    phis = {m.group(2) for k in sd if (m := re.match(r"quantize\.quant_resi\.(qresi_ls\.)?(\d+)\.weight", k))}
    if any(k.startswith("quantize.quant_resi.qresi.") for k in sd):
        share = 1
    elif any(k.startswith("quantize.quant_resi.qresi_ls.") for k in sd):
        share = len(phis)
    else:  # non-shared: one φ per scale (default_qresi_counts = 0)
        share = 0
    return dict(vocab_size=sd["quantize.embedding.weight"].shape[0],
                z_channels=sd["quantize.embedding.weight"].shape[1], ch=ch, ch_mult=ch_mult,
                num_res_blocks=num_res_blocks, quant_resi=0.5, share_quant_resi=share)


def config_from_detected(var_arch: dict, vae_arch: dict) -> ml_collections.ConfigDict:
    """The model sections (`var`, `vae`) of the detected architecture, other fields at their
    defaults."""
    if var_arch["vocab_size"] != vae_arch["vocab_size"] or var_arch["cvae"] != vae_arch["z_channels"]:
        raise ConversionError(
            f"the VAR head predicts {var_arch['vocab_size']} codes of width {var_arch['cvae']}, but "
            f"the VQ-VAE has {vae_arch['vocab_size']} codes of width {vae_arch['z_channels']}: "
            "these files do not belong together")
    var = var_section(var_arch["depth"], shared_aln=var_arch["shared_aln"],
                      patch_nums=var_arch["patch_nums"])
    var.update({key: var_arch[key] for key in weights.ARCH_FIELDS["var"]})
    return ml_collections.ConfigDict(dict(model="var", var=var,
                                          vae=dict(vae_section(), **vae_arch)))


# ---- conversion -------------------------------------------------------------------------------
def convert_var_state_dict(sd: dict, depth: int, path: str) -> dict:
    for key in sd:
        if key.endswith("zero_k_bias") and np.any(sd[key]):
            raise ConversionError(f"{path}: {key} is not zero; this is not an official VAR file")
    return VAR_NAMES.convert(sd, depth, f"{path}: the VAR state dict")


def convert_vae_state_dict(sd: dict, path: str) -> dict:
    return convert_conv_net({k: v for k, v in sd.items() if k not in VAE_BUFFERS}, VAE_RULES)


def _expected_shapes(config):
    var_shapes, vae_shapes = models.param_shapes(*models.build(config))
    return var_shapes["params"], vae_shapes["params"]


def convert_state_dicts(var_sd: dict, vae_sd: dict, var_name: str = "VAR", vae_name: str = "VQ-VAE",
                        patch_nums=None, expected_config: ml_collections.ConfigDict | None = None):
    """Official state dicts (NumPy) → (config, {'var': {'params'}, 'vae': {'params'}})."""
    var_arch = detect_var(var_sd, var_name, patch_nums)
    config = config_from_detected(var_arch, detect_vae(vae_sd, vae_name))
    if expected_config is not None:
        weights.check_architecture(expected_config, config.to_dict(), f"{var_name} + {vae_name}")
    var_params = convert_var_state_dict(var_sd, var_arch["depth"], var_name)
    vae_params = convert_vae_state_dict(vae_sd, vae_name)
    want_var, want_vae = _expected_shapes(config)
    check_against(want_var, var_params, f"{var_name}: the VAR weights", torch_name)
    check_against(want_vae, vae_params, f"{vae_name}: the VQ-VAE weights", torch_name)
    return config, {"var": {"params": var_params}, "vae": {"params": vae_params}}


def convert(vae_path: str, var_path: str, patch_nums=None,
            expected_config: ml_collections.ConfigDict | None = None):
    """Reads both official files (no torch) and converts them; see `convert_state_dicts`."""
    var_sd = find_state_dict(torch_pickle.load(var_path),
                             [("trainer", "var_wo_ddp"), ("model",), ("state_dict",)], var_path)
    vae_sd = find_state_dict(torch_pickle.load(vae_path),
                             [("trainer", "vae_local"), ("model",), ("state_dict",)], vae_path)
    return convert_state_dicts(var_sd, vae_sd, var_path, vae_path, patch_nums, expected_config)
