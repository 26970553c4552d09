"""Config builders, validation and model construction shared by the files in `configs/`.

A config is an `ml_collections.ConfigDict` with sections `var` (transformer), `vae` (tokenizer),
`sample` (sampling job), `mesh` (device mesh) and top-level `mode`, `seed`, `init_from`.
"""
from __future__ import annotations

import ml_collections
import jax.numpy as jnp

from bigvar.errors import UserError

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
MODES = ("sample", "train", "export", "eval")
TOKENIZERS = {"vqvae": "vae", "bae": "bae"}  # tokenizer model → its config section / weights key

# Logical axis → mesh axes (MaxText style). Params are sharded FSDP over `fsdp` on their
# `embed` axis and tensor-parallel over `tensor` on the wide axes; batches over data × fsdp.
# A mesh axis that does not divide a dimension is dropped for that parameter (replicated).
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("adaln", "tensor"),
    ("vocab", "tensor"),
    ("embed_out", None),
    ("mlp_out", None),
    ("classes", None),
    ("seq", None),
    ("layers", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
)


def train_config(**overrides) -> ml_collections.ConfigDict:
    """`config.train`: optimisation, schedules, logging and checkpointing of a training run.

    Steps are optimizer steps on the global batch (`grad_accum` micro-batches each); epochs
    convert to steps with the training set's size.
    """
    train = ml_collections.ConfigDict(dict(
        batch_size=768, grad_accum=1, epochs=200, steps=0,  # steps > 0 overrides epochs
        lr=0.0, tblr=1e-4,  # lr = 0: tblr · batch_size / 256 (the official rule)
        schedule="lin0", warmup_epochs=0.0, wp0=0.005, wpe=0.1,  # warmup 0: epochs / 50
        twd=0.05, twde=0.0,  # weight decay from twd to twde along a cosine (twde 0: constant)
        b1=0.9, b2=0.95, eps=1e-8, clip=2.0, label_smoothing=0.0,
        pg=0.0, pg0=4, pgwp=0.0,  # progressive training (VAR): off by default, pgwp 0: epochs/300
        official_init=True, init_adaln=0.5, init_adaln_gamma=1e-3, init_head=0.02,
        ema_decay=0.0,  # > 0: keep an EMA of the generator (BiGR: 0.9999); export uses it
        log_every=50, checkpoint_every=2000, keep_checkpoints=3, async_checkpoints=True,
        sample_every=5000, sample_images=16,
    ))
    train.update(overrides)
    return train


def data_section(**overrides) -> ml_collections.ConfigDict:
    """`config.data`: where training images come from (read by `bigvar.data.pipeline`)."""
    data = ml_collections.ConfigDict(dict(
        source="procedural",  # procedural | folder | array_record | tfds
        path="",  # folder: root/<class>/<files> (ImageNet layout); array_record: glob or list
        tfds_name="", tfds_split="train", tfds_data_dir="",  # a TFDS dataset prepared as array_record
        num_classes=10,  # classes of the model; labels must be < num_classes
        num_records=10_000, procedural_seed=0,  # procedural: records per epoch, which images
        transform="var",  # var: shorter side 1.125·R (Lanczos) + random crop; adm: BiGR's centre crop
        value_range="minus_one_one",  # the tokenizer's input range: minus_one_one | zero_one
        hflip=False,  # random flips for var and procedural; adm always flips (as BiGR)
        # Bounds on the work per image, checked from the file header and skipped (counted,
        # logged) beyond them; 0 = no limit. Longer:shorter side: a 1×20000 PNG would resize to
        # 288×5.76M px. Decoded pixels: 64 MP is 192 MB as RGB, above camera photos.
        max_aspect_ratio=10.0, max_pixels=64_000_000,
        num_workers=0,  # grain worker processes; 0 = decode in this process
        num_threads=4,  # read/decode threads per process (PIL releases the GIL)
        prefetch=2,  # batches buffered ahead by a background thread; 0 = none
    ))
    data.update(overrides)
    return data

