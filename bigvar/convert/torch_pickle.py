"""Read `torch.save` checkpoints without torch and without executing code from the file.

A modern ``.pth`` file is a zip archive holding ``<prefix>/data.pkl`` (a pickle that
describes the saved object) and one raw little-endian record ``<prefix>/data/<key>``
per tensor storage. The legacy format (PyTorch before 1.6, or
``_use_new_zipfile_serialization=False``) is one stream instead: a pickled magic number,
protocol version and system-info dict, the pickle describing the object, a pickled list
of storage keys, then each storage as an int64 element count and its raw little-endian
bytes. Both are read; the oldest format (a tar archive, PyTorch 0.1.x) is refused.

Unpickling with the stock machinery would let the file call any importable function,
so this reader uses its own unpickler:

* Only an explicit allowlist of callables can ever run (torch's tensor/parameter
  rebuild functions, reimplemented here on numpy, plus a few inert builtins).
* Every other global becomes a stub class that is never imported. Calling it (the
  REDUCE opcode, or INST/OBJ with arguments) raises `UnsafePickleError`; creating an
  instance without a call (NEWOBJ, ``copyreg`` reconstructors, then BUILD) yields an
  inert `OpaqueObject`, so checkpoints that pickle e.g. a training script's ``args``
  object still load.
* Objects the pickle can reach are either fresh, immutable, or unable to take state, so
  BUILD cannot tamper with shared objects (including numpy's global dtypes).
* The legacy format's other pickles (magic number, version, system info, key list) are
  read with an unpickler that allows no globals at all, and every pickle is checked
  for extension codes before it is unpickled.

Tensors come back as numpy arrays (bfloat16 and float8 via ``ml_dtypes``).
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["CheckpointError", "OpaqueObject", "UnsafePickleError", "load"]


class CheckpointError(ValueError):
    """The file is not a readable `torch.save` checkpoint."""


class UnsafePickleError(CheckpointError):
    """The checkpoint's pickle asked to run something outside the allowlist; nothing was run."""


class OpaqueObject:
    """Inert stand-in for an instance of a class this reader will not import.

    Attributes: ``module`` and ``name`` of the class as written in the pickle, the
    constructor ``args``/``kwargs`` the pickle supplied, and ``state`` (what BUILD
    supplied, usually the instance ``__dict__``; ``None`` if none). For an
    ``argparse.Namespace`` or a config object, ``obj.state["lr"]`` gives the value
    the real object would have had as ``obj.lr``.
    """

    __slots__ = ("module", "name", "args", "kwargs", "state")

    def __init__(
        self,
        module: str,
        name: str,
        args: tuple = (),
        kwargs: dict | None = None,
        state: Any = None,
    ) -> None:
        self.module = module
        self.name = name
        self.args = args
        self.kwargs = kwargs or {}
        self.state = state

    def __setstate__(self, state: Any) -> None:
        # BUILD lands here: record the state, never interpret it.
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(_refusal(f"call an instance of {self.module}.{self.name}"))

    def __reduce__(self) -> tuple:
        # Keeps copy.deepcopy / re-pickling faithful despite the custom __setstate__.
        return (OpaqueObject, (self.module, self.name, self.args, self.kwargs, self.state))

    def __repr__(self) -> str:
        return f"OpaqueObject({self.module}.{self.name}, args={self.args!r}, state={self.state!r})"


def load(path: str | os.PathLike[str]) -> Any:
    """Return the object saved in the `torch.save` checkpoint at ``path``.

    Reads the zip format (PyTorch >= 1.6) and the legacy stream format (older PyTorch,
    or ``_use_new_zipfile_serialization=False``), including files saved from CUDA
    tensors: storage locations such as ``"cuda:0"`` are ignored and every tensor is
    read into host memory.

    Every tensor comes back as a C-contiguous, writable numpy array that shares memory
    with no other returned array (a tensor the checkpoint references twice comes back
    as one array object, as with torch). ``nn.Parameter`` becomes a plain array. Each
    storage is read once, straight into the buffer that backs the array when a single
    tensor covers it. ``OrderedDict`` state dicts keep their ``_metadata``;
    ``torch.Size`` becomes a tuple, ``torch.device`` a string such as ``"cuda:0"``, and
    instances of other classes `OpaqueObject` placeholders.

    Raises `CheckpointError` for files that cannot be read (with advice for the tar
    format of PyTorch 0.1.x) and `UnsafePickleError` when a pickle asks to call anything
    outside the allowlist; in both cases nothing from the file was executed. ``OSError``
    if the file cannot be opened.
    """
    try:
        with open(path, "rb") as f:
            container = _container(f.read(512))
            if container == "legacy":
                f.seek(0)
                return _load_legacy(f)
        if container == "tar":
            raise CheckpointError(_TAR_MESSAGE)
        with _Archive(path) as archive:
            data = archive.read_pickle()
            _refuse_extension_codes(data)
            try:
                return _SafeUnpickler(io.BytesIO(data), archive).load()
            except CheckpointError:
                raise
            except _PICKLE_FAILURES as e:
                raise CheckpointError(
                    f"its data.pkl could not be unpickled ({type(e).__name__}: {e})"
                ) from e
    except CheckpointError as e:
        e.args = (f"{os.fspath(path)}: {e.args[0]}",)
        raise


