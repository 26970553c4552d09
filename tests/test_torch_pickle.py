"""Tests for bigvar.convert.torch_pickle: fidelity on real torch.save files (fixtures made
by tests/fixtures/make_pth_fixtures.py) and refusal of hostile pickles built here in pure
Python. Only the control test lets a payload run (via stock pickle, to prove it is live)."""

import collections
import copy
import copyreg
import importlib
import io
import itertools
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tarfile
import zipfile

import ml_dtypes
import numpy as np
import pytest

from bigvar.convert import torch_pickle
from bigvar.convert.torch_pickle import CheckpointError, OpaqueObject, UnsafePickleError

PTH = os.path.join(os.path.dirname(__file__), "fixtures", "pth")
EXPECTED = dict(np.load(os.path.join(PTH, "expected.npz")))


def fixture(name: str) -> str:
    return os.path.join(PTH, name)


# --- fidelity on files written by torch -----------------------------------------------

TENSOR_DTYPES = {
    "fp32": np.float32,
    "fp64": np.float64,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
    "complex64": np.complex64,
    "uint16": np.uint16,
    "float8": ml_dtypes.float8_e4m3fn,
    "shared_base": np.float32,
    "shared_row": np.float32,
    "transposed": np.float32,
    "sliced": np.float32,
    "expanded": np.int64,
    "bf16_transposed": ml_dtypes.bfloat16,
    "float8_strided": ml_dtypes.float8_e5m2,
    "scalar": np.float32,
    "empty": np.float32,
    "param": np.float32,
    "conj": np.complex64,
    "with_attribute": np.float32,
}


@pytest.fixture(scope="module")
def tensors() -> dict:
    return torch_pickle.load(fixture("tensors.pth"))


@pytest.mark.parametrize("key", sorted(TENSOR_DTYPES))
def test_tensor_matches_torch(tensors: dict, key: str) -> None:
    got, want = tensors[key], EXPECTED[f"tensors/{key}"]
    assert type(got) is np.ndarray
    assert got.dtype == np.dtype(TENSOR_DTYPES[key])
    assert got.shape == want.shape
    assert got.flags.c_contiguous and got.flags.writeable
    if got.dtype in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        got = got.astype(np.float32)  # the expected file stores these upcast
    np.testing.assert_array_equal(got, want)


def test_zero_dim_and_empty(tensors: dict) -> None:
    assert tensors["scalar"].shape == () and tensors["scalar"] == 2.5
    assert tensors["empty"].shape == (0, 3)


def test_views_of_one_storage_do_not_alias() -> None:
    tensors = torch_pickle.load(fixture("tensors.pth"))  # mutated below
    views = [tensors[k] for k in ("shared_base", "shared_row", "transposed", "sliced")]
    for a, b in itertools.combinations(views, 2):
        assert not np.shares_memory(a, b)
    tensors["shared_row"][0] = -1.0
    assert tensors["shared_base"][1, 0] == 4.0


def test_shared_storage_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    original = torch_pickle._Archive.read_storage

    def counting(self, key: str, nbytes: int) -> memoryview:
        reads.append(key)
        return original(self, key, nbytes)

    monkeypatch.setattr(torch_pickle._Archive, "read_storage", counting)
    torch_pickle.load(fixture("tensors.pth"))
    assert len(reads) == len(set(reads))


def test_non_tensor_values(tensors: dict) -> None:
    misc = tensors["misc"]
    assert misc["bytes"] == b"\x00\x01raw" and misc["empty_bytes"] == b""
    assert misc["set"] == {1, 2} and misc["frozenset"] == frozenset({"a"})
    assert misc["complex"] == 1 + 2j and misc["slice"] == slice(1, 9, 2)
    assert misc["size"] == (2, 3) and type(misc["size"]) is tuple
    assert misc["device"] == "cuda:1"
    assert repr(misc["dtype"]) == "torch.bfloat16"


def test_state_dict_with_metadata() -> None:
    state_dict = torch_pickle.load(fixture("state_dict.pth"))
    assert isinstance(state_dict, collections.OrderedDict)
    assert list(state_dict) == list(EXPECTED["state_dict_keys"])
    for key, value in state_dict.items():
        np.testing.assert_array_equal(value, EXPECTED[f"state_dict/{key}"])
    assert state_dict._metadata == json.loads(str(EXPECTED["state_dict_metadata"]))


def test_training_checkpoint_with_user_objects() -> None:
    ckpt = torch_pickle.load(fixture("checkpoint.pth"))
    assert ckpt["epoch"] == 3
    model = ckpt["trainer"]["model"]
    assert list(model) == list(EXPECTED["state_dict_keys"])
    for key, value in model.items():
        np.testing.assert_array_equal(value, EXPECTED[f"state_dict/{key}"])
    np.testing.assert_array_equal(
        ckpt["optimizer"]["state"][0]["exp_avg"], EXPECTED["optimizer/0/exp_avg"]
    )
    assert ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)

    args = ckpt["args"]
    assert isinstance(args, OpaqueObject)
    assert (args.module, args.name) == ("__main__", "TrainArgs")
    assert args.state == {"lr": 3e-4, "depth": 16, "run_name": "var-d16"}
    namespace = ckpt["namespace"]
    assert (namespace.module, namespace.name) == ("argparse", "Namespace")
    assert namespace.state == {"batch_size": 8, "data": "imagenet"}
    with pytest.raises(UnsafePickleError, match="TrainArgs"):
        args()


