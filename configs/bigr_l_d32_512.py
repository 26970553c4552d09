"""BiGR-L-d32 at 512 px (373M), K = 32 bits, 1024 tokens, class-conditional ImageNet.

Convert the official weights once, then sample:

  python -m bigvar.convert bigr --bae=binaryae_ema_720000.th --gpt=bigr_L_d32_512.pt --out=ckpt/bigr_l_d32_512
  python -m bigvar.main --config=configs/bigr_l_d32_512.py --workdir=out/bigr_l_d32_512 \
      --config.init_from=ckpt/bigr_l_d32_512

Defaults are the official sampling script's (cfg 3.0, 20 iterations, Gumbel 0.01, 100 transcoder
steps). Argument `paper`: the paper's Table 7 settings; `fid`: 50 images for each class.
"""
from bigvar.configs import bigr_config


def get_config(arg=None):
    return bigr_config("L-512", binary_size=32, arg=arg)