# Errors a corrupt or hostile pickle can provoke in the unpickler or in our rebuild
# functions; they are reported as CheckpointError. Anything else is a bug and propagates.
_PICKLE_FAILURES = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
)


def _refusal(action: str) -> str:
    return (
        f"the checkpoint's pickle asks to {action}, which is not on this reader's "
        "allowlist; the file was refused without executing it. Load it with torch only "
        "if you trust where it came from."
    )


_EXTENSION_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})
_EXTENSION_REFUSAL = "resolve a global through a copyreg extension code"


def _refuse_extension_codes(data: bytes) -> None:
    """Reject EXT opcodes before unpickling: torch never writes them, and the C
    unpickler resolves them through a process-wide cache that bypasses find_class."""
    try:
        opcodes = {opcode.name for opcode, _, _ in pickletools.genops(data)}
    except ValueError as e:
        raise CheckpointError(f"its data.pkl is not a valid pickle ({e})") from e
    if opcodes & _EXTENSION_OPCODES:
        raise UnsafePickleError(_refusal(_EXTENSION_REFUSAL))


# --- objects find_class hands to the pickle --------------------------------------


class _Frozen:
    """Base for objects a pickle can reach that must not take state from BUILD: no
    ``__dict__`` and no ``__setstate__``, and assigning an attribute is refused."""

    __slots__ = ()

    def __init__(self, **fields: Any) -> None:
        for attr, value in fields.items():
            object.__setattr__(self, attr, value)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise UnsafePickleError(_refusal(f"modify {self!r}"))


class _Token(_Frozen):
    """An inert marker for a torch global that is data, not a function."""

    __slots__ = ("name", "dtype")
    name: str
    dtype: np.dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TorchDtype(_Token):
    """``torch.float32`` and friends: names the numpy dtype of a tensor."""

    __slots__ = ()


class _StorageType(_Token):
    """``torch.FloatStorage`` and friends: names the element type of a storage record."""

    __slots__ = ()


_NUMPY_DTYPES: dict[str, Any] = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
    "complex128": np.complex128,
    "complex64": np.complex64,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "bool": np.bool_,
}
_TORCH_DTYPES = {
    name: _TorchDtype(name=name, dtype=np.dtype(t)) for name, t in _NUMPY_DTYPES.items()
}

# Storage classes named in persistent ids. torch 2.x still writes the 1.x typed names;
# UntypedStorage (raw bytes) is used for dtypes that have no typed storage class.
_STORAGE_TYPES = {
    name: _StorageType(name=name, dtype=np.dtype(_NUMPY_DTYPES[dtype]))
    for name, dtype in {
        "DoubleStorage": "float64",
        "FloatStorage": "float32",
        "HalfStorage": "float16",
        "BFloat16Storage": "bfloat16",
        "ComplexDoubleStorage": "complex128",
        "ComplexFloatStorage": "complex64",
        "LongStorage": "int64",
        "IntStorage": "int32",
        "ShortStorage": "int16",
        "CharStorage": "int8",
        "ByteStorage": "uint8",
        "BoolStorage": "bool",
        "UntypedStorage": "uint8",
    }.items()
}
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")

# A module torch renamed; older checkpoints name the old one.
_MODULE_ALIASES = {"torch.tensor": "torch._tensor"}


class _Allowed(_Frozen):
    """An allowlisted callable, wrapped so that BUILD cannot attach state to it."""

    __slots__ = ("qualname", "fn")
    qualname: str
    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"<allowlisted {self.qualname}>"


