"""A restricted unpickler for training checkpoints that pickle whole model objects.

Ultralytics saves `{'model': <DetectionModel object>, ...}` and MobileR2L saves `network_fn` (the
module object) next to its state dict, so `torch.load(weights_only=True)` refuses both files. Loading
them with plain pickle would run whatever code the file names. This reader takes the middle road:

* tensors are rebuilt with torch's own rebuild functions from the storages in the zip archive;
* containers (dict, OrderedDict, list, set, ...) are allowed;
* classes under the prefixes a family declares (e.g. `ultralytics.`, `torch.nn.modules.`) become
  inert `Placeholder` objects that only collect the state pickle hands them: no code of theirs runs;
* anything else (os.system, builtins.eval, subprocess.Popen, ...) is refused, naming the class.

`state_dict_of(obj)` then walks the placeholders' `_parameters`/`_buffers`/`_modules` exactly like
`nn.Module.state_dict()` would, so key names match the official layout.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeopt.errors import CheckpointError

# Classes every torch checkpoint may reference, with what they become.
_TORCH_STORAGES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}
_TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")
_BUILTINS = {"set": set, "frozenset": frozenset, "list": list, "dict": dict, "tuple": tuple, "slice": slice,
             "complex": complex, "bytearray": bytearray, "int": int, "float": float, "bool": bool, "str": str}


class UnsafePickleError(CheckpointError):
    """The pickle references a class or function outside the allowed set."""


class Placeholder:
    """An inert stand-in for a pickled object of an allowed class: it only stores its state."""

    _qualname: str = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE on an allowed class: keep the arguments
        self.__dict__["_init_args"] = args
        self.__dict__["_init_kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict | type(None)):
            state, slots = state
            if slots:
                self.__dict__.update(slots)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (EasyDict, ...) get SETITEMS
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:  # list subclasses get APPENDS
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.__dict__.setdefault("_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self._qualname}>"


_PLACEHOLDER_TYPES: dict[str, type] = {}


def _placeholder(qualname: str) -> type:
    if qualname not in _PLACEHOLDER_TYPES:
        _PLACEHOLDER_TYPES[qualname] = type(qualname.rsplit(".", 1)[-1], (Placeholder,), {"_qualname": qualname})
    return _PLACEHOLDER_TYPES[qualname]


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor (pickle protocols 0/1) restricted to placeholders on `object`."""
    if not (isinstance(cls, type) and issubclass(cls, Placeholder)) or base is not object:
        raise UnsafePickleError(f"pickle reconstructs {getattr(cls, '__name__', cls)!r} on {base!r}", "only plain objects are allowed")
    obj = cls.__new__(cls)
    if state is not None:
        obj.__setstate__(state)
    return obj


def _numpy_scalar(dtype: Any, data: bytes = b"") -> Any:
    """numpy.core.multiarray.scalar without object dtypes (which would unpickle arbitrary objects)."""
    import numpy as np

    dt = np.dtype(dtype)
    if dt.hasobject:
        raise UnsafePickleError("pickle holds a numpy scalar of object dtype", "only numeric numpy scalars are allowed")
    return np.frombuffer(data, dtype=dt)[0]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allowed globals; see the module docstring."""

    def __init__(self, file: Any, placeholder_prefixes: tuple[str, ...], archive: zipfile.ZipFile | None, prefix: str) -> None:
        super().__init__(file)
        self._prefixes = placeholder_prefixes
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        import torch

        # protocol-2 pickles name Python 2 modules (__builtin__.set, copy_reg...): map them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "torch._utils" and name in _REBUILD:
            return getattr(torch._utils, name)
        if module == "torch" and name in _TORCH_STORAGES:
            return getattr(torch, _TORCH_STORAGES[name])  # storage type -> dtype, used in persistent_load
        if module == "torch" and name in _TORCH_DTYPES:
            return getattr(torch, name)
        if module == "torch" and name in ("Size", "device"):
            return getattr(torch, name)
        if module == "copyreg" and name == "_reconstructor":
            return _safe_reconstructor
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _numpy_scalar
        if module == "numpy" and name == "dtype":
            import numpy as np

            return np.dtype
        if any(full.startswith(p) for p in self._prefixes):
            return _placeholder(full)
        raise UnsafePickleError(
            f"checkpoint refers to {full!r}, which is not allowed",
            "only tensors, plain containers and the model's own module classes are loaded; the file may be malicious",
        )

    def persistent_load(self, pid: Any) -> Any:
        import torch

        if not (isinstance(pid, tuple) and pid and pid[0] == "storage") or self._archive is None:
            raise UnsafePickleError(f"unsupported persistent id {str(pid)[:60]!r}", "expected a torch.save zip checkpoint")
        _, dtype, key, _location, _numel = pid
        if not isinstance(dtype, torch.dtype):
            raise UnsafePickleError(f"storage of unknown type {dtype!r}", "expected a torch storage type")
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self._storages[key]


def restricted_load(path: str | Path, placeholder_prefixes: tuple[str, ...] = ()) -> Any:
    """Unpickle a `torch.save` checkpoint with only tensors, containers and placeholder objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", "pass the path of a local .pt file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch.save zip archive", "re-save it with torch.save (torch >= 1.6)")
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise CheckpointError(f"{path} has no data.pkl", "the file is not a torch checkpoint")
        prefix = pkl[: -len("data.pkl")]
        up = RestrictedUnpickler(io.BytesIO(zf.read(pkl)), placeholder_prefixes, zf, prefix)
        try:
            return up.load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot unpickle {path}: {type(e).__name__}: {e}", "the file is corrupt or not a checkpoint") from None


def state_dict_of(obj: Any, prefix: str = "") -> dict[str, Any]:
    """The state dict of a pickled module (placeholder tree), keyed like `nn.Module.state_dict()`."""
    d = obj.__dict__
    out: dict[str, Any] = {}
    for name, p in (d.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach() if hasattr(p, "detach") else p
    skip = set(d.get("_non_persistent_buffers_set") or ())
    for name, b in (d.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            out.update(state_dict_of(child, prefix + name + "."))
    return out


def is_module_placeholder(obj: Any) -> bool:
    return isinstance(obj, Placeholder) and "_modules" in obj.__dict__
