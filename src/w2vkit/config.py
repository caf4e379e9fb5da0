"""Config machinery: plain dataclasses, thin YAML diffs and dotted overrides.

Loading order is defaults -> preset -> YAML -> `a.b.c=value` overrides. Every step goes through
`from_dict`, which rejects unknown keys and wrong types with the dotted key named, so a typo in a
YAML file or on the command line fails before anything runs.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class UsageError(ValueError):
    """Something a user gave (a flag, a path, a file's contents) is wrong; the message names it.

    `w2vkit.cli.main` prints `w2vkit COMMAND: message` on stderr and exits 2 for it (and for its
    subclasses), with no traceback unless `--verbose` is given. Raise it, with what to do next
    where there is one thing to do, instead of printing and returning an exit code.
    """


class ConfigError(UsageError):
    """A config key, value or file a user wrote is wrong; the message names it."""


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dict/list tree (tuples become lists), safe for YAML and checkpoints."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def deep_merge(base: dict, diff: dict) -> dict:
    """Return `base` updated by `diff`, recursing into nested dicts (lists are replaced whole)."""
    out = dict(base)
    for key, value in diff.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def nest(flat: dict[str, Any]) -> dict:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`."""
    tree: dict = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def number_or_self(value: Any) -> Any:
    """A number PyYAML left as a string (YAML 1.1 reads `5e-4`, without a dot, as one) -> float."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(overrides: list[str]) -> dict:
    """`["optim.lr=1e-3", "train.max_steps=10"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key below a value")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def _yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    """One line: `file:line:column: not valid YAML: problem` (PyYAML's message spans several)."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{where}: not valid YAML: {problem}"


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping top level is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{_yaml_problem(path, err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict, *, base: T | None = None, where: str = "") -> T:
    """Build dataclass `cls` from `data`, starting from `base` (or the defaults).

    Keys missing from `data` keep their base value; unknown keys and wrong types raise ConfigError
    naming the dotted key and the valid choices.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"unknown config key {key!r}; valid keys here: {', '.join(sorted(fields))}"
        )
    values = {}
    for name in fields:
        key = f"{where}.{name}" if where else name
        current = getattr(base, name) if base is not None else _default(fields[name])
        if name not in data:
            values[name] = current
            continue
        values[name] = _coerce(hints[name], data[name], key, current)
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _coerce(hint: Any, value: Any, key: str, current: Any) -> Any:
    origin = get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, base=current, where=key)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key, current)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}"
        )
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}: {value!r}")
            return tuple(
                _coerce(a, v, f"{key}[{i}]", None)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        coerced = [_coerce(item, v, f"{key}[{i}]", None) for i, v in enumerate(value)]
        return tuple(coerced) if origin is tuple else coerced
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        value = number_or_self(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {hint!r}")  # a bug in a config class


def check(condition: bool, key: str, message: str) -> None:
    """Validation helper for `__post_init__`: raise ConfigError naming `key` when false."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


__all__ = [
    "ConfigError",
    "check",
    "deep_merge",
    "flatten",
    "from_dict",
    "load_yaml",
    "nest",
    "number_or_self",
    "parse_overrides",
    "to_dict",
]
