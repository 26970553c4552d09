"""The built-in demo with BiGR: a small binary autoencoder, then a small BiGR on its bits,
trained on the built-in procedural dataset (10 classes of coloured shapes, 32 px), then a
class-conditional grid judged by a small classifier. About 12 minutes on 2 CPU cores.

  python -m bigvar.main --config=configs/demo_bigr.py --workdir=out/demo_bigr
  python -m bigvar.main --config=configs/demo_bigr.py:quick --workdir=/tmp/demo_quick  # smoke run
"""
from bigvar.demo import demo_config


def get_config(arg=None):
    if arg not in (None, "", "quick"):
        raise ValueError(f"configs/demo_bigr.py takes nothing or 'quick'; got {arg!r}")
    return demo_config("bigr", quick=arg == "quick")
