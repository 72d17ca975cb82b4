"""Convex values in Python: the one module that encodes, decodes, compares and hashes them, losslessly.

Python stands for Convex values as the `convex` package has it: None, bool, str, list, dict; `float` (and `int`,
which every caller uses for whole numbers) is a Convex float64; `bytes` is bytes; an int64 is an `Int64`. Two
JSON encodings meet the runbook (convex-backend `crates/value/src/json/mod.rs` and `export.rs`):

- the wire format (`convex_encoded_json`): every bare number is a float64; int64 travels as
  ``{"$integer": base64 of 8 little-endian bytes}``, bytes as ``{"$bytes": base64}``, and -0.0, NaN and ±Inf as
  ``{"$float": base64 of the 8 little-endian bytes}``. `dumps`/`loads` write and read it, so the plan lines,
  checkpoints and rollback files the runbook writes hold every Convex value exactly;
- the export format of a snapshot ZIP: int64 is a bare JSON number (``5``), a finite float64 always carries a
  fraction or an exponent (``5.0``, ``-0.0``, ``1e20``), NaN/±Inf are ``{"$float": …}``, bytes ``{"$bytes": …}``.
  `loads_export` reads it.

Equality follows the deployment's compare-and-set (convex/values.ts `valuesEqual`): int64 and float64 are
different types (Int64(5) is not 5.0), -0.0 is not 0.0, NaN equals NaN, a boolean is never a number.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import orjson
from convex.values import ConvexInt64

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_MAX_SAFE_INTEGER = 2**53
_INF = math.inf
_NAN_TAG = "NaN"  # every NaN digests alike, as every NaN compares equal
_CANONICAL_NAN = struct.pack("<d", math.nan)  # the NaN JavaScript and Python write


class Int64(int):
    """A Convex int64 (a JavaScript bigint): equal only to another Int64 of the same value, never to a float64.

    An `int` subclass, so arithmetic works and the standard library's `json` writes it as a bare number (as Convex's
    export does), while `type(x) is int` checks still tell it apart. Not the `convex` package's `ConvexInt64`: that
    one is unhashable and equals the float64 5.0 under `==`."""

    __slots__ = ()

    def __new__(cls, value: int) -> Int64:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{value} is outside Convex's int64 range [-2**63, 2**63 - 1].")
        return super().__new__(cls, value)

    def __eq__(self, other: object) -> bool:
        return type(other) is Int64 and int(self) == int(other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = int.__hash__

    def __repr__(self) -> str:
        return f"Int64({int(self)})"


# -- wire format --------------------------------------------------------------------------------------------


def to_wire(value: Any, *, convex_numbers: bool = False) -> Any:
    """The JSON-ready wire encoding of a Convex value (what `dumps` writes and the transport sends).

    With `convex_numbers` (what goes to a deployment) an `int` must fit a float64 exactly (|n| <= 2**53), as the
    `convex` package demands: a larger one would silently round there; use Int64 for an int64."""
    value_type = type(value)
    if value_type is str or value_type is bool or value is None:
        return value
    if value_type is int:
        if convex_numbers and not -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            raise ValueError(f"Integer {value} is outside the range of a Convex float64 (-2**53 to 2**53): use Int64 for an int64.")
        return value
    if value_type is float:
        return value if _plain_float(value) else {"$float": _float_base64(value)}
    if value_type is dict:
        return {key: to_wire(item, convex_numbers=convex_numbers) for key, item in value.items()}
    if value_type is list or value_type is tuple:
        return [to_wire(item, convex_numbers=convex_numbers) for item in value]
    if value_type is Int64:
        return {"$integer": base64.b64encode(struct.pack("<q", value)).decode("ascii")}
    if value_type is bytes or value_type is bytearray or value_type is memoryview:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if value_type is ConvexInt64:  # the `convex` package's int64, accepted from callers
        return to_wire(Int64(value.value))
    raise TypeError(f"{value!r} of type {value_type.__name__} is not a Convex value.")


def from_wire(value: Any) -> Any:
    """Decodes the wire format's ``$integer``/``$float``/``$bytes`` objects inside parsed JSON."""
    value_type = type(value)
    if value_type is dict:
        if len(value) == 1:
            [(key, item)] = value.items()
            if key[:1] == "$":
                return _special(key, item)
        return {key: from_wire(item) for key, item in value.items()}
    if value_type is list:
        return [from_wire(item) for item in value]
    return value


def dumps(value: Any, *, sort_keys: bool = False, convex_numbers: bool = False) -> bytes:
    """One JSON text (no newline) in the wire format: every Convex value, NaN, -0.0, int64 and bytes included.

    Raises TypeError for what is no Convex value (or a string with a lone surrogate: Convex strings are UTF-8)."""
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    try:  # fast path: orjson walks in C; Int64, bytes and ConvexInt64 reach `_wire_default`
        text = orjson.dumps(value, default=_wire_default,
                            option=option | orjson.OPT_PASSTHROUGH_SUBCLASS | (orjson.OPT_STRICT_INTEGER if convex_numbers else 0))
    except TypeError:
        text = None
    # orjson writes NaN and ±Inf as null and keeps -0.0: where either may be, walk in Python (exact, slower).
    # A null is usually a None: the text read back then equals the value (a NaN or ±Inf read back is None, never
    # equal to it; Int64, bytes and tuples read back unequal too), which costs a fraction of the walk.
    if text is None or b"-0.0" in text or (b"null" in text and orjson.loads(text) != value):
        return orjson.dumps(to_wire(value, convex_numbers=convex_numbers), option=option)
    return text


