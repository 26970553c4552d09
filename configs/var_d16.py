"""VAR-d16 (310M parameters), class-conditional ImageNet 256×256.

Convert the official weights once, then sample:

  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d16.pth --out=ckpt/var_d16
  python -m bigvar.main --config=configs/var_d16.py --workdir=out/var_d16 \
      --config.init_from=ckpt/var_d16

Argument: `configs/var_d16.py:fid` samples 50 images per class (the README FID protocol);
`configs/var_d16.py:demo` uses the demo notebook's cfg 4 / top-p 0.95.
"""
from bigvar.configs import var_config


def get_config(arg=None):
    return var_config(16, arg=arg)
