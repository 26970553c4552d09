"""Tests for bigvar.convert.torch_pickle: fidelity on real torch.save files (fixtures made
by tests/fixtures/make_pth_fixtures.py) and refusal of hostile pickles built here in pure
Python. Only the control test lets a payload run (via stock pickle, to prove it is live)."""

import collections
import copy
import copyreg
import importlib
import itertools
import json
import os
import pickle
import pickletools
import subprocess
import sys
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


def test_legacy_format_gets_resave_advice() -> None:
    with pytest.raises(CheckpointError, match=r"legacy.*torch\.save\(torch\.load\(p\), p2\)"):
        torch_pickle.load(fixture("legacy.pth"))


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
