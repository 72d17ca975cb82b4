"""Fast JSON with a safe fallback: orjson, except for what only the standard library handles.

Convex strings may hold lone UTF-16 surrogates (JavaScript strings can); orjson refuses them both ways, so
those rare values go through `json` with escapes. Everything else stays on orjson's fast path.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:
        return json.dumps(value, sort_keys=sort_keys, ensure_ascii=True, separators=(",", ":")).encode()


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
