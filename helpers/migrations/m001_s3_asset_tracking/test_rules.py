"""Migration 001's conversion rules, one test (or a few) per row of its mapping.md, plus properties over messy documents."""

from __future__ import annotations

import copy
import math
import os
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.connection import values
from helpers.connection.values import Int64
from helpers.migrations.m001_s3_asset_tracking import fields, plan_line, rules, s3_urls
from helpers.migrations.m001_s3_asset_tracking.rules import (
    DocumentPlan,
    RulesContext,
    SessionTotals,
)
from helpers.steps.migration import PLAN_LINE_KEYS

ROOT = Path(__file__).resolve().parents[3]
M001_DIR = ROOT / "helpers" / "migrations" / "m001_s3_asset_tracking"
#: The pure modules of 001's rules: no I/O, no plan file, no transport.
RULE_MODULES = ("rules.py", "plan_line.py", "s3_urls.py", "value_checks.py")
BUCKET = "https://tutor-assets.s3.us-east-1.amazonaws.com"
CREATED = 1_700_000_000_123.5
UPDATED = 1_710_000_000_000
CTX = RulesContext()
TRACKED = RulesContext(is_tracked=lambda _id, _asset_type: True)  # every asset already has its reference
DROP = object()  # marks a field to leave out of a test document
#: make mutation runs these tests once per mutant: fewer, reproducible examples there.
MUTATION = os.environ.get("RUNBOOK_MUTATION") == "1"
EXAMPLES = 40 if MUTATION else 300


def key_of(name: str = "chunk.mp4", scene: int = 0) -> str:
    return f"sessions/sess1/scene-{scene}/{name}"


def url_of(key: str) -> str:
    return f"{BUCKET}/{key}"


def scene(**changes: Any) -> dict[str, Any]:
    """A clean completed scene with a video chunk; keyword arguments change or (with DROP) remove fields."""
    key = key_of()
    doc: dict[str, Any] = {
        "_id": "scene1",
        "_creationTime": CREATED,
        "sessionId": "sess1",
        "sceneIndex": 0,
        "title": "Scene 1: Loops",
        "status": "completed",
        "s3ChunkKey": key,
        "s3ChunkUrl": url_of(key),
        "s3ChunkSize": 1_048_576,
        "checksum": "9e107d9d372bb6826bd81d3542a419d6",
        "updatedAt": UPDATED,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not DROP}


def session(**changes: Any) -> dict[str, Any]:
    key = "sessions/sess1/combined.mp4"
    doc: dict[str, Any] = {
        "_id": "sess1",
        "_creationTime": CREATED,
        "title": "Loops",
        "userId": "user_00001",
        "status": "completed",
        "combinedVideoKey": key,
        "combinedVideoUrl": url_of(key),
        "updatedAt": UPDATED,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not DROP}


def codes(plan: DocumentPlan) -> set[tuple[str, str]]:
    return {(p["code"], p["severity"]) for p in plan.problems}


def problem(plan: DocumentPlan, code: str) -> dict[str, str]:
    [found] = [p for p in plan.problems if p["code"] == code]
    return found


def assert_blocked(plan: DocumentPlan, code: str) -> None:
    assert plan.action == "problem"
    assert plan.set == {} and plan.references == []
    assert (code, "blocking") in codes(plan)


def applied(doc: dict[str, Any], plan: DocumentPlan) -> dict[str, Any]:
    return {**doc, **plan.set}


# -- SCN-1 ... SCN-4: scene assets -------------------------------------------------------------------------


def test_scn1_video_asset_carries_size_checksum_and_update_time() -> None:
    plan = rules.plan_scene(scene(), CTX)
    key = key_of()
    expected = {
        "s3Key": key, "s3Url": url_of(key), "contentType": "video/mp4", "size": 1_048_576,
        "checksum": "9e107d9d372bb6826bd81d3542a419d6", "uploadedAt": UPDATED,
    }
    assert plan.action == "migrate"
    assert plan.set["videoAsset"] == expected
    assert plan.references == [
        {**expected, "entityType": "scene", "assetType": "video_chunk", "version": 1,
         "metadata": {"migratedFromLegacy": True, "legacyField": "s3ChunkKey"}}
    ]
    assert plan.problems == []


@pytest.mark.parametrize(
    ("asset_field", "file_name", "content_type"),
    [("sourceCodeAsset", "source.py", "text/x-python"), ("thumbnailAsset", "thumb.png", "image/png"), ("subtitleAsset", "subs.vtt", "text/vtt")],
)
def test_scn2_to_scn4_other_scene_assets_have_no_size_or_checksum(asset_field: str, file_name: str, content_type: str) -> None:
    key_field, url_field = fields.SCENE_ASSET_SOURCES[asset_field]
    key = key_of(file_name)
    plan = rules.plan_scene(scene(**{key_field: key, url_field: url_of(key)}), CTX)
    assert plan.set[asset_field] == {"s3Key": key, "s3Url": url_of(key), "contentType": content_type, "uploadedAt": UPDATED}
    [reference] = [r for r in plan.references if r["metadata"]["legacyField"] == key_field]
    assert reference["assetType"] == fields.ASSET_TYPES[asset_field]
    assert "size" not in reference and "checksum" not in reference


def test_scene_without_any_legacy_pair_gets_no_asset_fields() -> None:
    plan = rules.plan_scene(scene(status="pending", s3ChunkKey=DROP, s3ChunkUrl=DROP, s3ChunkSize=DROP, checksum=DROP), CTX)
    assert plan.action == "migrate"
    assert plan.set == {"assetsStatus": "pending", "assetVersion": 1, "previousAssetVersions": []}
    assert plan.references == []


# -- SCN-5 ... SCN-8: status and defaults ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("legacy", "expected"),
    [("pending", "pending"), ("generating", "pending"), ("rendering", "pending"), ("uploading", "uploading"), ("completed", "ready"), ("failed", "error")],
)
def test_scn5_status_mapping(legacy: str, expected: str) -> None:
    plan = rules.plan_scene(scene(status=legacy, errorMessage="boom"), CTX)
    assert plan.set["assetsStatus"] == expected
    assert ("assetsErrorMessage" in plan.set) == (expected == "error")


def test_scn5_completed_without_video_is_an_error_and_flagged() -> None:
    plan = rules.plan_scene(scene(s3ChunkKey=DROP, s3ChunkUrl=DROP), CTX)
    assert plan.action == "migrate"
    assert plan.set["assetsStatus"] == "error"
    assert plan.set["assetsErrorMessage"] == rules.SCENE_WITHOUT_VIDEO_TEXT
    assert codes(plan) == {("completed_without_video", "flagged")}


def test_scn5_completed_with_an_existing_video_asset_is_ready() -> None:
    key = key_of()
    asset = {"s3Key": key, "s3Url": url_of(key), "contentType": "video/mp4", "uploadedAt": 1}
    plan = rules.plan_scene(scene(s3ChunkKey=DROP, s3ChunkUrl=DROP, videoAsset=asset), CTX)
    assert plan.set["assetsStatus"] == "ready"
    assert plan.action == "fill_missing"


def test_scn6_failed_scene_copies_its_error_message() -> None:
    plan = rules.plan_scene(scene(status="failed", errorMessage="Render worker timed out"), CTX)
    assert plan.set["assetsErrorMessage"] == "Render worker timed out"
    assert plan.expect["errorMessage"] == "Render worker timed out"


def test_scn6_failed_scene_without_message_gets_the_fixed_text() -> None:
    plan = rules.plan_scene(scene(status="failed"), CTX)
    assert plan.set["assetsErrorMessage"] == rules.MISSING_ERROR_TEXT
    assert "errorMessage" in plan.expect_absent
    assert plan.problems == []