def _wire_default(value: Any) -> Any:
    """orjson's hook for what it does not write itself: the Convex values with a wire object of their own."""
    value_type = type(value)
    if value_type is Int64 or value_type is bytes or value_type is bytearray or value_type is memoryview or value_type is ConvexInt64:
        return to_wire(value)
    raise TypeError


def loads(data: bytes | str) -> Any:
    """Parses a JSON text in the wire format (as `dumps` writes it or a deployment answers)."""
    parsed = orjson.loads(data)
    # A special value is an object whose key starts with '$'. Most texts hold no '$' at all, which one `memchr`
    # finds ~12x faster than a search for '"$' (the walk is only needed when one is there).
    binary = isinstance(data, bytes | bytearray | memoryview)
    dollar, marker = (b"$", b'"$') if binary else ("$", '"$')
    return from_wire(parsed) if dollar in data and marker in data else parsed  # type: ignore[operator]


# -- export format (snapshot ZIP lines) ----------------------------------------------------------------------


def loads_export(line: bytes) -> Any:
    """Parses one line of a Convex snapshot export: bare integers are int64, numbers with a fraction float64.

    Raises ValueError for a line that is not UTF-8 JSON or holds a malformed special value. (The walk over the
    parsed document costs less than a regular-expression search for bare integers would.)"""
    return _from_export(orjson.loads(line))


def _from_export(value: Any) -> Any:
    value_type = type(value)
    if value_type is int:
        return Int64(value)
    if value_type is dict:
        if value and next(iter(value))[:1] == "$":  # as export.rs: an object led by a '$' key is a special value
            if len(value) != 1:
                raise ValueError(f"Object with more than one key starting with '$': {sorted(value)}")
            [(key, item)] = value.items()
            return _special(key, item)
        return {key: _from_export(item) for key, item in value.items()}
    if value_type is list:
        return [_from_export(item) for item in value]
    return value


def _special(key: str, encoded: Any) -> Any:
    if type(encoded) is not str:
        raise ValueError(f"{key} must hold a base64 string, not {encoded!r}")
    raw = base64.b64decode(encoded, validate=True)
    if key == "$bytes":
        return raw
    if len(raw) != 8:
        raise ValueError(f"{key} must encode 8 bytes, found {len(raw)}")
    if key == "$integer":
        return Int64(struct.unpack("<q", raw)[0])
    if key == "$float":
        if raw == _CANONICAL_NAN:
            return math.nan  # one NaN object: containers holding it then compare equal with == as well
        number = struct.unpack("<d", raw)[0]
        if _plain_float(number) and number != 0:  # as Convex: a normal float must be written as a number
            raise ValueError(f"Float64 {number} should be encoded as a number")
        return number
    raise ValueError(f"Unknown special value key {key!r}")


def _plain_float(number: float) -> bool:
    """True for a float JSON can write as a number: finite and not negative zero."""
    return -_INF < number < _INF and (number != 0 or math.copysign(1.0, number) > 0)


def _float_base64(number: float) -> str:
    return base64.b64encode(struct.pack("<d", number)).decode("ascii")


# -- equality and hashing -------------------------------------------------------------------------------------


def equal(a: Any, b: Any) -> bool:
    """Convex equality: int64 never equals float64, -0.0 is not 0.0, NaN equals NaN, a boolean is never a number."""
    type_a, type_b = type(a), type(b)
    if (type_a is float or type_a is int) and (type_b is float or type_b is int):
        if a == b:
            return a != 0 or math.copysign(1.0, a) == math.copysign(1.0, b)
        return bool(a != a and b != b)
    if type_a is not type_b:
        return False
    if type_a is dict:
        if a.keys() != b.keys():
            return False
        for key, value in a.items():
            other = b[key]
            if type(value) is str and type(other) is str:  # the usual case, compared in place
                if value != other:
                    return False
            elif not equal(value, other):
                return False
        return True
    if type_a is list:
        return len(a) == len(b) and all(map(equal, a, b))
    return bool(a == b)


def digest(value: Any) -> bytes:
    """Order-independent digest of a Convex value, equal exactly when `equal` says the values are."""
    return hashlib.blake2b(orjson.dumps(_canonical(value), option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def _canonical(value: Any) -> Any:
    """`value` with every number as one float64 (an int as the float it stands for), NaN as one tag and the
    floats JSON cannot write, Int64 and bytes as wire objects. Verify digests a dozen values per document, so
    the common leaves (text, a plain float) are tested first and text never costs a call."""
    value_type = type(value)
    if value_type is str:
        return value
    if value_type is float:
        if -_INF < value < _INF and (value != 0 or math.copysign(1.0, value) > 0):  # `_plain_float`, inlined
            return value
        return {"$float": _NAN_TAG} if value != value else {"$float": _float_base64(value)}
    if value_type is dict:
        return {key: item if type(item) is str else _canonical(item) for key, item in value.items()}
    if value_type is list:
        return [item if type(item) is str else _canonical(item) for item in value]
    if value_type is int:  # one float64, however it was written
        return _canonical(float(value))
    return to_wire(value)