# Per-depth recipe values from VAR_SPEC §2.1 and §4.7 (used by the trainer).
VAR_RECIPES = {
    16: dict(init_adaln_gamma=1e-3, tblr=1e-4, batch_size=768, epochs=200, wpe=0.1, twde=0.05),
    20: dict(init_adaln_gamma=1e-3, tblr=1e-4, batch_size=768, epochs=250, wpe=0.1, twde=0.05),
    24: dict(init_adaln_gamma=1e-4, tblr=8e-5, batch_size=768, epochs=350, wpe=0.01, twde=0.05),
    30: dict(init_adaln_gamma=1e-5, tblr=8e-5, batch_size=1024, epochs=350, wpe=0.01, twde=0.08),
    36: dict(init_adaln_gamma=5e-6, tblr=8e-5, batch_size=768, epochs=350, wpe=0.01, twde=0.08),
}


def vae_config(ch: int = 160, vocab_size: int = 4096) -> ml_collections.ConfigDict:
    """The released `vae_ch160v4096z32` tokenizer (shared by every VAR release, 256 and 512 px)."""
    return ml_collections.ConfigDict(dict(
        vocab_size=vocab_size, z_channels=32, ch=ch, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
        quant_resi=0.5, share_quant_resi=4,
    ))


def var_model_config(depth: int, *, shared_aln: bool = False, patch_nums=PATCH_NUMS_256,
                     embed_dim: int | None = None, num_heads: int | None = None,
                     num_classes: int = 1000) -> ml_collections.ConfigDict:
    """The official depth rule: heads = depth, width = 64·depth, drop_path 0.1·depth/24."""
    return ml_collections.ConfigDict(dict(
        depth=depth, embed_dim=embed_dim or 64 * depth, num_heads=num_heads or depth,
        mlp_ratio=4.0, num_classes=num_classes, shared_aln=shared_aln, attn_l2_norm=True,
        patch_nums=tuple(patch_nums), norm_eps=1e-6, cond_drop_rate=0.1,
        drop_path_rate=0.1 * depth / 24,  # training only (stochastic depth)
        attn_impl="xla", remat=False, remat_policy="nothing_saveable", scan_unroll=1,
        dtype="float32",
    ))


def var_config(depth: int, *, shared_aln: bool = False, patch_nums=PATCH_NUMS_256,
               arg: str | None = None) -> ml_collections.ConfigDict:
    """Full job config for a released VAR model; sampling defaults are the FID protocol."""
    config = ml_collections.ConfigDict()
    config.model = "var"
    config.mode = "sample"
    config.seed = 0
    config.init_from = ""  # directory written by `python -m bigvar.convert var ...`
    config.allow_random_init = False  # sampling from random weights: smoke tests only
    config.var = var_model_config(depth, shared_aln=shared_aln, patch_nums=patch_nums)
    config.vae = vae_config()
    config.sample = ml_collections.ConfigDict(dict(
        classes=(980, 437, 22, 562, 207, 88, 279, 388),  # () = every class
        images_per_class=2, batch_size=16, seed=0,
        cfg=1.5, top_k=900, top_p=0.96, more_smooth=False,
        grid_cols=8, save_pngs=True,
    ))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.axis_rules = DEFAULT_AXIS_RULES
    config.tokenizer_from = ""  # training: weights dir holding the frozen VQ-VAE (`vae`)
    recipe = VAR_RECIPES.get(depth, VAR_RECIPES[16])
    config.train = train_config(
        batch_size=recipe["batch_size"], epochs=recipe["epochs"], tblr=recipe["tblr"],
        wpe=recipe["wpe"], twde=recipe["twde"], init_adaln_gamma=recipe["init_adaln_gamma"])
    config.data = data_section(source="folder", path="", num_classes=1000, transform="var",
                               value_range="minus_one_one", hflip=False)
    if arg == "fid":  # the README protocol: 50 images for each of the 1000 classes
        config.sample.classes = ()
        config.sample.images_per_class = 50
        config.sample.batch_size = 64
        config.sample.save_pngs = True
    elif arg == "demo":  # the demo notebook's settings
        config.sample.cfg, config.sample.top_p = 4.0, 0.95
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; expected 'fid' or 'demo'")
    return config


