"""Load untrusted `torch.save` checkpoints without running code from them.

fairseq checkpoints pickle config objects (omegaconf `DictConfig` trees, `argparse.Namespace`,
fairseq enums). A bare `torch.load(weights_only=False)` would import and run whatever the pickle
names, so a crafted file could execute code. Here every load goes through two gates:

1. A scan of the pickle opcodes (nothing is executed) lists every global the file references.
   omegaconf, fairseq, `argparse.Namespace` and `typing` names become inert stand-ins (`Record`),
   plain builtin types are allowed as they are, numpy scalars are rebuilt from their bytes for
   plain numeric dtypes only (never through numpy's own dtype state), and anything else torch's
   own weights-only allowlist does not hold is refused, naming it, before unpickling starts.
2. The load itself is `torch.load(weights_only=True)` with the stand-ins registered under the
   original names (`torch.serialization.safe_globals([(stand_in, "module.Name")])`), so even a
   global the scan missed is refused by torch.

`to_plain` then turns the stand-ins into plain dicts, lists and scalars.

Files that pass both gates may still try to exhaust the machine; these are refused too: a zip
member that is compressed (torch.save stores members; a deflated one expands to any size before
any check), a config nested deeper than `MAX_DEPTH` or expanding, through shared pickle
references, to more than `MAX_NODES` values, and a tensor that holds no plain dense values (meta,
sparse, quantized: each fails later, or reads out of bounds, in code that trusts its weights).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from w2vkit.config import UsageError

# Modules whose classes only carry data in checkpoints; their globals become inert `Record`s.
_STAND_IN_MODULES = ("omegaconf", "fairseq", "typing")
_STAND_IN_NAMES = frozenset({"argparse.Namespace"})


def _empty_dict(*_args: Any) -> dict:
    """`collections.defaultdict(factory)` as a plain dict: the factory is never kept or called."""
    return {}


# numpy dtypes a scalar in a checkpoint may have (fairseq's `extra_state` holds float64 and
# int64 ones): plain numbers only, named as numpy pickles them ('f8', 'i8', ...).
_PLAIN_DTYPES = frozenset(
    {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}
)


class _DType:
    """Stand-in for `numpy.dtype`: keeps a plain numeric type name and its byte order.

    A real `numpy.dtype` given BUILD state by a crafted pickle (`dtype.__setstate__`) reads
    attacker-chosen pointers and crashes the process; this one checks the state is what numpy
    writes for a plain dtype, keeps the byte order, and builds nothing.
    """

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if not (isinstance(name, str) and name in _PLAIN_DTYPES):
            raise pickle.UnpicklingError(f"numpy.dtype({name!r}) is not a plain numeric dtype")
        self.name, self.byteorder = name, "="

    def __setstate__(self, state: Any) -> None:
        # numpy: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, meta])
        plain = (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[1] in ("<", ">", "|", "=")
            and state[2:5] == (None, None, None)
            and state[5:8] == (-1, -1, 0)  # no element size, alignment or object flags of its own
            and (len(state) == 8 or state[8] is None)
        )
        if not plain:
            raise pickle.UnpicklingError(
                f"numpy.dtype({self.name!r}) with state {state!r:.80} is not a plain numeric dtype"
            )
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        return np.dtype(self.byteorder + self.name)  # e.g. '<f8', '|b1'


def _scalar(dtype: Any, data: Any) -> Any:
    """`numpy.core.multiarray.scalar(dtype, bytes)`: one number read from exactly its bytes."""
    if not (isinstance(dtype, _DType) and isinstance(data, bytes)):
        raise pickle.UnpicklingError("numpy scalar without a plain dtype and its bytes")
    np_dtype = dtype.to_numpy()
    if len(data) != np_dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy {np_dtype} scalar of {len(data)} bytes")
    return np.frombuffer(data, dtype=np_dtype)[0].copy()


# Objects whose reconstruction runs no code of the file's choosing: plain builtin types
# (omegaconf metadata names `dict`/`list` as types), numpy scalars through the checked stand-ins.
_SAFE: dict[str, Any] = {
    **{f"builtins.{t.__name__}": t for t in (dict, list, tuple, int, float, str, bool, frozenset)},
    "collections.defaultdict": _empty_dict,
    "numpy.core.multiarray.scalar": _scalar,
    "numpy._core.multiarray.scalar": _scalar,
    "numpy.dtype": _DType,
}
MAX_DEPTH = 100
"""Nesting levels a checkpoint's containers may have (fairseq's config has under 10)."""
MAX_NODES = 1_000_000
"""Values a config may expand to (fairseq's has a few hundred): a pickle can reference one list
many times, so a 1 KB file can stand for billions of values once copied out."""
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


class CheckpointError(UsageError):
    """A checkpoint file is missing, truncated, not a checkpoint, or unsafe to load."""


class Record:
    """Inert stand-in for a pickled class: keeps constructor args and state, runs nothing."""

    global_name = "?"
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any) -> Record:  # NEWOBJ and REDUCE (cls(*args)) both land here
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Record({self.global_name}, args={self.args!r}, state={self.state!r})"


_RECORD_TYPES: dict[str, type[Record]] = {}


def _record_type(global_name: str) -> type[Record]:
    if global_name not in _RECORD_TYPES:
        name = global_name.rsplit(".", 1)[-1]
        _RECORD_TYPES[global_name] = type(name, (Record,), {"global_name": global_name})
    return _RECORD_TYPES[global_name]


def _torch_allowed() -> frozenset[str]:
    """Names torch's weights-only unpickler allows (private API: if it is gone, torch decides)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:  # torch still refuses unknown globals itself in step 2
        return frozenset()
    return frozenset(_get_allowed_globals())


def _is_stand_in(global_name: str) -> bool:
    return global_name in _STAND_IN_NAMES or global_name.split(".", 1)[0] in _STAND_IN_MODULES


def _pickle_streams(path: Path, head: bytes) -> list[bytes]:
    """The pickle bytes of a torch checkpoint (zip: data.pkl; legacy: the whole file)."""
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [
                    n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"
                ]
                if not names:
                    raise CheckpointError(
                        f"{path}: a zip file without data.pkl, not a torch checkpoint"
                    )
                _refuse_compressed(path, archive)
                return [archive.read(names[0])]
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({err})") from err
    if head[:1] == bytes([_PICKLE_PROTO]):
        return [path.read_bytes()]  # legacy format: pickles back to back, then raw storages
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (unrecognised header {head[:8]!r})")


def _refuse_compressed(path: Path, archive: zipfile.ZipFile) -> None:
    """torch.save stores its members: a compressed one is crafted, and torch (and this scan)
    would decompress it whole (a 3 MB member can stand for gigabytes) before any check."""
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: refusing to load: zip member {info.filename} is compressed "
                f"({info.compress_size} bytes declaring {info.file_size}); torch.save never "
                "compresses, so this file was crafted or rewritten"
            )