def test_scn6_error_object_is_flagged_and_replaced_by_the_fixed_text() -> None:
    plan = rules.plan_scene(scene(status="failed", errorMessage={"name": "RenderError", "exitCode": 137}), CTX)
    assert plan.action == "migrate"
    assert plan.set["assetsErrorMessage"] == rules.MISSING_ERROR_TEXT
    assert codes(plan) == {("wrong_type", "flagged")}
    assert problem(plan, "wrong_type")["field"] == "errorMessage"


@pytest.mark.parametrize("message", [Int64(137), Int64(-(2**63)), b"\x00\xff", {"exitCode": Int64(2**63 - 1), "stderr": b"Killed"}])
def test_scn6_an_int64_or_bytes_error_message_is_only_flagged(message: Any) -> None:
    """The plan line carries Convex's wire encoding, so the value is recorded as it is: flagged as not a text, not blocked."""
    plan = rules.plan_scene(scene(status="failed", errorMessage=message), CTX)
    assert plan.action == "migrate" and codes(plan) == {("wrong_type", "flagged")}
    assert plan.set["assetsErrorMessage"] == rules.MISSING_ERROR_TEXT
    line = plan.to_line()
    assert values.equal(values.loads(values.dumps(line))["expect"]["errorMessage"], message)  # recorded exactly


def test_scn6_error_message_is_read_only_for_failed_scenes() -> None:
    plan = rules.plan_scene(scene(errorMessage={"deep": "x" * 5000}), CTX)
    assert "errorMessage" not in plan.expect and "errorMessage" not in plan.expect_absent
    assert "assetsErrorMessage" not in plan.set


def test_scn7_scn8_version_defaults() -> None:
    plan = rules.plan_scene(scene(), CTX)
    assert plan.set["assetVersion"] == 1
    assert plan.set["previousAssetVersions"] == []


# -- SCN-9, SCN-10 ------------------------------------------------------------------------------------------------


def test_scn9_scene_of_a_missing_session_is_blocked() -> None:
    ctx = RulesContext(session_exists={"other"}.__contains__)
    plan = rules.plan_scene(scene(), ctx)
    assert_blocked(plan, "missing_session")
    assert plan.session_id == "sess1"
    assert plan.expect["sessionId"] == "sess1"


def test_scn10_one_reference_per_asset_set() -> None:
    doc = scene(**{f: key_of(n) for f, n in (("thumbnailKey", "t.png"), ("subtitleKey", "s.vtt"))})
    doc.update(thumbnailUrl=url_of(key_of("t.png")), subtitleUrl=url_of(key_of("s.vtt")))
    plan = rules.plan_scene(doc, CTX)
    by_field = {r["metadata"]["legacyField"]: r for r in plan.references}
    assert set(by_field) == {"s3ChunkKey", "thumbnailKey", "subtitleKey"}
    for asset_field, (key_field, _) in fields.SCENE_ASSET_SOURCES.items():
        if asset_field in plan.set:
            reference = dict(by_field[key_field])
            assert {k: reference.pop(k) for k in ("entityType", "assetType", "version", "metadata")} == {
                "entityType": "scene", "assetType": fields.ASSET_TYPES[asset_field], "version": 1,
                "metadata": {"migratedFromLegacy": True, "legacyField": key_field},
            }
            assert reference == plan.set[asset_field]


# -- SES-1 ... SES-8: sessions ------------------------------------------------------------------------------------


def totals_of(*scene_docs: dict[str, Any]) -> SessionTotals:
    totals = SessionTotals()
    for doc in scene_docs:
        totals.add_scene(rules.plan_scene(doc, CTX))
    return totals


def test_ses1_to_ses3_session_assets_and_references() -> None:
    subtitle, manifest = "sessions/sess1/combined.vtt", "sessions/sess1/manifest.m3u8"
    doc = session(combinedSubtitleKey=subtitle, combinedSubtitleUrl=url_of(subtitle), manifestKey=manifest, manifestUrl=url_of(manifest))
    plan = rules.plan_session(doc, SessionTotals(), CTX)
    assert plan.set["combinedVideoAsset"]["contentType"] == "video/mp4"
    assert plan.set["combinedSubtitleAsset"]["contentType"] == "text/vtt"
    assert plan.set["manifestAsset"] == {
        "s3Key": manifest, "s3Url": url_of(manifest), "contentType": "application/vnd.apple.mpegurl", "uploadedAt": UPDATED,
    }
    assert sorted(r["assetType"] for r in plan.references) == ["combined_subtitle", "combined_video", "manifest"]
    assert {r["entityType"] for r in plan.references} == {"session"}
    assert plan.session_id is None


def test_ses4_ses5_totals_count_own_and_scene_assets_with_unknown_size_as_zero() -> None:
    thumb = key_of("t.png", 1)
    totals = totals_of(
        scene(),  # video (1 MiB)
        scene(_id="scene2", s3ChunkKey=key_of(scene=1), s3ChunkUrl=url_of(key_of(scene=1)), s3ChunkSize="12", thumbnailKey=thumb, thumbnailUrl=url_of(thumb)),
    )
    assert (totals.scenes, totals.assets, totals.size) == (2, 3, 1_048_576)
    plan = rules.plan_session(session(), totals, CTX)
    assert plan.set["assetCount"] == 4  # 3 scene assets + the combined video
    assert plan.set["totalAssetSize"] == 1_048_576


def test_ses4_blocked_scene_contributes_only_what_it_already_has() -> None:
    key = key_of()
    existing = {"s3Key": key, "s3Url": url_of(key), "contentType": "video/mp4", "size": 10, "uploadedAt": 5}
    blocked = rules.plan_scene(scene(status="archived", videoAsset=existing), CTX)
    assert blocked.action == "problem"
    totals = SessionTotals()
    totals.add_scene(blocked)
    totals.add_scene(plan_line.mark_blocking(rules.plan_scene(scene(_id="scene2"), CTX), "duplicate_s3_key", "shared"))
    assert (totals.scenes, totals.assets, totals.size, totals.ready) == (2, 1, 10, 0)


