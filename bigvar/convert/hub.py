"""The official checkpoints on the Hugging Face Hub: where they are, and a verified download.

`python -m bigvar.convert var --from_hub=d16 --out=…` (and `bigr --from_hub=l_d24`) calls `fetch`,
which downloads the files named in `HUB_MODELS` with `huggingface_hub.hf_hub_download` and then
checks each one before the converter reads it:

* the size, where this table records one;
* the sha256 of the bytes on disk against the sha256 the Hub published for the file (its LFS
  object id: the `X-Linked-Etag` header of the HEAD request, under which huggingface_hub names
  the cached blob) — a mismatch is a corrupted or tampered download: the cached copy is removed
  and the error says to run again;
* the sha256 against the digest recorded here, where one was published: a mismatch means the
  Hub now serves another file than the release this table describes.

The Hub settings are read when `fetch` runs, not when huggingface_hub is imported: `HF_ENDPOINT`
(a mirror), `HF_HUB_CACHE` / `HF_HOME` (the cache; default ~/.cache/huggingface/hub) and
`HF_HUB_OFFLINE=1` (use the cache only). A second run finds the files in the cache and downloads
nothing. Every failure is a `UserError` that says what failed and how to download by hand.

Only names of repositories and files come from the official projects (VAR's README "VAR zoo",
BiGR's README "Download"); digests and sizes are recorded only where published.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re

from bigvar.errors import UserError


@dataclasses.dataclass(frozen=True)
class HubFile:
    """One file of a repository. `sha256`/`size`: the published LFS object id and size of the
    release this table describes, or None where none was published (the sha256 the Hub reports
    is still checked)."""
    filename: str  # path inside the repository
    sha256: str | None = None
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class HubModel:
    """The files of one `--from_hub` name, keyed by the converter flag they stand for."""
    repo_id: str
    files: dict[str, HubFile]
    revision: str = "main"


# ---- the table --------------------------------------------------------------------------------
VAR_REPO = "FoundationVision/var"
# sha256 and sizes: the Hub's LFS metadata (git-lfs pointer oid / size) of var_d16 and var_d20,
# as the file pages of FoundationVision/var show it; elsewhere only the digest the Hub publishes
# with the download (X-Linked-Etag) is checked.
_VQVAE = HubFile("vae_ch160v4096z32.pth")
BIGR_REPO = "haoosz/BiGR"
_BAE_D24 = HubFile("bae/bae_d24/binaryae_ema_1000000.th")
_BAE_D32 = HubFile("bae/bae_d32/binaryae_ema_950000.th")
_BAE_D32_512 = HubFile("bae/bae_d32_512/binaryae_ema_720000.th")

HUB_MODELS: dict[str, dict[str, HubModel]] = {
    "var": {
        "d16": HubModel(VAR_REPO, {"vae": _VQVAE, "var": HubFile(
            "var_d16.pth", sha256="4f6151aad91c94e03e224dd7358d8389fa05301c0c291279566998efb54b0ecb",
            size=1_243_116_346)}),
        "d20": HubModel(VAR_REPO, {"vae": _VQVAE, "var": HubFile(
            "var_d20.pth", sha256="f7d232978e6fe82a4f2e0f5d82b012e01b1aa5abfe93ce2b56104ec0e878a10f",
            size=2_405_720_018)}),
        "d24": HubModel(VAR_REPO, {"vae": _VQVAE, "var": HubFile("var_d24.pth")}),
        "d30": HubModel(VAR_REPO, {"vae": _VQVAE, "var": HubFile("var_d30.pth")}),
        "d36": HubModel(VAR_REPO, {"vae": _VQVAE, "var": HubFile("var_d36.pth")}),  # 512 px, shared AdaLN
    },
    "bigr": {  # names = configs/bigr.py:<name>
        "l_d24": HubModel(BIGR_REPO, {"bae": _BAE_D24, "gpt": HubFile("gpt/bigr_L_d24.pt")}),
        "xl_d24": HubModel(BIGR_REPO, {"bae": _BAE_D24, "gpt": HubFile("gpt/bigr_XL_d24.pt")}),
        "xxl_d24": HubModel(BIGR_REPO, {"bae": _BAE_D24, "gpt": HubFile("gpt/bigr_XXL_d24.pt")}),
        "xxl_d32": HubModel(BIGR_REPO, {"bae": _BAE_D32, "gpt": HubFile("gpt/bigr_XXL_d32.pt")}),
        "l_d32_512": HubModel(BIGR_REPO, {"bae": _BAE_D32_512, "gpt": HubFile("gpt/bigr_L_d32_512.pt")}),
    },
}

_TITLE = {"var": "VAR", "bigr": "BiGR"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubError(UserError):
    """A download or verification failure; the message says what to do."""


def lookup(kind: str, name: str) -> HubModel:
    """The table entry of `--from_hub=name` for `python -m bigvar.convert kind`."""
    known = HUB_MODELS[kind]
    if name not in known:
        raise HubError(f"--from_hub={name} is not an official {_TITLE[kind]} checkpoint: expected one of "
                       f"{', '.join(known)}. For other files, give their paths "
                       f"({' '.join(f'--{r}=…' for r in next(iter(known.values())).files)}).")
    return known[name]


# ---- settings, read at call time ------------------------------------------------------------------
def endpoint() -> str:
    from huggingface_hub import constants
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def cache_dir() -> str:
    from huggingface_hub import constants
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.abspath(os.path.expanduser(os.path.expandvars(os.environ[var])))
    if os.environ.get("HF_HOME"):
        return os.path.abspath(os.path.join(
            os.path.expanduser(os.path.expandvars(os.environ["HF_HOME"])), "hub"))
    return os.path.abspath(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


# ---- download and verify ------------------------------------------------------------------------
def fetch(kind: str, name: str, model: HubModel | None = None) -> dict:
    """Downloads (or finds in the cache) and verifies the files of `--from_hub=name`. Returns
    {flag: local path, ..., "hub": provenance for config.json}. `model` overrides the table
    entry (tests)."""
    import huggingface_hub

    model = model or lookup(kind, name)
    where = f"{endpoint()}/{model.repo_id}"
    print(f"{_TITLE[kind]} {name}: {where} (revision {model.revision}) → cache {cache_dir()}"
          + (" [HF_HUB_OFFLINE: cache only]" if offline() else ""), flush=True)
    paths, sha256 = {}, {}
    for flag, hub_file in model.files.items():
        cached = huggingface_hub.try_to_load_from_cache(
            model.repo_id, hub_file.filename, cache_dir=cache_dir(), revision=model.revision)
        try:
            path = huggingface_hub.hf_hub_download(
                model.repo_id, hub_file.filename, revision=model.revision, cache_dir=cache_dir(),
                endpoint=endpoint(), local_files_only=offline(), library_name="bigvar")
        except _download_errors() as e:
            raise HubError(_download_failed(kind, name, model, hub_file, e)) from e
        # (huggingface_hub resolves symlinks in the path it returns, not in the one it finds)
        how = ("in the cache" if isinstance(cached, str)
               and os.path.realpath(cached) == os.path.realpath(path) else "downloaded")
        digest = verify(path, hub_file, _hub_sha256(path, model, hub_file), model, kind, name)
        print(f"  {hub_file.filename}: {how}, {path} "
              f"({'sha256 ' + digest[:12] + '… verified' if digest else 'no published sha256 to check'})",
              flush=True)
        paths[flag], sha256[hub_file.filename] = path, digest
    commit = _commit_of(paths[next(iter(paths))])
    paths["hub"] = {"name": name, "repo_id": model.repo_id, "endpoint": endpoint(),
                    "revision": model.revision, "commit": commit, "sha256": sha256}
    return paths


def verify(path: str, hub_file: HubFile, hub_sha256: str | None, model: HubModel, kind: str,
           name: str) -> str | None:
    """Checks the sha256 (and size) of a downloaded file; returns its sha256, or None when no
    digest was published to compare with. A file whose bytes do not match the sha256 the Hub
    published is removed from the cache."""
    if hub_sha256 is None and hub_file.sha256 is None and hub_file.size is None:
        return None
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if hub_sha256 is not None and digest != hub_sha256:
        removed = _remove_cached(path)
        raise HubError(
            f"{hub_file.filename} from {model.repo_id} is corrupted: its sha256 is {digest}, but the Hub "
            f"published {hub_sha256} for it. "
            + (f"The bad copy was removed from the cache ({path}); run the command again to download it "
               "again. " if removed else f"Delete the cached copy ({path}) and run the command again. ")
            + f"If it fails again, something between you and {endpoint()} alters the file. "
            + _manual(kind, model))
    wrong_sha = hub_file.sha256 is not None and digest != hub_file.sha256
    wrong_size = hub_file.size is not None and size != hub_file.size
    if wrong_sha or wrong_size:
        found = f"sha256 {digest}, {size:,} bytes"
        release = ", ".join(([f"sha256 {hub_file.sha256}"] if hub_file.sha256 else [])
                            + ([f"{hub_file.size:,} bytes"] if hub_file.size is not None else []))
        paths = {f: (path if h is hub_file else os.path.basename(h.filename)) for f, h in model.files.items()}
        raise HubError(
            f"{hub_file.filename} from {model.repo_id} is not the release bigvar knows as "
            f"--from_hub={name}: found {found}, the release has {release}"
            + (" (the Hub publishes the file found)" if hub_sha256 == digest else "")
            + f". The file was kept ({path}). To convert it anyway, pass the files by path: "
            + _command(kind, paths) + ".")
    return digest


def _hub_sha256(path: str, model: HubModel, hub_file: HubFile) -> str | None:
    """The sha256 the Hub published for the file (None for files not stored with LFS). The cache
    names each blob after the `X-Linked-Etag` it was downloaded under; where the cache holds copies
    instead of links (no symlinks), the Hub is asked again, if online."""
    if os.path.islink(path):
        blob = os.path.basename(os.readlink(path))
        return blob if _SHA256.fullmatch(blob) else None
    if offline():
        return None
    import huggingface_hub
    url = huggingface_hub.hf_hub_url(model.repo_id, hub_file.filename, revision=_commit_of(path)
                                     or model.revision, endpoint=endpoint())
    try:
        etag = huggingface_hub.get_hf_file_metadata(url).etag
    except _download_errors():
        return None
    return etag if etag and _SHA256.fullmatch(etag) else None


def _commit_of(path: str) -> str | None:
    """The commit a cached file belongs to (`…/snapshots/<commit>/<filename>`)."""
    parts = os.path.normpath(path).split(os.sep)
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _remove_cached(path: str) -> bool:
    try:
        if os.path.islink(path):
            blob = os.path.join(os.path.dirname(path), os.readlink(path))
            os.remove(path)
            if os.path.exists(blob):
                os.remove(blob)
        else:
            os.remove(path)
        return True
    except OSError:
        return False


def _download_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises: huggingface_hub's errors are OSErrors; its HTTP library's
    (httpx2 / httpx / requests, by version) are caught through their base class."""
    from huggingface_hub import file_download
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx", "requests"):
        base = getattr(getattr(file_download, module, None), "HTTPError", None)
        if isinstance(base, type):
            errors.append(base)
    return tuple(errors)


