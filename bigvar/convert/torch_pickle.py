"""Read `torch.save` checkpoints without torch and without executing code from the file.

A modern ``.pth`` file is a zip archive holding ``<prefix>/data.pkl`` (a pickle that
describes the saved object) and one raw little-endian record ``<prefix>/data/<key>``
per tensor storage. Unpickling with the stock machinery would let the file call any
importable function, so this reader uses its own unpickler:

* Only an explicit allowlist of callables can ever run (torch's tensor/parameter
  rebuild functions, reimplemented here on numpy, plus a few inert builtins).
* Every other global becomes a stub class that is never imported. Calling it (the
  REDUCE opcode, or INST/OBJ with arguments) raises `UnsafePickleError`; creating an
  instance without a call (NEWOBJ, ``copyreg`` reconstructors, then BUILD) yields an
  inert `OpaqueObject`, so checkpoints that pickle e.g. a training script's ``args``
  object still load.
* Objects the pickle can reach are either fresh, immutable, or unable to take state, so
  BUILD cannot tamper with shared objects (including numpy's global dtypes).

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
    """Return the object saved in the `torch.save` zip checkpoint at ``path``.

    Every tensor comes back as a C-contiguous, writable numpy array that shares memory
    with no other returned array (a tensor the checkpoint references twice comes back
    as one array object, as with torch). ``nn.Parameter`` becomes a plain array. Each
    storage is read once, straight into the buffer that backs the array when a single
    tensor covers it. ``OrderedDict`` state dicts keep their ``_metadata``;
    ``torch.Size`` becomes a tuple, ``torch.device`` a string such as ``"cuda:0"``, and
    instances of other classes `OpaqueObject` placeholders.

    Raises `CheckpointError` for files that cannot be read (with advice for the legacy
    pre-1.6 format) and `UnsafePickleError` when the pickle asks to call anything outside
    the allowlist; in both cases nothing from the file was executed. ``OSError`` if the
    file cannot be opened.
    """
    try:
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


def _refuse_extension_codes(data: bytes) -> None:
    """Reject EXT opcodes before unpickling: torch never writes them, and the C
    unpickler resolves them through a process-wide cache that bypasses find_class."""
    try:
        opcodes = {opcode.name for opcode, _, _ in pickletools.genops(data)}
    except ValueError as e:
        raise CheckpointError(f"its data.pkl is not a valid pickle ({e})") from e
    if opcodes & {"EXT1", "EXT2", "EXT4"}:
        raise UnsafePickleError(_refusal("resolve a global through a copyreg extension code"))


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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = open(path, "rb")
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

    def _record(self, name: str, required: bool) -> bytes | None:
        try:
            return self._zip.read(f"{self.prefix}/{name}")
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
                buffer = bytearray(self._zip.read(info))
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
    if head[:1] == b"\x80":  # a bare pickle stream: torch.save before 1.6
        return (
            "it uses the legacy (pre-1.6, non-zip) torch.save format, which this reader "
            "does not support. Re-save it with a modern PyTorch, e.g. "
            "`torch.save(torch.load(p), p2)`, and load p2."
        )
    if head[:2] == b"PK":
        return "it looks like a zip archive but is truncated or corrupt"
    return "it is not a torch.save checkpoint (not a zip archive)"


# --- the unpickler -----------------------------------------------------------------


class _Storage(_Frozen):
    """One storage record, read once however many tensors view it."""

    __slots__ = ("name", "dtype", "data")
    name: str
    dtype: np.dtype
    data: memoryview

    def __repr__(self) -> str:
        return f"<storage {self.name}>"

    def elements(self, dtype: np.dtype) -> np.ndarray:
        if self.data.nbytes % dtype.itemsize:
            raise CheckpointError(
                f"storage {self.name} holds {self.data.nbytes} bytes, not a whole number "
                f"of {dtype} elements"
            )
        return np.frombuffer(self.data, dtype)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only through the allowlist and reads storages
    from the archive. It never imports a module named in the pickle."""

    def __init__(self, file: io.BytesIO, archive: _Archive) -> None:
        super().__init__(file)
        self._archive = archive
        self._storages: dict[str, _Storage] = {}
        self._claimed: set[str] = set()  # storages whose buffer a returned array may own
        self._stubs: dict[tuple[str, str], type] = {}
        rebuilders = {
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
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"malformed storage reference {pid!r} in data.pkl")
        nbytes = numel * storage_type.dtype.itemsize
        storage = self._storages.get(key)
        if storage is None:
            data = self._archive.read_storage(key, nbytes)
            storage = _Storage(name=f"data/{key}", dtype=storage_type.dtype, data=data)
            self._storages[key] = storage
        elif storage.dtype != storage_type.dtype or storage.data.nbytes != nbytes:
            raise CheckpointError(
                f"storage data/{key} is referenced with inconsistent types or sizes"
            )
        return storage

    # Reimplementations of torch's rebuild functions; argument lists mirror torch._utils.

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
        elements = storage.elements(dtype)
        if 0 in size:
            return np.zeros(size, dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= elements.size:
            raise CheckpointError(
                f"a tensor of size {size} at offset {offset} reaches past the end of "
                f"storage {storage.name} ({elements.size} elements)"
            )
        # The first tensor to cover a whole storage contiguously takes over its buffer;
        # every other tensor gets its own copy, so no two returned arrays share memory.
        takes_buffer = (
            storage.name not in self._claimed
            and not metadata
            and offset == 0
            and math.prod(size) == elements.size
            and _is_c_contiguous(size, stride)
        )
        self._claimed.add(storage.name)
        if takes_buffer:
            array = elements.reshape(size)
        else:
            view = np.ndarray(
                size,
                dtype,
                buffer=storage.data,
                offset=offset * dtype.itemsize,
                strides=tuple(s * dtype.itemsize for s in stride),
            )
            array = view.copy()
        if metadata and metadata.get("neg"):
            np.negative(array, out=array)
        if metadata and metadata.get("conj"):
            np.conjugate(array, out=array)
        return array


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
