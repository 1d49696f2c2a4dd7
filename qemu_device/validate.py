"""Typed, bounded fields of control requests and fault specs.

Concepts: a *check* is a function ``(field, value) -> value`` that returns the value
(normalised) or raises ``FieldError`` naming the field, what it must be and what it got.
The control channel declares, per command, which fields it takes and the check of each
(``check_fields``), so a request with a wrong type, a value out of range or an unknown
field is refused before any handler runs: no ``int()`` of a float, no ``OverflowError``,
no value the server cannot represent.  JSON booleans are never integers here.
"""

from __future__ import annotations

import errno as _errno
from typing import Any, Callable

from .errors import FieldError

Check = Callable[[str, Any], Any]

#: errnos a fault may answer with: the ones this system names.
KNOWN_ERRNOS = dict(_errno.errorcode)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "an object", type(None): "null"}.get(type(value),
                                                                       type(value).__name__)


def integer(lo: int, hi: int) -> Check:
    """An integer in lo..hi."""
    def check(field: str, value: Any) -> int:
        if type(value) is not int:
            raise FieldError(field, f"{field!r} must be an integer in {lo}..{hi}, "
                             f"not {_kind(value)} {_show(value)}")
        if not lo <= value <= hi:
            raise FieldError(field, f"{field!r} must be in {lo}..{hi}, not {_show(value)}",
                             errno=_errno.ERANGE)
        return value
    return check


def string(max_len: int) -> Check:
    """A string of 1..max_len characters."""
    def check(field: str, value: Any) -> str:
        if type(value) is not str or not 0 < len(value) <= max_len:
            raise FieldError(field, f"{field!r} must be a string of 1..{max_len} "
                             f"characters, not {_kind(value)} {_show(value)}")
        return value
    return check


def list_of(item: Check, max_items: int, min_items: int = 1) -> Check:
    """An array of min_items..max_items elements, each passing ``item``."""
    def check(field: str, value: Any) -> list:
        if type(value) is not list or not min_items <= len(value) <= max_items:
            size = f"{len(value)} elements" if type(value) is list else _show(value)
            raise FieldError(field, f"{field!r} must be an array of {min_items}.."
                             f"{max_items} elements, not {_kind(value)} ({size})")
        return [item(f"{field}[{i}]", v) for i, v in enumerate(value)]
    return check


def optional(inner: Check) -> Check:
    """``inner``, or null (returned as None)."""
    def check(field: str, value: Any) -> Any:
        return None if value is None else inner(field, value)
    return check


def errno_value(field: str, value: Any) -> int:
    """A real errno: a known positive number, or its name (``"EIO"``)."""
    if type(value) is str:
        for number, name in KNOWN_ERRNOS.items():
            if name == value:
                return number
        raise FieldError(field, f"{field!r}: unknown errno name {_show(value)}")
    if type(value) is int and value in KNOWN_ERRNOS:
        return value
    raise FieldError(field, f"{field!r} must be an errno name (EIO) or a known positive "
                     f"errno number (1..{max(KNOWN_ERRNOS)}), not {_kind(value)} "
                     f"{_show(value)}")


def check_fields(what: str, fields: dict, spec: dict[str, Check],
                 required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``what``, each checked by ``spec``; unknown or missing ones are
    refused, naming the field and the accepted ones."""
    for name in fields:
        if name not in spec:
            accepted = ", ".join(sorted(spec)) or "none"
            raise FieldError(name, f"{what}: unknown field {_show(name)} "
                             f"(accepted: {accepted})")
    for name in required:
        if fields.get(name) is None:
            raise FieldError(name, f"{what} needs the field {name!r}")
    return {name: spec[name](name, value) for name, value in fields.items()}