class _UnresolvedGlobal(type):
    """Metaclass of the stubs that stand in for globals outside the allowlist.

    Calling a stub is what REDUCE (and INST/OBJ with arguments) would do to the real
    global, so it is refused. ``__new__`` without a call (NEWOBJ, INST/OBJ without
    arguments) yields an `OpaqueObject`.
    """

    module: str
    name: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(_refusal(f"call {cls.module}.{cls.name}"))

    def __setattr__(cls, attr: str, value: Any) -> None:
        raise UnsafePickleError(_refusal(f"modify {cls.module}.{cls.name}"))

    def __repr__(cls) -> str:
        return f"<unresolved global {cls.module}.{cls.name}>"


def _stub(module: str, name: str) -> type:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> OpaqueObject:
        return OpaqueObject(module, name, args, kwargs)

    namespace = {"__slots__": (), "__new__": __new__, "module": module, "name": name}
    return _UnresolvedGlobal("UnresolvedGlobal", (), namespace)


def _reconstructor(cls: Any, base: Any, state: Any) -> OpaqueObject:
    """Safe ``copyreg._reconstructor`` (protocol 0/1 instances): placeholders only."""
    if not isinstance(cls, _UnresolvedGlobal):
        raise UnsafePickleError(_refusal(f"run copyreg._reconstructor on {cls!r}"))
    return OpaqueObject(cls.module, cls.name, () if state is None else (state,))


def _newobj(cls: Any, *args: Any) -> OpaqueObject:
    """Safe ``copyreg.__newobj__``: placeholders only."""
    if not isinstance(cls, _UnresolvedGlobal):
        raise UnsafePickleError(_refusal(f"run copyreg.__newobj__ on {cls!r}"))
    return cls.__new__(cls, *args)


def _encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes; other codecs are refused."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(_refusal(f"run _codecs.encode with codec {encoding!r}"))
    return text.encode("latin-1")


_LOCATION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(:[0-9]+)?")


def _location(location: Any) -> str:
    """Validate a storage location tag (``"cpu"``, ``"cuda:0"``, ``"mps"``, ...).

    The tag only says where torch would put the storage; this reader puts every
    storage in host memory, so any well-formed device tag is accepted.
    """
    if not (isinstance(location, str) and _LOCATION.fullmatch(location)):
        raise CheckpointError(f"invalid storage location {location!r}")
    return location


def _device(kind: str, index: int | None = None) -> str:
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise CheckpointError(f"invalid torch.device arguments {(kind, index)!r}")
    return kind if index is None else f"{kind}:{index}"


_PLAIN_ALLOWLIST: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): lambda: b"",  # protocol 2 writes b"" as bytes()
    ("_codecs", "encode"): _encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _newobj,
    ("torch", "Size"): tuple,
    ("torch", "device"): _device,
}


# --- the zip container -------------------------------------------------------------


