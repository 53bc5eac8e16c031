"""YAML configuration mapped onto typed settings: an unknown key, a wrong type or a bad value
stops before any work, with a message naming the key and the file."""

from __future__ import annotations

import argparse
import codecs
import collections.abc
import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, naming the file and the key."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases (an alias bomb expands to gigabytes)
    and reads 1e-3 as the number a user means (YAML 1.1 wants a dot: 1.0e-3)."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) "
                              "are not accepted in a pluralign config; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):  # `? [a, b]`: a list as a key
                raise ConfigError(f"line {key_node.start_mark.line + 1}: a key must be a name, "
                                  f"got a {type(key).__name__}")
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key "
                                  f"'{key}' (a second value would silently replace the first)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file: no duplicate keys, no aliases."""
    path = Path(path)
    try:
        data = yaml.load(_text(path), Loader=_StrictLoader)  # noqa: S506
    except ConfigError as e:
        raise ConfigError(f"{path}, {e}") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read YAML ({' '.join(str(e).split())})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _text(path: Path) -> str:
    """The file as text: UTF-8 (a byte-order mark dropped), or UTF-16 with its mark, as
    Windows editors save."""
    raw = path.read_bytes()
    encoding = "utf-16" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not {encoding.upper()[:6]} text (byte "
                          f"{e.start}); save the file as UTF-8") from None


def section(config: dict[str, Any], name: str, allowed: dict[str, Any], source: str,
            where: str | None = None) -> dict[str, Any]:
    """Section `name` of `config`, checked against `allowed` (key -> annotation)."""
    values = config.get(name)
    values = {} if values is None else values  # `em:` with nothing under it: the defaults
    where = where or name
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section '{where}' must be a mapping of keys, got "
                          f"{type(values).__name__} {values!r}")
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{source}: unknown key '{key}' in section '{where}'; known keys: "
                              f"{', '.join(sorted(allowed))}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ConfigError(f"{source}: key '{where}.{key}' is out of range: {value} (at most "
                              "2**63 - 1 in size)")
        if not _fits(value, allowed[key]):
            raise ConfigError(f"{source}: key '{where}.{key}' has the wrong type: expected "
                              f"{_name(allowed[key])}, got {type(value).__name__} {value!r}")
    return dict(values)


#: The largest integer a setting may hold (64-bit, as torch and numpy take them).
MAX_INT = 2**63 - 1


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
        return isinstance(value, int | float) and not isinstance(value, bool) and \
            math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):  # and every element fits (list[float]: finite numbers)
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, list | tuple) and all(
            _fits(v, args[0] if origin is list or len(args) == 1 else args[min(i, len(args) - 1)])
            for i, v in enumerate(value)) if args else isinstance(value, list | tuple)
    if origin is dict:
        args = typing.get_args(annotation)
        return isinstance(value, dict) and (not args or all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()))
    if origin is collections.abc.Callable:  # never a YAML value: a name is the choice there
        return callable(value)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # arrays and the like: not expressible in YAML, accepted as given


def _name(annotation: Any) -> str:
    """The type as a YAML writer reads it: callables, which YAML cannot hold, left out."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_name(a) for a in typing.get_args(annotation)
                          if typing.get_origin(a) is not collections.abc.Callable)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")  # list[float] and the like, whole


# -- command-line flags generated from the same dataclasses ---------------------------------
def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str | None = None,
              skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the settings dataclass `cls`: its name, type,
    choices and help come from the field, so YAML and the command line cannot drift. Metadata
    may rename a flag (`flag`), give a metavar, choices, or a parser for text (`parse`: range,
    fractions). A bool that defaults to True becomes a flag that turns it off. A flag not given
    is absent from the parsed namespace: the dataclass's default applies (from_flags).
    `prefix`: a YAML section's name put before each flag and destination (--lora-rank into
    `lora.rank`), for a command that takes several sections; `skip`: fields set otherwise."""
    hints = dataclass_fields(cls)
    group = parser.add_argument_group(f"{prefix}: section (YAML)") if prefix else parser
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta, kind, default = f.metadata, hints[f.name], _default(f)
        flag = flag_of(f, prefix)
        shown = " (on by default; this flag turns it off)" if default is True else \
            "" if default in (None, False) or default == {} else f" (default {default})"
        common = {"dest": f.name if prefix is None else f"{prefix}.{f.name}",
                  "default": argparse.SUPPRESS,
                  "help": (meta.get("help", "") + shown).replace("%", "%%")}
        if kind is bool:
            group.add_argument(flag, action="store_false" if default else "store_true",
                               **common)
            continue
        if meta.get("nargs"):  # a list given as several words: --map a=b c=d
            group.add_argument(flag, nargs=meta["nargs"], action="extend",
                               metavar=meta.get("metavar"), **common)
            continue
        metavar = meta.get("metavar") or (f.name.upper() if prefix else None)
        group.add_argument(flag, type=_text_parser(kind, meta.get("parse")),
                           choices=meta.get("choices"), metavar=metavar, **common)


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def flag_of(f: dataclasses.Field, prefix: str | None = None) -> str:
    """The command-line flag of a settings field: metadata `flag`, else --[PREFIX-]NAME
    (--no-[PREFIX-]NAME for a bool that defaults to True)."""
    if f.metadata.get("flag") and prefix is None:
        return f.metadata["flag"]
    name = (f"{prefix}-" if prefix else "") + f.name.replace("_", "-")
    return "--" + ("no-" if _default(f) is True else "") + name


def given(cls: type, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The fields of `cls` given as --PREFIX-NAME flags (add_flags with `prefix`)."""
    return {f.name: getattr(args, f"{prefix}.{f.name}") for f in dataclasses.fields(cls)
            if hasattr(args, f"{prefix}.{f.name}")}


def from_flags(cls: type, args: argparse.Namespace) -> Any:
    """`cls` built from the flags add_flags made (those given; defaults from the dataclass).
    A bad value is refused by the rule its YAML key follows, in the same words, with the
    flag's name in place of the key's."""
    fields = dataclasses.fields(cls)
    try:
        return cls(**{f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)})
    except (TypeError, ValueError) as e:
        message = str(e)
        for f in fields:
            if message.startswith(f.name + " "):
                message = flag_of(f) + message[len(f.name):]
                break
        raise ConfigError(message) from None


def _text_parser(kind: Any, parse: str | None) -> Callable[[str], Any]:
    """Text to a value of type `kind` (int, float, str, X | None, lists of numbers)."""
    if parse is not None:
        return _named(PARSERS[parse])
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) in (list, tuple):
        item = next(a for a in typing.get_args(kind) if a is not Ellipsis)
        return _named(lambda text: [item(x) for x in text.split(",")])
    return _named(kind)


def _named(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert`, its errors made argparse's (exit 2, one line naming the flag)."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} ({e})") from None
    return parse


def _range(text: str) -> tuple[int, int]:
    """N, or MIN-MAX."""
    lo, _, hi = text.partition("-")
    try:
        return (int(lo), int(hi or lo))
    except ValueError:
        raise ValueError("expects N or MIN-MAX") from None


def _fractions(text: str) -> dict[str, float]:
    """KIND=FRACTION,..."""
    out = {}
    for part in filter(None, text.split(",")):
        kind, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expects KIND=FRACTION, got {part!r}")
        out[kind.strip()] = float(value)
    return out


def _types(text: str) -> int | str:
    """K, or auto."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError("expects an integer or auto") from None


PARSERS: dict[str, Callable[[str], Any]] = {"range": _range, "fractions": _fractions,
                                            "types": _types}
