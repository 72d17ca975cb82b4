"""Migration 002's pure parts: the retire rule (properties over every document shape), each blocked reason, the
planner's streaming, and the verify check `legacy_values_recoverable` shown to fire."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.connection.values import equal
from helpers.migrations.m002_retire_legacy_fields import MIGRATION, rules
from helpers.migrations.m002_retire_legacy_fields.checks import (
    LEGACY_VALUES_RECOVERABLE,
)
from helpers.steps.migration import (
    PLAN_LINE_KEYS,
    Before,
    Joined,
    PlanInputs,
    PlanLine,
    Planned,
    Verdict,
)
from helpers.steps.plan_tally import PlanPage

BUCKET = "https://tutor.s3.us-east-1.amazonaws.com"
MIGRATED_AT = 1_704_067_200_000

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
numbers = st.one_of(st.integers(-5, 10**9), st.floats(allow_nan=True, allow_infinity=True))
loose_values = st.one_of(st.none(), texts, numbers)


def asset(key: str, size: Any = None, checksum: Any = None, uploaded_at: float = MIGRATED_AT) -> dict[str, Any]:
    """An asset as 001 builds it: key, URL, content type, upload time (the video chunk: size, checksum)."""
    built: dict[str, Any] = {"s3Key": key, "s3Url": f"{BUCKET}/{key}", "contentType": "video/mp4", "uploadedAt": uploaded_at}
    if size is not None:
        built["size"] = size
    if checksum is not None:
        built["checksum"] = checksum
    return built


def migrated_scene(**extra: Any) -> dict[str, Any]:
    """A completed scene as 001 leaves it: every legacy field carried by its asset."""
    video = asset("s/1/chunk.mp4", size=1200, checksum="abc123")
    return {
        "_id": "scene1", "_creationTime": 1.0, "status": "completed", "updatedAt": MIGRATED_AT,
        "s3ChunkKey": "s/1/chunk.mp4", "s3ChunkUrl": f"{BUCKET}/s/1/chunk.mp4", "s3ChunkSize": 1200, "checksum": "abc123",
        "thumbnailKey": "s/1/t.png", "thumbnailUrl": f"{BUCKET}/s/1/t.png",
        "videoAsset": video, "thumbnailAsset": asset("s/1/t.png"), "assetsStatus": "ready", **extra,
    }


def after_apply(doc: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """The document as applyBatch leaves it: `set` written, `unset` removed."""
    return {**{k: v for k, v in doc.items() if k not in line["unset"]}, **line["set"]}


def joined(line: dict[str, Any], live: dict[str, Any] | None, backed_up: dict[str, Any] | None = None) -> Joined:
    """The document as verify joins it: its backup, its plan line, the live document."""
    planned = Planned.of(MIGRATION, line)
    before = None if backed_up is None else Before.of(MIGRATION, line["table"], backed_up, planned.touched)
    return Joined(MIGRATION, line["table"], before, planned, live)


# -- documents of every shape ------------------------------------------------------------------------------


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A document of either table: each asset absent or as 001 built it, each legacy field absent, equal to what
    its asset holds, or anything else; assetsStatus present or not; updatedAt before, at or after the migration."""
    table = draw(st.sampled_from(MIGRATION.tables))
    doc: dict[str, Any] = {"_id": draw(st.text("abc123", min_size=1, max_size=8)), "_creationTime": 1.0}
    if draw(st.booleans()):
        doc["status"] = draw(st.one_of(st.sampled_from(["completed", "failed", "pending"]), loose_values))
    if draw(st.booleans()):
        doc["updatedAt"] = draw(st.one_of(st.sampled_from([MIGRATED_AT - 1, MIGRATED_AT, MIGRATED_AT + 1]), loose_values))
    if draw(st.integers(0, 4)):
        doc["assetsStatus"] = "ready"
    for name, (asset_field, attribute) in rules.CARRIED_BY[table].items():
        if asset_field not in doc and draw(st.booleans()):
            key = draw(st.text("abcdef/", min_size=1, max_size=6)) + ".mp4"
            doc[asset_field] = asset(key, draw(st.none() | numbers), draw(st.none() | texts),
                                     draw(st.sampled_from([MIGRATED_AT, MIGRATED_AT + 5])))
        held = doc.get(asset_field, {})
        choice = draw(st.sampled_from(["absent", "carried", "carried", "other"]))
        if choice == "carried" and attribute in held:
            doc[name] = held[attribute]
        elif choice == "other":
            doc[name] = draw(loose_values)
    return table, doc


