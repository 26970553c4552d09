"""VAR, class-conditional ImageNet (official `FoundationVision/VAR`, its README and
`models/__init__.py`): the released depths, their sampling defaults and their training recipes.

Convert the official weights once, then sample:

  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d16.pth --out=ckpt/var_d16
  python -m bigvar.main --config=configs/var.py:d16 --workdir=out/var_d16 \
      --config.init_from=ckpt/var_d16

Argument: the depth (`d16`, `d20`, `d24`, `d30`, `d36`), optionally followed by `,fid` (50 images
for each of the 1000 classes, the README FID protocol) or `,demo` (the demo notebook's cfg 4 /
top-p 0.95), e.g. `configs/var.py:d30,fid`. `configs/var_d16.py` … `var_d36.py` are aliases.
"""
import ml_collections

from bigvar import config_lib, data
from bigvar.models.var import PATCH_NUMS_256, PATCH_NUMS_512, config_section
from bigvar.tokenizers import msvq

# depth → the released model (official `build_vae_var`) and its training recipe (the official
# README's commands). Every release uses the vae_ch160v4096z32 tokenizer; d36 is the 512-px
# model with shared AdaLN.
SIZES = {  # parameters, resolution, shared AdaLN, init_adaln_gamma, tblr, batch, epochs, wpe, twde
    16: ("310M", 256, False, 1e-3, 1e-4, 768, 200, 0.1, 0.05),
    20: ("600M", 256, False, 1e-3, 1e-4, 768, 250, 0.1, 0.05),
    24: ("1.0B", 256, False, 1e-4, 8e-5, 768, 350, 0.01, 0.05),
    30: ("2.0B", 256, False, 1e-5, 8e-5, 1024, 350, 0.01, 0.08),
    36: ("2.3B", 512, True, 5e-6, 8e-5, 768, 350, 0.01, 0.08),
}
VARIANTS = ("fid", "demo")


def get_config(arg=None):
    size, _, variant = (arg or "").partition(",")
    depth = int(size[1:]) if size[:1] == "d" and size[1:].isdigit() else None
    if depth not in SIZES or variant not in ("",) + VARIANTS:
        raise ValueError(f"configs/var.py takes a depth {[f'd{d}' for d in SIZES]}, optionally "
                         f"with ',fid' or ',demo' (e.g. configs/var.py:d16,fid); got {arg!r}")
    _, resolution, shared_aln, gamma, tblr, batch, epochs, wpe, twde = SIZES[depth]
    config = ml_collections.ConfigDict()
    config.model = "var"
    config_lib.common_sections(config)
    config.var = config_section(depth, shared_aln=shared_aln,
                                patch_nums=PATCH_NUMS_512 if resolution == 512 else PATCH_NUMS_256)
    config.vae = msvq.config_section()
    config.sample = ml_collections.ConfigDict(dict(
        classes=(980, 437, 22, 562, 207, 88, 279, 388),  # () = every class
        images_per_class=2, seed=0,
        batch_size=16,  # over all devices; 0: the largest that fits in each device's memory
        memory_gib=0.0,  # with batch_size 0: a device's memory, weights included (0: what is free)
        cfg=1.5, top_k=900, top_p=0.96, more_smooth=False,  # the official FID settings
        grid_cols=8, save_pngs=True,
    ))
    config.train = config_lib.train_section(
        batch_size=batch, epochs=epochs, tblr=tblr, wpe=wpe, twde=twde, init_adaln_gamma=gamma)
    config.data = data.data_section(source="folder", path="", num_classes=1000, transform="var",
                                    value_range="minus_one_one", hflip=False)
    if variant == "fid":  # the README protocol: 50 images for each of the 1000 classes
        config.sample.update(classes=(), images_per_class=50, batch_size=0, save_pngs=True)
    elif variant == "demo":  # the demo notebook's settings
        config.sample.update(cfg=4.0, top_p=0.95)
    return config