def _fail(path: str, value, expected: str):
    raise UserError(f"config.{path} = {value!r} is invalid: expected {expected}.")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks the values a user can get wrong; raises ValueError naming the field and the fix."""
    if config.mode not in MODES:
        _fail("mode", config.mode, f"one of {MODES}")
    if config.model == "bigr":
        return validate_bigr(config)
    if config.model in TOKENIZERS:
        return validate_tokenizer(config)
    if config.model != "var":
        _fail("model", config.model, "'var', 'bigr', 'vqvae' or 'bae'")
    v, q = config.var, config.vae
    pns = tuple(v.patch_nums)
    if not pns or any(p <= 0 for p in pns) or list(pns) != sorted(set(pns)):
        _fail("var.patch_nums", pns, "strictly increasing positive ints, e.g. (1,2,3,4,5,6,8,10,13,16)")
    if v.embed_dim % v.num_heads:
        _fail("var.num_heads", v.num_heads, f"a divisor of var.embed_dim={v.embed_dim}")
    if v.num_classes < 1:
        _fail("var.num_classes", v.num_classes, "≥ 1")
    if v.attn_impl not in ("xla", "cudnn"):
        _fail("var.attn_impl", v.attn_impl, "'xla' or 'cudnn' (GPU only)")
    if v.dtype not in ("float32", "bfloat16"):
        _fail("var.dtype", v.dtype, "'float32' or 'bfloat16'")
    _validate_remat(v, "var")
    if v.attn_impl == "cudnn" and v.dtype != "bfloat16":
        _fail("var.attn_impl", v.attn_impl, "'xla' with float32: cuDNN attention needs "
              "--config.var.dtype=bfloat16")
    if q.ch % 32:
        _fail("vae.ch", q.ch, "a multiple of 32 (GroupNorm uses 32 groups)")
    s = config.sample
    if s.cfg < 0:
        _fail("sample.cfg", s.cfg, "≥ 0 (0 disables guidance)")
    if s.top_k < 0:
        _fail("sample.top_k", s.top_k, "≥ 0 (0 disables top-k)")
    if not (s.top_p == 0 or 0 < s.top_p <= 1):
        _fail("sample.top_p", s.top_p, "a value in (0, 1], or 0 to disable top-p")
    _validate_classes(s, v.num_classes)
    if config.mode == "train":
        validate_training(config, v.num_classes)
    return config


def validate_training(config: ml_collections.ConfigDict, num_classes: int) -> None:
    t, d = config.train, config.data
    if d.num_classes > num_classes:
        _fail("data.num_classes", d.num_classes,
              f"at most the model's {num_classes} classes (labels index the class embedding)")
    if t.batch_size < 1 or t.grad_accum < 1 or t.batch_size % t.grad_accum:
        _fail("train.batch_size", t.batch_size, f"≥ 1 and a multiple of train.grad_accum={t.grad_accum}")
    if t.steps <= 0 and t.epochs <= 0:
        _fail("train.steps", t.steps, "> 0, or train.epochs > 0")
    for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if t[field] < 1:
            _fail(f"train.{field}", t[field], "≥ 1")
    if not 0 <= t.ema_decay < 1:
        _fail("train.ema_decay", t.ema_decay, "in [0, 1) (0 = no EMA)")


def _validate_remat(section: ml_collections.ConfigDict, name: str) -> None:
    """The layer stack's settings: remat policy and scan unrolling."""
    import jax
    if not hasattr(jax.checkpoint_policies, section.remat_policy):
        options = sorted(p for p in dir(jax.checkpoint_policies) if not p.startswith("_"))
        _fail(f"{name}.remat_policy", section.remat_policy, f"one of jax.checkpoint_policies: {options}")
    if section.scan_unroll < 1:
        _fail(f"{name}.scan_unroll", section.scan_unroll, "≥ 1 layers per scan iteration "
              "(the depth unrolls the stack fully)")


def _validate_classes(s: ml_collections.ConfigDict, num_classes: int) -> None:
    bad = [c for c in s.classes if not 0 <= c < num_classes]
    if bad:
        _fail("sample.classes", tuple(s.classes),
              f"class ids in [0, {num_classes}) (got {bad}); use () for every class")
    if s.images_per_class < 1 or s.batch_size < 1:
        _fail("sample.images_per_class/batch_size", (s.images_per_class, s.batch_size), "≥ 1")


