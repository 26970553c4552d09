"""BiGR, class-conditional ImageNet (official `haoosz/BiGR`; Hao et al., arXiv 2410.14672): the
released models, the official sampling defaults and the paper's training recipe.

Convert the official weights once, then sample:

  python -m bigvar.convert bigr --bae=binaryae_ema_1000000.th --gpt=bigr_L_d24.pt --out=ckpt/bigr_l_d24
  python -m bigvar.main --config=configs/bigr.py:l_d24 --workdir=out/bigr_l_d24 \
      --config.init_from=ckpt/bigr_l_d24

Argument: the release (`l_d24`, `xl_d24`, `xxl_d24`, `xxl_d32`, `l_d32_512`), optionally followed
by `,paper` (the paper's Table 7 sampling settings) or `,fid` (those settings and 50 images for
each class: the FID-50K protocol of `--config.mode=eval`), e.g.
`configs/bigr.py:xl_d24,paper`. Defaults are the official sampling script's (cfg 3.0, 20
iterations, Gumbel 0.01, 100 transcoder steps). `configs/bigr_l_d24.py` … are aliases.
"""
import ml_collections

from bigvar import config_lib, data
from bigvar.models import bigr
from bigvar.models.bigr_schedules import DIFFUSION_STEPS
from bigvar.tokenizers import bae

# Transformer sizes of the releases (official `BIGR_models` in `llama/gpt.py`): dim, layers,
# heads, transcoder blocks and width; the paper's (sampling iterations, Gumbel) for FID
# (Table 7); training batch.
SIZES = {
    "L": dict(dim=1024, n_layer=24, n_head=16, num_block_mlp=3, denoise_hidden=1024,
              paper=(20, 0.17), batch_size=1024),
    "XL": dict(dim=1280, n_layer=36, n_head=20, num_block_mlp=6, denoise_hidden=1280,
               paper=(25, 0.25), batch_size=512),
    "XXL": dict(dim=1536, n_layer=48, n_head=24, num_block_mlp=8, denoise_hidden=1536,
                paper=(25, 0.30), batch_size=512),
    "L-512": dict(dim=1024, n_layer=24, n_head=16, num_block_mlp=6, denoise_hidden=1280,
                  paper=(20, 0.17), batch_size=512),
}
RELEASES = {  # argument → (size, bits per token K, resolution)
    "l_d24": ("L", 24, 256), "xl_d24": ("XL", 24, 256), "xxl_d24": ("XXL", 24, 256),
    "xxl_d32": ("XXL", 32, 256), "l_d32_512": ("L-512", 32, 512),
}
VARIANTS = ("paper", "fid")


def get_config(arg=None):
    release, _, variant = (arg or "").partition(",")
    if release not in RELEASES or variant not in ("",) + VARIANTS:
        raise ValueError(f"configs/bigr.py takes a release {sorted(RELEASES)}, optionally with "
                         f"',paper' or ',fid' (e.g. configs/bigr.py:l_d24,paper); got {arg!r}")
    size, bits, resolution = RELEASES[release]
    sizes = dict(SIZES[size])
    iters, gumbel = sizes.pop("paper")
    batch_size = sizes.pop("batch_size")
    config = ml_collections.ConfigDict()
    config.model = "bigr"
    config_lib.common_sections(config)
    config.bigr = bigr.config_section(binary_size=bits, seq_len=(resolution // 16) ** 2, **sizes)
    config.bae = bae.config_section(codebook_size=bits, img_size=resolution)
    config.sample = ml_collections.ConfigDict(dict(
        classes=(980, 437, 22, 562, 207, 88, 279, 388), images_per_class=2, seed=0,
        batch_size=16,  # over all devices; 0: the largest that fits in each device's memory
        memory_gib=0.0,  # with batch_size 0: a device's memory, weights included (0: what is free)
        num_iter=20, cfg=3.0, cfg_schedule="constant", gumbel=0.01, gumbel_schedule="constant",
        temperature=1.0, diffusion_steps=DIFFUSION_STEPS, transcoder_steps=100, grid_cols=8, save_pngs=True))
    # train_ddp.py / paper Table 7: constant lr 1e-4, wd 0.02, clip 1, EMA 0.9999, 400 epochs.
    config.train = config_lib.train_section(
        batch_size=batch_size, epochs=400, lr=1e-4, schedule="constant", twd=0.02, twde=0.02,
        clip=1.0, ema_decay=0.9999)
    config.probe = config_lib.probe_section()  # mode=probe: linear probing of the features
    config.data = data.data_section(source="folder", path="", num_classes=1000, transform="adm",
                                    value_range="zero_one", hflip=True)
    if variant in ("paper", "fid"):  # Table 7 of the paper (FID runs): cfg 2.5, I and Gumbel per size
        config.sample.update(cfg=2.5, num_iter=iters, gumbel=gumbel)
    if variant == "fid":  # … with 50 images for each class, as the paper's FID-50K
        config.sample.update(classes=(), images_per_class=50, batch_size=0)
    return config
