"""The built-in demo, the README's main command: a small multi-scale VQ-VAE, then a small VAR on
its tokens, trained on the built-in procedural dataset (10 classes of coloured shapes, 32 px),
then a class-conditional grid judged by a small classifier. About 15 minutes on 2 CPU cores.

  python -m bigvar.main --config=configs/demo.py --workdir=out/demo
  python -m bigvar.main --config=configs/demo.py:quick --workdir=/tmp/demo_quick   # smoke run

Re-running with the same workdir resumes or reuses finished stages. Override any stage, e.g.
`--config.generator.train.steps=3000` or `--config.tokenizer.train.batch_size=64`.
"""
from bigvar.demo import demo_config


def get_config(arg=None):
    if arg not in (None, "", "quick"):
        raise ValueError(f"configs/demo.py takes nothing or 'quick'; got {arg!r}")
    return demo_config("var", quick=arg == "quick")
