"""Convex value checks (GEN-3, GEN-4): which legacy values the plan file can carry faithfully, and how a value
is shown in a message (short, recordable, never an asset's URL)."""

from __future__ import annotations

import math
import re
from typing import Any

from helpers.connection.values import Int64
from helpers.migrations.m001_s3_asset_tracking.plan_line import problem_of

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1  # what the plan file (orjson) can hold as a plain number
INT64_MAX = 2**63 - 1  # a Convex int64
#: `v.any()` fields the rules only carry in the precondition and flag when they are not a text (SCN-6, SES-7):
#: there an in-range int64 or bytes value is no problem, since plan lines hold Convex's wire encoding ($integer,
#: $bytes). Elsewhere a rule converts the value, and such a value is no value it can convert (GEN-4 blocks it).
ANY_VALUE_FIELDS = frozenset({"errorMessage"})
MAX_STRING_LENGTH = 2048


MAX_NESTING_DEPTH = 8


_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(name: str, value: str) -> dict[str, str] | None:
    if not recordable(value):
        return _invalid_unicode(name)
    if len(value) > MAX_STRING_LENGTH:
        return problem_of(
            "oversized_value", name,
            f"{name} is {len(value)} characters long, over the {MAX_STRING_LENGTH} the migration accepts: "
            "correct it in the legacy data, then plan again.",
        )
    return None


def nested_problem(name: str, value: Any, level: int, wire: bool = False) -> dict[str, str] | None:
    """Why a non-text value cannot be recorded in the plan (too deep, unpaired surrogate, NaN, bytes), if it cannot.
    `wire`: the field is one of ANY_VALUE_FIELDS, where an in-range int64 and bytes are recorded as they are."""
    value_type = type(value)
    if value_type is dict or value_type is list:
        if level > MAX_NESTING_DEPTH:
            return problem_of(
                "too_deeply_nested", name,
                f"{name} holds an object nested more than {MAX_NESTING_DEPTH} levels deep: replace it with a "
                "readable message (or remove it) in the legacy data, then plan again.",
            )
        items = value.items() if value_type is dict else enumerate(value)
        for key, item in items:
            if type(key) is str and not recordable(key):
                return _invalid_unicode(name)
            item_type = type(item)
            if item_type is str:
                if not recordable(item):
                    return _invalid_unicode(name)
            elif (item_type is not int or not INT64_MIN <= item <= UINT64_MAX) and item is not None:
                problem = nested_problem(name, item, level + 1, wire)
                if problem is not None:
                    return problem
        return None
    if value_type is str:
        return None if recordable(value) else _invalid_unicode(name)
    if value_type is float:
        return None if math.isfinite(value) else _cannot_record(name, "a non-finite number")
    if value_type is int:
        return None if INT64_MIN <= value <= UINT64_MAX else _cannot_record(name, "an integer beyond 64 bits")
    if wire and (value_type is bytes or (value_type is Int64 and INT64_MIN <= value <= INT64_MAX)):
        return None
    if value is None or value_type is bool:
        return None
    return _cannot_record(name, type_name(value))


def _invalid_unicode(name: str) -> dict[str, str]:
    return problem_of(
        "invalid_unicode", name,
        f"{name} holds a text with an unpaired surrogate (not valid UTF-8), which cannot be stored or written to the "
        "plan: correct the text in the legacy data, then plan again.",
    )


def _cannot_record(name: str, what: str) -> dict[str, str]:
    return problem_of(
        "wrong_type", name,
        f"{name} holds {what}, which the plan file cannot record faithfully: correct it in the legacy data, then plan again.",
    )


def empty_string(name: str) -> dict[str, str]:
    return problem_of("empty_string", name, f"{name} is an empty text and is treated as absent.")


def recordable(text: str) -> bool:
    return text.isascii() or _SURROGATE.search(text) is None


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a text", dict: "an object", list: "an array",
            bytes: "bytes"}.get(type(value), type(value).__name__)


def describe(value: Any) -> str:
    if type(value) is str:
        return f"the text {show(value)}"
    if type(value) in (int, float):
        return f"the number {value!r}"
    return type_name(value)


def show(value: Any, limit: int = 120) -> str:
    """A short, recordable rendering of a value for a message (an asset shows only its key: URLs may carry secrets)."""
    if type(value) is dict and "s3Key" in value:
        value = {"s3Key": value["s3Key"]}
    text = repr(value)
    if not recordable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(value: Any) -> str | None:
    """A status for the summary tables; a value that cannot be recorded is shown escaped and shortened."""
    if type(value) is not str:
        return None
    return value if recordable(value) and len(value) <= 100 else show(value, 100)

