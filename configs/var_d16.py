"""VAR-d16 (310M parameters), class-conditional ImageNet 256×256: `configs/var.py:d16`.

  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d16.pth --out=ckpt/var_d16
  python -m bigvar.main --config=configs/var_d16.py --workdir=out/var_d16 \
      --config.init_from=ckpt/var_d16

Argument: `fid` (50 images for each class, the README FID protocol) or `demo` (cfg 4 / top-p 0.95).
"""
from bigvar import config_lib

get_config = config_lib.alias(__file__, "var.py", "d16")
