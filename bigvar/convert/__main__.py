"""Convert official PyTorch checkpoints to bigvar weight directories, without torch.

  python -m bigvar.convert var --from_hub=d16 --out=ckpt/var_d16          # d16 d20 d24 d30 d36
  python -m bigvar.convert bigr --from_hub=l_d24 --out=ckpt/bigr_l_d24    # l_d24 xl_d24 xxl_d24 xxl_d32 l_d32_512
  python -m bigvar.convert var --vae=vae_ch160v4096z32.pth --var=var_d16.pth --out=ckpt/var_d16
  python -m bigvar.convert bigr --bae=binaryae_ema_1000000.th --gpt=bigr_L_d24.pt --out=ckpt/bigr_l_d24
  python -m bigvar.convert lpips --vgg=vgg16-397923af.pth --lin=vgg.pth --out=ckpt/lpips_vgg
  python -m bigvar.convert inception --pth=pt_inception-2015-12-05-6726825d.pth --out=ckpt/inception
  python -m bigvar.convert inception --graph=classify_image_graph_def.pb --out=ckpt/inception

`--from_hub=NAME` downloads the official files from the Hugging Face Hub (FoundationVision/var,
haoosz/BiGR) into its cache (HF_HOME / HF_HUB_CACHE; HF_ENDPOINT for a mirror; HF_HUB_OFFLINE=1
to use only the cache), checks their sha256 (bigvar/convert/hub.py), and converts them exactly as
if their paths had been given; a second run downloads nothing.

The output directory holds `params/` (orbax) and `config.json`; sample from it with
`python -m bigvar.main --config=configs/var_d16.py --config.init_from=ckpt/var_d16 --workdir=...`.
Nothing is written if the conversion fails.
"""
from __future__ import annotations

import argparse
import sys

from bigvar import weights
from bigvar.convert import hub
from bigvar.errors import UserError

# The files each model's converter reads: given by path, or all downloaded with --from_hub.
_FILE_FLAGS = {"var": ("vae", "var"), "bigr": ("bae", "gpt")}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bigvar.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="model", required=True)
    var = sub.add_parser("var", help="VAR: VQ-VAE + transformer")
    var.add_argument("--from_hub", default=None, metavar="NAME",
                     help="download the official files instead of --vae/--var: "
                     + ", ".join(hub.HUB_MODELS["var"]))
    var.add_argument("--vae", default=None, help="vae_ch160v4096z32.pth")
    var.add_argument("--var", default=None, help="var_d16.pth … var_d36.pth, or a training "
                     "checkpoint (ar-ckpt-*.pth, weights under ['trainer']['var_wo_ddp'])")
    var.add_argument("--out", required=True, help="output directory")
    var.add_argument("--patch_nums", default=None,
                     help="comma-separated, only for non-released sequence lengths")
    var.add_argument("--config", default=None,
                     help="a config file (e.g. configs/var_d16.py) the checkpoint must match")
    var.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    bigr = sub.add_parser("bigr", help="BiGR: binary autoencoder + generator")
    bigr.add_argument("--from_hub", default=None, metavar="NAME",
                      help="download the official files instead of --bae/--gpt: "
                      + ", ".join(hub.HUB_MODELS["bigr"]))
    bigr.add_argument("--bae", default=None, help="binaryae_ema_*.th (EMA BinaryGAN state dict)")
    bigr.add_argument("--gpt", default=None, help="bigr_L_d24.pt … (weights under ['ema'])")
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
    from bigvar import config_lib
    return config_lib.load_config_file(*path.split(":", 1))


def _resolve_files(args) -> dict | None:
    """--from_hub=NAME or the explicit file flags, exactly one of the two: downloads and verifies
    the hub files and sets the file flags to their paths; returns the hub provenance (or None)."""
    flags = _FILE_FLAGS[args.model]
    given = [f"--{f}" for f in flags if getattr(args, f) is not None]
    if args.from_hub is not None:
        if given:
            raise UserError(f"--from_hub={args.from_hub} downloads the files itself: drop {' '.join(given)}, "
                            "or drop --from_hub to convert the files given by path.")
        paths = hub.fetch(args.model, args.from_hub)
        for f in flags:
            setattr(args, f, paths[f])
        return paths["hub"]
    if len(given) < len(flags):
        missing = [f"--{f}" for f in flags if getattr(args, f) is None]
        raise UserError(f"{' and '.join(missing)} missing: give the paths of the official files "
                        f"({' '.join(f'--{f}=…' for f in flags)}), or --from_hub=NAME to download them "
                        f"(one of {', '.join(hub.HUB_MODELS[args.model])}).")
    return None


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        from_hub = _resolve_files(args) if args.model in _FILE_FLAGS else None
        if args.model == "var":
            from bigvar.convert import var
            patch_nums = [int(p) for p in args.patch_nums.split(",")] if args.patch_nums else None
            expected = _load_config_file(args.config) if args.config else None
            config, params = var.convert(args.vae, args.var, patch_nums, expected)
            model_config = {"model": "var", "var": config.var.to_dict(), "vae": config.vae.to_dict(),
                            "source": {"vae": args.vae, "var": args.var}}
            if from_hub:
                model_config["source"]["hub"] = from_hub
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
            if from_hub:
                model_config["source"]["hub"] = from_hub
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
