"""VAR-d20 (600M parameters), class-conditional ImageNet 256×256.

Convert the official weights once, then sample:

  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d20.pth --out=ckpt/var_d20
  python -m bigvar.main --config=configs/var_d20.py --workdir=out/var_d20 \
      --config.init_from=ckpt/var_d20

Argument: `configs/var_d20.py:fid` samples 50 images per class (the README FID protocol);
`configs/var_d20.py:demo` uses the demo notebook's cfg 4 / top-p 0.95.
"""
from bigvar.configs import var_config


def get_config(arg=None):
    return var_config(20, arg=arg)