class _Archive:
    """The checkpoint's zip container; storages are read straight into writable buffers."""

    _LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
    # What compressed records may inflate to, in all: torch writes its records uncompressed, and
    # weights or a pickle deflate far less than 4:1, so more is a zip bomb (a 1.5 MB file whose
    # data.pkl inflates to 1.5 GiB), refused from the sizes the archive declares before reading.
    _INFLATE_RATIO, _INFLATE_FLOOR = 4, 64 << 20

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = open(path, "rb")
        self._inflate_budget = max(self._INFLATE_FLOOR,
                                   self._INFLATE_RATIO * os.fstat(self._file.fileno()).st_size)
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            self._file.seek(0)
            head = self._file.read(4)
            self._file.close()
            raise CheckpointError(_not_a_zip_message(head)) from e
        names = self._zip.namelist()
        self.prefix = names[0].split("/", 1)[0] if names else ""
        if f"{self.prefix}/constants.pkl" in names:
            self.close()
            raise CheckpointError(
                "this is a TorchScript archive (torch.jit.save), not a torch.save "
                "checkpoint; load it with torch.jit.load and torch.save its state_dict()"
            )

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def read_pickle(self) -> bytes:
        if self._record("byteorder", required=False) not in (None, b"little"):
            raise CheckpointError("it was saved on a big-endian machine, which is not supported")
        return self._record("data.pkl", required=True)

    def _inflate(self, info: zipfile.ZipInfo, nbytes: int) -> bytes:
        """The first `nbytes` of a record, decompressed within the archive's budget (zipfile
        itself stops at the declared size, so a record that lies about it fails its CRC)."""
        if info.compress_type != zipfile.ZIP_STORED:
            if info.file_size > self._inflate_budget:
                raise CheckpointError(
                    f"record {info.filename!r} declares {info.file_size} bytes compressed into "
                    f"{info.compress_size}: more than a checkpoint of this size can hold (a zip "
                    "bomb?); refused before decompressing")
            self._inflate_budget -= info.file_size
        with self._zip.open(info) as record:
            return record.read(nbytes)

    def _record(self, name: str, required: bool) -> bytes | None:
        try:
            info = self._zip.getinfo(f"{self.prefix}/{name}")
            return self._inflate(info, info.file_size)
        except KeyError:
            if required:
                raise CheckpointError(
                    f"the zip archive has no {self.prefix}/{name} record, so it is not a "
                    "torch.save checkpoint"
                ) from None
            return None
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise CheckpointError(f"record {self.prefix}/{name} is corrupt ({e})") from e

    def read_storage(self, key: str, nbytes: int) -> memoryview:
        """Return exactly ``nbytes`` of storage record ``key`` in a private writable buffer."""
        name = f"{self.prefix}/data/{key}"
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise CheckpointError(
                f"storage record {name!r} is missing from the archive (truncated or "
                "incompletely copied checkpoint?)"
            ) from None
        if info.file_size < nbytes:
            raise CheckpointError(
                f"storage record {name!r} is too short: the pickle needs {nbytes} bytes, "
                f"the archive holds {info.file_size}"
            )
        if info.compress_type == zipfile.ZIP_STORED:  # what torch writes: read in place
            buffer = self._read_stored(info)
        else:
            try:
                buffer = bytearray(self._inflate(info, nbytes))
            except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as e:
                raise CheckpointError(f"storage record {name!r} is unreadable ({e})") from e
        return memoryview(buffer)[:nbytes]

    def _read_stored(self, info: zipfile.ZipInfo) -> bytearray:
        # zipfile would return immutable bytes; reading into our own bytearray avoids
        # a second copy of every storage and lets the arrays be writable.
        self._file.seek(info.header_offset)
        header = self._file.read(self._LOCAL_HEADER.size)
        if len(header) < self._LOCAL_HEADER.size:
            raise CheckpointError(f"storage record {info.filename!r} is truncated")
        signature, name_len, extra_len = self._LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise CheckpointError(f"storage record {info.filename!r} has a corrupt zip header")
        start = info.header_offset + self._LOCAL_HEADER.size + name_len + extra_len
        if start + info.file_size > os.fstat(self._file.fileno()).st_size:
            raise CheckpointError(f"storage record {info.filename!r} is truncated")
        self._file.seek(start)
        buffer = bytearray(info.file_size)
        if self._file.readinto(buffer) != info.file_size:
            raise CheckpointError(f"storage record {info.filename!r} is truncated")
        if zlib.crc32(buffer) != info.CRC:
            raise CheckpointError(f"storage record {info.filename!r} is corrupt (CRC mismatch)")
        return buffer


def _not_a_zip_message(head: bytes) -> str:
    if head[:2] == b"PK":
        return "it looks like a zip archive but is truncated or corrupt"
    return "it is not a torch.save checkpoint (not a zip archive)"


# --- the unpickler -----------------------------------------------------------------


