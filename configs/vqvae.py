"""Training VAR's multi-scale VQ-VAE (the released `vae_ch160v4096z32` architecture: ch 160,
vocab 4096, z 32, 16× downsampling, φ shared over 4 convs, quant_resi 0.5).

  python -m bigvar.main --config=configs/vqvae.py --workdir=runs/vqvae \
      --config.data.path=/data/openimages/train --config.loss.lpips_from=ckpt/lpips
  python -m bigvar.main --config=configs/vqvae.py --workdir=runs/vqvae --config.mode=export

No official training recipe is released (the paper: VQGAN architecture, OpenImages, L2 + LPIPS +
GAN); the defaults are LlamaGen's VQGAN recipe. Argument `512` trains on the 512-px scales.
"""
import ml_collections

from bigvar import config_lib, data
from bigvar.models.var import PATCH_NUMS_256, PATCH_NUMS_512
from bigvar.tokenizers import msvq


def get_config(arg=None):
    if arg not in (None, "", "512"):
        raise ValueError(f"configs/vqvae.py takes nothing or '512'; got {arg!r}")
    config = ml_collections.ConfigDict()
    config.model = "vqvae"
    config.mode = "train"
    config.seed = 0
    config.init_from = ""  # fine-tune from a weights dir holding `vae`
    config.vae = msvq.config_section(ch=160, vocab_size=4096)
    config.vae.patch_nums = PATCH_NUMS_512 if arg == "512" else PATCH_NUMS_256
    # LlamaGen's VQGAN recipe: Adam (0.9, 0.95), lr 1e-4, batch 128, LPIPS 1, GAN 0.5 from 20k.
    config.loss = config_lib.loss_section(l2=1.0, lpips=1.0, gan=0.5, gan_start=20_000)
    config.train = config_lib.train_section(
        batch_size=128, epochs=40, lr=1e-4, schedule="constant", twd=0.0, twde=0.0, b1=0.9,
        b2=0.95, clip=0.0, ema_decay=0.9999, sample_every=5000, sample_images=16)
    config.data = data.data_section(source="folder", path="", num_classes=1000, transform="var",
                                    value_range="minus_one_one", hflip=True)
    config.mesh = config_lib.mesh_section()
    config.sample = ml_collections.ConfigDict(dict(grid_cols=8))
    return config
