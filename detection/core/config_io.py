"""Dataclasses from plain data and back: the strict mechanism behind every config section.

Stage modules keep their settings dataclass beside their code and use these functions;
:mod:`detection.config` gathers the sections into the run's :class:`~detection.config.Config`.
Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar

import yaml

__all__ = ["ConfigError", "from_dict", "to_dict", "apply_overrides"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses; the message says where."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int -> float, lists -> tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def from_dict(cls: type[T], values: dict[str, Any], where: str = "config", base: T | None = None) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError.

    Keys absent from ``values`` keep the value in ``base`` (or the field's default). A nested
    section given in part keeps the *enclosing* default for the rest: a preset's defaults for a
    sub-section survive an override of one of its keys.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in values.items():
        current = getattr(base, key) if base is not None else _field_default(cls, key)
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            kwargs[key] = from_dict(hints[key], value, f"{where}.{key}", base=current)
        else:
            kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    try:
        if base is not None:
            return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
        return cls(**kwargs)
    except ValueError as error:  # a dataclass's own validation
        raise ConfigError(f"{where}: {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain data (tuples as lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested mapping (values parsed as YAML)."""
    for override in overrides:
        dotted, sep, raw = override.partition("=")
        if not sep or not dotted:
            raise ConfigError(f"--set {override!r}: expected section.key=value")
        keys = dotted.strip().split(".")
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {override!r}: '{key}' is not a section")
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return values
