"""Conversion cost: what the rules add on top of merely parsing the documents.

N generated legacy scenes (helpers.devtools.sample_data, given `_id` and `_creationTime` as Convex would) are serialized
as JSON lines, the shape the dry-run reads. Then, best of 3 each:

* parse only: `json.loads` of every line;
* parse + plan: `rules.plan_scene(json.loads(line), ctx)` for every line.

conversion = (parse + plan) − parse; the figure is conversion / parse. It says what one document's rules cost
in units of one `json.loads` of that document (goal: at most 3).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from helpers.connection import jsonio
from helpers.devtools import sample_data
from helpers.migrations.m001_s3_asset_tracking import rules

REPEATS = 3


def fake_id(table_code: str, n: int) -> str:
    """An id-shaped text (Convex ids are 32-character base32 strings); the rules only need it to be text."""
    return f"{table_code}{n:030x}"[:32].ljust(32, "0")


def generated_scenes(n_scenes: int, seed: int) -> tuple[list[dict[str, Any]], set[str]]:
    """`n_scenes` sample scenes with system fields, and the ids of the sessions they belong to."""
    n_sessions = max(1, -(-n_scenes // getattr(sample_data, "SCENES_PER_SESSION", 10)))
    session_ids = [fake_id("js", i) for i in range(n_sessions)]
    missing = fake_id("jm", 0)  # a session id that exists nowhere: the missing-session defect points at it
    scenes: Iterator[dict[str, Any]]
    if hasattr(sample_data, "iter_scenes"):
        scenes = sample_data.iter_scenes(session_ids, n_scenes, seed, missing)
    else:  # the design's other spelling: generate(n_scenes, seed) -> (sessions, scenes)
        _, generated = sample_data.generate(n_scenes, seed)  # type: ignore[attr-defined]
        scenes = iter(generated)
    start = float(getattr(sample_data, "START_MS", 1_704_067_200_000))
    docs = []
    for index, doc in enumerate(scenes):
        docs.append({"_id": fake_id("jd", index), "_creationTime": start + index * 1000.25, **doc})
    return docs, set(session_ids)


def best_of(repeats: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measure(n_scenes: int, seed: int, repeats: int = REPEATS) -> dict[str, Any]:
    docs, session_ids = generated_scenes(n_scenes, seed)
    lines = [jsonio.dumps(doc).decode() for doc in docs]  # Convex's wire format: int64, bytes, NaN as a deployment sends them
    del docs
    ctx = rules.RulesContext(session_exists=session_ids.__contains__)
    loads, orjson_loads, plan_scene = json.loads, orjson.loads, rules.plan_scene

    def parse() -> None:
        for line in lines:
            loads(line)

    def parse_orjson() -> None:
        for line in lines:
            try:
                orjson_loads(line)
            except orjson.JSONDecodeError:
                loads(line)

    def parse_and_plan() -> None:
        for line in lines:
            plan_scene(loads(line), ctx)

    parse_and_plan()  # warm up (regular expressions, caches) before any timing
    parse_s = best_of(repeats, parse)
    both_s = best_of(repeats, parse_and_plan)
    orjson_s = best_of(repeats, parse_orjson)
    conversion_s = max(both_s - parse_s, 0.0)
    n = len(lines)
    return {
        "documents": n,
        "bytes_per_document": round(sum(map(len, lines)) / max(n, 1)),
        "json_loads_seconds": parse_s,
        "json_loads_plus_plan_seconds": both_s,
        "conversion_seconds": conversion_s,
        "orjson_loads_seconds": orjson_s,
        "json_loads_us_per_doc": parse_s / n * 1e6,
        "conversion_us_per_doc": conversion_s / n * 1e6,
        "conversion_vs_json_loads": conversion_s / parse_s,
        "conversion_vs_orjson_loads": conversion_s / orjson_s,
    }
