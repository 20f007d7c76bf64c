"""Plain-words messages for pydantic's own error kinds ("unknown key", "must be a list")."""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from fulcrum.config.units import short_repr

FULCRUM_ERROR = "fulcrum"


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing (null)"
    return type(value).__name__


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class found at ``loc`` under ``root``, or None when ``loc`` leads elsewhere."""
    current: Any = root
    pending = list(loc)
    while pending:
        current = _unwrap(current)
        key = pending.pop(0)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(key) if isinstance(key, str) else None
            if field is None:
                return None
            current = field.annotation
            continue
        origin = get_origin(current)
        args = get_args(current)
        if origin in (tuple, list) and args:
            current = args[0]
        elif origin is dict and len(args) == 2:
            current = args[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _suggest(word: object, choices: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def humanize(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One error from ``ValidationError.errors()`` as a phrase to print after its key path."""
    kind = error.get("type", "")
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    loc = tuple(error.get("loc", ()))
    got = f"got {short_repr(value)}"
    if kind == FULCRUM_ERROR:
        return str(ctx.get("reason", error.get("msg", "")))
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "extra_forbidden":
        model = model_at(root, loc[:-1])
        known = sorted(model.model_fields) if model is not None else []
        hint = _suggest(loc[-1] if loc else None, known)
        return f"unknown key{hint}" if hint or not known else f"unknown key (known here: {', '.join(known)})"
    if kind == "missing":
        return "missing (required)"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"must be one of {', '.join(choices)}, {got}{_suggest(value, choices)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, {got}"
    if kind in ("string_type", "string_unicode"):
        return f"must be a string, got {_kind(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, {got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return f"must be a mapping of keys to values, got {_kind(value)}"
    if kind in ("tuple_type", "list_type", "iterable_type", "sequence_str"):
        return f"must be a list, got {_kind(value)}"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx.get('min_length')} items"
    message = str(error.get("msg", "is not valid"))
    return message[:1].lower() + message[1:]
