"""VAR-d36-s (2.3B parameters, shared AdaLN), class-conditional ImageNet 512×512:
`configs/var.py:d36`.

  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d36.pth --out=ckpt/var_d36
  python -m bigvar.main --config=configs/var_d36.py --workdir=out/var_d36 \
      --config.init_from=ckpt/var_d36

Argument: `fid` (50 images for each class, the README FID protocol) or `demo` (cfg 4 / top-p 0.95).
"""
from bigvar import config_lib

get_config = config_lib.alias(__file__, "var.py", "d36")