def referenced_globals(path: str | Path) -> list[str]:
    """Every `module.name` global the checkpoint's pickle references, in order; executes nothing."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
    found: list[str] = []
    for stream in _pickle_streams(path, head):
        buffer = io.BytesIO(stream)
        # legacy files hold 5 pickles (magic, protocol, sys info, object, storage keys); zip holds 1
        for _ in range(5 if not head.startswith(_ZIP_MAGIC) else 1):
            try:
                for opcode, arg, _pos in pickletools.genops(buffer):
                    if opcode.name == "GLOBAL":
                        module, name = str(arg).split(" ", 1)
                        # protocol 2 uses Python 2 names (`__builtin__.long`); torch maps them too
                        module, name = _compat_pickle.NAME_MAPPING.get(
                            (module, name),
                            (_compat_pickle.IMPORT_MAPPING.get(module, module), name),
                        )
                        found.append(f"{module}.{name}")
                    elif opcode.name in ("STACK_GLOBAL", "INST", "OBJ"):
                        raise CheckpointError(
                            f"{path}: refusing to load: pickle opcode {opcode.name} builds objects "
                            "from computed names, which no torch checkpoint needs"
                        )
            except CheckpointError:
                raise  # a refusal, not corruption (CheckpointError is a ValueError)
            except (ValueError, EOFError) as err:
                raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({err})") from err
    return list(dict.fromkeys(found))


def load_torch_file(path: str | Path) -> Any:
    """`torch.load` an untrusted checkpoint on CPU, with config objects replaced by `Record`s."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    names = referenced_globals(path)
    allowed = _torch_allowed()
    if allowed:  # else torch's own check below is the only gate
        refused = [n for n in names if not (_is_stand_in(n) or n in _SAFE or n in allowed)]
    else:
        refused = []
    if refused:
        raise CheckpointError(
            f"{path}: refusing to load: its pickle references {', '.join(refused)}, which "
            "is not a tensor, container or known config type (loading it could run code)"
        )
    safe: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (_record_type(n), n) for n in names if _is_stand_in(n)
    ]
    safe += [(_SAFE[n], n) for n in names if n in _SAFE]
    try:
        with torch.serialization.safe_globals(safe):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refusing to load: {unpickling_reason(err)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({err})") from err
    try:
        _check_tensors(payload, "", 0, set())
    except CheckpointError as err:
        raise CheckpointError(f"{path}: refusing to load: {err}") from None
    return payload


def _check_tensors(obj: Any, where: str, depth: int, seen: set[int]) -> None:
    """Every tensor in `obj` holds plain dense values; containers nest at most MAX_DEPTH deep.
    A container referenced many times is walked once (`seen`: ids), so time stays linear."""
    if depth > MAX_DEPTH:
        raise CheckpointError(f"containers nest deeper than {MAX_DEPTH} levels: a crafted file")
    if isinstance(obj, torch.Tensor):
        if obj.is_meta:
            raise CheckpointError(f"tensor {where} is a meta tensor (a shape with no values)")
        if obj.layout != torch.strided:
            raise CheckpointError(f"tensor {where} is {obj.layout} (w2vkit weights are dense)")
        if obj.is_quantized:
            raise CheckpointError(f"tensor {where} is quantized ({obj.dtype}): dequantize it")
    elif isinstance(obj, (dict, list, tuple)) and id(obj) not in seen:
        seen.add(id(obj))
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in items:
            if isinstance(obj, dict):
                name = f"{where}.{key}" if where else str(key)
            else:
                name = f"{where}[{key}]"
            _check_tensors(value, name, depth + 1, seen)


def _count(depth: int, count: list[int]) -> None:
    """One more config value at `depth`: CheckpointError past MAX_DEPTH or MAX_NODES values."""
    count[0] += 1
    if depth > MAX_DEPTH:
        raise CheckpointError(f"it nests deeper than {MAX_DEPTH} levels: a crafted file")
    if count[0] > MAX_NODES:
        raise CheckpointError(
            f"more than {MAX_NODES} values (one list referenced many times?): a crafted file"
        )


_TORCH_ADVICE = (
    "weights_only",
    "Weights only load failed",
    "Check the documentation",
    "file an issue",
)


def unpickling_reason(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, without its advice to load unsafely."""
    text = str(err).replace("WeightsUnpickler error:", "\n")
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not any(a in line for a in _TORCH_ADVICE)]
    return " ".join(kept)[:200] or "unsupported pickle"


def needs_code(reason: str) -> bool:
    """Whether an `unpickling_reason` is a refused global (code), not a corrupt pickle stream."""
    return "GLOBAL" in reason or "global" in reason or "Can only build" in reason


def to_plain(obj: Any) -> Any:
    """Records, tuples and containers -> plain dicts/lists/scalars (omegaconf nodes -> values).

    CheckpointError past `MAX_DEPTH` levels or `MAX_NODES` values (a crafted config)."""
    try:
        return _plain(obj, 0, [0])
    except CheckpointError as err:
        raise CheckpointError(f"refusing the checkpoint's config: {err}") from None


def _plain(obj: Any, depth: int, count: list[int]) -> Any:
    _count(depth, count)
    if isinstance(obj, Record):
        return _record_to_plain(obj, depth, count)
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1, count) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1, count) for v in obj]
    return obj


def _record_to_plain(record: Record, depth: int, count: list[int]) -> Any:
    state = record.state
    if isinstance(state, dict) and "_content" in state:  # omegaconf DictConfig/ListConfig/ValueNode
        return _plain(state["_content"], depth + 1, count)
    if isinstance(state, dict) and "_val" in state:
        return _plain(state["_val"], depth + 1, count)
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
    if isinstance(state, dict):  # argparse.Namespace and plain objects: their attributes
        return {k: _plain(v, depth + 1, count) for k, v in state.items() if not k.startswith("_")}
    if len(record.args) == 1:  # enum members pickle as EnumClass(value)
        return _plain(record.args[0], depth + 1, count)
    return record
