"""Training BiGR's binary autoencoder with the BinaryLatentDiffusion recipe (`train_ae_dist.py`,
`hparams/defaults/binarygan_default.py`): nf 128, emb 256, 16× downsampling, attention at 16×16,
GroupNorm on the decoder input.

  python -m bigvar.main --config=configs/bae.py:24 --workdir=runs/bae24 \
      --config.data.path=/data/imagenet/train --config.loss.lpips_from=ckpt/lpips
  python -m bigvar.main --config=configs/bae.py:24 --workdir=runs/bae24 --config.mode=export

Arguments: `24` (K = 24 bits at 256 px, as bigr_*_d24), `32` (K = 32, bigr_xxl_d32) and `32_512`
(K = 32 at 512 px, bigr_l_d32_512).
"""
import ml_collections

from bigvar import config_lib, data
from bigvar.tokenizers import bae

VARIANTS = {"24": (24, 256), "32": (32, 256), "32_512": (32, 512)}


def get_config(arg=None):
    if arg not in VARIANTS:
        raise ValueError(f"configs/bae.py needs one of {sorted(VARIANTS)} (bits[_resolution]); "
                         f"got {arg!r}, e.g. --config=configs/bae.py:24")
    bits, size = VARIANTS[arg]
    config = ml_collections.ConfigDict()
    config.model = "bae"
    config.mode = "train"
    config.seed = 0
    config.init_from = ""  # fine-tune from a weights dir holding `bae`
    config.bae = bae.config_section(codebook_size=bits, img_size=size)
    config.loss = config_lib.loss_section(l1=1.0, l2=0.0, lpips=1.0, gan=1.0, gan_start=400_001,
                                          gan_max_weight=1.0, disc_init="torch_default")
    # L1 + LPIPS, PatchGAN (max adaptive weight 1) from `gan_start`, Adam (0.9, 0.999) at
    # 4.5e-6 × per-GPU batch (4 per GPU × 8 GPUs here), EMA. BLD updates its EMA (β 0.995) every
    # 10 steps; 0.9995 every step is the same time constant.
    config.train = config_lib.train_section(
        batch_size=32, steps=1_000_000, lr=4.5e-6 * 4, schedule="constant", twd=0.0, twde=0.0,
        b1=0.9, b2=0.999, clip=0.0, ema_decay=0.9995, sample_every=5000, sample_images=16)
    config.data = data.data_section(source="folder", path="", num_classes=1000, transform="bld",
                                    value_range="zero_one", hflip=True)
    config.mesh = config_lib.mesh_section()
    config.sample = ml_collections.ConfigDict(dict(grid_cols=8))
    return config
