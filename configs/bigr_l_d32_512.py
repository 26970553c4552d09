"""BiGR-L-d32 at 512 px (373M), K = 32 bits, 1024 tokens, class-conditional ImageNet:
`configs/bigr.py:l_d32_512`.

  python -m bigvar.convert bigr --bae=binaryae_ema_720000.th --gpt=bigr_L_d32_512.pt --out=ckpt/bigr_l_d32_512
  python -m bigvar.main --config=configs/bigr_l_d32_512.py --workdir=out/bigr_l_d32_512 \
      --config.init_from=ckpt/bigr_l_d32_512

Argument: `paper` (the paper's Table 7 settings) or `fid` (50 images for each class).
"""
from bigvar import config_lib

get_config = config_lib.alias(__file__, "bigr.py", "l_d32_512")