contributions = st.lists(
    st.tuples(st.integers(0, 3), st.one_of(st.integers(0, 2**60), st.floats(min_value=0, allow_nan=False)),
              st.sampled_from(["ready", "error", "uploading", None])),
    max_size=30,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(contributions, st.lists(st.integers(1, 30), max_size=5))
def test_ses4_ses5_totals_are_the_same_summed_scene_by_scene_or_a_page_at_a_time(scenes: list[tuple[int, Any, Any]], cuts: list[int]) -> None:
    """The dry-run's workers total a page of scenes each and the pages merge: the sum is exact, so any grouping gives
    the same totals, and the size is the float nearest the exact sum (an int while every size is one)."""
    one_by_one = SessionTotals()
    for scene_contribution in scenes:
        one_by_one.add(*scene_contribution)
    merged, rest = SessionTotals(), scenes
    for cut in [*cuts, len(scenes)]:
        page = SessionTotals()
        for scene_contribution in rest[:cut]:
            page.add(*scene_contribution)
        merged.merge(page)
        rest = rest[cut:]
    assert merged == one_by_one
    sizes = [size for _, size, _ in scenes]
    if all(type(size) is int for size in sizes):
        assert type(merged.known_size) is int and merged.known_size == sum(sizes)
    else:
        assert merged.known_size == nearest_float(sizes)
    assert (merged.scenes, merged.assets, merged.ready) == (len(scenes), sum(a for a, _, _ in scenes), sum(s == "ready" for _, _, s in scenes))


def nearest_float(sizes: list[Any]) -> float:
    """The float nearest the exact sum of the sizes (infinite past the largest float, or with an infinite size)."""
    if math.inf in sizes:
        return math.inf
    exact = sum(map(Fraction, sizes))
    return math.inf if exact >= Fraction(sys.float_info.max) + 2**970 else float(exact)  # half an ulp past it rounds up


def test_ses5_an_infinite_size_stays_infinite_in_any_grouping() -> None:
    first, second = SessionTotals(), SessionTotals()
    first.add(1, 0.5, None)
    second.add(1, math.inf, None)
    first.merge(second)
    first.add(1, 3, "ready")
    assert first.known_size == math.inf and first.scenes == 3


def test_ses4_original_scripts_zero_totals_are_a_conflict_not_overwritten() -> None:
    plan = rules.plan_session(session(assetCount=0, totalAssetSize=0), totals_of(scene()), CTX)
    assert_blocked(plan, "new_field_conflict")
    assert {p["field"] for p in plan.problems} == {"assetCount", "totalAssetSize"}


@pytest.mark.parametrize(
    ("legacy", "scene_statuses", "combined", "expected"),
    [
        ("failed", ["completed"], True, "error"),
        ("completed", ["completed", "failed"], True, "error"),
        ("completed", ["completed", "completed"], True, "ready"),
        ("completed", ["completed"], False, "pending"),
        ("generating", ["completed", "completed"], False, "ready"),
        ("generating", ["completed", "uploading"], False, "uploading"),
        ("generating", ["completed", "rendering"], False, "pending"),
        ("pending", [], False, "pending"),
        ("completed", [], True, "ready"),
    ],
)
def test_ses6_session_status(legacy: str, scene_statuses: list[str], combined: bool, expected: str) -> None:
    totals = totals_of(*(scene(_id=f"s{i}", status=s, errorMessage="x") for i, s in enumerate(scene_statuses)))
    doc = session(status=legacy) if combined else session(status=legacy, combinedVideoKey=DROP, combinedVideoUrl=DROP)
    plan = rules.plan_session(doc, totals, CTX)
    assert plan.set["assetsStatus"] == expected


def test_ses6_completed_session_without_combined_video_is_flagged() -> None:
    plan = rules.plan_session(session(combinedVideoKey=DROP, combinedVideoUrl=DROP), totals_of(scene()), CTX)
    assert codes(plan) == {("completed_without_video", "flagged")}
    assert plan.set["assetsStatus"] == "pending"


def test_ses7_error_messages() -> None:
    failed = rules.plan_session(session(status="failed", errorMessage="LLM quota exceeded"), SessionTotals(), CTX)
    assert failed.set["assetsErrorMessage"] == "LLM quota exceeded"
    null_message = rules.plan_session(session(status="failed", errorMessage=None), SessionTotals(), CTX)
    assert null_message.set["assetsErrorMessage"] == rules.MISSING_ERROR_TEXT
    assert codes(null_message) == {("wrong_type", "flagged")}
    two_errors = totals_of(scene(_id="a", status="failed"), scene(_id="b", status="failed"), scene(_id="c"))
    in_error = rules.plan_session(session(), two_errors, CTX)
    assert (in_error.set["assetsStatus"], in_error.set["assetsErrorMessage"]) == ("error", "2 scenes in error")
    ready = rules.plan_session(session(), totals_of(scene()), CTX)
    assert "assetsErrorMessage" not in ready.set


# -- AST-1: keys and URLs ------------------------------------------------------------------------------------------


def test_ast1_key_and_url_are_trimmed() -> None:
    key = key_of()
    plan = rules.plan_scene(scene(s3ChunkKey=f"  {key}\n", s3ChunkUrl=f" {url_of(key)} "), CTX)
    assert (plan.set["videoAsset"]["s3Key"], plan.set["videoAsset"]["s3Url"]) == (key, url_of(key))


def test_ast1_presigned_url_is_stored_without_its_query_and_flagged() -> None:
    key = key_of()
    signed = url_of(key) + "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101&X-Amz-Signature=deadbeef"
    plan = rules.plan_scene(scene(s3ChunkUrl=signed), CTX)
    assert plan.action == "migrate"
    assert plan.set["videoAsset"]["s3Url"] == url_of(key)
    assert codes(plan) == {("presigned_url", "flagged")}
    assert "deadbeef" not in orjson.dumps([plan.set, plan.references, plan.problems]).decode()


def test_ast1_plain_query_string_is_removed_without_a_flag() -> None:
    key = key_of()
    plan = rules.plan_scene(scene(s3ChunkUrl=url_of(key) + "?versionId=3"), CTX)
    assert plan.set["videoAsset"]["s3Url"] == url_of(key)
    assert plan.problems == []


def test_ast1_key_without_url_is_blocked_without_a_base_url() -> None:
    plan = rules.plan_scene(scene(s3ChunkUrl=DROP), CTX)
    assert_blocked(plan, "key_without_url")
    assert problem(plan, "key_without_url")["field"] == "s3ChunkKey"


def test_ast1_key_without_url_uses_the_bucket_base_url_when_given() -> None:
    plan = rules.plan_scene(scene(s3ChunkUrl=DROP), RulesContext(bucket_base_url=BUCKET + "/"))
    assert plan.set["videoAsset"]["s3Url"] == url_of(key_of())
    assert codes(plan) == {("url_derived", "flagged")}


@pytest.mark.parametrize(
    "url",
    [
        f"{BUCKET}/sessions/sess1/scene-0/chunk.mp4",
        "https://tutor-assets.s3.amazonaws.com/sessions/sess1/scene-0/chunk.mp4",
        "https://s3.us-east-1.amazonaws.com/tutor-assets/sessions/sess1/scene-0/chunk.mp4",
        "https://s3.amazonaws.com/tutor-assets/sessions/sess1/scene-0/chunk.mp4",
    ],
)
def test_ast1_key_is_derived_from_an_s3_url(url: str) -> None:
    plan = rules.plan_scene(scene(s3ChunkKey=DROP, s3ChunkUrl=url), CTX)
    assert plan.set["videoAsset"]["s3Key"] == key_of()
    assert plan.set["videoAsset"]["s3Url"] == url
    assert codes(plan) == {("key_derived", "flagged")}


def test_ast1_percent_encoded_key_is_decoded() -> None:
    plan = rules.plan_scene(scene(s3ChunkKey=DROP, s3ChunkUrl=f"{BUCKET}/sessions/my%20lesson/chunk.mp4"), CTX)
    assert plan.set["videoAsset"]["s3Key"] == "sessions/my lesson/chunk.mp4"


def test_ast1_url_that_is_not_s3_is_blocked_when_the_key_is_missing() -> None:
    plan = rules.plan_scene(scene(s3ChunkKey=DROP, s3ChunkUrl="https://cdn.example.com/sessions/sess1/scene-0/chunk.mp4"), CTX)
    assert_blocked(plan, "url_not_s3")


def test_ast1_key_derived_from_a_url_under_the_bucket_base_url() -> None:
    ctx = RulesContext(bucket_base_url="https://cdn.example.com/media")
    plan = rules.plan_scene(scene(s3ChunkKey=DROP, s3ChunkUrl="https://cdn.example.com/media/a/b.mp4"), ctx)
    assert plan.set["videoAsset"]["s3Key"] == "a/b.mp4"
    assert codes(plan) == {("key_derived", "flagged")}


def test_ast1_key_and_url_that_disagree_are_blocked() -> None:
    plan = rules.plan_scene(scene(s3ChunkUrl=url_of(key_of(scene=7))), CTX)
    assert_blocked(plan, "key_url_mismatch")
    assert "X-Amz" not in problem(plan, "key_url_mismatch")["message"]


# -- AST-1: URLs that are not what s3Url promises, each its own problem class --------------------------------------


@pytest.mark.parametrize("key", [key_of(), DROP])
@pytest.mark.parametrize("host", ["cdn.example.com", "tutor-assets.s3.amazonaws.com.evil.example", "d111111abcdef8.cloudfront.net"])
def test_ast1_a_url_on_a_host_that_is_not_s3_is_blocked_as_not_s3_never_stored(key: Any, host: str) -> None:
    url = f"https://{host}/" + key_of()  # names the same key: still not an S3 URL
    plan = rules.plan_scene(scene(s3ChunkKey=key, s3ChunkUrl=url), CTX)
    assert_blocked(plan, "url_not_s3")
    assert codes(plan) == {("url_not_s3", "blocking")}  # not a key mismatch, not a derived key
    assert host in problem(plan, "url_not_s3")["message"]


def test_ast1_a_non_s3_host_under_the_bucket_base_url_is_accepted() -> None:
    ctx = RulesContext(bucket_base_url="https://cdn.example.com")
    url = "https://cdn.example.com/" + key_of()
    plan = rules.plan_scene(scene(s3ChunkUrl=url), ctx)
    assert plan.set["videoAsset"]["s3Url"] == url and plan.problems == []


@pytest.mark.parametrize("url", ["s3://tutor-assets/" + key_of(), "ftp://tutor-assets.s3.amazonaws.com/" + key_of(), key_of(), "file:///" + key_of()])
@pytest.mark.parametrize("key", [key_of(), DROP])
def test_ast1_a_url_that_is_not_http_is_blocked_as_not_http(url: str, key: Any) -> None:
    plan = rules.plan_scene(scene(s3ChunkKey=key, s3ChunkUrl=url), CTX)
    assert codes(plan) == {("url_not_http", "blocking")}
    assert plan.action == "problem"


@pytest.mark.parametrize("key", [key_of(), DROP])
def test_ast1_a_plain_http_s3_url_is_flagged_and_stored_over_https(key: Any) -> None:
    plan = rules.plan_scene(scene(s3ChunkKey=key, s3ChunkUrl="http://tutor-assets.s3.us-east-1.amazonaws.com/" + key_of()), CTX)
    assert plan.set["videoAsset"]["s3Url"] == url_of(key_of())
    assert ("url_plain_http", "flagged") in codes(plan)
    assert plan.set["videoAsset"]["s3Key"] == key_of()


def test_ast1_a_plain_http_s3_url_naming_another_key_is_a_mismatch() -> None:
    plan = rules.plan_scene(scene(s3ChunkUrl="http://tutor-assets.s3.us-east-1.amazonaws.com/other.mp4"), CTX)
    assert_blocked(plan, "key_url_mismatch")


@given(
    st.sampled_from(["https", "http", "s3", "ftp", "HTTPS", "Http", "data", ""]),
    st.sampled_from(["tutor-assets.s3.amazonaws.com", "cdn.example.com", "s3.amazonaws.com/tutor-assets", "example.org"]),
    st.from_regex(r"[a-z]{1,4}/[a-z]{1,4}\.mp4", fullmatch=True),
    st.booleans(),
)
@settings(max_examples=EXAMPLES, derandomize=MUTATION, deadline=None)
def test_property_a_stored_url_is_always_an_https_s3_url_of_its_key(scheme: str, host: str, key: str, with_key: bool) -> None:
    url = f"{scheme}://{host}/{key}" if scheme else f"{host}/{key}"
    plan = rules.plan_scene(scene(s3ChunkKey=key if with_key else DROP, s3ChunkUrl=url), CTX)
    asset = plan.set.get("videoAsset")
    if asset is None:
        assert plan.action == "problem"
        assert {c for c, _ in codes(plan)} & {"url_not_s3", "url_not_http"}
        assert "key_url_mismatch" not in {c for c, _ in codes(plan)}
    else:
        assert asset["s3Url"].lower().startswith("https://")
        parsed = rules.parse_s3_url(asset["s3Url"])
        assert parsed is not None and parsed.key == asset["s3Key"] == key


def test_ast1_path_style_url_with_the_bucket_in_the_key_is_a_mismatch() -> None:
    plan = rules.plan_scene(scene(s3ChunkKey="tutor-assets/a.mp4", s3ChunkUrl="https://s3.amazonaws.com/tutor-assets/a.mp4"), CTX)
    assert_blocked(plan, "key_url_mismatch")


@pytest.mark.parametrize(("field", "value"), [("s3ChunkKey", None), ("s3ChunkUrl", None), ("s3ChunkKey", 42), ("thumbnailUrl", ["x"])])
def test_ast1_wrong_types_for_keys_and_urls_are_blocked(field: str, value: Any) -> None:
    plan = rules.plan_scene(scene(**{field: value}), CTX)
    assert_blocked(plan, "wrong_type")
    assert problem(plan, "wrong_type")["field"] == field


def test_ast1_blank_strings_count_as_absent_and_are_flagged() -> None:
    plan = rules.plan_scene(scene(thumbnailKey="", thumbnailUrl="   "), CTX)
    assert plan.action == "migrate"
    assert "thumbnailAsset" not in plan.set
    assert codes(plan) == {("empty_string", "flagged")}
    assert {p["field"] for p in plan.problems} == {"thumbnailKey", "thumbnailUrl"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"{BUCKET}/a/b.mp4", ("tutor-assets", "a/b.mp4", False, f"{BUCKET}/a/b.mp4")),
        ("https://my.bucket.s3-us-west-2.amazonaws.com/k.png?Signature=x", ("my.bucket", "k.png", True, "https://my.bucket.s3-us-west-2.amazonaws.com/k.png")),
        ("https://s3.eu-west-1.amazonaws.com/bucket-1/x%2By.vtt?X-Amz-Credential=a", ("bucket-1", "x+y.vtt", True, "https://s3.eu-west-1.amazonaws.com/bucket-1/x%2By.vtt")),
        ("HTTPS://Tutor-Assets.S3.AMAZONAWS.COM/Key.MP4", ("tutor-assets", "Key.MP4", False, "HTTPS://Tutor-Assets.S3.AMAZONAWS.COM/Key.MP4")),
        ("https://cdn.example.com/a.mp4", None),
        ("https://tutor-assets.s3.amazonaws.com.evil.example/a.mp4", None),
        ("https://evil.example/tutor-assets.s3.amazonaws.com/a.mp4", None),
        ("https://s3.amazonaws.com/bucket-only/", None),
        (f"{BUCKET}/", None),
        ("ftp://tutor-assets.s3.amazonaws.com/a.mp4", None),
        ("not a url", None),
    ],
)
def test_parse_s3_url(url: str, expected: tuple[str, str, bool, str] | None) -> None:
    assert rules.parse_s3_url(url) == (s3_urls.ParsedUrl(*expected) if expected else None)


