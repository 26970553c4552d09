"""Training VAR's multi-scale VQ-VAE (the released `vae_ch160v4096z32` architecture: ch 160,
vocab 4096, z 32, 16× downsampling, φ shared over 4 convs, quant_resi 0.5).

  python -m bigvar.main --config=configs/vqvae.py --workdir=runs/vqvae \
      --config.data.path=/data/openimages/train --config.loss.lpips_from=ckpt/lpips
  python -m bigvar.main --config=configs/vqvae.py --workdir=runs/vqvae --config.mode=export

No official training recipe is released (the paper: VQGAN architecture, OpenImages, L2 + LPIPS +
GAN); the defaults are LlamaGen's VQGAN recipe. Argument `512` trains on the 512-px scales.
"""
from bigvar.configs import PATCH_NUMS_256, PATCH_NUMS_512, vqvae_train_config


def get_config(arg=None):
    if arg not in (None, "", "512"):
        raise ValueError(f"configs/vqvae.py takes nothing or '512'; got {arg!r}")
    return vqvae_train_config(ch=160, vocab_size=4096,
                              patch_nums=PATCH_NUMS_512 if arg == "512" else PATCH_NUMS_256)
