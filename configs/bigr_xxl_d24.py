"""BiGR-XXL-d24 (1.5B), K = 24 bits, 256 px, class-conditional ImageNet: `configs/bigr.py:xxl_d24`.

  python -m bigvar.convert bigr --bae=binaryae_ema_1000000.th --gpt=bigr_XXL_d24.pt --out=ckpt/bigr_xxl_d24
  python -m bigvar.main --config=configs/bigr_xxl_d24.py --workdir=out/bigr_xxl_d24 \
      --config.init_from=ckpt/bigr_xxl_d24

Argument: `paper` (the paper's Table 7 settings) or `fid` (50 images for each class).
"""
from bigvar import config_lib

get_config = config_lib.alias(__file__, "bigr.py", "xxl_d24")
