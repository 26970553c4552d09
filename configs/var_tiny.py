"""A tiny VAR (depth 2, width 128) with a tiny tokenizer: runs in seconds on one CPU.

  python -m bigvar.main --config=configs/var_tiny.py --workdir=/tmp/var_tiny

Random weights unless `--config.init_from` is set: for tests and smoke runs, not for pictures.
Argument `512` uses the 512-px patch_nums and shared AdaLN.
"""
from bigvar.configs import PATCH_NUMS_512, var_config, var_model_config, vae_config


def get_config(arg=None):
    config = var_config(16)
    large = arg == "512"
    if arg not in (None, "", "512"):
        raise ValueError(f"unknown argument {arg!r}; expected nothing or '512'")
    config.var = var_model_config(
        2, embed_dim=128, num_heads=2, num_classes=10, shared_aln=large,
        patch_nums=PATCH_NUMS_512 if large else (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    config.vae = vae_config(ch=32, vocab_size=256)
    config.allow_random_init = True
    config.data.update(source="procedural", num_classes=10)  # the built-in dataset
    config.sample.update(classes=(0, 1, 2, 3), images_per_class=2, batch_size=4,
                         top_k=50, top_p=0.95, grid_cols=4)
    return config
