"""VAR-d36-s (2.3B parameters, shared AdaLN), class-conditional ImageNet 512×512.

  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d36.pth --out=ckpt/var_d36
  python -m bigvar.main --config=configs/var_d36.py --workdir=out/var_d36 \
      --config.init_from=ckpt/var_d36

Argument: `fid` (50 per class) or `demo` (cfg 4 / top-p 0.95).
"""
from bigvar.configs import PATCH_NUMS_512, var_config


def get_config(arg=None):
    return var_config(36, shared_aln=True, patch_nums=PATCH_NUMS_512, arg=arg)