class _Storage(_Frozen):
    """One storage record, read once however many tensors view it.

    ``data`` is its ``nbytes`` bytes; in the legacy format it is ``None`` until the
    records after the pickle have been read. A legacy storage *view* (written by very
    old PyTorch) is the ``nbytes`` bytes from element ``base`` of storage ``root``.
    """

    __slots__ = ("name", "dtype", "nbytes", "data", "root", "base")
    name: str
    dtype: np.dtype
    nbytes: int
    data: memoryview | None
    root: _Storage | None
    base: int

    def __init__(
        self,
        *,
        name: str,
        dtype: np.dtype,
        nbytes: int,
        data: memoryview | None = None,
        root: _Storage | None = None,
        base: int = 0,
    ) -> None:
        super().__init__(name=name, dtype=dtype, nbytes=nbytes, data=data, root=root, base=base)

    def __repr__(self) -> str:
        return f"<storage {self.name}>"

    def count(self, dtype: np.dtype) -> int:
        """How many ``dtype`` elements the storage holds."""
        if self.nbytes % dtype.itemsize:
            raise CheckpointError(
                f"storage {self.name} holds {self.nbytes} bytes, not a whole number "
                f"of {dtype} elements"
            )
        return self.nbytes // dtype.itemsize


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only through the allowlist and reads storages
    from the archive. It never imports a module named in the pickle."""

    def __init__(
        self, file: io.BytesIO, archive: _Archive | None, encoding: str = "ASCII"
    ) -> None:
        super().__init__(file, encoding=encoding)
        self._archive = archive
        self._storages: dict[str, _Storage] = {}
        self._claimed: set[str] = set()  # storages whose buffer a returned array may own
        self._stubs: dict[tuple[str, str], type] = {}
        rebuilders = {
            "_rebuild_tensor": self._rebuild_tensor,  # PyTorch 0.1.x to 0.3
            "_rebuild_tensor_v2": self._rebuild_tensor_v2,
            "_rebuild_tensor_v3": self._rebuild_tensor_v3,
            "_rebuild_parameter": _rebuild_parameter,
            "_rebuild_parameter_with_state": _rebuild_parameter,
        }
        self._tensor_rebuilders = {
            ("torch._utils", name): _Allowed(qualname=f"torch._utils.{name}", fn=fn)
            for name, fn in rebuilders.items()
        }
        self._allowed = {
            **{
                key: _Allowed(qualname=".".join(key), fn=fn)
                for key, fn in _PLAIN_ALLOWLIST.items()
            },
            **self._tensor_rebuilders,
            ("torch._tensor", "_rebuild_from_type_v2"): _Allowed(
                qualname="torch._tensor._rebuild_from_type_v2", fn=self._rebuild_from_type_v2
            ),
        }

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 writes Python 2 names (__builtin__.set, copy_reg, commands.Popen);
        # map them as the stock unpickler would, so lookups and messages use real names.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module = _MODULE_ALIASES.get(module, module)
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module in _STORAGE_MODULES and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if (module, name) not in self._stubs:
            self._stubs[(module, name)] = _stub(module, name)
        return self._stubs[(module, name)]

    def persistent_load(self, pid: Any) -> _Storage:
        """Resolve ``('storage', storage_type, key, location, numel)`` to its record."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r} in data.pkl")
        _, storage_type, key, location, numel = pid
        _check_storage_reference(storage_type, key, location, numel, pid)
        nbytes = numel * storage_type.dtype.itemsize
        storage = self._storages.get(key)
        if storage is None:
            assert self._archive is not None
            data = self._archive.read_storage(key, nbytes)
            storage = _Storage(
                name=f"data/{key}", dtype=storage_type.dtype, nbytes=nbytes, data=data
            )
            self._storages[key] = storage
        elif storage.dtype != storage_type.dtype or storage.nbytes != nbytes:
            raise CheckpointError(
                f"storage data/{key} is referenced with inconsistent types or sizes"
            )
        return storage

    # Reimplementations of torch's rebuild functions; argument lists mirror torch._utils.

    def _rebuild_tensor(
        self,
        storage: _Storage,
        storage_offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
    ) -> np.ndarray:
        return self._rebuild_tensor_v2(storage, storage_offset, size, stride, False, None)

    def _rebuild_tensor_v2(
        self,
        storage: _Storage,
        storage_offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        requires_grad: bool,
        backward_hooks: Any,
        metadata: dict | None = None,
    ) -> np.ndarray:
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"a tensor refers to {storage!r} instead of a storage")
        return self._tensor(storage, storage.dtype, storage_offset, size, stride, metadata)

    def _rebuild_tensor_v3(
        self,
        storage: _Storage,
        storage_offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        requires_grad: bool,
        backward_hooks: Any,
        dtype: _TorchDtype,
        metadata: dict | None = None,
    ) -> np.ndarray:
        """Tensors of dtypes without a typed storage class (float8, uint16, ...)."""
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"a tensor refers to {storage!r} instead of a storage")
        if not isinstance(dtype, _TorchDtype):
            raise CheckpointError(f"tensor dtype {dtype!r} has no numpy equivalent")
        return self._tensor(storage, dtype.dtype, storage_offset, size, stride, metadata)

    def _rebuild_from_type_v2(self, func: Any, new_type: Any, args: tuple, state: Any) -> Any:
        """Tensors carrying Python attributes: rebuild the tensor, drop type and attributes."""
        if not any(func is f for f in self._tensor_rebuilders.values()):
            raise UnsafePickleError(_refusal(f"run _rebuild_from_type_v2 with {func!r}"))
        return func(*args)

    def _tensor(
        self,
        storage: _Storage,
        dtype: np.dtype,
        offset: Any,
        size: Any,
        stride: Any,
        metadata: Any,
    ) -> np.ndarray:
        """A C-contiguous array for the tensor ``(offset, size, stride)`` over ``storage``."""
        if not (
            isinstance(offset, int)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
        ):
            raise CheckpointError(
                f"invalid tensor layout offset={offset!r} size={size!r} stride={stride!r}"
            )
        if metadata is not None and not (
            isinstance(metadata, dict) and set(metadata) <= {"conj", "neg"}
        ):
            raise CheckpointError(f"unsupported tensor metadata {metadata!r}")
        count = storage.count(dtype)
        if 0 in size:
            return np.zeros(size, dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= count:
            raise CheckpointError(
                f"a tensor of size {size} at offset {offset} reaches past the end of "
                f"storage {storage.name} ({count} elements)"
            )
        # The first tensor to cover a whole storage contiguously takes over its buffer;
        # every other tensor gets its own copy, so no two returned arrays share memory.
        takes_buffer = (
            storage.root is None
            and storage.name not in self._claimed
            and not metadata
            and offset == 0
            and math.prod(size) == count
            and _is_c_contiguous(size, stride)
        )
        self._claimed.add(storage.name)
        return self._array(storage, dtype, offset, size, stride, metadata, takes_buffer)

    def _array(
        self,
        storage: _Storage,
        dtype: np.dtype,
        offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        metadata: dict | None,
        takes_buffer: bool,
    ) -> np.ndarray:
        """The array for a validated tensor layout over a storage whose bytes are here."""
        assert storage.data is not None
        if takes_buffer:
            return np.frombuffer(storage.data, dtype).reshape(size)
        view = np.ndarray(
            size,
            dtype,
            buffer=storage.data,
            offset=offset * dtype.itemsize,
            strides=tuple(s * dtype.itemsize for s in stride),
        )
        return _apply_bits(view.copy(), metadata)


def _apply_bits(array: np.ndarray, metadata: dict | None) -> np.ndarray:
    """Resolve torch's lazy negation and conjugation bits in place."""
    if metadata and metadata.get("neg"):
        np.negative(array, out=array)
    if metadata and metadata.get("conj"):
        np.conjugate(array, out=array)
    return array


def _check_storage_reference(
    storage_type: Any, key: Any, location: Any, numel: Any, pid: tuple
) -> None:
    if not isinstance(storage_type, _StorageType):
        raise CheckpointError(f"unsupported storage type {storage_type!r}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"malformed storage reference {pid!r}")
    _location(location)


def _rebuild_parameter(
    data: np.ndarray, requires_grad: bool, backward_hooks: Any, state: Any = None
) -> np.ndarray:
    """``nn.Parameter`` is just its data here; Python attributes (``state``) are dropped."""
    if not isinstance(data, np.ndarray):
        raise CheckpointError(f"a parameter wraps {type(data).__name__} instead of a tensor")
    return data


def _is_c_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


# --- the legacy (pre-1.6) stream format --------------------------------------------

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # the first pickle of every legacy torch.save file
_LEGACY_PROTOCOL_VERSION = 1001
_RESAVE_ADVICE = (
    "Re-save it with a current PyTorch, if you trust where it came from: "
    "`torch.save(torch.load(p, map_location='cpu', weights_only=False), p2)`, and load p2."
)
_TAR_MESSAGE = (
    "it uses PyTorch's oldest torch.save format (a tar archive, written by PyTorch 0.1.x), "
    "which this reader does not support. " + _RESAVE_ADVICE
)
_NOT_TORCH_MESSAGE = (
    "it is a pickle file but not a torch.save checkpoint: it does not begin with "
    "torch.save's magic number. Nothing in it was run."
)


def _container(head: bytes) -> str:
    """``"legacy"``, ``"tar"`` or ``"zip"`` (anything else is left to the zip reader)."""
    if head[:2] == b"PK":
        return "zip"
    # torch writes the magic number with pickle protocol 2 (``\x80\x02``); protocols 0
    # and 1 (``pickle_protocol=``) write it as the text opcode LONG.
    if head[:1] == b"\x80" or head.startswith(b"L%d" % _MAGIC_NUMBER):
        return "legacy"
    if head[257:262] == b"ustar":  # POSIX and GNU tar headers
        return "tar"
    return "zip"


class _BoundedReader:
    """A file view for pickletools that never asks for more bytes than the file holds,
    so a forged length in an opcode cannot make it allocate a huge buffer."""

    def __init__(self, file: io.BufferedReader, size: int) -> None:
        self._file = file
        self._size = size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._file.tell())
        return self._file.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._file.readline()

    def tell(self) -> int:
        return self._file.tell()


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler for the legacy format's bookkeeping pickles: plain data only."""

    def __init__(self, data: bytes, what: str) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(_refusal(f"use {module}.{name} in its {self._what}"))

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"its {self._what} refers to {pid!r}, which torch never writes")