def present_legacy(table: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {f: doc[f] for f in rules.CARRIED_BY[table] if f in doc}


def carried(table: str, name: str, value: Any, doc: dict[str, Any]) -> bool:
    """The spec, written out: the value is exactly in the attribute of the asset 001 built from it."""
    asset_field, attribute = rules.CARRIED_BY[table][name]
    held = doc.get(asset_field)
    return isinstance(held, dict) and attribute in held and equal(held[attribute], value)


@settings(max_examples=400)
@given(documents())
def test_every_line_has_the_core_keys_and_one_of_the_declared_actions(case: tuple[str, dict[str, Any]]) -> None:
    table, doc = case
    line = rules.plan_document(table, doc)
    assert set(line) == {*PLAN_LINE_KEYS, "legacyStatus"}  # the core's keys and the one grouping its dry-run tables
    assert line["table"] == table and line["id"] == doc["_id"] and line["action"] in MIGRATION.actions
    assert line["set"] == {} and line["references"] == [] and line["expectAbsent"] == []
    assert MIGRATION.changes(line) == (line["action"] == rules.RETIRE)


@settings(max_examples=400)
@given(documents())
def test_a_retired_documents_removed_values_are_all_recoverable_from_its_assets(case: tuple[str, dict[str, Any]]) -> None:
    table, doc = case
    line = rules.plan_document(table, doc)
    if line["action"] != rules.RETIRE:
        return
    legacy = present_legacy(table, doc)
    assert line["problems"] == [] and sorted(line["unset"]) == sorted(legacy)  # every legacy field goes, nothing else
    after = after_apply(doc, line)
    for name in line["unset"]:
        assert equal(line["expect"][name], doc[name]) and carried(table, name, doc[name], after)
    carriers = {rules.CARRIED_BY[table][name][0] for name in line["unset"]}
    assert set(line["expect"]) == set(legacy) | carriers  # the compare-and-set covers the asset fields as well
    assert all(equal(line["expect"][a], doc[a]) for a in carriers)
    assert LEGACY_VALUES_RECOVERABLE.run(joined(line, after, doc)) is Verdict.PASS


@settings(max_examples=400)
@given(documents())
def test_a_document_is_blocked_exactly_when_a_present_legacy_value_is_not_carried(case: tuple[str, dict[str, Any]]) -> None:
    table, doc = case
    line = rules.plan_document(table, doc)
    legacy = present_legacy(table, doc)
    uncarried = [name for name, value in legacy.items() if not carried(table, name, value, doc)]
    if not legacy:
        assert line["action"] == rules.NOTHING_TO_RETIRE and line["problems"] == []
    elif "assetsStatus" not in doc:
        assert line["action"] == rules.BLOCKED and [p["code"] for p in line["problems"]] == ["not_migrated"]
    elif uncarried:
        assert line["action"] == rules.BLOCKED and line["unset"] == [] and line["expect"] == {}
        named = [rules.CARRIED_BY[table][name][0] for name in uncarried]
        at_fault = [asset for p in line["problems"] for asset in p["field"].split(", ")]
        assert sorted(at_fault) == sorted(set(named))  # each asset that does not carry a field, under one reason
        reasons = [p["code"] for p in line["problems"]]
        assert len(reasons) == len(set(reasons)) and all(p["severity"] == "blocking" for p in line["problems"])
        assert set(reasons) <= {"not_migrated", "asset_disagrees_with_legacy", "legacy_changed_since_migration"}
    else:
        assert line["action"] == rules.RETIRE


# -- each reason, shown ----------------------------------------------------------------------------------


def codes(line: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["code"], p["field"]) for p in line["problems"]]


