"""A tiny VAR (depth 2, width 128) with a tiny tokenizer: runs in seconds on one CPU.

  python -m bigvar.main --config=configs/var_tiny.py --workdir=/tmp/var_tiny

Random weights unless `--config.init_from` is set: for tests and smoke runs, not for pictures.
Argument `512` uses the 512-px patch_nums and shared AdaLN.
"""
from bigvar import config_lib
from bigvar.models.var import PATCH_NUMS_256, PATCH_NUMS_512, config_section
from bigvar.tokenizers import msvq


def get_config(arg=None):
    if arg not in (None, "", "512"):
        raise ValueError(f"unknown argument {arg!r}; expected nothing or '512'")
    large = arg == "512"
    config = config_lib.sibling(__file__, "var.py", "d16")
    config.var = config_section(2, embed_dim=128, num_heads=2, num_classes=10, shared_aln=large,
                                patch_nums=PATCH_NUMS_512 if large else PATCH_NUMS_256)
    config.vae = msvq.config_section(ch=32, vocab_size=256)
    config.allow_random_init = True
    config.data.update(source="procedural", num_classes=10)  # the built-in dataset
    # a smoke run's training, not the full model's recipe (its global batch would need ~60 GB)
    config.train.update(batch_size=8, steps=100, checkpoint_every=50)
    config.sample.update(classes=(0, 1, 2, 3), images_per_class=2, batch_size=4,
                         top_k=50, top_p=0.95, grid_cols=4)
    return config