class _PendingTensor:
    """A legacy tensor whose array exists but whose storage bytes come later."""

    __slots__ = ("root", "array", "byte_offset", "stride", "metadata", "takes_buffer")

    def __init__(
        self,
        root: _Storage,
        array: np.ndarray,
        byte_offset: int,
        stride: tuple[int, ...],
        metadata: dict | None,
        takes_buffer: bool,
    ) -> None:
        self.root = root
        self.array = array
        self.byte_offset = byte_offset
        self.stride = stride
        self.metadata = metadata
        self.takes_buffer = takes_buffer


class _LegacyUnpickler(_SafeUnpickler):
    """The main pickle of a legacy file: the same allowlist as for the zip format.

    Storage bytes follow the pickle in the file, so each tensor is returned as a
    freshly allocated array that `read_storages` fills in afterwards.
    """

    def __init__(self, data: bytes, file_size: int) -> None:
        # torch.load decodes Python 2 byte strings as UTF-8; so does this reader.
        super().__init__(io.BytesIO(data), None, encoding="utf-8")
        self._file_size = file_size
        self._referenced_bytes = 0
        self._roots: dict[str, _Storage] = {}
        self._views: dict[str, _Storage] = {}
        self._pending: list[_PendingTensor] = []

    def persistent_load(self, pid: Any) -> Any:
        """Resolve ``('storage', storage_type, root_key, location, numel, view_metadata)``
        and ``('module', nn.Module subclass, source_file, source)``."""
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # torch.save of a whole nn.Module names its class this way (with the class's
            # source, which torch only compares). The class was resolved by find_class.
            if not isinstance(pid[1], _UnresolvedGlobal):
                raise CheckpointError(f"malformed module reference {pid[1]!r}")
            return pid[1]
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r} in its pickle")
        _, storage_type, key, location, numel, view = pid
        _check_storage_reference(storage_type, key, location, numel, pid)
        dtype = storage_type.dtype
        nbytes = numel * dtype.itemsize
        root = self._roots.get(key)
        if root is None:
            # Every storage is stored in the file, so a pickle that refers to more bytes
            # than the file holds is corrupt: refuse before allocating anything.
            self._referenced_bytes += nbytes
            if self._referenced_bytes > self._file_size:
                raise CheckpointError(
                    "its pickle refers to more storage bytes than the file holds "
                    "(truncated file?)"
                )
            root = _Storage(name=key, dtype=dtype, nbytes=nbytes)
            self._roots[key] = root
        elif root.dtype != dtype or root.nbytes != nbytes:
            raise CheckpointError(f"storage {key} is referenced with inconsistent types or sizes")
        if view is None:
            return root
        # (view_key, offset, numel): a storage that is a slice of the root storage, as
        # PyTorch 0.1.x-0.3 could write; later versions always write None.
        if not (
            isinstance(view, tuple)
            and len(view) == 3
            and isinstance(view[0], str)
            and all(isinstance(v, int) and v >= 0 for v in view[1:])
            and view[1] + view[2] <= numel
        ):
            raise CheckpointError(f"malformed storage view {view!r} of storage {key}")
        view_key, base, view_numel = view
        storage = self._views.get(view_key)
        if storage is None:
            storage = _Storage(
                name=f"{view_key} (a view of storage {key})",
                dtype=dtype,
                nbytes=view_numel * dtype.itemsize,
                root=root,
                base=base,
            )
            self._views[view_key] = storage
        elif (storage.root, storage.base, storage.nbytes) != (root, base, view_numel * dtype.itemsize):
            raise CheckpointError(f"storage view {view_key} is referenced inconsistently")
        return storage

    def _array(
        self,
        storage: _Storage,
        dtype: np.dtype,
        offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        metadata: dict | None,
        takes_buffer: bool,
    ) -> np.ndarray:
        array = np.empty(size, dtype)
        root = storage if storage.root is None else storage.root
        byte_offset = storage.base * storage.dtype.itemsize + offset * dtype.itemsize
        self._pending.append(
            _PendingTensor(root, array, byte_offset, stride, metadata, takes_buffer)
        )
        return array

    def read_storages(self, file: io.BufferedReader, keys: Any) -> None:
        """Read the storage records at the file's position, in the order of ``keys``,
        and fill in every tensor the pickle created."""
        if not (
            isinstance(keys, list)
            and all(isinstance(k, str) for k in keys)
            and len(set(keys)) == len(keys)
        ):
            raise CheckpointError("its list of storage keys is malformed")
        for key in keys:
            if key not in self._roots:
                raise CheckpointError(
                    f"it lists storage {key}, which its pickle never refers to (corrupt file?)"
                )
        for key in self._roots:
            if key not in keys:
                raise CheckpointError(
                    f"storage {key}, which its pickle refers to, is missing from the file "
                    "(corrupt file?)"
                )
        tensors: dict[str, list[_PendingTensor]] = {}
        for pending in self._pending:
            tensors.setdefault(pending.root.name, []).append(pending)
        for key in keys:
            root = self._roots[key]
            header = file.read(8)
            if len(header) < 8:
                raise CheckpointError(f"it ends before storage {key} (truncated file?)")
            (numel,) = struct.unpack("<q", header)
            if numel * root.dtype.itemsize != root.nbytes:
                raise CheckpointError(
                    f"storage {key} holds {numel} elements in the file, but its pickle "
                    f"says {root.nbytes // root.dtype.itemsize} (corrupt file?)"
                )
            views = tensors.get(key, [])
            owner = next((t for t in views if t.takes_buffer), None)
            # Read straight into the array of the tensor that covers the storage, if any.
            if owner is not None:
                buffer = owner.array.reshape(-1).view(np.uint8)
            else:
                buffer = np.empty(root.nbytes, np.uint8)
            if file.readinto(buffer) != root.nbytes:
                raise CheckpointError(f"storage {key} is truncated (truncated file?)")
            object.__setattr__(root, "data", memoryview(buffer))
            for t in views:
                if t is not owner:
                    itemsize = t.array.dtype.itemsize
                    source = np.ndarray(
                        t.array.shape,
                        t.array.dtype,
                        buffer=buffer,
                        offset=t.byte_offset,
                        strides=tuple(s * itemsize for s in t.stride),
                    )
                    np.copyto(t.array, source)
                    _apply_bits(t.array, t.metadata)
        for view in self._views.values():
            assert view.root is not None and view.root.data is not None
            start = view.base * view.dtype.itemsize
            object.__setattr__(view, "data", view.root.data[start : start + view.nbytes])


