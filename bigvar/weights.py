"""Model-weight directories: `params/` (an orbax PyTree checkpoint), `config.json` (the model
sections they were made with, checked against a job's config by `check_architecture`) and
`checksums.json` (every array's checksum, verified on every load: damaged files are an error,
not weights that load and quietly give other numbers).

Written by `bigvar.convert` and by `mode=export`, read by `--config.init_from=DIR` (and
`tokenizer_from`). Writes go to a temporary sibling directory that is renamed into place at the
end, so a failure never leaves a half-written DIR behind.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import uuid
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from bigvar import multihost, storage
from bigvar.checksums import array_checksums, path_name
from bigvar.errors import MissingFile, UserError

PARAMS = "params"
CONFIG = "config.json"
CHECKSUMS = "checksums.json"
CONTENTS = {PARAMS, CONFIG, CHECKSUMS}  # all a weights folder holds

ARCH_FIELDS = {  # per model config section: the fields that must match the stored weights
    "var": ("depth", "embed_dim", "num_heads", "mlp_ratio", "num_classes", "shared_aln",
            "attn_l2_norm", "patch_nums", "norm_eps"),
    "vae": ("vocab_size", "z_channels", "ch", "ch_mult", "num_res_blocks", "quant_resi",
            "share_quant_resi"),
    "bigr": ("binary_size", "num_classes", "dim", "n_layer", "n_head", "seq_len",
             "denoise_hidden", "num_block_mlp", "norm_eps"),
    "bae": ("codebook_size", "nf", "emb_dim", "ch_mult", "res_blocks", "attn_resolutions",
            "img_size", "norm_first"),
}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DamagedWeights(UserError):
    """A weights folder whose arrays do not match the checksums written with them."""


def _partial_prefix(out_dir: str) -> str:
    """The name of `out_dir`'s folder while it is written, less its random end: it names the
    writer (host and process id) so that a later run can tell an abandoned one."""
    return f".{os.path.basename(out_dir)}.partial-{socket.gethostname()}-{os.getpid()}-"


def _remove_abandoned(out_dir: str) -> None:
    """Removes the partial folders of `out_dir` that a killed run of this host left (their
    writer's process is gone); warns about those of other hosts, which it cannot check."""
    parent, base = os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.partial-"
    if not storage.isdir(parent):
        return
    for name in storage.listdir(parent):
        if not name.startswith(base):
            continue
        host, _, pid = name[len(base):].rpartition("-")[0].rpartition("-")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            logging.info("removing %s, left by a run that was killed", name)
            storage.rmtree(os.path.join(parent, name))
        elif host != socket.gethostname():
            logging.warning("%s was left by a run on %s (killed, or still writing): remove it "
                            "if no run is writing %s", os.path.join(parent, name), host or "an "
                            "older bigvar", out_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_directory(out_dir: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary directory that becomes `out_dir` only if the block succeeds. With
    several processes every process gets the same one (the chief makes and renames it)."""
    out_dir = storage.absolute(out_dir)

    def make_temporary() -> str:
        entries = set(storage.listdir(out_dir)) if storage.isdir(out_dir) else set()
        if entries and not overwrite:
            raise UserError(f"{out_dir} exists and is not empty; choose another --out or pass "
                            "--overwrite")
        # --overwrite replaces weights bigvar wrote, never a folder with anything else in it
        # (the checkpoint being converted, the user's notes).
        if entries and not (CONFIG in entries and entries <= CONTENTS):
            others = ", ".join(sorted(entries - CONTENTS)) or f"no {CONFIG}"
            raise UserError(f"{out_dir} is not a weights folder bigvar wrote ({others}); "
                            "--overwrite replaces only those: choose another --out")
        parent, prefix = os.path.dirname(out_dir), _partial_prefix(out_dir)
        _remove_abandoned(out_dir)
        if storage.is_url(out_dir):  # (a prefix in a bucket: nothing to create)
            return os.path.join(parent, prefix + uuid.uuid4().hex[:12])
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700, as os.makedirs would have made it
        return tmp
    tmp = multihost.chief_decides(make_temporary)
    try:
        yield tmp
        multihost.sync(f"written: {out_dir}")
        if multihost.is_chief():
            storage.rmtree(out_dir)
            storage.replace(tmp, out_dir)
        multihost.sync(f"in place: {out_dir}")
    except BaseException:
        if multihost.is_chief():
            storage.rmtree(tmp)
        raise


def save_weights(out_dir: str, params: Any, model_config: dict, overwrite: bool = False) -> None:
    """Saves a params pytree (NumPy or jax arrays; with several processes, every process calls it
    with the same values) and its model config atomically."""
    checksums = array_checksums(params)
    params = jax.tree_util.tree_map(multihost.to_host, params)
    with atomic_directory(out_dir, overwrite) as tmp:
        checkpointer = ocp.PyTreeCheckpointer()
        checkpointer.save(os.path.join(tmp, PARAMS), params)
        if multihost.is_chief():
            with storage.open(os.path.join(tmp, CONFIG), "w") as f:
                json.dump(model_config, f, indent=2, sort_keys=True)
            with storage.open(os.path.join(tmp, CHECKSUMS), "w") as f:
                json.dump(checksums, f, indent=0, sort_keys=True)


def load_config(weights_dir: str) -> dict:
    path = os.path.join(weights_dir, CONFIG)
    if not storage.exists(path):
        raise MissingFile(f"{path} not found: --config.init_from must be a directory written "
                                "by `python -m bigvar.convert` (it holds params/ and config.json)")
    return json.loads(storage.read_text(path))


def require_model(weights_dir: str, model: str, what: str, how: str) -> dict:
    """The `config.json` of a weights directory that must hold `model` (e.g. "lpips"); a
    missing directory or another network is an error naming `what` it should be and `how` to
    make one."""
    if not storage.isfile(os.path.join(weights_dir, CONFIG)):
        raise FileNotFoundError(f"{weights_dir} is not {what} weights directory (no {CONFIG}). {how}")
    config = load_config(weights_dir)
    if config.get("model") != model:
        raise ValueError(f"{weights_dir} holds {config.get('model')!r} weights, not {what}. {how}")
    return config


def check_architecture(config, stored: dict, source: str, sections=None, skip=()) -> None:
    """The config's model sections (those it has, or `sections`) must describe the weights whose
    `config.json` is `stored` (`source` names them); fields in `skip` may differ (e.g.
    num_classes when fine-tuning)."""
    diffs = []
    for section in sections or [s for s in ARCH_FIELDS if s in config]:
        for field in (f for f in ARCH_FIELDS[section] if f not in skip):
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


def load_weights(weights_dir: str, target: Any | None = None, partial: bool = False) -> Any:
    """Restores params. With `target` (a pytree of arrays or ShapeDtypeStructs, optionally with
    `.sharding`), shapes are checked key by key and arrays are placed with those shardings.
    `partial`: the target names only some top-level entries (e.g. just the tokenizer); only
    those are read."""
    path = os.path.join(storage.absolute(weights_dir), PARAMS)
    if not storage.isdir(path):
        raise MissingFile(f"no params/ in {weights_dir}: expected a directory written by "
                                "`python -m bigvar.convert`")
    checkpointer = ocp.PyTreeCheckpointer()
    if target is None:
        return _verified(weights_dir, checkpointer.restore(path))
    stored = checkpointer.metadata(path)
    stored = getattr(stored, "item_metadata", stored)
    if partial:
        missing = sorted(set(target) - set(stored))
        if missing:
            raise ValueError(f"weights in {weights_dir} have no {missing} (they hold {sorted(stored)})")
        stored = {k: stored[k] for k in target}
    check_tree_shapes(target, stored, what=f"weights in {weights_dir}")
    # Restored as stored (the checksums are of those bits), then cast to the target's dtypes.
    stored_dtypes = _flat(stored)
    restore_args = jax.tree_util.tree_map_with_path(
        lambda path, t: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape,
                                             dtype=stored_dtypes[path_name(path)].dtype)
        if getattr(t, "sharding", None) is not None else ocp.RestoreArgs(restore_type=np.ndarray),
        target)
    params = _verified(weights_dir, checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=partial)))
    return jax.tree_util.tree_map(
        lambda t, x: x if x.dtype == t.dtype else x.astype(t.dtype), target, params)


def _verified(weights_dir: str, params: Any) -> Any:
    """`params` after comparing every array's checksum with the one stored at conversion or
    export, and with the other processes' (each host may read its own copy of the folder: a
    copy that differs would make every process compute with other weights)."""
    path = os.path.join(weights_dir, CHECKSUMS)
    stored = json.loads(storage.read_text(path)) if storage.exists(path) else None
    found = array_checksums(params)
    bad = [] if stored is None else sorted(
        name for name, digest in found.items() if stored.get(name) != digest)
    every = multihost.gather_json({"bad": bad, "found": found})  # one collective, all processes
    damaged = [(i, e["bad"]) for i, e in enumerate(every) if e["bad"]]
    if damaged:
        process, bad = damaged[0]
        where = f" (on process {process})" if len(every) > 1 else ""
        raise DamagedWeights(
            f"{weights_dir}{where}: {len(bad)} of {len(found)} arrays fail their checksums "
            f"({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''}): its files are damaged. "
            "Convert the official checkpoint again (python -m bigvar.convert … --out=…) or export "
            "the run again (--config.mode=export).")
    differing = [i for i, e in enumerate(every) if e["found"] != every[0]["found"]]
    if differing:
        raise UserError(f"{weights_dir} holds other weights on process "
                        f"{', '.join(map(str, differing))} than on process 0: give every process "
                        "the same weights (copy one folder to every host, or use a gs:// path)")
    if stored is None:
        logging.warning("%s has no %s (written by an older bigvar): its arrays cannot be "
                        "verified; convert or export it again to have them checked", weights_dir,
                        CHECKSUMS)
    return params


def _flat(tree) -> dict[str, Any]:
    return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_tree_shapes(expected: Any, actual: Any, what: str) -> None:
    """Raises a ValueError listing missing, unexpected and mis-shaped entries."""
    want, got = _flat(expected), _flat(actual)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    misshaped = sorted(f"{k}: expected {tuple(want[k].shape)}, found {tuple(got[k].shape)}"
                       for k in set(want) & set(got)
                       if tuple(want[k].shape) != tuple(got[k].shape))
    if missing or unexpected or misshaped:
        raise ValueError(describe_mismatch(what, missing, unexpected, misshaped))


def describe_mismatch(what: str, missing, unexpected, misshaped, limit: int = 12) -> str:
    lines = [f"{what} do not match the model:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = "\n    ".join(list(items)[:limit])
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"  {len(items)} {title}:\n    {shown}{more}")
    return "\n".join(lines)
