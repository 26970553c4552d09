"""Training BiGR's binary autoencoder with the BinaryLatentDiffusion recipe (BIGR_SPEC §1.4):
nf 128, emb 256, 16× downsampling, attention at 16×16, GroupNorm on the decoder input.

  python -m bigvar.main --config=configs/bae.py:24 --workdir=runs/bae24 \
      --config.data.path=/data/imagenet/train --config.loss.lpips_from=ckpt/lpips
  python -m bigvar.main --config=configs/bae.py:24 --workdir=runs/bae24 --config.mode=export

Arguments: `24` (K = 24 bits at 256 px, as bigr_*_d24), `32` (K = 32, bigr_xxl_d32) and `32_512`
(K = 32 at 512 px, bigr_l_d32_512).
"""
from bigvar.configs import bae_train_config

VARIANTS = {"24": (24, 256), "32": (32, 256), "32_512": (32, 512)}


def get_config(arg=None):
    if arg not in VARIANTS:
        raise ValueError(f"configs/bae.py needs one of {sorted(VARIANTS)} (bits[_resolution]); "
                         f"got {arg!r}, e.g. --config=configs/bae.py:24")
    bits, size = VARIANTS[arg]
    return bae_train_config(binary_size=bits, img_size=size)
