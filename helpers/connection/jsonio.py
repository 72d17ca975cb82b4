"""Fast JSON for the runbook's own files and the wire: orjson, in Convex's wire format (see helpers.connection.values).

Kept as the name every module imports; the encoding itself lives in `helpers.connection.values`, so a plan line, a
checkpoint or a rollback file holds every Convex value (int64, bytes, NaN, ±Inf, -0.0) exactly.
"""

from __future__ import annotations

from helpers.connection.values import dumps, loads

__all__ = ["dumps", "loads"]
