"""A tiny binary autoencoder (nf 32, 16 bits) trained on the built-in procedural dataset at
32 px: runs in minutes on one CPU (L1 + L2, Bernoulli straight-through bits; no LPIPS or GAN).

  python -m bigvar.main --config=configs/bae_tiny.py --workdir=/tmp/bae_tiny
"""
from bigvar import config_lib


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/bae_tiny.py takes no argument; got {arg!r}")
    config = config_lib.sibling(__file__, "bae.py", "24")
    config.bae.update(codebook_size=16, img_size=32, nf=32, emb_dim=32, ch_mult=(1, 2, 2),
                      res_blocks=1, attn_resolutions=(8,))
    config.loss.update(l1=1.0, l2=1.0, lpips=0.0, gan=0.0)
    config.train.update(batch_size=32, steps=500, lr=2e-3, schedule="cos", b1=0.5, b2=0.9,
                        ema_decay=0.0, log_every=50, checkpoint_every=250, sample_every=250,
                        sample_images=16)
    config.data.update(source="procedural", num_classes=10, transform="bld")
    return config