def _download_failed(kind: str, name: str, model: HubModel, hub_file: HubFile, e: BaseException) -> str:
    from huggingface_hub import errors as hf_errors
    if offline() and isinstance(e, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
        what = (f"HF_HUB_OFFLINE is set and {hub_file.filename} is not in the cache {cache_dir()}: unset "
                "HF_HUB_OFFLINE to download it")
    else:
        what = f"could not download {hub_file.filename} from {endpoint()}/{model.repo_id}: {_reason(e)}"
        if isinstance(e, hf_errors.LocalEntryNotFoundError) or not isinstance(e, hf_errors.HfHubHTTPError):
            what += (" (no network? check the connection, proxy settings and HF_ENDPOINT; files already "
                     f"in the cache {cache_dir()} are used without one)")
    return f"{what}. {_manual(kind, model)}"


def _reason(e: BaseException) -> str:
    """The first line of an error and of the errors that caused it."""
    lines, seen = [], set()
    while e is not None and id(e) not in seen and len(lines) < 3:
        seen.add(id(e))
        text = (str(e).strip().splitlines() or [""])[0]
        lines.append(f"{type(e).__name__}: {text}" if text else type(e).__name__)
        e = e.__cause__ or e.__context__
    return " ← ".join(lines)


def _urls(model: HubModel) -> list[str]:
    return [f"{endpoint()}/{model.repo_id}/resolve/{model.revision}/{f.filename}" for f in model.files.values()]


def _command(kind: str, paths: dict) -> str:
    flags = " ".join(f"--{flag}={path}" for flag, path in paths.items())
    return f"`python -m bigvar.convert {kind} {flags} --out=…`"


def _manual(kind: str, model: HubModel) -> str:
    return (f"To download by hand: {' and '.join(_urls(model))}, then "
            + _command(kind, {f: os.path.basename(h.filename) for f, h in model.files.items()}) + ".")


def official_release(config) -> str | None:
    """The `--from_hub` name of the official release whose architecture `config` describes
    (its shipped config `configs/<model>.py:<name>` has the same architecture fields), or None."""
    from bigvar import config_lib, weights
    for name in HUB_MODELS.get(config.get("model"), {}):
        shipped = config_lib.load_config_file(f"{config.model}.py", name)
        try:
            weights.check_architecture(config, shipped.to_dict(), "")
        except UserError:
            continue
        return name
    return None


def missing_weights_hint(config) -> str:
    """What to run when a generator config has no `init_from`: the conversion of its own official
    release when it has one (from the Hub, or from the files at hand), else what writes weights."""
    name = official_release(config)
    random = "or --config.allow_random_init=True for a smoke test with random weights"
    if name is None:
        return (f"set --config.init_from=DIR to weights written by `python -m bigvar.convert "
                f"{config.model} …` or by --config.mode=export of a training run ({random})")
    model, out = HUB_MODELS[config.model][name], f"ckpt/{config.model}_{name}"
    files = " ".join(f"--{flag}={os.path.basename(f.filename)}" for flag, f in model.files.items())
    return (f"convert the official {config.model} {name} once, `python -m bigvar.convert "
            f"{config.model} --from_hub={name} --out={out}` (or from files at hand: {files}), "
            f"then add --config.init_from={out} ({random})")
