"""JSON from clients, decoded and checked once at the edge (docs/protocol.md section 5). Pure.

Clients may send any text JSON can carry; the backend refuses, with the field's name, what it
cannot store or handle as sent: U+0000 and unpaired surrogates (Postgres ``text`` and UTF-8
cannot hold them), nesting deeper than :data:`MAX_DEPTH` (a deep document costs recursion in
every decoder) and integers outside the 64-bit range (Postgres ``bigint``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_DIGITS = re.compile(r"-?[0-9]{1,19}")
_decoder = msgspec.json.Decoder()


class Refused(ValueError):
    """The input cannot be taken as sent; the message says what and where."""


def storable(text: str) -> bool:
    """True unless ``text`` holds U+0000 or an unpaired surrogate."""
    if text.isascii():  # no surrogates: one scan in C instead of the regex
        return "\x00" not in text
    return _UNSTORABLE.search(text) is None


def decode(raw: str | bytes) -> Any:
    """JSON to Python values, or Refused. Values may still hold what :func:`problem` refuses."""
    try:
        return _decoder.decode(raw)
    except RecursionError:
        raise Refused(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except (msgspec.DecodeError, UnicodeDecodeError):  # the latter: bytes that are not UTF-8
        pass
    # msgspec refuses unpaired surrogate escapes outright; the standard library reads them, so
    # the caller can name the field that holds one.
    try:
        return json.loads(raw)
    except RecursionError:
        raise Refused(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise Refused("not valid JSON") from None


def _clean(value: Any, depth: int = 1) -> bool:
    """True when :func:`problem` would find nothing; False when it may. The common case, every
    frame a client sends, without building a name for every key on the way."""
    if depth > MAX_DEPTH:
        return False
    kind = type(value)
    if kind is str:
        return storable(value)
    if kind is dict:
        return all(type(k) is str and storable(k) and _clean(v, depth + 1) for k, v in value.items())
    if kind is list:
        return all(_clean(v, depth + 1) for v in value)
    if kind is int:
        return bool(INT64_MIN <= value <= INT64_MAX)
    return kind is bool or kind is float or value is None


def problem(value: Any) -> str | None:
    """What in ``value`` cannot be taken as sent, naming where; None when all is well."""
    return None if _clean(value) else _named_problem(value)


def _named_problem(value: Any) -> str | None:
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, where, depth = stack.pop()
        name = where or "the value"
        if depth > MAX_DEPTH:
            return f"{name} is nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, str):
            if not storable(item):
                return f"{name} contains U+0000 or an unpaired surrogate"
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                return f"{name} is outside the 64-bit integer range"
        elif isinstance(item, dict):
            for key, inner in item.items():
                path = f"{where}.{key}" if where else str(key)
                if not storable(str(key)):
                    return "a key contains U+0000 or an unpaired surrogate"
                stack.append((inner, path, depth + 1))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}[{i}]", depth + 1) for i, inner in enumerate(item))
    return None


def load(raw: str | bytes) -> Any:
    """:func:`decode`, then :func:`problem`: a value every part of which can be stored, or Refused."""
    value = decode(raw)
    found = problem(value)
    if found is not None:
        raise Refused(found)
    return value


def whole_number(raw: str, name: str, lo: int, hi: int = INT64_MAX) -> int:
    """A query parameter as an integer: ASCII digits, one optional minus (not ``²`` or ``--5``), in range."""
    if _DIGITS.fullmatch(raw) is None:
        raise Refused(f"{name} must be a whole number written with the digits 0-9")
    value = int(raw)
    if not lo <= value <= hi:
        raise Refused(f"{name} must be >= {lo}" if hi == INT64_MAX else f"{name} must be between {lo} and {hi}")
    return value
