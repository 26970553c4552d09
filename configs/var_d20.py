"""VAR-d20 (600M parameters), class-conditional ImageNet 256×256: `configs/var.py:d20`.

  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d20.pth --out=ckpt/var_d20
  python -m bigvar.main --config=configs/var_d20.py --workdir=out/var_d20 \
      --config.init_from=ckpt/var_d20

Argument: `fid` (50 images for each class, the README FID protocol) or `demo` (cfg 4 / top-p 0.95).
"""
from bigvar import config_lib

get_config = config_lib.alias(__file__, "var.py", "d20")
