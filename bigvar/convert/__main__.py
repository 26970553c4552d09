"""Convert official PyTorch checkpoints to bigvar weight directories, without torch.

  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d16.pth --out=ckpt/var_d16
  python -m bigvar.convert bigr --bae=binaryae_ema_1000000.th --gpt=bigr_L_d24.pt --out=ckpt/bigr_l_d24
  python -m bigvar.convert lpips --vgg=vgg16-397923af.pth --lin=vgg.pth --out=ckpt/lpips_vgg
  python -m bigvar.convert inception --pth=pt_inception-2015-12-05-6726825d.pth --out=ckpt/inception
  python -m bigvar.convert inception --graph=classify_image_graph_def.pb --out=ckpt/inception

The output directory holds `params/` (orbax) and `config.json`; sample from it with
`python -m bigvar.main --config=configs/var_d16.py --config.init_from=ckpt/var_d16 --workdir=...`.
Nothing is written if the conversion fails.
"""
from __future__ import annotations

import argparse
import sys

from bigvar import weights


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bigvar.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="model", required=True)
    var = sub.add_parser("var", help="VAR: VQ-VAE + transformer")
    var.add_argument("--vae", required=True, help="vae_ch160v4096z32.pth")
    var.add_argument("--var", required=True, help="var_d16.pth … var_d36.pth, or a training "
                     "checkpoint (ar-ckpt-*.pth, weights under ['trainer']['var_wo_ddp'])")
    var.add_argument("--out", required=True, help="output directory")
    var.add_argument("--patch_nums", default=None,
                     help="comma-separated, only for non-released sequence lengths")
    var.add_argument("--config", default=None,
                     help="a config file (e.g. configs/var_d16.py) the checkpoint must match")
    var.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    bigr = sub.add_parser("bigr", help="BiGR: binary autoencoder + generator")
    bigr.add_argument("--bae", required=True, help="binaryae_ema_*.th (EMA BinaryGAN state dict)")
    bigr.add_argument("--gpt", required=True, help="bigr_L_d24.pt … (weights under ['ema'])")
    bigr.add_argument("--out", required=True, help="output directory")
    bigr.add_argument("--config", default=None,
                      help="a config file (e.g. configs/bigr_l_d24.py) the checkpoint must match")
    bigr.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    lpips = sub.add_parser("lpips", help="LPIPS-VGG perceptual loss (tokenizer training); "
                           "load with bigvar.tokenizers.lpips.load_lpips(DIR)")
    lpips.add_argument("--vgg", default=None, help="torchvision's VGG16 ImageNet weights, "
                       "vgg16-397923af.pth (classifier.* is ignored)")
    lpips.add_argument("--lin", default=None, help="the LPIPS v0.1 linear layers, vgg.pth "
                       "(PerceptualSimilarity lpips/weights/v0.1/vgg.pth = taming's download)")
    lpips.add_argument("--lpips", default=None, help="instead of --vgg/--lin: a checkpoint holding "
                       "a whole official LPIPS state dict (net.slice*, lin*), possibly under a "
                       "prefix such as loss.perceptual_loss. (taming VQGAN) or perceptual. (B-AE)")
    lpips.add_argument("--out", required=True, help="output directory")
    lpips.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    inc = sub.add_parser("inception", help="the FID InceptionV3 (mode=eval: --config.eval.inception=DIR)")
    inc.add_argument("--pth", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                     "(= torch-fidelity's weights-inception-2015-12-05-6726825d.pth)")
    inc.add_argument("--graph", default=None, help="instead: the ADM evaluator's "
                     "classify_image_graph_def.pb (TensorFlow GraphDef; TensorFlow not needed)")
    inc.add_argument("--out", required=True, help="output directory")
    inc.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser


def _load_config_file(path: str):
    from ml_collections import config_flags
    from absl import flags
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=fv)
    fv(["convert"])
    return fv.config


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.model == "var":
            from bigvar.convert import var
            patch_nums = [int(p) for p in args.patch_nums.split(",")] if args.patch_nums else None
            expected = _load_config_file(args.config) if args.config else None
            config, params = var.convert(args.vae, args.var, patch_nums, expected)
            model_config = {"model": "var", "var": config.var.to_dict(), "vae": config.vae.to_dict(),
                            "source": {"vae": args.vae, "var": args.var}}
            weights.save_weights(args.out, params, model_config, overwrite=args.overwrite)
            v = config.var
            print(f"converted VAR depth={v.depth} width={v.embed_dim} heads={v.num_heads} "
                  f"classes={v.num_classes} shared_aln={v.shared_aln} attn_l2_norm={v.attn_l2_norm} "
                  f"patch_nums={tuple(v.patch_nums)} → {args.out}")
        elif args.model == "lpips":
            from bigvar.convert import lpips
            model_config, params = lpips.convert(args.vgg, args.lin, args.lpips)
            weights.save_weights(args.out, {"lpips": params}, model_config, overwrite=args.overwrite)
            print(f"converted LPIPS-VGG (13 VGG16 convs, lin layers {model_config['lpips']['tap_channels']}) "
                  f"→ {args.out}")
        elif args.model == "inception":
            from bigvar.convert import inception
            model_config, params = inception.convert(args.pth, args.graph)
            weights.save_weights(args.out, params, model_config, overwrite=args.overwrite)
            print(f"converted the FID InceptionV3 ({len(params['params'])} modules, from "
                  f"{args.pth or args.graph}) → {args.out}")
        else:
            from bigvar.convert import bigr
            expected = _load_config_file(args.config) if args.config else None
            config, params = bigr.convert(args.bae, args.gpt, expected)
            model_config = {"model": "bigr", "bigr": config.bigr.to_dict(), "bae": config.bae.to_dict(),
                            "source": {"bae": args.bae, "gpt": args.gpt}}
            weights.save_weights(args.out, params, model_config, overwrite=args.overwrite)
            g, b = config.bigr, config.bae
            print(f"converted BiGR dim={g.dim} layers={g.n_layer} heads={g.n_head} K={g.binary_size} "
                  f"tokens={g.seq_len} transcoder={g.num_block_mlp}x{g.denoise_hidden} "
                  f"classes={g.num_classes}; B-AE {b.img_size}px nf={b.nf} → {args.out}")
    except ValueError as e:  # incl. ConversionError, CheckpointError, UserError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that is missing, a directory, unreadable, or a full disk
        print(f"error: {_describe_os_error(e)}", file=sys.stderr)
        return 2
    return 0


def _describe_os_error(e: OSError) -> str:
    if e.filename is None:
        return str(e)
    if isinstance(e, IsADirectoryError):
        return f"{e.filename} is a directory: give the checkpoint file inside it (e.g. …/var_d16.pth)"
    if isinstance(e, FileNotFoundError):
        return f"{e.filename} does not exist: check the path"
    if isinstance(e, PermissionError):
        return f"{e.filename}: permission denied: check the file's permissions or choose another path"
    return f"{e.filename}: {e.strerror or e}"


if __name__ == "__main__":
    sys.exit(main())