def _next_pickle(file: io.BufferedReader, size: int, what: str) -> bytes:
    """The bytes of the pickle at the file's position (which ends up just past it),
    checked for extension codes before anything unpickles them."""
    start = file.tell()
    try:
        opcodes = {opcode.name for opcode, _, _ in pickletools.genops(_BoundedReader(file, size))}
    except ValueError as e:
        if file.tell() >= size:
            raise CheckpointError(f"it ends inside its {what} (truncated file?)") from e
        raise CheckpointError(f"its {what} is not a valid pickle ({e})") from e
    if opcodes & _EXTENSION_OPCODES:
        raise UnsafePickleError(_refusal(_EXTENSION_REFUSAL))
    end = file.tell()
    file.seek(start)
    return file.read(end - start)


def _plain(data: bytes, what: str) -> Any:
    try:
        return _PlainUnpickler(data, what).load()
    except CheckpointError:
        raise
    except _PICKLE_FAILURES as e:
        raise CheckpointError(
            f"its {what} could not be unpickled ({type(e).__name__}: {e})"
        ) from e


def _load_legacy(file: io.BufferedReader) -> Any:
    size = os.fstat(file.fileno()).st_size
    try:
        magic = _plain(_next_pickle(file, size, "magic number"), "magic number")
    except UnsafePickleError as e:
        raise CheckpointError(_NOT_TORCH_MESSAGE) from e
    if type(magic) is not int or magic != _MAGIC_NUMBER:
        raise CheckpointError(_NOT_TORCH_MESSAGE)
    version = _plain(_next_pickle(file, size, "protocol version"), "protocol version")
    if type(version) is not int or version != _LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(
            f"its legacy-format protocol version is {version!r}, not "
            f"{_LEGACY_PROTOCOL_VERSION}; this reader does not know that format. "
            + _RESAVE_ADVICE
        )
    # The system info records the saving machine's byte order and C type sizes; it is
    # not needed: storage records are little-endian and count elements in int64.
    sys_info = _plain(_next_pickle(file, size, "system info"), "system info")
    if not isinstance(sys_info, dict):
        raise CheckpointError("its system-info record is malformed (corrupt file?)")
    unpickler = _LegacyUnpickler(_next_pickle(file, size, "pickle"), size)
    try:
        result = unpickler.load()
    except CheckpointError:
        raise
    except _PICKLE_FAILURES as e:
        raise CheckpointError(
            f"its pickle could not be unpickled ({type(e).__name__}: {e})"
        ) from e
    keys = _plain(_next_pickle(file, size, "list of storage keys"), "list of storage keys")
    unpickler.read_storages(file, keys)
    return result
