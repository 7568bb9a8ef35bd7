"""Model state as data: a versioned container that runs no code when it is read.

A *state* is a tree of dicts whose leaves are JSON values (numbers, strings, booleans, None, lists)
or NumPy arrays of plain dtypes (bool, integer, float). ``pack`` writes it as one ``.npz`` (a zip):
each array is a member, and a ``header`` member holds JSON with the format name, the version and
the tree, every array replaced by a reference to its member. ``unpack`` reads it back with
``np.load(allow_pickle=False)``, so an object array is refused rather than unpickled, and nothing
in the file names a Python module.

Each estimator writes and reads its own part (``state()`` / ``from_state``); the typed accessors
below check what they read, so a damaged or foreign file fails when it is loaded, not later while
scoring. ``FeatureBuilder`` (``dcwatch.detectors.features``) is handled here.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, TypeVar

import numpy as np

from dcwatch.detectors.features import FeatureBuilder, FeatureConfig

State = dict[str, Any]
C = TypeVar("C")

HEADER = "header"
_REF = "$array"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_PLAIN_KINDS = "biuf"  # bool, signed and unsigned integers, floats: never object or void


class StateError(ValueError):
    """A model state that cannot be read: wrong format or version, damaged, or not one at all."""


# -- the container ---------------------------------------------------------------------------------
def pack(kind: str, version: int, state: State) -> bytes:
    """``state`` as the bytes of one ``.npz`` with a JSON header naming ``kind`` and ``version``."""
    arrays: dict[str, np.ndarray] = {}
    tree = _split(state, "", arrays)
    header = json.dumps(
        {"format": kind, "version": version, "state": tree}, separators=(",", ":")
    ).encode()
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **{HEADER: np.frombuffer(header, dtype=np.uint8)}, **arrays)
    return buf.getvalue()


def unpack(blob: bytes, kind: str, version: int) -> State:
    """The state ``pack`` wrote; ``StateError`` for anything else, which is never executed."""
    return unpack_versioned(blob, kind, (version,))[1]


def unpack_versioned(blob: bytes, kind: str, versions: tuple[int, ...]) -> tuple[int, State]:
    """``unpack`` accepting any of ``versions``: the version found and the state, for a reader
    that upgrades older states."""
    if blob.startswith(_PICKLE_MAGIC):
        raise StateError("a pickle (model state from an older dcwatch), not loaded")
    if not blob.startswith(_ZIP_MAGIC):
        raise StateError("not a model state container")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as e:  # zip, zlib and npy errors alike; numpy refuses object arrays here
        raise StateError(f"damaged container: {e}") from e
    raw = arrays.pop(HEADER, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise StateError("container has no header")
    try:
        header = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateError(f"unreadable header: {e}") from e
    if not isinstance(header, dict) or header.get("format") != kind:
        found = header.get("format") if isinstance(header, dict) else None
        raise StateError(f"not a {kind} state (format {found!r})")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in versions:
        reads = " or ".join(map(str, versions))
        raise StateError(f"state version {version!r}, this dcwatch reads {reads}")
    state = header.get("state")
    if not isinstance(state, dict):
        raise StateError("header holds no state")
    used: set[str] = set()
    out = _join(state, arrays, used)
    if unused := set(arrays) - used:
        raise StateError(f"members not in the header: {sorted(unused)}")
    return version, out


def _split(node: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """The JSON tree of ``node``, its arrays moved to ``arrays`` under their path."""
    if isinstance(node, np.ndarray):
        if node.dtype.kind not in _PLAIN_KINDS:
            raise TypeError(f"{path}: arrays of dtype {node.dtype} cannot be stored")
        arrays[path] = node
        return {_REF: path}
    if isinstance(node, dict):
        return {
            str(k): _split(v, f"{path}/{k}" if path else str(k), arrays) for k, v in node.items()
        }
    if isinstance(node, (list, tuple)):
        return [_split(v, f"{path}/{i}", arrays) for i, v in enumerate(node)]
    if isinstance(node, np.generic):
        return node.item()
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"{path}: {type(node).__name__} is not a state value")


def _join(node: Any, arrays: dict[str, np.ndarray], used: set[str]) -> Any:
    if isinstance(node, dict):
        if set(node) == {_REF}:
            name = node[_REF]
            if not isinstance(name, str) or name not in arrays:
                raise StateError(f"missing array {name!r}")
            used.add(name)
            return arrays[name]
        return {k: _join(v, arrays, used) for k, v in node.items()}
    if isinstance(node, list):
        return [_join(v, arrays, used) for v in node]
    return node


# -- typed access ----------------------------------------------------------------------------------
def _get(state: State, key: str) -> Any:
    if key not in state:
        raise StateError(f"state lacks {key!r}")
    return state[key]


def section(state: State, key: str) -> State:
    value = _get(state, key)
    if not isinstance(value, dict):
        raise StateError(f"{key!r} is not a section")
    return value


def optional_section(state: State, key: str) -> State | None:
    return None if _get(state, key) is None else section(state, key)


def array(state: State, key: str, dtype: type[np.generic], ndim: int) -> np.ndarray:
    """The array ``key``, which must have exactly ``dtype`` and ``ndim`` dimensions."""
    value = _get(state, key)
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
        raise StateError(f"{key!r} is not a {ndim}-d {np.dtype(dtype).name} array")
    return value


def index_array(state: State, key: str) -> np.ndarray:
    """The 1-d array ``key`` of indices in any integer dtype, as ``int64`` (a writer may pick
    the narrowest dtype that holds them, an older one a wider)."""
    value = _get(state, key)
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "iu":
        raise StateError(f"{key!r} is not a 1-d integer array")
    return value.astype(np.int64)


def number(state: State, key: str) -> float:
    value = _get(state, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StateError(f"{key!r} is not a number")
    return float(value)


def integer(state: State, key: str) -> int:
    value = _get(state, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateError(f"{key!r} is not an integer")
    return value


def flag(state: State, key: str) -> bool:
    value = _get(state, key)
    if not isinstance(value, bool):
        raise StateError(f"{key!r} is not a boolean")
    return value


def strings(state: State, key: str) -> list[str]:
    value = _get(state, key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StateError(f"{key!r} is not a list of strings")
    return list(value)


def expect(condition: bool, what: str) -> None:
    """Refuse a state whose parts do not fit together (``what`` says what should hold)."""
    if not condition:
        raise StateError(f"inconsistent state: {what}")


def params(state: State, key: str = "params") -> dict[str, Any]:
    """An estimator's hyper-parameters (``get_params()``), lists back to tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section(state, key).items()}