# -- AST-2 ... AST-5 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a/chunk.mp4", "video/mp4"), ("a/b.webm", "video/webm"), ("a/b.mov", "video/quicktime"), ("a/B.MP4", "video/mp4"),
        ("a/s.py", "text/x-python"), ("a/s.js", "text/javascript"), ("a/s.ts", "text/typescript"), ("a/s.txt", "text/plain"),
        ("a/t.png", "image/png"), ("a/t.jpg", "image/jpeg"), ("a/t.jpeg", "image/jpeg"), ("a/t.webp", "image/webp"),
        ("a/s.vtt", "text/vtt"), ("a/s.srt", "application/x-subrip"), ("a/m.m3u8", "application/vnd.apple.mpegurl"),
        ("a/m.mpd", "application/dash+xml"), ("a/m.json", "application/json"),
        ("a/chunk.mkv", None), ("a/chunk", None), ("a.mp4/chunk", None), ("a/.mp4", None), (".mp4", None), ("chunk.", None),
    ],
)
def test_ast2_content_type_for_key(key: str, expected: str | None) -> None:
    assert rules.content_type_for_key(key) == expected


def test_ast2_unknown_extension_is_flagged_as_octet_stream() -> None:
    key = key_of("chunk.mkv")
    plan = rules.plan_scene(scene(s3ChunkKey=key, s3ChunkUrl=url_of(key)), CTX)
    assert plan.set["videoAsset"]["contentType"] == "application/octet-stream"
    assert codes(plan) == {("unknown_content_type", "flagged")}


