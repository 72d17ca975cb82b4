"""The sample data: deterministic, streamed, valid for the schema, realistic, and showing every bad-input class."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.devtools import sample_data
from helpers.migrations.m001_s3_asset_tracking import plan_line, rules
from helpers.migrations.m001_s3_asset_tracking.fields import NEW_FIELDS
from helpers.migrations.m001_s3_asset_tracking.rules import DocumentPlan, RulesContext

MISSING = "deleted-session"


def sample(n_scenes: int, seed: int = 7) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A generated dataset with the ids and creation times Convex would add."""
    n_sessions = -(-n_scenes // sample_data.SCENES_PER_SESSION)
    sessions = [
        {"_id": f"session{i}", "_creationTime": 1.7e12 + i, **doc} for i, doc in enumerate(sample_data.iter_sessions(n_sessions, seed))
    ]
    scene_docs = sample_data.iter_scenes([s["_id"] for s in sessions], n_scenes, seed, MISSING)
    scenes = [{"_id": f"scene{i}", "_creationTime": 1.7e12 + i, **doc} for i, doc in enumerate(scene_docs)]
    return sessions, scenes


def plan_dataset(sessions: list[dict[str, Any]], scenes: list[dict[str, Any]], bucket_base_url: str | None = None) -> list[DocumentPlan]:
    """What helpers.steps.plan.build_plan does, in memory: scenes, duplicate keys, session totals, sessions."""
    ctx = RulesContext(bucket_base_url=bucket_base_url, session_exists={s["_id"] for s in sessions}.__contains__)
    provisional = [rules.plan_scene(doc, ctx) for doc in scenes]
    key_counts = Counter(key for plan in provisional for key in rules.asset_keys(plan))
    totals: dict[str, rules.SessionTotals] = defaultdict(rules.SessionTotals)
    plans = []
    for plan in provisional:
        shared = [key for key in rules.asset_keys(plan) if key_counts[key] > 1]
        if shared:
            plan = plan_line.mark_blocking(plan, "duplicate_s3_key", f"S3 key {shared[0]!r} is used by several scenes")
        if plan.session_id is not None:
            totals[plan.session_id].add_scene(plan)
        plans.append(plan)
    plans += [rules.plan_session(doc, totals.pop(doc["_id"], rules.SessionTotals()), ctx) for doc in sessions]
    return plans


def problem_codes(plans: Iterable[DocumentPlan]) -> Counter[str]:
    return Counter(p["code"] for plan in plans for p in plan.problems)


# -- determinism and streaming ---------------------------------------------------------------------------------


def test_same_seed_gives_the_same_documents() -> None:
    assert sample(400, seed=3) == sample(400, seed=3)


def test_another_seed_gives_other_documents() -> None:
    assert sample(100, seed=3) != sample(100, seed=4)


def test_documents_are_generated_one_at_a_time() -> None:
    # A billion documents would never fit in memory: taking a few must not build the rest.
    sessions = list(islice(sample_data.iter_sessions(10**9, 1), 3))
    scenes = list(islice(sample_data.iter_scenes(["s1", "s2"], 10**9, 1, MISSING), 3))
    assert len(sessions) == len(scenes) == 3


def test_scenes_need_a_session() -> None:
    with pytest.raises(ValueError, match="session"):
        list(sample_data.iter_scenes([], 5, 1))


# -- valid for convex/schema.ts --------------------------------------------------------------------------------


def is_text(value: Any) -> bool:
    return isinstance(value, str)


def is_number(value: Any) -> bool:
    return type(value) in (int, float)


def is_loose_text(value: Any) -> bool:
    return value is None or is_text(value)


def is_s3_asset(value: Any) -> bool:
    required = {"s3Key": is_text, "s3Url": is_text, "contentType": is_text, "uploadedAt": is_number}
    optional = {"size": is_number, "checksum": is_text}
    return (
        isinstance(value, dict)
        and required.keys() <= value.keys() <= required.keys() | optional.keys()
        and all({**required, **optional}[k](v) for k, v in value.items())
    )


def is_assets_status(value: Any) -> bool:
    return value in ("pending", "uploading", "ready", "error")


SCENE_SCHEMA: dict[str, Callable[[Any], bool]] = {
    "sessionId": is_text,
    "sceneIndex": lambda v: is_number(v) or is_text(v),
    "title": is_text,
    "status": is_text,
    "errorMessage": lambda v: True,
    **dict.fromkeys(["s3ChunkKey", "s3ChunkUrl", "sourceCodeKey", "sourceCodeUrl", "thumbnailKey", "thumbnailUrl", "subtitleKey", "subtitleUrl"], is_loose_text),
    "s3ChunkSize": lambda v: v is None or is_number(v) or is_text(v),
    "checksum": lambda v: v is None or is_number(v) or is_text(v),
    "updatedAt": lambda v: v is None or is_number(v) or is_text(v),
    **dict.fromkeys(["videoAsset", "sourceCodeAsset", "thumbnailAsset", "subtitleAsset"], is_s3_asset),
    "assetsStatus": is_assets_status,
    "assetsErrorMessage": is_text,
    "assetVersion": is_number,
    "previousAssetVersions": lambda v: v == [],
}
SESSION_SCHEMA: dict[str, Callable[[Any], bool]] = {
    "title": is_text,
    "userId": is_text,
    "status": is_text,
    **dict.fromkeys(["errorMessage", "combinedVideoKey", "combinedVideoUrl", "combinedSubtitleKey", "combinedSubtitleUrl", "manifestKey", "manifestUrl"], is_loose_text),
    "updatedAt": lambda v: v is None or is_number(v) or is_text(v),
    **dict.fromkeys(["combinedVideoAsset", "combinedSubtitleAsset", "manifestAsset"], is_s3_asset),
    "totalAssetSize": is_number,
    "assetCount": is_number,
    "assetsStatus": is_assets_status,
    "assetsErrorMessage": is_text,
}


def test_schema_tables_in_this_test_cover_every_new_field() -> None:
    assert NEW_FIELDS["scenes"] <= SCENE_SCHEMA.keys()
    assert NEW_FIELDS["videoSessions"] <= SESSION_SCHEMA.keys()


@pytest.mark.parametrize(
    ("generate", "schema", "required"),
    [
        (lambda: sample_data.iter_sessions(300, 11), SESSION_SCHEMA, {"status"}),
        (lambda: sample_data.iter_scenes([f"s{i}" for i in range(60)], 600, 11, MISSING), SCENE_SCHEMA, {"sessionId", "sceneIndex", "status"}),
    ],
)
def test_documents_are_valid_for_the_schema(generate: Callable[[], Iterable[dict[str, Any]]], schema: dict[str, Callable[[Any], bool]], required: set[str]) -> None:
    for doc in generate():
        assert required <= doc.keys()
        assert doc.keys() <= schema.keys(), doc.keys() - schema.keys()
        bad = [name for name, value in doc.items() if not schema[name](value)]
        assert not bad, (bad, doc)


# -- realistic ----------------------------------------------------------------------------------------------


def test_data_looks_like_production() -> None:
    sessions, scenes = sample(3000)
    scene_status = Counter(s["status"] for s in scenes)
    session_status = Counter(s["status"] for s in sessions)
    assert scene_status["completed"] / len(scenes) > 0.7
    assert session_status["completed"] / len(sessions) > 0.6
    assert {"pending", "generating", "rendering", "uploading", "failed"} <= scene_status.keys()
    assert {"pending", "generating", "combining", "failed"} <= session_status.keys()
    per_session = Counter(s["sessionId"] for s in scenes if s["sessionId"] != MISSING)
    assert len(sessions) == 300 and set(per_session.values()) <= {9, 10, 11}
    chunk = re.compile(r"sessions/session\d+/scene-\d+/chunk\.mp4")
    chunk_keys = [s["s3ChunkKey"] for s in scenes if isinstance(s.get("s3ChunkKey"), str)]
    assert sum(bool(chunk.fullmatch(key)) for key in chunk_keys) / len(chunk_keys) > 0.95
    for doc in scenes:
        if "s3ChunkKey" in doc and "s3ChunkUrl" in doc:
            assert doc["s3ChunkUrl"].split("?")[0] == f"{sample_data.BUCKET_URL}/{doc['s3ChunkKey']}"


def test_bad_input_is_a_few_percent() -> None:
    sessions, scenes = sample(3000)
    plans = plan_dataset(sessions, scenes)
    blocked = sum(plan.action == "problem" for plan in plans) / len(plans)
    assert 0.01 < blocked < 0.10
    flagged_only = sum(plan.action != "problem" and bool(plan.problems) for plan in plans) / len(plans)
    assert 0.01 < flagged_only < 0.15


# -- every bad-input class ---------------------------------------------------------------------------------------


def test_bad_input_classes_are_the_rules_problem_codes() -> None:
    assert len(sample_data.BAD_INPUT_CLASSES) == len(set(sample_data.BAD_INPUT_CLASSES))
    # url_derived is not bad input: it appears when the dry-run is given a bucket base URL.
    # invalid_unicode neither: Convex strings are UTF-8, so a deployment cannot hold a lone surrogate.
    assert set(sample_data.BAD_INPUT_CLASSES) == set(plan_line.PROBLEM_CODES) - {"url_derived", "invalid_unicode"}


@pytest.mark.parametrize("seed", [7, 8])
def test_every_bad_input_class_appears_when_300_scenes_are_planned(seed: int) -> None:
    plans = plan_dataset(*sample(300, seed))
    codes = problem_codes(plans)
    assert set(sample_data.BAD_INPUT_CLASSES) <= codes.keys(), set(sample_data.BAD_INPUT_CLASSES) - codes.keys()
    severities = {(p["code"], p["severity"]) for plan in plans for p in plan.problems}
    assert {("wrong_type", "blocking"), ("wrong_type", "flagged")} <= severities
    actions = Counter((plan.table, plan.action) for plan in plans)
    for expected in [("scenes", "track_existing"), ("scenes", "fill_missing"), ("scenes", "migrate"), ("videoSessions", "fill_missing"), ("videoSessions", "migrate")]:
        assert actions[expected] > 0, expected


def test_duplicate_keys_come_in_a_few_pairs() -> None:
    _, scenes = sample(3000)
    keys = Counter(s["s3ChunkKey"] for s in scenes if isinstance(s.get("s3ChunkKey"), str))
    shared = [n for n in keys.values() if n > 1]
    assert 1 <= len(shared) <= 30
    assert max(shared) <= 3


def test_bucket_base_url_turns_key_only_assets_into_derived_urls() -> None:
    plans = plan_dataset(*sample(300), bucket_base_url=sample_data.BUCKET_URL)
    codes = problem_codes(plans)
    assert codes["url_derived"] > 0 and codes["key_without_url"] == 0


def test_without_a_missing_session_id_every_scene_has_a_real_session() -> None:
    ids = [f"s{i}" for i in range(30)]
    assert {doc["sessionId"] for doc in sample_data.iter_scenes(ids, 300, 5)} <= set(ids)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n_scenes=st.integers(1, 60))
