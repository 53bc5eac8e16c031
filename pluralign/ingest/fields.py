"""Typed extraction of one source field from a raw row, raising FieldError that names it."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from pluralign.core.data import FieldError, Prompt


def missing(row: dict[str, Any], name: str) -> bool:
    """True when `name` is absent or null."""
    return row.get(name) is None


def require(row: dict[str, Any], name: str) -> Any:
    """The value of `name`, or FieldError('missing_field')."""
    if missing(row, name):
        raise FieldError(name, "is missing", "missing_field")
    return row[name]


def text(row: dict[str, Any], name: str, required: bool = True) -> str | None:
    """A string field."""
    if not required and missing(row, name):
        return None
    value = require(row, name)
    if not isinstance(value, str):
        raise FieldError(name, f"expected a string, got {_kind(value)}", "wrong_type")
    return value


def ident(row: dict[str, Any], name: str, required: bool = True) -> str | None:
    """An identifier: a string, or an integer taken as its decimal string, in Unicode NFC (so
    that the composed and decomposed spellings of one name are one id)."""
    if not required and missing(row, name):
        return None
    value = require(row, name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FieldError(name, f"expected a string or integer id, got {_kind(value)}",
                         "wrong_type")
    value = unicodedata.normalize("NFC", str(value))
    if not value.strip():
        raise FieldError(name, "is empty", "missing_field")
    return value


def prompt(row: dict[str, Any], name: str = "prompt") -> Prompt:
    """A prompt: text, or a list of chat messages {role, content}."""
    value = require(row, name)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    raise FieldError(name, f"expected a string or a list of chat messages, got {_kind(value)}",
                     "wrong_type")


def response(value: Any, name: str) -> str:
    """A response: text, or one assistant message (TRL's conversational layout)."""
    if value is None:
        raise FieldError(name, "holds an empty (null) response", "empty_response")
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        value = [value]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        msg = value[0]
        if msg.get("role", "assistant") != "assistant" or not isinstance(msg.get("content"), str):
            raise FieldError(name, "a message response must be one assistant turn with string "
                                   "content", "wrong_type")
        return msg["content"]
    raise FieldError(name, f"expected a string or one assistant message, got {_kind(value)}",
                     "wrong_type")


def responses(row: dict[str, Any], name: str = "responses") -> list[str]:
    """A list of responses."""
    value = require(row, name)
    if not isinstance(value, list):
        raise FieldError(name, f"expected a list of responses, got {_kind(value)}", "wrong_type")
    return [response(v, name) for v in value]


def integers(row: dict[str, Any], name: str) -> list[int]:
    """A list of integers (e.g. a ranking)."""
    value = require(row, name)
    if not isinstance(value, list):
        raise FieldError(name, f"expected a list of integers, got {_kind(value)}", "wrong_type")
    out = []
    for v in value:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise FieldError(name, f"expected integers, found {v!r}", "wrong_type")
        out.append(v)
    return out


def number(value: Any, name: str, textual: bool) -> float:
    """One finite number; from text cells a numeric string is accepted."""
    if textual and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FieldError(name, f"expected a number, got {value!r}", "wrong_type") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(name, f"expected a number, got {_kind(value)}", "wrong_type")
    if not math.isfinite(value):
        raise FieldError(name, f"holds a non-finite value {value}", "non_finite")
    return float(value)


def numbers(row: dict[str, Any], name: str, textual: bool) -> list[float]:
    """A list of finite numbers (e.g. scores)."""
    value = require(row, name)
    if not isinstance(value, list):
        raise FieldError(name, f"expected a list of numbers, got {_kind(value)}", "wrong_type")
    return [number(v, name, textual) for v in value]


def features(row: dict[str, Any], name: str = "features") -> list[list[float]] | None:
    """Optional per-response feature vectors; checked fully by check_annotation."""
    if missing(row, name):
        return None
    value = row[name]
    if not isinstance(value, list) or not all(isinstance(v, list) for v in value):
        raise FieldError(name, f"expected one list of numbers per response, got {_kind(value)}",
                         "wrong_type")
    for vec in value:
        for x in vec:
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise FieldError(name, f"holds a non-number {x!r}", "wrong_type")
            if not math.isfinite(x):
                raise FieldError(name, f"holds a non-finite value {x}", "non_finite")
    return [[float(x) for x in vec] for vec in value]


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
