"""The built-in demo, the README's main command: a small multi-scale VQ-VAE, then a small VAR on
its tokens, trained on the built-in procedural dataset (10 classes of coloured shapes, 32 px),
then a class-conditional grid judged by a small classifier. About 15 minutes on 2 CPU cores.

  python -m bigvar.main --config=configs/demo.py --workdir=out/demo
  python -m bigvar.main --config=configs/demo.py:quick --workdir=/tmp/demo_quick   # smoke run

Re-running with the same workdir resumes or reuses finished stages. Override any stage, e.g.
`--config.generator.train.steps=3000` or `--config.tokenizer.train.batch_size=64`.
"""
from bigvar import config_lib
from bigvar.demo import demo_config
from bigvar.models.var import config_section


def get_config(arg=None):
    if arg not in (None, "", "quick"):
        raise ValueError(f"configs/demo.py takes nothing or 'quick'; got {arg!r}")
    tokenizer = config_lib.sibling(__file__, "vqvae_tiny.py")
    tokenizer.train.update(steps=400, checkpoint_every=100, sample_every=200)

    generator = config_lib.sibling(__file__, "var_tiny.py")
    generator.allow_random_init = False  # the tokenizer is the one trained above
    generator.var = config_section(3, embed_dim=128, num_heads=4, num_classes=10,
                                   patch_nums=tokenizer.vae.patch_nums)
    generator.var.scan_unroll = 3  # tiny: unrolled layers train ~20% faster on a CPU
    generator.vae = {k: v for k, v in tokenizer.vae.items() if k != "patch_nums"}
    generator.train.update(batch_size=32, steps=800, lr=2e-3, tblr=0.0, schedule="lin0",
                           warmup_epochs=0.0, wpe=0.1, twd=0.05, twde=0.05, log_every=50,
                           checkpoint_every=250, sample_every=500, sample_images=20)
    generator.sample.update(classes=(), images_per_class=10, batch_size=50, cfg=3.0, top_k=20,
                            top_p=0.9, grid_cols=10, save_pngs=False)
    return demo_config(tokenizer, generator, quick=arg == "quick")
