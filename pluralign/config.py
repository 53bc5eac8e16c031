"""YAML configuration mapped onto typed settings: an unknown key, a wrong type or a bad value
stops before any work, with a message naming the key and the file."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, naming the file and the key."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def section(config: dict[str, Any], name: str, allowed: dict[str, Any], source: str,
            where: str | None = None) -> dict[str, Any]:
    """Section `name` of `config`, checked against `allowed` (key -> annotation)."""
    values = config.get(name) or {}
    where = where or name
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section '{where}' must be a mapping")
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{source}: unknown key '{key}' in section '{where}'; known keys: "
                              f"{', '.join(sorted(allowed))}")
        if not _fits(value, allowed[key]):
            raise ConfigError(f"{source}: key '{where}.{key}' has the wrong type: expected "
                              f"{_name(allowed[key])}, got {type(value).__name__} {value!r}")
    return dict(values)


def check_sections(config: dict[str, Any], known: tuple[str, ...], source: str) -> None:
    """Every top-level key of `config` must be a known section."""
    for key in config:
        if key not in known:
            raise ConfigError(f"{source}: unknown section '{key}'; known sections: "
                              f"{', '.join(known)}")


def dataclass_fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def signature_fields(fn: Callable, skip: tuple[str, ...] = ("self",)) -> dict[str, Any]:
    """Parameter name -> resolved annotation of a callable (e.g. an estimator's __init__)."""
    hints = typing.get_type_hints(fn)
    return {n: hints.get(n, Any) for n in inspect.signature(fn).parameters if n not in skip}


def build(cls: type, values: dict[str, Any], source: str, where: str) -> Any:
    """cls(**values), turning a validation error into one that names the file and section."""
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: section '{where}': {e}") from e


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a type annotation (ints count as floats; lists as tuples)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        return isinstance(value, list | tuple)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # callables, arrays: not expressible in YAML, accepted as given


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