@pytest.mark.parametrize(
    ("updated_at", "expected", "flag"),
    [
        (UPDATED, UPDATED, None),
        (1.5e12, 1.5e12, None),
        ("2024-01-01T00:00:00Z", 1_704_067_200_000, "timestamp_string"),
        ("2024-01-01T01:00:00.250+01:00", 1_704_067_200_250, "timestamp_string"),
        ("2024-01-01 00:00:00", 1_704_067_200_000, "timestamp_string"),
        (None, CREATED, "invalid_timestamp"),
        ("yesterday", CREATED, "invalid_timestamp"),
        ("  ", CREATED, "empty_string"),
        (DROP, CREATED, None),
    ],
)
def test_ast3_uploaded_at(updated_at: Any, expected: float, flag: str | None) -> None:
    plan = rules.plan_scene(scene(updatedAt=updated_at), CTX)
    assert plan.set["videoAsset"]["uploadedAt"] == expected
    assert codes(plan) == ({(flag, "flagged")} if flag else set())


@pytest.mark.parametrize(
    ("size", "expected", "flagged"),
    [(0, 0, False), (2.5e9, 2.5e9, False), ("1048576", None, True), (-1, None, True), (None, None, True), (DROP, None, False)],
)
def test_ast4_size(size: Any, expected: float | None, flagged: bool) -> None:
    plan = rules.plan_scene(scene(s3ChunkSize=size), CTX)
    assert plan.set["videoAsset"].get("size") == expected
    assert ("size" in plan.set["videoAsset"]) == (expected is not None)
    assert codes(plan) == ({("invalid_size", "flagged")} if flagged else set())


@pytest.mark.parametrize(
    ("checksum", "expected", "code"),
    [("abc123", "abc123", None), (12345, None, "invalid_checksum"), (None, None, "invalid_checksum"), ("", None, "empty_string"), (DROP, None, None)],
)
def test_ast5_checksum(checksum: Any, expected: str | None, code: str | None) -> None:
    plan = rules.plan_scene(scene(checksum=checksum), CTX)
    assert plan.set["videoAsset"].get("checksum") == expected
    assert codes(plan) == ({(code, "flagged")} if code else set())


def test_ast4_ast5_size_and_checksum_belong_to_the_video_chunk_only() -> None:
    plan = rules.plan_scene(scene(s3ChunkKey=DROP, s3ChunkUrl=DROP, status="rendering", sourceCodeKey="a/s.py", sourceCodeUrl=url_of("a/s.py")), CTX)
    assert set(plan.set["sourceCodeAsset"]) == {"s3Key", "s3Url", "contentType", "uploadedAt"}
    assert plan.problems == []


# -- GEN-1 ... GEN-4 ---------------------------------------------------------------------------------------------


def test_gen1_fully_migrated_scene_is_no_change() -> None:
    doc = scene()
    again = rules.plan_scene(applied(doc, rules.plan_scene(doc, CTX)), TRACKED)
    assert (again.action, again.set, again.references) == ("no_change", {}, [])


def test_scn10_assets_there_before_the_migration_get_their_references() -> None:
    doc = scene(thumbnailKey=key_of("t.png"), thumbnailUrl=url_of(key_of("t.png")))
    first = rules.plan_scene(doc, CTX)
    again = rules.plan_scene(applied(doc, first), CTX)  # assets written by the application, not tracked
    assert (again.action, again.set) == ("track_existing", {})
    assert again.references == first.references
    assert again.expect["videoAsset"] == first.set["videoAsset"]  # guarded: the asset must still be the same
    tracked_video = RulesContext(is_tracked=lambda _id, asset_type: asset_type == "video_chunk")
    assert [r["assetType"] for r in rules.plan_scene(applied(doc, first), tracked_video).references] == ["thumbnail"]


def test_ses8_a_session_asset_there_before_gets_its_reference() -> None:
    doc = session()
    first = rules.plan_session(doc, SessionTotals(scenes=1, ready=1), CTX)
    again = rules.plan_session(applied(doc, first), SessionTotals(scenes=1, ready=1), CTX)
    assert again.action == "track_existing" and [r["assetType"] for r in again.references] == ["combined_video"]


def test_gen1_partly_migrated_scene_gets_only_the_missing_fields() -> None:
    doc = scene()
    first = rules.plan_scene(doc, CTX)
    partial = {**doc, "videoAsset": first.set["videoAsset"]}
    plan = rules.plan_scene(partial, CTX)
    assert plan.action == "fill_missing"
    assert set(plan.set) == {"assetsStatus", "assetVersion", "previousAssetVersions"}
    assert plan.references == first.references  # the video asset there before is tracked too
    assert rules.plan_scene(partial, TRACKED).references == []  # unless it already has its reference
    assert plan.expect["videoAsset"] == first.set["videoAsset"]


def test_gen1_different_existing_value_is_a_conflict_and_never_overwritten() -> None:
    other = key_of("chunk-v2.mp4")
    plan = rules.plan_scene(scene(videoAsset={"s3Key": other, "s3Url": url_of(other), "contentType": "video/mp4", "uploadedAt": 1}), CTX)
    assert_blocked(plan, "new_field_conflict")
    assert problem(plan, "new_field_conflict")["field"] == "videoAsset"
    assert plan.current == {"assets": 1, "size": 0, "keys": [other], "assetsStatus": None}


def test_gen1_convex_equality_int_equals_float_but_not_boolean() -> None:
    assert rules.plan_scene(applied(scene(), rules.plan_scene(scene(), CTX)) | {"assetVersion": 1.0}, TRACKED).action == "no_change"
    plan = rules.plan_scene(scene(assetVersion=True), CTX)
    assert_blocked(plan, "new_field_conflict")


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True), (float("nan"), float("nan"), True), (True, 1, False), (0, False, False), ("1", 1, False),
        ({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]}, True), ({"a": 1}, {"a": 1, "b": 2}, False), ([1, 2], [2, 1], False),
        (None, None, True), ({"a": "x"}, {"a": "y"}, False), ([True], [1], False),
    ],
)
def test_values_equal_follows_convex(a: Any, b: Any, equal: bool) -> None:
    assert rules.values_equal(a, b) is equal
    assert rules.values_equal(b, a) is equal


def test_gen3_precondition_lists_every_field_the_rules_read() -> None:
    doc = scene(status="failed", errorMessage="boom")
    plan = rules.plan_scene(doc, CTX)
    read = {"sessionId", "status", "s3ChunkKey", "s3ChunkUrl", "s3ChunkSize", "checksum", "updatedAt", "errorMessage"}
    assert plan.expect == {f: doc[f] for f in read}
    assert plan.expect_absent == ["sourceCodeKey", "sourceCodeUrl", "thumbnailKey", "thumbnailUrl", "subtitleKey", "subtitleUrl", *plan.set]
    assert "title" not in plan.expect and "_creationTime" not in plan.expect