def test_a_fully_carried_scene_is_retired_with_its_values_and_assets_as_precondition() -> None:
    doc = migrated_scene()
    line = rules.plan_document("scenes", doc)
    assert line["action"] == "retire" and line["legacyStatus"] == "completed"
    assert line["unset"] == ["s3ChunkKey", "s3ChunkUrl", "s3ChunkSize", "checksum", "thumbnailKey", "thumbnailUrl"]
    assert line["expect"] == {**{f: doc[f] for f in line["unset"]}, "videoAsset": doc["videoAsset"], "thumbnailAsset": doc["thumbnailAsset"]}


def test_a_document_001_never_migrated_is_blocked_as_not_migrated() -> None:
    doc = migrated_scene()
    del doc["assetsStatus"]
    line = rules.plan_document("scenes", doc)
    assert line["action"] == "blocked" and codes(line) == [("not_migrated", "assetsStatus")]
    assert line["problems"][0]["message"] == (
        "s3ChunkKey, s3ChunkUrl, s3ChunkSize, checksum, thumbnailKey and thumbnailUrl are set but the document has no "
        "assetsStatus: migration 001 never migrated it (it was blocked there, or it was written after 001 ran). Run "
        "migration 001 again, then plan again."
    )
    session = {"_id": "s1", "_creationTime": 1.0, "status": "completed", "manifestUrl": f"{BUCKET}/m.json"}
    assert rules.plan_document("videoSessions", session)["problems"][0]["message"].startswith("manifestUrl is set but")


def test_a_legacy_field_without_its_asset_is_blocked_as_not_migrated() -> None:
    doc = migrated_scene(subtitleKey="")  # blank: 001 treated it as absent and built no subtitleAsset
    line = rules.plan_document("scenes", doc)
    assert codes(line) == [("not_migrated", "subtitleAsset")]
    assert line["problems"][0]["message"].startswith("subtitleKey is set but subtitleAsset is absent")


@pytest.mark.parametrize(("field", "value", "why"), [
    ("s3ChunkUrl", f"{BUCKET}/s/1/chunk.mp4?X-Amz-Signature=secret", "a pre-signed URL whose query string 001 dropped"),
    ("s3ChunkUrl", "http://tutor.s3.us-east-1.amazonaws.com/s/1/chunk.mp4", "a plain http URL 001 stored over https"),
    ("s3ChunkKey", " s/1/chunk.mp4 ", "a key 001 trimmed"),
    ("s3ChunkSize", "1.2 MB", "an invalid size 001 left out"),
    ("checksum", 42, "an invalid checksum 001 left out"),
])
def test_a_value_001_normalised_or_left_out_is_not_carried(field: str, value: Any, why: str) -> None:
    doc = migrated_scene(**{field: value})
    if field in ("s3ChunkSize", "checksum"):
        doc["videoAsset"] = {k: v for k, v in doc["videoAsset"].items() if k != rules.VIDEO_EXTRAS[field]}
    line = rules.plan_document("scenes", doc)
    assert codes(line) == [("asset_disagrees_with_legacy", "videoAsset")], why
    message = line["problems"][0]["message"]
    assert message.startswith(f"{field} differs from videoAsset.") and "secret" not in message  # names, never values