# ---- BiGR -------------------------------------------------------------------------------------
# (dim, layers, heads, transcoder blocks, transcoder width) of the released models (BIGR_SPEC §2.1)
BIGR_SIZES = {
    "L": (1024, 24, 16, 3, 1024),
    "XL": (1280, 36, 20, 6, 1280),
    "XXL": (1536, 48, 24, 8, 1536),
    "L-512": (1024, 24, 16, 6, 1280),
}


def bigr_config(size: str, *, binary_size: int, arg: str | None = None) -> ml_collections.ConfigDict:
    """Job config for a released BiGR model; sampling defaults are the official scripts'."""
    if size not in BIGR_SIZES:
        raise ValueError(f"unknown BiGR size {size!r}; expected one of {sorted(BIGR_SIZES)}")
    dim, layers, heads, blocks, hidden = BIGR_SIZES[size]
    img = 512 if size == "L-512" else 256
    config = ml_collections.ConfigDict()
    config.model = "bigr"
    config.mode = "sample"
    config.seed = 0
    config.init_from = ""  # directory written by `python -m bigvar.convert bigr ...`
    config.allow_random_init = False
    config.bigr = ml_collections.ConfigDict(dict(
        binary_size=binary_size, num_classes=1000, dim=dim, n_layer=layers, n_head=heads,
        seq_len=(img // 16) ** 2, denoise_hidden=hidden, num_block_mlp=blocks, norm_eps=1e-5,
        class_dropout=0.1, dropout=0.1, attn_impl="xla", remat=False,
        remat_policy="nothing_saveable", scan_unroll=1, dtype="float32"))
    config.bae = ml_collections.ConfigDict(dict(
        codebook_size=binary_size, nf=128, emb_dim=256, ch_mult=(1, 1, 2, 2, 4), res_blocks=2,
        attn_resolutions=(16,), img_size=img, norm_first=True))
    config.sample = ml_collections.ConfigDict(dict(
        classes=(980, 437, 22, 562, 207, 88, 279, 388), images_per_class=2, batch_size=16, seed=0,
        num_iter=20, cfg=3.0, cfg_schedule="constant", gumbel=0.01, gumbel_schedule="constant",
        temperature=1.0, diffusion_steps=256, transcoder_steps=100, grid_cols=8, save_pngs=True))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.axis_rules = DEFAULT_AXIS_RULES
    config.tokenizer_from = ""  # training: weights dir holding the frozen B-AE (`bae`)
    # train_ddp.py / paper Table 7: constant lr 1e-4, wd 0.02, clip 1, EMA 0.9999, 400 epochs.
    config.train = train_config(
        batch_size=1024 if size == "L" else 512, epochs=400, lr=1e-4, schedule="constant",
        twd=0.02, twde=0.02, clip=1.0, ema_decay=0.9999)
    config.data = data_section(source="folder", path="", num_classes=1000, transform="adm",
                               value_range="zero_one", hflip=True)
    if arg == "paper":  # Table 7 of the paper (FID runs): cfg 2.5, I and Gumbel per size
        iters, gumbel = {"L": (20, 0.17), "XL": (25, 0.25), "XXL": (25, 0.30)}.get(size, (20, 0.17))
        config.sample.update(cfg=2.5, num_iter=iters, gumbel=gumbel)
    elif arg == "fid":
        config.sample.update(classes=(), images_per_class=50, batch_size=64)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; expected 'paper' or 'fid'")
    return config


def validate_bigr(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    g, b, s = config.bigr, config.bae, config.sample
    if g.dim % g.n_head:
        _fail("bigr.n_head", g.n_head, f"a divisor of bigr.dim={g.dim}")
    if g.binary_size != b.codebook_size:
        _fail("bigr.binary_size", g.binary_size,
              f"the B-AE's bits per token, bae.codebook_size={b.codebook_size}")
    grid = b.img_size // 2 ** (len(b.ch_mult) - 1)
    if grid * grid != g.seq_len:
        _fail("bigr.seq_len", g.seq_len, f"the B-AE's token count {grid}×{grid} = {grid * grid}")
    if g.attn_impl not in ("xla", "cudnn"):
        _fail("bigr.attn_impl", g.attn_impl, "'xla' or 'cudnn' (GPU only)")
    _validate_remat(g, "bigr")
    if b.nf % 32:
        _fail("bae.nf", b.nf, "a multiple of 32 (GroupNorm uses 32 groups)")
    if s.num_iter < 1:
        _fail("sample.num_iter", s.num_iter, "≥ 1")
    if s.cfg_schedule not in ("constant", "linear"):
        _fail("sample.cfg_schedule", s.cfg_schedule, "'constant' or 'linear'")
    if s.gumbel_schedule not in ("constant", "down", "up"):
        _fail("sample.gumbel_schedule", s.gumbel_schedule, "'constant', 'down' or 'up'")
    if not 1 <= s.transcoder_steps <= s.diffusion_steps:
        _fail("sample.transcoder_steps", s.transcoder_steps, f"in [1, {s.diffusion_steps}]")
    _validate_classes(s, g.num_classes)
    if config.mode == "train":
        validate_training(config, g.num_classes)
    return config


def build_bigr(config: ml_collections.ConfigDict):
    from bigvar.models.bigr import BiGR
    g = config.bigr
    return BiGR(binary_size=g.binary_size, num_classes=g.num_classes, dim=g.dim, n_layer=g.n_layer,
                n_head=g.n_head, seq_len=g.seq_len, denoise_hidden=g.denoise_hidden,
                num_block_mlp=g.num_block_mlp, norm_eps=g.norm_eps, class_dropout=g.class_dropout,
                dropout=g.dropout, attn_impl=g.attn_impl, remat=g.remat,
                remat_policy=g.remat_policy, scan_unroll=g.scan_unroll,
                dtype=jnp.dtype(g.dtype))


def build_bae(config: ml_collections.ConfigDict):
    from bigvar.tokenizers.bae import BinaryAutoEncoder
    b = config.bae
    return BinaryAutoEncoder(codebook_size=b.codebook_size, nf=b.nf, emb_dim=b.emb_dim,
                             ch_mult=tuple(b.ch_mult), res_blocks=b.res_blocks,
                             attn_resolutions=tuple(b.attn_resolutions), img_size=b.img_size,
                             norm_first=b.norm_first)


ARCH_FIELDS = {  # per model: the config fields that must match a checkpoint
    "var": {
        "var": ("depth", "embed_dim", "num_heads", "mlp_ratio", "num_classes", "shared_aln",
                "attn_l2_norm", "patch_nums", "norm_eps"),
        "vae": ("vocab_size", "z_channels", "ch", "ch_mult", "num_res_blocks", "quant_resi",
                "share_quant_resi"),
    },
    "bigr": {
        "bigr": ("binary_size", "num_classes", "dim", "n_layer", "n_head", "seq_len",
                 "denoise_hidden", "num_block_mlp"),
        "bae": ("codebook_size", "nf", "emb_dim", "ch_mult", "res_blocks", "attn_resolutions",
                "img_size", "norm_first"),
    },
}


def check_architecture(config: ml_collections.ConfigDict, stored: dict, source: str,
                       sections=None, skip=()) -> None:
    """The config's model sections (all, or `sections`) must describe the stored model (`source`
    names it); fields in `skip` may differ (e.g. num_classes when fine-tuning)."""
    diffs = []
    for section, fields in ARCH_FIELDS[config.model].items():
        if sections is not None and section not in sections:
            continue
        for field in (f for f in fields if f not in skip):
            want, have = config[section][field], stored.get(section, {}).get(field)
            if isinstance(want, (list, tuple)):
                want, have = tuple(want), tuple(have or ())
            if want != have:
                diffs.append(f"{section}.{field}: config has {want!r}, checkpoint has {have!r}")
    if diffs:
        raise UserError(
            f"{source} holds a different model than the config:\n  "
            + "\n  ".join(diffs)
            + "\nUse the config file that matches the checkpoint (e.g. configs/var_d30.py for "
              "var_d30.pth, configs/bigr_xl_d24.py for bigr_XL_d24.pt), or override the fields "
              "with --config.<section>.<field>=...")


def image_size(config: ml_collections.ConfigDict) -> int:
    """Training/sampling resolution of a VAR, BiGR, VQ-VAE or B-AE config."""
    if config.model in ("bigr", "bae"):
        return config.bae.img_size
    patch_nums = config.var.patch_nums if "var" in config else config.vae.patch_nums
    return patch_nums[-1] * 2 ** (len(config.vae.ch_mult) - 1)


def build_vae(config: ml_collections.ConfigDict):
    """The VQ-VAE of a VAR config, or of a tokenizer-training config (whose scales are
    `vae.patch_nums`, there being no `var` section)."""
    from bigvar.tokenizers.msvq import MultiScaleVQVAE
    q = config.vae
    patch_nums = config.var.patch_nums if "var" in config else q.patch_nums
    return MultiScaleVQVAE(
        vocab_size=q.vocab_size, z_channels=q.z_channels, ch=q.ch, ch_mult=tuple(q.ch_mult),
        num_res_blocks=q.num_res_blocks, quant_resi=q.quant_resi,
        share_quant_resi=q.share_quant_resi, patch_nums=tuple(patch_nums))


def build_var(config: ml_collections.ConfigDict):
    from bigvar.models.var import VAR
    v = config.var
    return VAR(
        vocab_size=config.vae.vocab_size, cvae=config.vae.z_channels, num_classes=v.num_classes,
        depth=v.depth, embed_dim=v.embed_dim, num_heads=v.num_heads, mlp_ratio=v.mlp_ratio,
        patch_nums=tuple(v.patch_nums), shared_aln=v.shared_aln, attn_l2_norm=v.attn_l2_norm,
        norm_eps=v.norm_eps, cond_drop_rate=v.cond_drop_rate, drop_path_rate=v.drop_path_rate,
        attn_impl=v.attn_impl, remat=v.remat, remat_policy=v.remat_policy,
        scan_unroll=v.scan_unroll, dtype=jnp.dtype(v.dtype))


# ---- tokenizer training ------------------------------------------------------------------------
def tokenizer_loss_config(**overrides) -> ml_collections.ConfigDict:
    """`config.loss` of a tokenizer-training config: the weights of each term."""
    loss = ml_collections.ConfigDict(dict(
        l1=0.0, l2=1.0,  # pixel reconstruction terms (images in the tokenizer's range)
        beta=0.25,  # VQ-VAE: commitment weight inside the multi-scale VQ loss (VAR_SPEC §1.6.8)
        lpips=0.0, lpips_from="",  # LPIPS-VGG weight; its weights dir (`python -m bigvar.convert lpips`)
        gan=0.0,  # PatchGAN hinge loss weight (0 = no discriminator), times the adaptive weight
        gan_start=0,  # step at which the discriminator and the adversarial term start
        gan_max_weight=1e4,  # clamp of the adaptive weight (taming 1e4; BLD's disc_weight_max 1)
        disc_ndf=64, disc_layers=3, disc_lr=0.0,  # discriminator width/depth; lr 0 = same as G
        disc_init="taming",  # taming: N(0, 0.02) convs; torch_default: BLD's (no weights_init)
        dead_code_every=0,  # VQ-VAE: every N steps, re-seed unused codes from the batch (0 = off)
    ))
    loss.update(overrides)
    return loss


def vqvae_train_config(*, ch: int = 160, vocab_size: int = 4096,
                       patch_nums=PATCH_NUMS_256) -> ml_collections.ConfigDict:
    """Training a multi-scale VQ-VAE. No official recipe is released (VAR_SPEC §1.6.8: 'VQGAN
    architecture trained on OpenImages with L2 + LPIPS + GAN'); the defaults are the LlamaGen
    VQGAN recipe: Adam (0.9, 0.95), lr 1e-4, batch 128, LPIPS 1, GAN 0.5 from step 20k."""
    config = ml_collections.ConfigDict()
    config.model = "vqvae"
    config.mode = "train"
    config.seed = 0
    config.init_from = ""  # fine-tune from a weights dir holding `vae`
    config.vae = vae_config(ch=ch, vocab_size=vocab_size)
    config.vae.patch_nums = tuple(patch_nums)
    config.loss = tokenizer_loss_config(l2=1.0, lpips=1.0, gan=0.5, gan_start=20_000)
    config.train = train_config(batch_size=128, epochs=40, lr=1e-4, schedule="constant", twd=0.0,
                                twde=0.0, b1=0.9, b2=0.95, clip=0.0, ema_decay=0.9999,
                                sample_every=5000, sample_images=16)
    config.data = data_section(source="folder", path="", num_classes=1000, transform="var",
                               value_range="minus_one_one", hflip=True)
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.sample = ml_collections.ConfigDict(dict(grid_cols=8))
    return config


def bae_train_config(*, binary_size: int, img_size: int = 256) -> ml_collections.ConfigDict:
    """Training a binary autoencoder with the BinaryLatentDiffusion recipe (BIGR_SPEC §1.4):
    L1 + LPIPS, PatchGAN (max adaptive weight 1) from `gan_start`, Adam (0.9, 0.999) at
    4.5e-6 × per-GPU batch (4 per GPU × 8 GPUs here), EMA."""
    config = bigr_config("L-512" if img_size == 512 else "L", binary_size=binary_size)
    config.bae.img_size = img_size
    for section in ("bigr", "sample", "tokenizer_from", "allow_random_init", "axis_rules"):
        del config[section]
    config.model = "bae"
    config.mode = "train"
    config.loss = tokenizer_loss_config(l1=1.0, l2=0.0, lpips=1.0, gan=1.0, gan_start=400_001,
                                        gan_max_weight=1.0, disc_init="torch_default")
    # BLD updates its EMA (β 0.995) every 10 steps; 0.9995 every step is the same time constant.
    config.train = train_config(batch_size=32, steps=1_000_000, lr=4.5e-6 * 4, schedule="constant",
                                twd=0.0, twde=0.0, b1=0.9, b2=0.999, clip=0.0, ema_decay=0.9995,
                                sample_every=5000, sample_images=16)
    config.data = data_section(source="folder", path="", num_classes=1000, transform="bld",
                               value_range="zero_one", hflip=True)
    config.sample = ml_collections.ConfigDict(dict(grid_cols=8))
    return config


def validate_tokenizer(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    if config.mode not in ("train", "export"):
        _fail("mode", config.mode, "'train' or 'export' for a tokenizer config (sample with the "
              "generator config that loads it via --config.tokenizer_from)")
    loss = config.loss
    for field in ("l1", "l2", "beta", "lpips", "gan", "gan_max_weight"):
        if loss[field] < 0:
            _fail(f"loss.{field}", loss[field], "≥ 0")
    if loss.l1 == loss.l2 == loss.lpips == 0:
        _fail("loss.l2", loss.l2, "> 0, or loss.l1 / loss.lpips > 0 (nothing to reconstruct)")
    if loss.lpips > 0 and not loss.lpips_from:
        _fail("loss.lpips_from", loss.lpips_from, "a weights directory made by `python -m "
              "bigvar.convert lpips --vgg=vgg16-397923af.pth --lin=vgg.pth --out=DIR`, or "
              "loss.lpips=0")
    if loss.disc_init not in ("taming", "torch_default"):
        _fail("loss.disc_init", loss.disc_init, "'taming' or 'torch_default'")
    if config.model == "vqvae":
        pns = tuple(config.vae.patch_nums)
        if not pns or list(pns) != sorted(set(pns)) or pns[0] < 1:
            _fail("vae.patch_nums", pns, "strictly increasing positive ints")
        if config.vae.ch % 32:
            _fail("vae.ch", config.vae.ch, "a multiple of 32 (GroupNorm uses 32 groups)")
    else:
        if config.bae.nf % 32:
            _fail("bae.nf", config.bae.nf, "a multiple of 32 (GroupNorm uses 32 groups)")
        down = 2 ** (len(config.bae.ch_mult) - 1)
        if config.bae.img_size % down:
            _fail("bae.img_size", config.bae.img_size, f"a multiple of the downsampling {down}")
    validate_training(config, config.data.num_classes)
    return config
