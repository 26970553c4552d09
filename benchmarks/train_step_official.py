"""The official PyTorch VAR training step's speed on this machine (CPU, fp32), for comparison
with bigvar's JAX training step. Runs in a separate torch environment against a checkout of
FoundationVision/VAR (not part of bigvar; nothing of it is copied here):

  <torch-venv>/bin/python benchmarks/train_step_official.py --ref <reference-checkouts>/VAR \\
      --depth 16 --batch 4 --iters 3 [--threads 2]

One step = the official ``trainer.VARTrainer.train_step`` (as train.py's train_one_ep calls it,
after the official ``utils.lr_control.lr_wd_annealing``): tokenise a random 256-px batch with the
official VQ-VAE (``vae.img_to_idxBl`` + ``quantize.idxBl_to_var_input``; random weights, the real
ch=160 / vocab 4096 / Cvae 32 architecture), VAR forward in train mode, cross-entropy with the
uniform 1/L weights, backward, ``clip_grad_norm_(2.0)`` and the AdamW step via the official
``utils.amp_sc.AmpOptimizer`` (mixed_precision=0, i.e. fp32), with the parameter groups from the
official ``filter_params`` and train.py's ``nowd_keys``. The models come from the official
``build_vae_var`` with train.py's arguments (d = depth, width 64*d, drop-path 0.1*d/24).
AdamW is ``fused=True`` as with train.py's default ``--afuse``, falling back to the default
implementation if this torch build has no fused CPU AdamW.

Prints, after one warm-up step, one line:
  official VAR d16 train step: X s/step (batch B, Y tokens/s, torch T, threads N)
where X is the mean over --iters timed steps and Y = B * L / X (L = 680 tokens at 256 px).

Stand-ins: VAR's ``utils.misc`` (pulls in pytz and typed-argument-parser and runs git at import)
is only needed by trainer.py for two type hints and is replaced by an empty module when absent;
the metric/tensorboard loggers passed to train_step are no-op objects (train_step only logs on
it == 0 / every 500th global iteration, which the timed steps avoid).
"""
from __future__ import annotations

import argparse
import builtins
import contextlib
import os
import sys
import time
import types
import warnings


class _AnyAttrModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return type(name, (), {})


class _NullMetric:
    log_iters = ()

    def update(self, **kw):
        pass


class _NullTB:
    def update(self, *a, **kw):
        pass

    def set_step(self, *a, **kw):
        pass


@contextlib.contextmanager
def _quiet():
    orig = builtins.print
    builtins.print = lambda *a, **kw: None
    try:
        yield
    finally:
        builtins.print = orig


NOWD_KEYS = {  # the set train.py passes to filter_params (train.py:110-115 @78b9539)
    'cls_token', 'start_token', 'task_token', 'cfg_uncond',
    'pos_embed', 'pos_1LC', 'pos_start', 'start_pos', 'lvl_embed',
    'gamma', 'beta',
    'ada_gss', 'moe_bias',
    'scale_mul',
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ref', required=True, help='checkout of FoundationVision/VAR')
    p.add_argument('--depth', type=int, default=16)
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--iters', type=int, default=3)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()

    warnings.filterwarnings('ignore', category=FutureWarning)  # torch.cuda.amp.autocast in var.py
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    ref = os.path.abspath(args.ref)
    sys.path.insert(0, ref)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:  # only a mixin class is used
        hub = types.ModuleType('huggingface_hub')
        hub.PyTorchModelHubMixin = type('PyTorchModelHubMixin', (), {})
        sys.modules['huggingface_hub'] = hub
    if 'utils.misc' not in sys.modules:
        sys.modules['utils.misc'] = _AnyAttrModule('utils.misc')
    from models import build_vae_var
    from trainer import VARTrainer
    from utils.amp_sc import AmpOptimizer
    from utils.lr_control import filter_params, lr_wd_annealing

    nn = torch.nn
    torch.manual_seed(args.seed)
    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    classes = (nn.Linear, nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Conv1d, nn.Conv2d,
               nn.ConvTranspose1d, nn.ConvTranspose2d)
    inits = {c: c.reset_parameters for c in classes}        # build_vae_var turns these into no-ops
    own = {c: c.__dict__.get('reset_parameters') for c in classes}
    with _quiet():
        vae, var = build_vae_var(
            V=4096, Cvae=32, ch=160, share_quant_resi=4, device='cpu', patch_nums=pn,
            num_classes=1000, depth=args.depth, shared_aln=False, attn_l2_norm=True,
            flash_if_available=True, fused_if_available=True,
            init_adaln=0.5, init_adaln_gamma=1e-3, init_head=0.02, init_std=-1,
        )
    for c, f in own.items():
        if f is not None:
            c.reset_parameters = f
        elif 'reset_parameters' in c.__dict__:
            delattr(c, 'reset_parameters')
    # VAR is initialised by its init_weights; the VQ-VAE would keep uninitialised memory:
    # give it torch's default random init (its weights are frozen, test_mode=True).
    with torch.no_grad():
        for m in vae.modules():
            if type(m) in inits:
                inits[type(m)](m)

    with _quiet():
        names, paras, groups = filter_params(var, nowd_keys=NOWD_KEYS)
    tblr, bs = 1e-4, args.batch
    tlr = tblr * bs / 256                                     # arg_util: ac * tblr * glb_bs / 256
    try:
        opt = torch.optim.AdamW(params=groups, lr=tlr, weight_decay=0, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params=groups, lr=tlr, weight_decay=0, betas=(0.9, 0.95))
    var_opt = AmpOptimizer(mixed_precision=0, optimizer=opt, names=names, paras=paras,
                           grad_clip=2.0, n_gradient_accumulation=1)
    trainer = VARTrainer(device='cpu', patch_nums=pn, resos=tuple(x * 16 for x in pn),
                         vae_local=vae, var_wo_ddp=var, var=var, var_opt=var_opt, label_smooth=0.0)

    g = torch.Generator().manual_seed(args.seed)
    imgs = torch.rand(bs, 3, 256, 256, generator=g) * 2 - 1
    labels = torch.randint(0, 1000, (bs,), generator=g)
    max_it, wp_it = 1000, 20

    def step(i):
        g_it = i + 1                                          # avoid the it==0 / g_it==0 logging path
        lr_wd_annealing('lin0', opt, tlr, 0.05, 0.05, g_it, wp_it, max_it, wp0=0.005, wpe=0.1)
        trainer.train_step(it=g_it, g_it=g_it, stepping=True, metric_lg=_NullMetric(), tb_lg=_NullTB(),
                           inp_B3HW=imgs, label_B=labels, prog_si=-1, prog_wp_it=1.0)

    step(0)                                                   # warm-up
    times = []
    for i in range(args.iters):
        t0 = time.perf_counter()
        step(i + 1)
        times.append(time.perf_counter() - t0)
    sps = sum(times) / len(times)
    L = sum(x * x for x in pn)
    print(f'official VAR d{args.depth} train step: {sps:.3f} s/step (batch {bs}, {bs * L / sps:.1f} tokens/s, '
          f'torch {torch.__version__}, threads {torch.get_num_threads()})', flush=True)


if __name__ == '__main__':
    main()
