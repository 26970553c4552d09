"""A tiny BiGR (2 layers, width 128) with a tiny binary autoencoder: runs in seconds on one CPU.

  python -m bigvar.main --config=configs/bigr_tiny.py --workdir=/tmp/bigr_tiny

Random weights unless `--config.init_from` is set: for tests and smoke runs, not for pictures.
"""
from bigvar import config_lib


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/bigr_tiny.py takes no argument; got {arg!r}")
    config = config_lib.sibling(__file__, "bigr.py", "l_d24")
    config.bigr.update(num_classes=10, dim=128, n_layer=2, n_head=2, denoise_hidden=128, num_block_mlp=2)
    config.bae.update(nf=32, emb_dim=32)
    config.allow_random_init = True
    config.data.update(source="procedural", num_classes=10)  # the built-in dataset
    # a smoke run's training, not the full model's recipe (its global batch would need ~60 GB)
    config.train.update(batch_size=8, steps=100, checkpoint_every=50)
    config.sample.update(classes=(0, 1, 2, 3), images_per_class=2, batch_size=4, num_iter=4,
                         transcoder_steps=5, grid_cols=4)
    # 160 images: more passes and a larger rate than MAE's 90 epochs at 0.1 (LARS moves a small head slowly)
    config.probe.update(train_images=160, val_images=80, batch_size=16, epochs=300, blr=1.0)
    return config
