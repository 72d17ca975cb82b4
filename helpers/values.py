"""Convex values in Python: one place for equality and hashing (and, next, lossless encodings).

The precondition, idempotency and verify checks all rest on "is this the same Convex value": it must mean the
same here as in the deployment (convex/values.ts), so every module asks this one.
"""

from __future__ import annotations

import hashlib
from typing import Any

from . import jsonio


def equal(a: Any, b: Any) -> bool:
    """Convex equality: 1 == 1.0, NaN == NaN, but a boolean is never a number and types never mix."""
    type_a, type_b = type(a), type(b)
    if (type_a is int or type_a is float) and (type_b is int or type_b is float):
        return a == b or (a != a and b != b)
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
    return a == b


def digest(value: Any) -> bytes:
    """Order-independent digest of a Convex value; integral floats and ints compare equal, as in Convex."""
    return hashlib.blake2b(jsonio.dumps(_canonical(value), sort_keys=True), digest_size=16).digest()


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    return value