def test_a_legacy_writer_after_001_is_blocked_as_legacy_changed_since_migration() -> None:
    # scenes:setChunk after 001: a new chunk and a later updatedAt; the asset still holds the old one.
    doc = migrated_scene(s3ChunkKey="s/1/rerendered.mp4", s3ChunkUrl=f"{BUCKET}/s/1/rerendered.mp4", updatedAt=MIGRATED_AT + 60_000)
    line = rules.plan_document("scenes", doc)
    assert codes(line) == [("legacy_changed_since_migration", "videoAsset")]
    assert line["problems"][0]["message"].startswith("s3ChunkKey and s3ChunkUrl differ from videoAsset.s3Key, videoAsset.s3Url")
    assert codes(rules.plan_document("scenes", {**doc, "updatedAt": MIGRATED_AT + 0.5})) == codes(line)  # a float too
    # The same difference without a later write is the asset's disagreement, not the legacy writer's.
    same_time = rules.plan_document("scenes", {**doc, "updatedAt": MIGRATED_AT})
    assert codes(same_time) == [("asset_disagrees_with_legacy", "videoAsset")]


def test_a_later_write_that_left_the_legacy_values_as_001_carried_them_still_retires() -> None:
    line = rules.plan_document("scenes", migrated_scene(updatedAt=MIGRATED_AT + 60_000, status="completed"))
    assert line["action"] == "retire"  # nothing would be lost; the compare-and-set guards the rest


def test_each_reason_is_one_problem_naming_every_asset_it_concerns() -> None:
    doc = migrated_scene(thumbnailUrl="https://cdn.example.com/t.png", sourceCodeKey="s/1/source.py", subtitleUrl="",
                         s3ChunkUrl=f"{BUCKET}/s/1/other.mp4", updatedAt=MIGRATED_AT)
    doc["videoAsset"] = {**doc["videoAsset"], "uploadedAt": MIGRATED_AT - 1}  # the document was written since
    line = rules.plan_document("scenes", doc)
    assert codes(line) == [
        ("legacy_changed_since_migration", "videoAsset"), ("not_migrated", "sourceCodeAsset, subtitleAsset"),
        ("asset_disagrees_with_legacy", "thumbnailAsset"),
    ]
    assert line["problems"][1]["message"].startswith(
        "sourceCodeKey is set but sourceCodeAsset is absent; subtitleUrl is set but subtitleAsset is absent: migration 001"
    )
    assert line["problems"][0]["message"].startswith(
        "s3ChunkUrl differs from videoAsset.s3Url and updatedAt is later than videoAsset.uploadedAt: a legacy writer"
    )


def test_a_document_without_legacy_fields_has_nothing_to_retire() -> None:
    session = {"_id": "s1", "_creationTime": 1.0, "status": "combining", "assetsStatus": "pending", "assetCount": 0}
    line = rules.plan_document("videoSessions", session)
    assert line["action"] == "nothing_to_retire" and line["legacyStatus"] == "combining" and line["problems"] == []


def test_legacy_status_is_shown_only_when_it_is_a_plain_text() -> None:
    assert rules.legacy_status({"status": "failed"}) == "failed"
    assert rules.legacy_status({"status": 3}) is None and rules.legacy_status({}) is None
    assert rules.legacy_status({"status": "x" * 100}) == "x" * 100 and rules.legacy_status({"status": "x" * 101}) is None
    assert rules.legacy_status({"status": "done\ud800"}) is None  # not UTF-8: the plan file could not hold it


def test_the_owned_fields_are_the_legacy_asset_fields_001_reads_and_nothing_else() -> None:
    scenes = MIGRATION.owned_fields["scenes"]
    assert scenes == {"s3ChunkKey", "s3ChunkUrl", "s3ChunkSize", "checksum", "sourceCodeKey", "sourceCodeUrl",
                      "thumbnailKey", "thumbnailUrl", "subtitleKey", "subtitleUrl"}
    assert MIGRATION.owned_fields["videoSessions"] == {"combinedVideoKey", "combinedVideoUrl", "combinedSubtitleKey",
                                                       "combinedSubtitleUrl", "manifestKey", "manifestUrl"}
    assert not scenes & {"updatedAt", "status", "errorMessage", "videoAsset", "assetsStatus"}


