"""BiGR-XXL-d32 (1.5B), K = 32 bits, 256 px, class-conditional ImageNet.

Convert the official weights once, then sample:

  python -m bigvar.convert bigr --bae=binaryae_ema_950000.th --gpt=bigr_XXL_d32.pt --out=ckpt/bigr_xxl_d32
  python -m bigvar.main --config=configs/bigr_xxl_d32.py --workdir=out/bigr_xxl_d32 \
      --config.init_from=ckpt/bigr_xxl_d32

Defaults are the official sampling script's (cfg 3.0, 20 iterations, Gumbel 0.01, 100 transcoder
steps). Argument `paper`: the paper's Table 7 settings; `fid`: 50 images for each class.
"""
from bigvar.configs import bigr_config


def get_config(arg=None):
    return bigr_config("XXL", binary_size=32, arg=arg)