def test_gen4_lone_surrogate_blocks_and_keeps_the_line_encodable() -> None:
    plan = rules.plan_scene(scene(subtitleKey="a/sub-\ud83c.vtt", subtitleUrl=url_of("a/sub-\ud83c.vtt")), CTX)
    assert_blocked(plan, "invalid_unicode")
    assert plan.expect == {} and plan.expect_absent == []
    orjson.dumps(plan.to_line())


def test_gen4_lone_surrogate_in_status_and_session_id_is_escaped_in_the_line() -> None:
    plan = rules.plan_scene(scene(status="done\udc00", sessionId="sess\ud800"), CTX)
    assert_blocked(plan, "invalid_unicode")
    assert plan.session_id is None
    assert plan.legacy_status == "'done\\udc00'"
    orjson.dumps(plan.to_line())


def test_gen4_oversized_value_blocks() -> None:
    long_key = "a/" + "x" * 2100 + ".py"
    plan = rules.plan_scene(scene(sourceCodeKey=long_key, sourceCodeUrl=url_of(long_key)), CTX)
    assert_blocked(plan, "oversized_value")
    assert [p["field"] for p in plan.problems] == ["sourceCodeKey", "sourceCodeUrl"]
    assert all(len(p["message"]) < 300 for p in plan.problems)


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"message": "Killed"}
    for _ in range(levels - 1):
        value = {"cause": value}
    return value


def test_gen4_error_object_nested_deeper_than_eight_levels_blocks() -> None:
    assert rules.plan_scene(scene(status="failed", errorMessage=nested(8)), CTX).action == "migrate"
    plan = rules.plan_scene(scene(status="failed", errorMessage=nested(9)), CTX)
    assert_blocked(plan, "too_deeply_nested")
    assert plan.expect == {}


@pytest.mark.parametrize(("field", "value"), [("s3ChunkSize", float("nan")), ("updatedAt", float("inf")), ("updatedAt", b"\x00\x01"),
                                             ("s3ChunkSize", Int64(5))])
def test_gen4_values_the_plan_cannot_record_block(field: str, value: Any) -> None:
    plan = rules.plan_scene(scene(status="failed", **{field: value}), CTX)
    assert_blocked(plan, "wrong_type")
    orjson.dumps(plan.to_line())


def test_gen4_surrogate_inside_an_error_object_blocks() -> None:
    plan = rules.plan_scene(scene(status="failed", errorMessage={"stderr": ["ok", "bad \udcff"]}), CTX)
    assert_blocked(plan, "invalid_unicode")
    orjson.dumps(plan.to_line())


@pytest.mark.parametrize("status", ["archived", "complete", "", 3, ["completed"], DROP])
def test_unknown_status_blocks(status: Any) -> None:
    plan = rules.plan_scene(scene(status=status), CTX)
    assert_blocked(plan, "unknown_status")
    assert rules.plan_session(session(status=status), SessionTotals(), CTX).action == "problem"


@pytest.mark.parametrize(
    ("status", "expected"),
    [("error", "error"), ("failed", "error"), ("cancelled", "error"), ("canceled", "error"), ("queued", "pending"),
     ("pending", "pending"), ("generating", "pending"), ("rendering", "pending"), ("uploading", "uploading"), ("completed", "ready")],
)
def test_scn5_every_legacy_scene_status_has_its_mapping(status: str, expected: str) -> None:
    plan = rules.plan_scene(scene(status=status), CTX)
    assert plan.action == "migrate" and plan.set["assetsStatus"] == expected
    assert ("assetsErrorMessage" in plan.set) == (expected == "error")


def test_scn6_error_status_copies_the_legacy_message_and_cancelled_says_so() -> None:
    assert rules.plan_scene(scene(status="error", errorMessage="boom"), CTX).set["assetsErrorMessage"] == "boom"
    assert rules.plan_scene(scene(status="cancelled"), CTX).set["assetsErrorMessage"] == rules.CANCELLED_TEXT
    assert rules.plan_scene(scene(status="error"), CTX).set["assetsErrorMessage"] == rules.MISSING_ERROR_TEXT


@pytest.mark.parametrize(
    ("status", "expected"), [("error", "error"), ("cancelled", "error"), ("queued", "ready"), ("combining", "ready"), ("completed", "ready")]
)
def test_ses6_every_legacy_session_status_has_its_mapping(status: str, expected: str) -> None:
    totals = SessionTotals(scenes=1, ready=1)
    plan = rules.plan_session(session(status=status), totals, CTX)
    assert plan.action == "migrate" and plan.set["assetsStatus"] == expected


@pytest.mark.parametrize(("status", "canonical"), [("Completed", "completed"), (" failed ", "failed"), ("ERROR", "error"), ("Queued", "queued")])
def test_a_status_that_differs_only_in_case_or_spaces_is_read_and_flagged(status: str, canonical: str) -> None:
    plan = rules.plan_scene(scene(status=status), CTX)
    assert plan.action == "migrate" and codes(plan) == {("status_variant", "flagged")}
    assert plan.set["assetsStatus"] == rules.plan_scene(scene(status=canonical), CTX).set["assetsStatus"]
    assert rules.plan_session(session(status=status), SessionTotals(scenes=1, ready=1), CTX).action == "migrate"


@given(st.text(max_size=12))
@settings(max_examples=EXAMPLES, derandomize=MUTATION, deadline=None)
def test_property_a_status_is_mapped_exactly_when_its_folded_form_is_known(status: str) -> None:
    plan = rules.plan_scene(scene(status=status), CTX)
    folded = status.strip().lower()
    if folded in rules.SCENE_STATUS_MAP and rules.recordable(status):
        assert plan.action == "migrate"
        assert plan.set["assetsStatus"] in ({rules.SCENE_STATUS_MAP[folded]} | {"error"})
    else:
        assert plan.action == "problem"


# -- the planner's interface: duplicates, keys, lines ------------------------------------------------------------


def test_mark_blocking_keeps_the_precondition_but_changes_nothing() -> None:
    plan = rules.plan_scene(scene(), CTX)
    blocked = plan_line.mark_blocking(plan, "duplicate_s3_key", "S3 key used by 2 scenes", field_name="s3ChunkKey")
    assert_blocked(blocked, "duplicate_s3_key")
    assert blocked.problems[-1] == {"code": "duplicate_s3_key", "severity": "blocking", "field": "s3ChunkKey", "message": "S3 key used by 2 scenes"}
    assert blocked.expect == plan.expect
    assert blocked.expect_absent == [f for f in plan.expect_absent if f not in plan.set]
    assert plan.action == "migrate" and plan.set  # the original is untouched
    assert rules.asset_keys(blocked) == []


def test_asset_keys_lists_planned_and_existing_keys_once() -> None:
    thumb = key_of("t.png")
    existing = {"s3Key": thumb, "s3Url": url_of(thumb), "contentType": "image/png", "uploadedAt": UPDATED}
    plan = rules.plan_scene(scene(thumbnailKey=thumb, thumbnailUrl=url_of(thumb), thumbnailAsset=existing, subtitleKey=thumb, subtitleUrl=url_of(thumb)), CTX)
    assert plan.action == "fill_missing"
    assert rules.asset_keys(plan) == [thumb, key_of()]


def test_line_round_trips_through_orjson() -> None:
    plan = rules.plan_scene(scene(s3ChunkSize=1.5, status="failed", errorMessage={"a": [1, 2.0, None, True]}), CTX)
    line = orjson.loads(orjson.dumps(plan.to_line(), option=orjson.OPT_SORT_KEYS))
    assert DocumentPlan.from_line(line) == plan
    assert DocumentPlan.from_line(line).to_line() == line
    assert set(line) == {*PLAN_LINE_KEYS, "legacyStatus", "sessionId", "current"}  # the core's keys, and 001's own