def config_state(config: Any) -> State:
    """A frozen config dataclass (fields of plain values or such dataclasses) as a state."""
    return dataclasses.asdict(config)


def config_from(cls: type[C], state: State) -> C:
    """The config dataclass ``cls`` from ``config_state``; each value has its default's kind."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    expect(set(state) == set(fields), f"{cls.__name__} fields {sorted(fields)}")
    defaults = cls()
    values: dict[str, Any] = {}
    for name, value in state.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            values[name] = config_from(type(default), section(state, name))
            continue
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if default is not None and value is not None:
            # Numbers pass as numbers (a float setting may have been given as an int).
            numeric = (int, float)
            want = numeric if type(default) in numeric else (type(default),)
            expect(
                isinstance(value, want) and isinstance(value, bool) == isinstance(default, bool),
                f"{cls.__name__}.{name} is a {type(default).__name__}",
            )
        values[name] = value
    return cls(**values)


# -- feature builder (its module stays free of persistence) ---------------------------------------
def features_state(fb: FeatureBuilder) -> State:
    """A fitted ``FeatureBuilder``: columns, fill values, daily profile and feature scaling."""
    return {
        "config": config_state(fb.config),
        "columns": list(fb.columns_),
        "dropped": list(fb.dropped_),
        "fill": fb.fill_,
        "step": fb.step_,
        "bin_seconds": fb.bin_seconds_,
        "n_bins": fb.n_bins_,
        "profile": fb.profile_,
        "history_len": fb.history_len_,
        "center": fb.center_,
        "scale": fb.scale_,
        "feature_names": list(fb.feature_names_),
        "series_index": fb.series_index_,
    }


def features_from_state(state: State) -> FeatureBuilder:
    fb = FeatureBuilder(config_from(FeatureConfig, section(state, "config")))
    fb.columns_ = strings(state, "columns")
    fb.dropped_ = strings(state, "dropped")
    fb.fill_ = array(state, "fill", np.float64, 1)
    fb.step_ = number(state, "step")
    fb.bin_seconds_ = number(state, "bin_seconds")
    fb.n_bins_ = integer(state, "n_bins")
    fb.profile_ = array(state, "profile", np.float64, 2)
    fb.history_len_ = integer(state, "history_len")
    fb.center_ = array(state, "center", np.float64, 1)
    fb.scale_ = array(state, "scale", np.float64, 1)
    fb.feature_names_ = strings(state, "feature_names")
    fb.series_index_ = array(state, "series_index", np.int64, 1)
    n, d = len(fb.columns_), len(fb.feature_names_)
    expect(len(fb.fill_) == n, "one fill value per column")
    expect(fb.profile_.shape == (fb.n_bins_, n) and fb.n_bins_ >= 1, "profile is (bins, columns)")
    expect(fb.center_.shape == fb.scale_.shape == fb.series_index_.shape == (d,), "per feature")
    expect(fb.history_len_ >= 0 and fb.bin_seconds_ > 0, "positive windows")
    fb.deadband_ = fb.level_deadband()
    return fb
