"""A tiny multi-scale VQ-VAE (ch 32, vocab 256) trained on the built-in procedural dataset at
32 px: runs in minutes on one CPU (L1 + L2 + VQ loss; no LPIPS or GAN).

  python -m bigvar.main --config=configs/vqvae_tiny.py --workdir=/tmp/vqvae_tiny
  python -m bigvar.main --config=configs/vqvae_tiny.py --workdir=/tmp/vqvae_tiny --config.mode=export
"""
from bigvar import config_lib


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/vqvae_tiny.py takes no argument; got {arg!r}")
    config = config_lib.sibling(__file__, "vqvae.py")
    config.vae.update(ch=32, vocab_size=256, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16,
                      patch_nums=(1, 2, 3, 4, 6, 8))
    config.loss.update(l1=1.0, l2=1.0, lpips=0.0, gan=0.0, dead_code_every=50)
    config.train.update(batch_size=32, steps=500, lr=2e-3, schedule="cos", warmup_epochs=0.0,
                        b1=0.5, b2=0.9, ema_decay=0.0, log_every=50, checkpoint_every=250,
                        sample_every=250, sample_images=16)
    config.data.update(source="procedural", num_classes=10, hflip=False)
    return config
