"""Pydantic's validation errors → the campaign file's error lines, `dotted.field.path: message`,
with the valid choices, allowed keys and a close match for a misspelled key."""
from __future__ import annotations

import difflib
import re
import types
from typing import Annotated, Any, Optional, Union, get_args, get_origin

from pydantic import BaseModel


def _flatten(tp: Any) -> list:
    """The alternatives of a type: unwraps Annotated, Optional and Union."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _flatten(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for a in get_args(tp) for t in _flatten(a)]
    return [] if tp is type(None) else [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and get_origin(tp) is None and issubclass(tp, BaseModel)


def _kind(model: type) -> Optional[str]:
    field = model.model_fields.get("kind")
    return get_args(field.annotation)[0] if field is not None else None



def _walk(loc: tuple, root: type) -> tuple[list[str], list[type], list]:
    """A pydantic loc below the model `root` → (dotted path parts with union tags dropped, models
    owning the last part, the types the last part may take)."""
    cands: list = [root]
    parts: list[str] = []
    owners: list[type] = []
    for seg in loc:
        models = [c for c in cands if _is_model(c)]
        if isinstance(seg, int):
            parts.append(str(seg))
            cands = [a for c in cands if get_origin(c) is list for a in _flatten(get_args(c)[0])]
            continue
        owner = next((m for m in models if seg in m.model_fields), None)
        tagged = [m for m in models if _kind(m) == seg]
        if owner is None and tagged:          # discriminator tag inserted by pydantic
            cands = tagged
            continue
        parts.append(str(seg))
        owners = models
        cands = _flatten(owner.model_fields[seg].annotation) if owner else []
    return parts, owners, cands


def _unquote(s: str) -> str:
    return ", ".join(x.strip().strip("'\"") for x in re.split(r",| or ", s) if x.strip())


_EXPECTED = {"int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
             "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
             "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
             "path_type": "a path (a string)"}


def translate(err: dict, root: type) -> list[str]:
    """One pydantic error of a `root` model → lines of 'dotted.path: message'."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    parts, owners, cands = _walk(tuple(err["loc"]), root)
    msg = str(err["msg"])
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not parts:                          # root validator: lines already carry their path
            return msg.splitlines()
    elif kind == "missing":
        msg = "required field missing"
    elif kind == "extra_forbidden":
        allowed = list(owners[0].model_fields) if len(owners) == 1 else []
        msg = "unknown key"
        close = difflib.get_close_matches(str(parts[-1]), allowed, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        if allowed:
            msg += f"; allowed keys: {', '.join(allowed)}"
    elif kind == "literal_error":
        msg = f"expected one of: {_unquote(ctx['expected'])}; got {got!r}"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        parts.append(str(ctx.get("discriminator", "kind")).strip("'"))
        choices = ", ".join(str(_kind(m)) for m in cands if _is_model(m))
        msg = (f"expected one of: {choices}; got {ctx.get('tag')!r}" if kind == "union_tag_invalid"
               else f"required field missing; expected one of: {choices}")
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op, bound = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
                     "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}[kind]
        limit = ctx[bound]
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        msg = f"must be {op} {limit}, got {got!r}"
    elif kind == "too_short":
        msg = f"must have at least {ctx['min_length']} item(s), got {ctx.get('actual_length', 0)}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"expected a mapping (a section of keys), got {type(got).__name__} {got!r}"
    elif kind in _EXPECTED:
        msg = f"expected {_EXPECTED[kind]}, got {got!r}"
    else:
        msg = f"{msg[:1].lower()}{msg[1:]}, got {got!r}"
    return [f"{'.'.join(parts) or '(top level)'}: {msg}"]
