"""BiGR-XXL-d32 (1.5B), K = 32 bits, 256 px, class-conditional ImageNet: `configs/bigr.py:xxl_d32`.

  python -m bigvar.convert bigr --bae=binaryae_ema_950000.th --gpt=bigr_XXL_d32.pt --out=ckpt/bigr_xxl_d32
  python -m bigvar.main --config=configs/bigr_xxl_d32.py --workdir=out/bigr_xxl_d32 \
      --config.init_from=ckpt/bigr_xxl_d32

Argument: `paper` (the paper's Table 7 settings) or `fid` (50 images for each class).
"""
from bigvar import config_lib

get_config = config_lib.alias(__file__, "bigr.py", "xxl_d32")
