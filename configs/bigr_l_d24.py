"""BiGR-L-d24 (336M), K = 24 bits, 256 px, class-conditional ImageNet.

Convert the official weights once, then sample:

  python -m bigvar.convert bigr --bae=binaryae_ema_1000000.th --gpt=bigr_L_d24.pt --out=ckpt/bigr_l_d24
  python -m bigvar.main --config=configs/bigr_l_d24.py --workdir=out/bigr_l_d24 \
      --config.init_from=ckpt/bigr_l_d24

Defaults are the official sampling script's (cfg 3.0, 20 iterations, Gumbel 0.01, 100 transcoder
steps). Argument `paper`: the paper's Table 7 settings; `fid`: 50 images for each class.
"""
from bigvar.configs import bigr_config


def get_config(arg=None):
    return bigr_config("L", binary_size=24, arg=arg)