def test_problem_messages_name_their_field() -> None:
    doc = scene(s3ChunkUrl=DROP, thumbnailKey="", status="failed", errorMessage=[1])
    plan = rules.plan_scene(doc, CTX)
    assert {p["code"] for p in plan.problems} == {"key_without_url", "empty_string", "wrong_type"}
    for found in plan.problems:
        assert found["code"] in plan_line.PROBLEM_CODES
        assert found["field"] in found["message"]


@pytest.mark.parametrize(
    ("value", "blocked"),
    [(2**64 - 1, False), (2**64, True), (-(2**63), False), (-(2**63) - 1, True), (float("inf"), True), (1.5, False)],
)
def test_gen4_numbers_the_plan_file_can_carry(value: Any, blocked: bool) -> None:
    for doc in (scene(s3ChunkSize=value), scene(status="failed", errorMessage={"code": [value]}), scene(status="failed", errorMessage=[value])):
        plan = rules.plan_scene(doc, CTX)
        assert (plan.action == "problem") is blocked
        check_problems_are_well_formed(doc, plan, "scenes")


@pytest.mark.parametrize(
    "changes",
    [{"updatedAt": float("nan")}, {"status": "failed", "errorMessage": "x\ud800"}, {"combinedVideoKey": "k" * 2049}, {"title": "ok", "updatedAt": b"x"}],
)
def test_gen4_a_session_value_the_plan_cannot_carry_blocks_with_an_empty_precondition(changes: dict[str, Any]) -> None:
    doc = session(**changes)
    plan = rules.plan_session(doc, SessionTotals(), CTX)
    assert (plan.action, plan.expect, plan.expect_absent, plan.set, plan.current) == ("problem", {}, [], {}, {})
    check_problems_are_well_formed(doc, plan, "videoSessions")


def test_gen4_an_unrecordable_scene_keeps_what_it_holds_for_its_session() -> None:
    held = {"s3Key": key_of(), "s3Url": url_of(key_of()), "contentType": "video/mp4", "size": 5, "uploadedAt": 1}
    plan = rules.plan_scene(scene(videoAsset=held, errorMessage=float("nan"), status="failed"), CTX)
    assert plan.action == "problem" and plan.current == {"assets": 1, "size": 5, "keys": [key_of()], "assetsStatus": None}
    assert plan.session_id == "sess1" and plan.legacy_status == "failed"


def test_rules_module_stays_pure() -> None:
    for module in RULE_MODULES:
        source = (M001_DIR / module).read_text()
        assert not re.search(r"^\s*(from|import)\s+(\.|helpers\.)?(transport|deployment|httpx|pydantic|plan)\b", source, re.MULTILINE), module


# -- the docs describe exactly these rules and codes ---------------------------------------------------------------


def test_mapping_doc_rows_match_rule_ids_in_the_code() -> None:
    doc = (M001_DIR / "mapping.md").read_text()
    rows = re.findall(r"^\| ((?:SCN|SES|AST|GEN)-\d+) \|", doc, re.MULTILINE)
    in_code = {rule for m in RULE_MODULES for rule in re.findall(r"\b((?:SCN|SES|AST|GEN)-\d+)\b", (M001_DIR / m).read_text())}
    assert len(rows) == len(set(rows))
    assert set(rows) == in_code


def test_mapping_doc_lists_every_problem_code_with_its_severity() -> None:
    doc = (M001_DIR / "mapping.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_0-9]+)` \| (blocking|flagged)", doc, re.MULTILINE))
    assert rows == plan_line.PROBLEM_CODES


# -- properties ------------------------------------------------------------------------------------------------------

EXTENSIONS = ["mp4", "py", "png", "vtt", "MOV", "mkv", "", "m3u8"]
segment = st.text(alphabet="abcdefghij0123-_", min_size=1, max_size=8)
s3_keys = st.builds(lambda parts, ext: "/".join(parts) + (f".{ext}" if ext else ""), st.lists(segment, min_size=1, max_size=3), st.sampled_from(EXTENSIONS))
odd_texts = st.one_of(st.sampled_from(["", "  ", "\t", "x\ud800y", "y" * 2100, "https://cdn.example.com/x.mp4"]), st.text(max_size=12))
other_values = st.one_of(st.none(), st.integers(-5, 10**12), st.floats(allow_nan=True), st.booleans(), st.lists(st.integers(), max_size=2))


@st.composite
def legacy_pair(draw: st.DrawFn) -> dict[str, Any]:
    """A key/URL pair in one of the shapes production has: clean, pre-signed, one side only, disagreeing, odd values."""
    key = draw(s3_keys)
    shape = draw(st.sampled_from(["clean", "clean", "presigned", "path_style", "key_only", "url_only", "cdn", "mismatch", "absent", "odd"]))
    if shape == "clean":
        return {"key": f" {key}" if draw(st.booleans()) else key, "url": url_of(key)}
    if shape == "presigned":
        return {"key": key, "url": url_of(key) + "?X-Amz-Signature=abc&X-Amz-Credential=AKIA"}
    if shape == "path_style":
        return {"key": key, "url": f"https://s3.eu-west-1.amazonaws.com/tutor-assets/{key}"}
    if shape == "key_only":
        return {"key": key}
    if shape == "url_only":
        return {"url": url_of(key)}
    if shape == "cdn":
        return {"url": f"https://cdn.example.com/{key}", **({"key": key} if draw(st.booleans()) else {})}
    if shape == "mismatch":
        return {"key": key, "url": url_of(key + "x")}
    if shape == "absent":
        return {}
    return {side: draw(st.one_of(odd_texts, other_values)) for side in draw(st.sampled_from([["key"], ["url"], ["key", "url"]]))}