def test_never_uses_torch_or_stock_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("stock unpickling used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    torch_pickle.load(fixture("checkpoint.pth"))
    assert "torch" not in sys.modules


def test_deflated_archive(tmp_path, tensors: dict) -> None:
    """A checkpoint re-zipped with compression (not what torch writes) still loads."""
    path = tmp_path / "deflated.pth"
    rewrite_archive(fixture("tensors.pth"), path, compression=zipfile.ZIP_DEFLATED)
    again = torch_pickle.load(path)
    for key in TENSOR_DTYPES:
        np.testing.assert_array_equal(again[key], tensors[key])


# --- the legacy (pre-1.6, non-zip) format, files written by torch ----------------------
#
# Expected values are what torch.load itself returned for these very files.

LEGACY_DTYPES = {
    "state_dict/conv.weight": np.float32,
    "state_dict/conv.bias": np.float32,
    "state_dict/steps": np.int64,
    "fp16": np.float16,
    "fp64": np.float64,
    "bf16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "uint8": np.uint8,
    "bool": np.bool_,
    "shared_base": np.float32,
    "shared_row": np.float32,
    "transposed": np.float32,
    "sliced": np.float32,
    "param": np.float32,
    "scalar": np.float32,
    "empty": np.float32,
}


@pytest.fixture(scope="module")
def legacy_tensors() -> dict:
    return torch_pickle.load(fixture("legacy_tensors.pth"))


def lookup(tree: dict, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def test_legacy_format_loads() -> None:
    loaded = torch_pickle.load(fixture("legacy.pth"))  # the file the reader used to refuse
    assert list(loaded) == ["w"]
    np.testing.assert_array_equal(loaded["w"], np.ones(2, np.float32))


@pytest.mark.parametrize("key", sorted(LEGACY_DTYPES))
def test_legacy_tensor_matches_torch(legacy_tensors: dict, key: str) -> None:
    got, want = lookup(legacy_tensors, key), EXPECTED[f"legacy_tensors/{key}"]
    assert type(got) is np.ndarray
    assert got.dtype == np.dtype(LEGACY_DTYPES[key])
    assert got.shape == want.shape
    assert got.flags.c_contiguous and got.flags.writeable
    if got.dtype == ml_dtypes.bfloat16:
        got = got.astype(np.float32)  # the expected file stores it upcast
    np.testing.assert_array_equal(got, want)


def test_legacy_nested_state_dict_and_values(legacy_tensors: dict) -> None:
    state_dict = legacy_tensors["state_dict"]
    assert isinstance(state_dict, collections.OrderedDict)
    assert list(state_dict) == ["steps", "conv.weight", "conv.bias"]
    metadata = json.loads(str(EXPECTED["legacy_tensors/state_dict_metadata"]))
    assert state_dict._metadata == metadata
    assert legacy_tensors["epoch"] == 7
    assert legacy_tensors["meta"] == {"name": "legacy", "size": (2, 3)}
    assert legacy_tensors["scalar"].shape == () and legacy_tensors["empty"].shape == (0, 3)


def test_legacy_views_of_one_storage_do_not_alias() -> None:
    loaded = torch_pickle.load(fixture("legacy_tensors.pth"))  # mutated below
    views = [loaded[k] for k in ("shared_base", "shared_row", "transposed", "sliced")]
    for a, b in itertools.combinations(views, 2):
        assert not np.shares_memory(a, b)
    loaded["shared_row"][0] = -1.0
    assert loaded["shared_base"][1, 0] == 4.0


def test_legacy_cuda_saved_file() -> None:
    """Storages tagged "cuda:0" (as in LPIPS's vgg.pth) are read into host memory."""
    assert b"cuda:0" in open(fixture("legacy_cuda.pth"), "rb").read()
    loaded = torch_pickle.load(fixture("legacy_cuda.pth"))
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == ["lin0.model.1.weight", "half"]
    for key, value in loaded.items():
        want = EXPECTED[f"legacy_cuda/{key}"]
        assert value.dtype == want.dtype
        np.testing.assert_array_equal(value, want)


def test_legacy_whole_module_is_inert() -> None:
    """torch.save(module) names the module's class by persistent id: a placeholder here."""
    module = torch_pickle.load(fixture("legacy_module.pth"))
    assert isinstance(module, OpaqueObject)
    assert (module.module, module.name) == ("__main__", "WholeNet")
    np.testing.assert_array_equal(
        module.state["_parameters"]["weight"], EXPECTED["legacy_module/weight"]
    )
    np.testing.assert_array_equal(module.state["_buffers"]["mean"], EXPECTED["legacy_module/mean"])
    with pytest.raises(UnsafePickleError, match="WholeNet"):
        module()


def test_legacy_pickle_protocol_1() -> None:
    """pickle_protocol=1 writes the magic number as text, without a PROTO opcode."""
    assert open(fixture("legacy_proto1.pth"), "rb").read(1) == b"L"
    loaded = torch_pickle.load(fixture("legacy_proto1.pth"))
    np.testing.assert_array_equal(loaded["w"], EXPECTED["legacy_proto1/w"])
    assert loaded["w"].dtype == np.int64


def test_legacy_never_uses_torch_or_stock_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("stock unpickling used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    for name in ("legacy_tensors.pth", "legacy_cuda.pth", "legacy_module.pth"):
        torch_pickle.load(fixture(name))
    assert "torch" not in sys.modules


@pytest.mark.parametrize("location", ["cpu", "cuda", "cuda:0", "cuda:12", "mps", "xla:1"])
def test_storage_locations_accepted(location: str) -> None:
    assert torch_pickle._location(location) == location


@pytest.mark.parametrize("location", ["", "cuda:", ":0", "cuda:0 ", "cuda:x", "a/b", 0, None, b"cpu"])
def test_malformed_storage_locations_refused(location: object) -> None:
    with pytest.raises(CheckpointError, match="invalid storage location"):
        torch_pickle._location(location)


def test_tar_format_refused(tmp_path) -> None:
    """PyTorch 0.1.x wrote a tar archive of 'storages', 'tensors' and 'pickle' members."""
    path = tmp_path / "ancient.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"."))
    with pytest.raises(CheckpointError, match=r"oldest torch\.save format \(a tar archive") as e:
        torch_pickle.load(path)
    assert "weights_only=False" in str(e.value) and "ancient.pth" in str(e.value)


# --- unreadable files ----------------------------------------------------------------


def rewrite_archive(
    source: str,
    dest,
    *,
    compression: int = zipfile.ZIP_STORED,
    drop: str | None = None,
    replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
) -> None:
    """Copy a zip archive, dropping/replacing/adding records (names relative to the prefix)."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", compression) as dst:
        prefix = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            name = info.filename[len(prefix) + 1 :]
            if name != drop:
                dst.writestr(info.filename, replace.get(name, src.read(info)))
        for name, data in add.items():
            dst.writestr(f"{prefix}/{name}", data)


def test_truncated_file(tmp_path) -> None:
    data = open(fixture("tensors.pth"), "rb").read()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        torch_pickle.load(path)


def test_not_a_zip(tmp_path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(b"these are not the weights you are looking for")
    with pytest.raises(CheckpointError, match="not a zip archive"):
        torch_pickle.load(path)


def test_missing_storage_is_named(tmp_path) -> None:
    path = tmp_path / "missing.pth"
    rewrite_archive(fixture("tensors.pth"), path, drop="data/3")
    with pytest.raises(CheckpointError, match=r"'tensors/data/3' is missing"):
        torch_pickle.load(path)


def test_short_storage(tmp_path) -> None:
    path = tmp_path / "short.pth"
    rewrite_archive(fixture("tensors.pth"), path, replace={"data/0": b"\x00" * 4})
    with pytest.raises(CheckpointError, match=r"'tensors/data/0' is too short"):
        torch_pickle.load(path)


def test_corrupt_storage_bytes(tmp_path) -> None:
    data = bytearray(open(fixture("tensors.pth"), "rb").read())
    with zipfile.ZipFile(fixture("tensors.pth")) as zf:
        payload = zf.read("tensors/data/0")
    data[data.index(payload)] ^= 0xFF
    path = tmp_path / "corrupt.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC"):
        torch_pickle.load(path)


def test_missing_data_pkl(tmp_path) -> None:
    path = tmp_path / "no_pickle.pth"
    rewrite_archive(fixture("tensors.pth"), path, drop="data.pkl")
    with pytest.raises(CheckpointError, match="no tensors/data.pkl record"):
        torch_pickle.load(path)


def test_big_endian_refused(tmp_path) -> None:
    path = tmp_path / "big.pth"
    rewrite_archive(fixture("tensors.pth"), path, replace={"byteorder": b"big"})
    with pytest.raises(CheckpointError, match="big-endian"):
        torch_pickle.load(path)


def test_torchscript_archive_refused(tmp_path) -> None:
    path = tmp_path / "scripted.pt"
    rewrite_archive(fixture("tensors.pth"), path, add={"constants.pkl": b""})
    with pytest.raises(CheckpointError, match="TorchScript"):
        torch_pickle.load(path)


# --- crafted pickles -----------------------------------------------------------------
#
# data.pkl bodies are assembled from opcodes so that they can name torch globals without
# torch. Each hostile body sits next to a genuine tensor backed by storage "0".

MARK, TUPLE, REDUCE, BUILD, NEWOBJ, BINPERSID = b"(", b"t", b"R", b"b", b"\x81", b"Q"
EMPTY_TUPLE, EMPTY_DICT, SETITEM, STOP = b")", b"}", b"s", b"."


def value(obj: object) -> bytes:
    """Opcodes that push ``obj`` (plain data, or objects with a ``__reduce__``)."""
    return pickletools.optimize(pickle.dumps(obj, protocol=2))[2:-1]


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def tensor(
    key: str = "0",
    numel: int = 4,
    size: tuple = (4,),
    stride: tuple = (1,),
    metadata: dict | None = None,
) -> bytes:
    storage = (
        MARK
        + value("storage")
        + global_("torch", "FloatStorage")
        + value(key)
        + value("cpu")
        + value(numel)
        + TUPLE
        + BINPERSID
    )
    hooks = call(global_("collections", "OrderedDict"))
    args = [storage, value(0), value(size), value(stride), value(False), hooks]
    if metadata is not None:
        args.append(value(metadata))
    return call(global_("torch._utils", "_rebuild_tensor_v2"), *args)


def checkpoint(tmp_path, evil: bytes, name: str = "crafted.pth") -> str:
    """Write ``{'weight': <tensor>, 'payload': <evil>}`` in torch's zip layout."""
    body = EMPTY_DICT + value("weight") + tensor() + SETITEM + value("payload") + evil + SETITEM
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + body + STOP)
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
        zf.writestr("archive/version", b"3\n")
    return str(path)


class Call:
    """Pickles as ``fn(*args)``: the classic __reduce__ exploit shape."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return (self.fn, self.args)

    def __call__(self, *args: object) -> None:  # pickle requires reduce targets be callable
        raise AssertionError("never called")


class UserThing:
    """Stands in for a class from some training script."""

    def __init__(self) -> None:
        self.depth = 12


def test_crafted_benign_checkpoint_loads(tmp_path) -> None:
    loaded = torch_pickle.load(checkpoint(tmp_path, value([1, "two"])))
    np.testing.assert_array_equal(loaded["weight"], np.arange(4, dtype=np.float32))
    assert loaded["payload"] == [1, "two"]


def test_control_the_os_system_payload_is_live(tmp_path) -> None:
    """Stock pickle runs the payload used below, so the refusal tests mean something."""
    marker = tmp_path / "pwned_control"
    pickle.loads(pickle.dumps(Call(os.system, f"touch {marker}"), protocol=2))
    assert marker.exists()


def payloads(marker: str) -> dict[str, tuple[object, str]]:
    """Hostile objects with their expected refused global; each would create ``marker``."""
    touch = f"open({marker!r}, 'w').close()"
    return {
        "os.system": (Call(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        "eval": (Call(eval, touch), "builtins.eval"),
        "exec": (Call(exec, touch), "builtins.exec"),
        "subprocess": (Call(subprocess.Popen, ["touch", marker]), "subprocess.Popen"),
        "getattr": (
            Call(Call(getattr, collections.OrderedDict, "fromkeys"), ["a"]),
            "builtins.getattr",
        ),
        "import_getattr_chain": (
            Call(Call(getattr, Call(__import__, "os"), "system"), f"touch {marker}"),
            "builtins.__import__",
        ),
        "import_module": (
            Call(Call(getattr, Call(importlib.import_module, "os"), "system"), f"touch {marker}"),
            "importlib.import_module",
        ),
    }


@pytest.mark.parametrize("kind", sorted(payloads("x")))
def test_reduce_payloads_refused(tmp_path, kind: str) -> None:
    marker = tmp_path / f"pwned_{kind}"
    payload, refused = payloads(str(marker))[kind]
    with pytest.raises(UnsafePickleError, match=refused.replace(".", r"\.")) as excinfo:
        torch_pickle.load(checkpoint(tmp_path, value(payload)))
    assert "without executing it" in str(excinfo.value)
    assert not marker.exists()


def test_newobj_placeholder_then_reduce(tmp_path) -> None:
    marker = tmp_path / "pwned"
    placeholder = global_("os", "system") + EMPTY_TUPLE + NEWOBJ
    evil = placeholder + MARK + value(f"touch {marker}") + TUPLE + REDUCE
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        torch_pickle.load(checkpoint(tmp_path, evil))
    assert not marker.exists()


@pytest.mark.parametrize("opcode", ["INST", "OBJ"])
def test_protocol0_instantiation_with_args_refused(tmp_path, opcode: str) -> None:
    marker = tmp_path / "pwned"
    args = value(f"touch {marker}")
    if opcode == "INST":
        evil = MARK + args + b"ios\nsystem\n"
    else:
        evil = MARK + global_("os", "system") + args + b"o"
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        torch_pickle.load(checkpoint(tmp_path, evil))
    assert not marker.exists()


@pytest.mark.parametrize("opcode", ["INST", "OBJ"])
def test_protocol0_instantiation_without_args_is_inert(tmp_path, opcode: str) -> None:
    if opcode == "INST":
        evil = MARK + b"itraining.config\nConfig\n"
    else:
        evil = MARK + global_("training.config", "Config") + b"o"
    evil += value({"lr": 0.1}) + BUILD
    placeholder = torch_pickle.load(checkpoint(tmp_path, evil))["payload"]
    assert isinstance(placeholder, OpaqueObject)
    assert (placeholder.module, placeholder.name) == ("training.config", "Config")
    assert placeholder.state == {"lr": 0.1}


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_user_class_instance_is_inert(tmp_path, protocol: int) -> None:
    """Protocols 0/1 go through copyreg._reconstructor, protocol 2 through NEWOBJ."""
    evil = pickletools.optimize(pickle.dumps(UserThing(), protocol=protocol))
    evil = evil[2:-1] if protocol == 2 else evil[:-1]
    placeholder = torch_pickle.load(checkpoint(tmp_path, evil))["payload"]
    assert (placeholder.module, placeholder.name) == (UserThing.__module__, "UserThing")
    assert placeholder.state == {"depth": 12}


def test_reconstructor_refuses_real_classes(tmp_path) -> None:
    evil = call(
        global_("copy_reg", "_reconstructor"),
        global_("collections", "OrderedDict"),
        global_("__builtin__", "object"),
        value(None),
    )
    with pytest.raises(UnsafePickleError, match=r"copyreg\._reconstructor"):
        torch_pickle.load(checkpoint(tmp_path, evil))


def test_unknown_modules_are_never_imported(tmp_path, monkeypatch) -> None:
    # A real, importable module that nothing else can have imported: written here, on sys.path.
    module = "bigvar_probe_module_zz9"
    (tmp_path / f"{module}.py").write_text("def check(*args):\n    raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module not in sys.modules
    evil = (
        MARK
        + global_("no_such_module_zz9", "Thing")
        + EMPTY_TUPLE
        + NEWOBJ
        + global_(module, "check")
        + b"l"  # LIST
    )
    thing, check = torch_pickle.load(checkpoint(tmp_path, evil))["payload"]
    assert (thing.module, thing.name) == ("no_such_module_zz9", "Thing")
    assert repr(check) == f"<unresolved global {module}.check>"
    with pytest.raises(UnsafePickleError, match=rf"{module}\.check"):
        torch_pickle.load(checkpoint(tmp_path, call(global_(module, "check"), value("."))))
    assert module not in sys.modules
    assert "no_such_module_zz9" not in sys.modules


def test_dotted_names_are_not_attribute_lookups(tmp_path) -> None:
    stack_global = value("collections") + value("OrderedDict.fromkeys") + b"\x93"
    evil = call(stack_global, value(["a"]))
    with pytest.raises(UnsafePickleError, match=r"collections\.OrderedDict\.fromkeys"):
        torch_pickle.load(checkpoint(tmp_path, evil))


def test_extension_codes_refused(tmp_path) -> None:
    code = 0x7FF0
    copyreg.add_extension("os", "system", code)  # stock pickle would now resolve it

    try:
        evil = b"\x83" + code.to_bytes(2, "little")  # EXT2
        with pytest.raises(UnsafePickleError, match="extension code"):
            torch_pickle.load(checkpoint(tmp_path, evil))
    finally:
        copyreg.remove_extension("os", "system", code)


@pytest.mark.parametrize(
    "target",
    [
        global_("os", "system"),  # a stub class
        global_("collections", "OrderedDict"),  # an allowlisted callable
        global_("torch", "bfloat16"),  # a dtype token shared by all loads
        global_("torch", "FloatStorage"),  # a storage-type token, likewise
    ],
)
def test_build_cannot_modify_shared_objects(tmp_path, target: bytes) -> None:
    slot_state = value((None, {"fn": "x", "dtype": "x", "name": "x"}))
    with pytest.raises(CheckpointError):
        torch_pickle.load(checkpoint(tmp_path, target + slot_state + BUILD))
    dict_state = value({"__call__": "x"})
    with pytest.raises(CheckpointError):
        torch_pickle.load(checkpoint(tmp_path, target + dict_state + BUILD))
    # Later loads and numpy's own dtypes are unaffected.
    assert np.dtype(ml_dtypes.bfloat16).isnative
    again = torch_pickle.load(fixture("tensors.pth"))
    assert repr(again["misc"]["dtype"]) == "torch.bfloat16"
    assert again["bf16"].dtype == ml_dtypes.bfloat16


def test_codecs_encode_only_latin1(tmp_path) -> None:
    evil = call(global_("_codecs", "encode"), value("x"), value("rot13"))
    with pytest.raises(UnsafePickleError, match="rot13"):
        torch_pickle.load(checkpoint(tmp_path, evil))


def test_rebuild_from_type_only_rebuilds_tensors(tmp_path) -> None:
    evil = call(
        global_("torch._tensor", "_rebuild_from_type_v2"),
        global_("collections", "OrderedDict"),
        global_("torch", "Tensor"),
        value(()),
        value({}),
    )
    with pytest.raises(UnsafePickleError, match="_rebuild_from_type_v2"):
        torch_pickle.load(checkpoint(tmp_path, evil))


def test_tensor_metadata_neg_bit(tmp_path) -> None:
    loaded = torch_pickle.load(checkpoint(tmp_path, tensor(metadata={"neg": True})))
    np.testing.assert_array_equal(loaded["payload"], -np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(loaded["weight"], np.arange(4, dtype=np.float32))


@pytest.mark.parametrize(
    "evil, message",
    [
        (tensor(size=(5,)), "reaches past the end of storage"),
        (tensor(size=(2, 2), stride=(1,)), "invalid tensor layout"),
        (tensor(numel=8), "inconsistent types or sizes"),
        (tensor(key="7"), "'archive/data/7' is missing"),
        (value(("storage", "x")) + BINPERSID, "unexpected persistent id"),
        (b"\xff", "not a valid pickle"),
    ],
    ids=["past_end", "rank_mismatch", "size_mismatch", "missing", "bad_pid", "bad_opcode"],
)
def test_malformed_tensors(tmp_path, evil: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        torch_pickle.load(checkpoint(tmp_path, evil))


def test_errors_name_the_file(tmp_path) -> None:
    path = checkpoint(tmp_path, call(global_("os", "system"), value("true")), name="named.pth")
    with pytest.raises(UnsafePickleError, match=r"named\.pth: "):
        torch_pickle.load(path)


def test_placeholders_copy_and_repr() -> None:
    obj = OpaqueObject("m", "C", (1,), {}, {"a": [1]})
    clone = copy.deepcopy(obj)
    assert (clone.module, clone.name, clone.args, clone.state) == ("m", "C", (1,), {"a": [1]})
    assert clone.state is not obj.state
    assert "m.C" in repr(obj)


def test_unreadable_pickle_wrapped(tmp_path) -> None:
    # SETITEM on a tuple: a TypeError inside the unpickler becomes CheckpointError.
    with pytest.raises(CheckpointError, match="could not be unpickled"):
        torch_pickle.load(checkpoint(tmp_path, value((1,)) + value("k") + value("v") + SETITEM))


# --- crafted legacy-format files -------------------------------------------------------
#
# The same hostile bodies in the legacy stream: magic number, protocol version, system
# info, the main pickle, the storage-key list, then each storage as int64 count + bytes.

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}


def plain(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


def legacy_storage(
    key: str = "0",
    numel: int = 4,
    location: object = "cpu",
    view: tuple | None = None,
    storage_type: bytes = global_("torch", "FloatStorage"),
) -> bytes:
    return (
        MARK
        + value("storage")
        + storage_type
        + value(key)
        + value(location)
        + value(numel)
        + value(view)
        + TUPLE
        + BINPERSID
    )


def legacy_tensor(storage: bytes | None = None, size: tuple = (4,), stride: tuple = (1,),
                  offset: int = 0) -> bytes:
    hooks = call(global_("collections", "OrderedDict"))
    args = [storage or legacy_storage(), value(offset), value(size), value(stride), value(False), hooks]
    return call(global_("torch._utils", "_rebuild_tensor_v2"), *args)


def legacy_file(
    tmp_path,
    evil: bytes = value(None),
    *,
    weight: bytes | None = None,
    header: list[bytes] | None = None,
    keys: bytes = plain(["0"]),
    records: bytes = struct.pack("<q", 4) + np.arange(4, dtype=np.float32).tobytes(),
    name: str = "crafted_legacy.pth",
) -> str:
    """Write ``{'weight': <tensor>, 'payload': <evil>}`` in torch's legacy layout."""
    weight = legacy_tensor() if weight is None else weight
    body = EMPTY_DICT + value("weight") + weight + SETITEM + value("payload") + evil + SETITEM
    header = header or [plain(MAGIC), plain(1001), plain(SYS_INFO)]
    path = tmp_path / name
    path.write_bytes(b"".join(header) + b"\x80\x02" + body + STOP + keys + records)
    return str(path)


def test_crafted_benign_legacy_file_loads(tmp_path) -> None:
    loaded = torch_pickle.load(legacy_file(tmp_path, value([1, "two"])))
    np.testing.assert_array_equal(loaded["weight"], np.arange(4, dtype=np.float32))
    assert loaded["payload"] == [1, "two"]


@pytest.mark.parametrize("kind", sorted(payloads("x")))
def test_legacy_reduce_payloads_refused(tmp_path, kind: str) -> None:
    marker = tmp_path / f"pwned_{kind}"
    payload, refused = payloads(str(marker))[kind]
    with pytest.raises(UnsafePickleError, match=refused.replace(".", r"\.")) as excinfo:
        torch_pickle.load(legacy_file(tmp_path, value(payload)))
    assert "without executing it" in str(excinfo.value)
    assert not marker.exists()


def test_legacy_newobj_placeholder_then_reduce(tmp_path) -> None:
    marker = tmp_path / "pwned"
    placeholder = global_("os", "system") + EMPTY_TUPLE + NEWOBJ
    evil = placeholder + MARK + value(f"touch {marker}") + TUPLE + REDUCE
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        torch_pickle.load(legacy_file(tmp_path, evil))
    assert not marker.exists()


@pytest.mark.parametrize("slot", [0, 1, 2, "keys"])
def test_legacy_bookkeeping_pickles_allow_no_globals(tmp_path, slot) -> None:
    """A payload in the magic-number, version, system-info or key-list pickle never runs."""
    marker = tmp_path / "pwned"
    evil = plain(Call(os.system, f"touch {marker}"))
    header = [plain(MAGIC), plain(1001), plain(SYS_INFO)]
    keys = plain(["0"])
    if slot == "keys":
        keys = evil
    else:
        header[slot] = evil
    refused = rf"{os.system.__module__}\.system.*without executing"
    expected = r"not a torch\.save checkpoint" if slot == 0 else refused
    with pytest.raises(CheckpointError, match=expected):
        torch_pickle.load(legacy_file(tmp_path, header=header, keys=keys))
    assert not marker.exists()


@pytest.mark.parametrize("slot", ["sys_info", "main", "keys"])
def test_legacy_extension_codes_refused(tmp_path, slot: str) -> None:
    code = 0x7FF1
    copyreg.add_extension("os", "system", code)  # stock pickle would now resolve it
    ext = b"\x80\x02\x83" + code.to_bytes(2, "little") + STOP
    try:
        if slot == "main":
            path = legacy_file(tmp_path, b"\x83" + code.to_bytes(2, "little"))
        elif slot == "keys":
            path = legacy_file(tmp_path, keys=ext)
        else:
            path = legacy_file(tmp_path, header=[plain(MAGIC), plain(1001), ext])
        with pytest.raises(UnsafePickleError, match="extension code"):
            torch_pickle.load(path)
    finally:
        copyreg.remove_extension("os", "system", code)


def test_legacy_build_cannot_modify_shared_objects(tmp_path) -> None:
    for target in (global_("torch", "bfloat16"), global_("torch", "FloatStorage"),
                   global_("collections", "OrderedDict")):
        with pytest.raises(CheckpointError):
            torch_pickle.load(legacy_file(tmp_path, target + value({"__call__": "x"}) + BUILD))
    # A storage handed out by persistent_load cannot take state either.
    with pytest.raises(CheckpointError):
        torch_pickle.load(legacy_file(tmp_path, legacy_storage() + value({"data": b""}) + BUILD))
    assert repr(torch_pickle.load(fixture("tensors.pth"))["misc"]["dtype"]) == "torch.bfloat16"


def short_string(text: str) -> bytes:
    """Python 2's ``str`` as protocol 2 writes it (SHORT_BINSTRING), raw UTF-8 bytes."""
    data = text.encode()
    return b"U" + bytes([len(data)]) + data


def test_python2_cuda_file_shaped_like_lpips_vgg(tmp_path) -> None:
    """The layout of LPIPS's vgg.pth: written by Python 2 from CUDA tensors, an OrderedDict
    built from [key, tensor] pairs, backward hooks None, storages in sorted-key order."""

    def tensor_v2(key: str, numel: int, size: tuple, stride: tuple) -> bytes:
        storage = (
            MARK + short_string("storage") + global_("torch", "FloatStorage")
            + short_string(key) + short_string("cuda:0") + value(numel) + value(None)
            + TUPLE + BINPERSID
        )
        return call(global_("torch._utils", "_rebuild_tensor_v2"), storage, value(0),
                    value(size), value(stride), value(False), value(None))

    pairs = [("lin0.model.1.weight", "1867776752", 2), ("lïn1", "1855717296", 3)]
    items = b"".join(
        b"]" + MARK + short_string(k) + tensor_v2(key, n, (1, n, 1, 1), (n, 1, 1, 1)) + b"e"
        for k, key, n in pairs
    )
    body = call(global_("collections", "OrderedDict"), b"]" + MARK + items + b"e")
    header = b"".join([plain(MAGIC), plain(1001), plain(SYS_INFO)])
    keys = b"\x80\x02]" + MARK + short_string("1855717296") + short_string("1867776752") + b"e."
    records = struct.pack("<q", 3) + np.float32([3, 4, 5]).tobytes()
    records += struct.pack("<q", 2) + np.float32([1, 2]).tobytes()
    path = tmp_path / "vgg.pth"
    path.write_bytes(header + b"\x80\x02" + body + STOP + keys + records)
    loaded = torch_pickle.load(path)
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == ["lin0.model.1.weight", "lïn1"]  # Python 2 bytes decoded as UTF-8
    np.testing.assert_array_equal(loaded["lin0.model.1.weight"], np.float32([1, 2]).reshape(1, 2, 1, 1))
    np.testing.assert_array_equal(loaded["lïn1"], np.float32([3, 4, 5]).reshape(1, 3, 1, 1))


def test_legacy_rebuild_tensor_v1(tmp_path) -> None:
    """PyTorch 0.1.x-0.3 pickled tensors as _rebuild_tensor(storage, offset, size, stride)."""
    evil = call(global_("torch._utils", "_rebuild_tensor"), legacy_storage(),
                value(1), value((2, 1)), value((1, 1)))
    loaded = torch_pickle.load(legacy_file(tmp_path, evil))
    np.testing.assert_array_equal(loaded["payload"], np.float32([[1], [2]]))
    np.testing.assert_array_equal(loaded["weight"], np.arange(4, dtype=np.float32))
    assert not np.shares_memory(loaded["payload"], loaded["weight"])


def test_legacy_storage_views(tmp_path) -> None:
    """view_metadata (view_key, offset, numel): a storage that is a slice of another."""
    view = legacy_storage(view=("v", 1, 2))
    evil = MARK + legacy_tensor(view, size=(2,)) + legacy_tensor(view, size=(1,), offset=1) + view + b"l"
    loaded = torch_pickle.load(legacy_file(tmp_path, evil))
    first, second, storage = loaded["payload"]
    np.testing.assert_array_equal(first, np.float32([1, 2]))
    np.testing.assert_array_equal(second, np.float32([2]))
    assert bytes(storage.data) == np.float32([1, 2]).tobytes()
    np.testing.assert_array_equal(loaded["weight"], np.arange(4, dtype=np.float32))
    with pytest.raises(CheckpointError, match="reaches past the end"):
        torch_pickle.load(legacy_file(tmp_path, legacy_tensor(view, size=(3,))))
    with pytest.raises(CheckpointError, match="malformed storage view"):
        torch_pickle.load(legacy_file(tmp_path, legacy_storage(view=("v", 3, 2))))


def test_legacy_module_reference_must_name_a_class(tmp_path) -> None:
    evil = MARK + value("module") + global_("collections", "OrderedDict") + value(None) * 2
    with pytest.raises(CheckpointError, match="malformed module reference"):
        torch_pickle.load(legacy_file(tmp_path, evil + TUPLE + BINPERSID))


RECORD = struct.pack("<q", 4) + np.arange(4, dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"header": [plain(MAGIC + 1), plain(1001), plain(SYS_INFO)]}, "not a torch.save checkpoint"),
        ({"header": [plain({"a": 1})]}, "not a torch.save checkpoint"),
        ({"header": [plain(MAGIC), plain(1002), plain(SYS_INFO)]}, "protocol version is 1002"),
        ({"header": [plain(MAGIC), plain(1001), plain([])]}, "system-info record is malformed"),
        ({"keys": plain(["0", "1"])}, "lists storage 1, which its pickle never refers to"),
        ({"keys": plain([])}, "storage 0, which its pickle refers to, is missing"),
        ({"keys": plain(["0", "0"])}, "list of storage keys is malformed"),
        ({"keys": plain("0")}, "list of storage keys is malformed"),
        ({"records": RECORD[:-1]}, "storage 0 is truncated"),
        ({"records": RECORD[:5]}, "ends before storage 0"),
        ({"records": struct.pack("<q", 3) + RECORD[8:]}, "holds 3 elements in the file"),
        ({"weight": legacy_tensor(legacy_storage(numel=10**9))}, "more storage bytes than the file"),
        ({"weight": legacy_tensor(size=(5,))}, "reaches past the end of storage 0"),
        ({"weight": legacy_tensor(legacy_storage(location="cuda:0; rm"))}, "invalid storage location"),
        ({"weight": legacy_tensor(legacy_storage(location=0))}, "invalid storage location"),
        ({"evil": legacy_storage(numel=8)}, "inconsistent types or sizes"),
        ({"evil": value(("storage", "x")) + BINPERSID}, "unexpected persistent id"),
        ({"evil": legacy_storage(storage_type=value("FloatStorage"))}, "unsupported storage type"),
        ({"evil": b"\xff"}, "its pickle is not a valid pickle"),
        ({"evil": value((1,)) + value("k") + value("v") + SETITEM}, "could not be unpickled"),
        # BINBYTES8 claiming 2**60 bytes: refused without trying to read (allocate) them.
        ({"evil": b"\x8e" + struct.pack("<Q", 2**60)}, "ends inside its pickle"),
    ],
    ids=[
        "bad_magic", "plain_pickle", "bad_version", "bad_sys_info", "extra_key", "missing_key",
        "duplicate_key", "keys_not_list", "short_record", "short_header", "count_mismatch",
        "huge_storage", "past_end", "location_text", "location_type", "size_mismatch",
        "bad_pid", "bad_storage_type", "bad_opcode", "unpickling_error", "forged_length",
    ],
)
def test_malformed_legacy_files(tmp_path, kwargs: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as excinfo:
        torch_pickle.load(legacy_file(tmp_path, **kwargs))
    assert "crafted_legacy.pth: " in str(excinfo.value)


def test_truncated_legacy_files(tmp_path) -> None:
    data = open(fixture("legacy_tensors.pth"), "rb").read()
    path = tmp_path / "truncated.pth"
    for cut in range(1, len(data), 7):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            torch_pickle.load(path)
    # Just torch's magic number (as tests/test_lpips.py writes).
    path.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")
    with pytest.raises(CheckpointError, match="ends inside its protocol version"):
        torch_pickle.load(path)


# --- a zip bomb: refused from the declared sizes, before anything is decompressed -------------


def _bomb(source: str, dest, record: str, inflated_mib: int) -> None:
    """`source` with `record` replaced by `inflated_mib` MiB of zeros, deflated (~1000:1)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as dst:
        prefix = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            if info.filename != f"{prefix}/{record}":
                dst.writestr(info.filename, src.read(info))
                continue
            bomb = zipfile.ZipInfo(info.filename)
            bomb.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(bomb, "w", force_zip64=True) as out:
                zero = bytes(1 << 20)
                for _ in range(inflated_mib):
                    out.write(zero)


@pytest.mark.parametrize("record", ["data.pkl", "data/0"])
def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, record) -> None:
    path = tmp_path / "bomb.pth"
    _bomb(fixture("tensors.pth"), path, record, inflated_mib=768)
    assert path.stat().st_size < 2 << 20
    # In a process of its own, to measure its peak memory: the refusal reads nothing big.
    # (VmHWM, not getrusage's ru_maxrss, which keeps the forking pytest worker's peak.)
    code = ("import re, sys\nfrom bigvar.convert import torch_pickle\n"
            "try:\n    torch_pickle.load(sys.argv[1])\nexcept torch_pickle.CheckpointError as e:\n"
            "    print(e)\nstatus = open('/proc/self/status').read()\n"
            "print('peak MiB', int(re.search(r'VmHWM:\\s+(\\d+) kB', status)[1]) // 1024)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=300, check=True)
    assert "a zip bomb?" in result.stdout, result.stdout + result.stderr
    assert int(result.stdout.split("peak MiB")[1]) < 400, result.stdout  # the bomb is 768 MiB