def test_every_generated_document_plans_to_an_encodable_line(seed: int, n_scenes: int) -> None:
    for plan in plan_dataset(*sample(n_scenes, seed)):
        line = orjson.loads(orjson.dumps(plan.to_line(), option=orjson.OPT_SORT_KEYS))
        assert DocumentPlan.from_line(line).to_line() == line


# -- load ----------------------------------------------------------------------------------------------------------


class RecordingTransport:
    """Stands in for ConvexTransport: answers sampleData:insertBatch/deleteBatch and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.tables: dict[str, dict[str, dict[str, Any]]] = {"videoSessions": {}, "scenes": {}}
        self.deleted: list[str] = []

    def function(self, path: str, args: dict[str, Any], *, idempotent: bool = True, writes_documents: bool = False) -> Any:
        self.calls.append((path, args))
        if path == "sampleData:insertBatch":
            table = self.tables[args["table"]]
            ids = [f"{args['table']}_{len(table) + len(self.deleted) + i}" for i in range(len(args["documents"]))]
            table.update(zip(ids, args["documents"], strict=False))
            return {"ids": ids}
        if path == "sampleData:deleteBatch":
            for doc_id in args["ids"]:
                del self.tables["videoSessions"][doc_id]
                self.deleted.append(doc_id)
            return {"deleted": len(args["ids"])}
        raise AssertionError(f"unexpected function {path}")


def test_load_inserts_sessions_then_a_dangling_session_then_scenes_in_batches() -> None:
    transport = RecordingTransport()
    summary = sample_data.load(transport, 250, seed=5, batch_size=40)
    sessions, scenes = transport.tables["videoSessions"], transport.tables["scenes"]
    assert (summary.sessions, summary.scenes) == (len(sessions), len(scenes)) == (25, 250)
    assert transport.deleted == [summary.missing_session_id]
    assert all(len(args["documents"]) <= 40 for path, args in transport.calls if path == "sampleData:insertBatch")
    tables_in_order = [args.get("table", "delete") for _, args in transport.calls]
    assert tables_in_order == ["videoSessions", "videoSessions", "delete", *["scenes"] * 7]  # 25 sessions, the dangling one, 250 scenes
    scene_sessions = Counter(doc["sessionId"] for doc in scenes.values())
    assert scene_sessions[summary.missing_session_id] >= 1
    assert set(scene_sessions) - {summary.missing_session_id} <= set(sessions)
    assert list(scenes.values()) == list(sample_data.iter_scenes(list(sessions), 250, 5, summary.missing_session_id))


def test_load_with_no_scenes_inserts_no_sessions() -> None:
    transport = RecordingTransport()
    summary = sample_data.load(transport, 0)
    assert (summary.sessions, summary.scenes) == (0, 0)
    assert transport.tables == {"videoSessions": {}, "scenes": {}}


def test_load_refuses_an_empty_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        sample_data.load(RecordingTransport(), 10, batch_size=0)