@st.composite
def legacy_scenes(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": "scene-" + draw(segment),
        "_creationTime": draw(st.floats(1.6e12, 1.8e12)),
        "sessionId": draw(st.sampled_from(["sess1", "sess2", "gone"])),
        "sceneIndex": draw(st.integers(0, 30)),
        "status": draw(st.sampled_from([*rules.SCENE_STATUS_MAP, "archived"])),
    }
    for key_field, url_field in fields.SCENE_ASSET_SOURCES.values():
        pair = draw(legacy_pair())
        doc.update({name: pair[side] for side, name in (("key", key_field), ("url", url_field)) if side in pair})
    optional = {
        "s3ChunkSize": st.one_of(st.integers(0, 10**9), st.text(alphabet="0123456789", max_size=6), other_values),
        "checksum": st.one_of(st.text(alphabet="0123456789abcdef", max_size=32), other_values),
        "updatedAt": st.one_of(st.integers(1_600_000_000_000, 1_800_000_000_000), st.sampled_from(["2024-02-03T04:05:06Z", "garbage", ""]), other_values),
        "errorMessage": st.one_of(st.text(max_size=20), other_values, st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
        "assetsStatus": st.sampled_from(["pending", "uploading", "ready", "error"]),
        "assetVersion": st.sampled_from([1, 1.0, 2, True]),
        "previousAssetVersions": st.just([]),
    }
    for name, strategy in optional.items():
        if draw(st.integers(0, 3)) == 0 if name in fields.NEW_FIELDS["scenes"] else draw(st.booleans()):
            doc[name] = draw(strategy)
    return doc


@st.composite
def legacy_sessions(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": "sess-" + draw(segment),
        "_creationTime": draw(st.floats(1.6e12, 1.8e12)),
        "status": draw(st.sampled_from([*rules.SESSION_STATUSES, "archived"])),
    }
    for key_field, url_field in fields.SESSION_ASSET_SOURCES.values():
        pair = draw(legacy_pair())
        doc.update({name: pair[side] for side, name in (("key", key_field), ("url", url_field)) if side in pair})
    if draw(st.booleans()):
        doc["errorMessage"] = draw(st.one_of(st.text(max_size=20), st.none()))
    if draw(st.booleans()):
        doc["updatedAt"] = draw(st.one_of(st.integers(1_600_000_000_000, 1_800_000_000_000), st.sampled_from(["2024-02-03T04:05:06Z", None])))
    if draw(st.integers(0, 3)) == 0:
        doc["assetCount"] = draw(st.integers(0, 5))
    return doc


session_totals = st.builds(
    lambda scenes, ready, errors, uploading, assets, size: SessionTotals(
        scenes, assets, size, min(ready, scenes), min(errors, scenes - min(ready, scenes)), uploading if not errors else 0
    ),
    st.integers(0, 5), st.integers(0, 5), st.integers(0, 1), st.integers(0, 1), st.integers(0, 20), st.integers(0, 10**9),
)
PROPERTIES = settings(max_examples=EXAMPLES, derandomize=MUTATION, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SESSION_CTX = RulesContext(session_exists={"sess1", "sess2"}.__contains__)
TRACKED_SESSION_CTX = RulesContext(session_exists={"sess1", "sess2"}.__contains__, is_tracked=lambda _id, _asset_type: True)


#: Fields a problem may name besides the ones the rules read: the new fields (a conflict) of either table.
PROBLEM_FIELDS = {"sessionId", "status", "errorMessage", "updatedAt", "s3ChunkSize", "checksum",
                  *(f for sources in fields.ASSET_SOURCES.values() for pair in sources.values() for f in pair),
                  *fields.NEW_FIELDS["scenes"], *fields.NEW_FIELDS["videoSessions"]}


def check_problems_are_well_formed(doc: dict[str, Any], plan: DocumentPlan, table: str) -> None:
    """Every problem: a known code with its severity, the field it is about, and a message naming that field."""
    for found in plan.problems:
        assert set(found) == {"code", "severity", "field", "message"}
        assert found["field"] in PROBLEM_FIELDS, found
        assert found["field"] in found["message"] and found["message"].strip(), found
        if found["code"] != "wrong_type":
            assert found["severity"] == plan_line.PROBLEM_CODES[found["code"]], found
        if found["code"] in ("unknown_status", "status_variant"):
            assert rules.show(doc.get("status")) in found["message"]
    line = plan.to_line()
    assert (line["table"], line["id"]) == (table, doc["_id"])
    status = doc.get("status")
    assert line["legacyStatus"] == (status if status in rules._KNOWN_STATUSES else rules.printable(status))
    if table == "videoSessions":
        assert line["sessionId"] is None and line["current"] == {}
    else:
        raw = doc.get("sessionId")
        assert line["sessionId"] == (raw if type(raw) is str and rules.recordable(raw) else None)


def check_plan_invariants(doc: dict[str, Any], plan: DocumentPlan, table: str) -> None:
    check_problems_are_well_formed(doc, plan, table)
    line = plan.to_line()
    raw = orjson.dumps(line, option=orjson.OPT_SORT_KEYS)
    assert DocumentPlan.from_line(orjson.loads(raw)).to_line() == orjson.loads(raw)
    assert set(plan.set) <= fields.NEW_FIELDS[table]
    assert not set(plan.set) & {"_id", "_creationTime"}
    assert not set(plan.expect) & set(plan.expect_absent)
    assert plan.action in ("migrate", "fill_missing", "track_existing", "no_change", "problem")
    if plan.action == "problem":
        assert plan.set == {} and plan.references == []
        assert any(p["severity"] == "blocking" for p in plan.problems)
        return
    assert not any(p["severity"] == "blocking" for p in plan.problems)
    # The precondition holds on the document it was planned from (apply's compare-and-set).
    assert all(rules.values_equal(doc[f], v) for f, v in plan.expect.items())
    assert not any(f in doc for f in plan.expect_absent)
    assert set(plan.set) <= set(plan.expect_absent)
    # Every asset agrees with its legacy fields as helpers/steps/verify.py checks them; one reference each.
    sources = fields.ASSET_SOURCES[table]
    references = {r["assetType"]: r for r in plan.references}
    assert len(references) == len(plan.references)
    for asset_field, asset in plan.set.items():
        if asset_field not in sources:
            continue
        key_field, url_field = sources[asset_field]
        legacy_key, legacy_url = doc.get(key_field), doc.get(url_field)
        if isinstance(legacy_key, str) and legacy_key.strip():
            assert asset["s3Key"] == legacy_key.strip()
        if isinstance(legacy_url, str) and legacy_url.strip():
            assert asset["s3Url"] == legacy_url.strip().split("?", 1)[0]
        assert "?" not in asset["s3Url"] and asset["contentType"]
        reference = references.pop(fields.ASSET_TYPES[asset_field])
        assert {k: v for k, v in reference.items() if k not in ("entityType", "assetType", "version", "metadata")} == asset
        assert reference["metadata"]["legacyField"] == key_field
    for asset_type, reference in references.items():  # the rest track assets the document already holds
        asset_field = next(f for f, t in fields.ASSET_TYPES.items() if t == asset_type)
        assert {k: v for k, v in reference.items() if k not in ("entityType", "assetType", "version", "metadata")} == doc[asset_field]
    held = {fields.ASSET_TYPES[f] for f in sources if isinstance(doc.get(f) or plan.set.get(f), dict)}
    assert {r["assetType"] for r in plan.references} == held  # tracking complete (nothing is tracked in CTX)
    assert (plan.action == "track_existing") == (not plan.set and bool(plan.references))


@PROPERTIES
@given(legacy_scenes())
def test_property_scene_plans_are_sound(doc: dict[str, Any]) -> None:
    before = copy.deepcopy(doc)
    plan = rules.plan_scene(doc, SESSION_CTX)
    assert _same(doc, before), "planning must not change the document"
    check_plan_invariants(doc, plan, "scenes")
    assert rules.plan_scene(copy.deepcopy(doc), SESSION_CTX).to_line() == plan.to_line()


@PROPERTIES
@given(legacy_scenes())
def test_property_planning_a_migrated_scene_again_changes_nothing(doc: dict[str, Any]) -> None:
    plan = rules.plan_scene(doc, SESSION_CTX)
    if plan.action in rules.CHANGING_ACTIONS:
        again = rules.plan_scene(applied(doc, plan), TRACKED_SESSION_CTX)
        assert (again.action, again.set, again.references) == ("no_change", {}, [])
        totals_before, totals_after = SessionTotals(), SessionTotals()
        totals_before.add_scene(plan)
        totals_after.add_scene(again)
        assert totals_before == totals_after
        assert rules.asset_keys(plan) == rules.asset_keys(again)


@PROPERTIES
@given(legacy_sessions(), session_totals)
def test_property_session_plans_are_sound(doc: dict[str, Any], totals: SessionTotals) -> None:
    plan = rules.plan_session(doc, totals, CTX)
    check_plan_invariants(doc, plan, "videoSessions")
    assert rules.plan_session(copy.deepcopy(doc), totals, CTX).to_line() == plan.to_line()
    if plan.action in rules.CHANGING_ACTIONS:
        again = rules.plan_session(applied(doc, plan), totals, TRACKED)
        assert (again.action, again.set, again.references) == ("no_change", {}, [])
        own = [a for f in fields.SESSION_ASSET_SOURCES if isinstance(a := applied(doc, plan).get(f), dict)]
        if "assetCount" in plan.set:
            assert plan.set["assetCount"] == len(own) + totals.assets
            assert plan.set["totalAssetSize"] == sum(a.get("size", 0) for a in own) + totals.size


def _same(a: Any, b: Any) -> bool:
    """Deep equality that also holds for NaN (a document must come back exactly as it went in)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b