# -- the planner ----------------------------------------------------------------------------------------


def test_the_planner_streams_every_table_a_page_at_a_time() -> None:
    read: list[str] = []

    def pages(table: str, desc: str) -> Iterator[list[dict[str, Any]]]:
        for number in range(3):
            read.append(f"{table}#{number}")
            yield [migrated_scene(_id=f"{table}-{number}-{i}") if table == "scenes" else {"_id": f"{table}-{number}-{i}"} for i in range(2)]

    lines = as_dicts(MIGRATION.planner(PlanInputs(pages=pages, scratch=None, options={}, page_size=2)))
    first = next(lines)
    assert first["id"] == "scenes-0-0" and read == ["scenes#0"]  # one page read before the first line: nothing buffered
    rest = list(lines)
    assert [line["id"] for line in [first, *rest]] == [f"{t}-{n}-{i}" for t in MIGRATION.tables for n in range(3) for i in range(2)]
    assert {line["action"] for line in rest if line["table"] == "videoSessions"} == {"nothing_to_retire"}


def as_dicts(lines: Iterator[dict[str, Any] | PlanLine | PlanPage]) -> Iterator[dict[str, Any]]:
    """The planner's lines, one at a time, each checked to be a dict (how migration 002's planner yields them)."""
    for line in lines:
        assert isinstance(line, dict)
        yield line


# -- verify's own check: legacy_values_recoverable ------------------------------------------------------


def test_the_check_passes_on_the_planned_state_and_fires_when_the_asset_changed_after_retire() -> None:
    doc = migrated_scene()
    line = rules.plan_document("scenes", doc)
    after = after_apply(doc, line)
    assert LEGACY_VALUES_RECOVERABLE.run(joined(line, after, doc)) is Verdict.PASS

    detail = LEGACY_VALUES_RECOVERABLE.detail
    assert detail is not None
    rewritten = {**after, "videoAsset": {**after["videoAsset"], "s3Url": f"{BUCKET}/s/1/elsewhere.mp4"}}
    assert LEGACY_VALUES_RECOVERABLE.run(joined(line, rewritten, doc)) is Verdict.FAIL
    assert detail(joined(line, rewritten, doc)) == "videoAsset no longer carries s3ChunkUrl"
    by_app = {**rewritten, "updatedAt": MIGRATED_AT + 60_000}  # a writer that also moved updatedAt: the application's doing
    assert LEGACY_VALUES_RECOVERABLE.run(joined(line, by_app, doc)) is Verdict.APPLICATION

    gone = {k: v for k, v in rewritten.items() if k != "thumbnailAsset"}
    assert LEGACY_VALUES_RECOVERABLE.run(joined(line, gone, doc)) is Verdict.FAIL
    assert detail(joined(line, gone, doc)) == (
        "videoAsset no longer carries s3ChunkUrl; thumbnailAsset no longer carries thumbnailKey, thumbnailUrl"
    )


def test_the_check_ignores_what_was_not_removed_and_what_was_not_retired() -> None:
    doc = migrated_scene()
    line = rules.plan_document("scenes", doc)
    # apply met a conflict: the legacy fields are still there, so nothing was lost whatever the asset holds now
    untouched = {**doc, "videoAsset": {**doc["videoAsset"], "s3Key": "changed.mp4"}}
    assert LEGACY_VALUES_RECOVERABLE.run(joined(line, untouched, doc)) is Verdict.PASS
    assert LEGACY_VALUES_RECOVERABLE.run(joined(line, None, doc)) is None  # deleted: the core's missing-document check
    blocked = rules.plan_document("scenes", {**doc, "s3ChunkSize": "1 MB"})
    assert LEGACY_VALUES_RECOVERABLE.run(joined(blocked, doc)) is None
