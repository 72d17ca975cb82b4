"""The analyst's views: the before/after frame and its filters, and the apply confirmation's text and gate."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from helpers.connection import jsonio
from helpers.evidence import compression
from helpers.evidence.checkpoint_file import CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.notebook_ui import display as show
from helpers.notebook_ui.confirm import ApplyCancelled, Confirmation
from helpers.steps.plan import PLAN_FILE, example_pairs, plan_dir

LONG_URL = "https://tutor-assets.s3.us-east-1.amazonaws.com/sessions/" + "x" * 120 + "/scene-2/chunk.mp4"


def pair(doc_id: str, action: str, expect: dict[str, Any], new: dict[str, Any], problems: list[dict[str, str]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    before = {"_id": doc_id, "_table": "scenes", "_action": action, "_problems": problems or [], **expect}
    return before, {**before, **new}


MIGRATED = pair(
    "00000000000000000000010033scenes", "migrate",
    {"s3ChunkKey": "k/chunk.mp4", "s3ChunkUrl": LONG_URL, "s3ChunkSize": 4820188.0, "status": "completed", "updatedAt": 17.5},
    {"videoAsset": {"s3Key": "k/chunk.mp4", "s3Url": LONG_URL, "size": 4820188.0, "uploadedAt": 17.5}, "assetsStatus": "ready", "assetVersion": 1},
    [{"code": "key_derived", "severity": "flagged", "message": "s3ChunkKey was missing"}],
)
BLOCKED = pair(
    "00000000000000000000010031scenes", "problem", {"s3ChunkKey": "k/chunk.mp4", "status": "completed"}, {},
    [{"code": "duplicate_s3_key", "severity": "blocking", "message": "S3 key 'k/chunk.mp4' is used by 2 scenes"}],
)
UNCHANGED = pair("00000000000000000000010053scenes", "no_change", {"status": "completed"}, {})


def test_each_new_field_stands_beside_the_legacy_fields_it_came_from_untruncated() -> None:
    frame = show.before_after_frame([MIGRATED], M001.derived_from)
    rows = frame.set_index("new field")
    assert set(rows.index) == {"videoAsset", "assetsStatus", "assetVersion"}
    video = rows.loc["videoAsset"]
    assert video["from legacy field(s)"].split("\n") == [
        "s3ChunkKey = k/chunk.mp4", f"s3ChunkUrl = {LONG_URL}", "s3ChunkSize = 4820188.0", "updatedAt = 17.5"
    ]
    assert LONG_URL in video["new value"]  # whole, never cut
    assert rows.loc["assetsStatus", "from legacy field(s)"] == "status = completed"
    assert rows.loc["assetVersion", "from legacy field(s)"] == "(derived)"  # 1 is no evidence of a source
    assert set(frame["problems"]) == {"key_derived"}
    html = show.before_after_styled(frame).to_html()
    assert LONG_URL in html and "..." not in html


def test_a_document_left_alone_says_why() -> None:
    frame = show.before_after_frame([BLOCKED, UNCHANGED], M001.derived_from).set_index("action")
    assert frame.loc["problem", "new field"] == "(none)"
    assert "used by 2 scenes" in frame.loc["problem", "new value"]
    assert frame.loc["no_change", "new value"] == "already migrated: nothing to write"


def test_labels_show_the_telling_part_of_an_id() -> None:
    assert show.document_label(MIGRATED[0]) == "scenes 10033 · migrate"
    assert show.short_id("jd7f2k9q0w8e7r6t5y4u3i2o1p0a9s8d", "scenes") == "…1p0a9s8d"  # a real Convex id
    assert show.short_id("abc") == "abc"


def test_filters_pick_documents_by_action_and_problem() -> None:
    frame = show.before_after_frame([MIGRATED, BLOCKED, UNCHANGED], M001.derived_from)
    assert show.filter_choices(frame) == ["scenes 10033 · migrate", "scenes 10031 · problem", "scenes 10053 · no_change"]
    assert show.filter_choices(frame, action="problem") == ["scenes 10031 · problem"]
    assert show.filter_choices(frame, problem="key_derived") == ["scenes 10033 · migrate"]
    assert show.filter_choices(frame, action="no_change", problem="key_derived") == []


def test_headless_the_view_is_the_static_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    view = show.before_after_view([MIGRATED, BLOCKED], M001.derived_from)
    assert LONG_URL in view.to_html()


class Plan:
    migration = M001
    plan_sha256 = "a" * 64
    actions = {"scenes": {"migrate": 5, "fill_missing": 2, "no_change": 9, "problem": 1}, "videoSessions": {"migrate": 3}}
    references = 11


class Backup:
    sha256 = "b" * 64


def shown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **_: seen.append(obj.data))
    return seen


@pytest.mark.parametrize("confirm", [True, False])
def test_headless_gate_shows_what_changes_and_only_the_parameter_counts(confirm: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    seen = shown(monkeypatch)
    assert asyncio.run(Confirmation.for_plan("https://happy-otter-123.convex.cloud", Plan(), Backup()).gate(confirm)) is confirm
    [text] = seen
    for fact in ("https://happy-otter-123.convex.cloud", "scenes documents</th><td style='text-align:left'>7",
                 "videoSessions documents</th><td style='text-align:left'>3", ">11<", "a" * 64, "b" * 64):
        assert fact in text
    assert ("Confirmed by the parameter" in text) is confirm and ("Not confirmed" in text) is not confirm


def test_interactive_gate_waits_for_the_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNBOOK_HEADLESS", raising=False)
    monkeypatch.setenv("JPY_SESSION_NAME", "03_apply.ipynb")
    monkeypatch.setattr("IPython.display.display", lambda obj, **_: type("Handle", (), {"update": lambda self, o: None})())

    def press(button: str) -> None:  # what the widget's click does while the cell waits
        async def click(gate: Confirmation) -> None:
            setattr(gate, button, True)

        monkeypatch.setattr(Confirmation, "_wait", click)

    gate = Confirmation("http://127.0.0.1:3210", {"scenes documents": 1})
    press("confirmed")
    assert asyncio.run(gate.gate(False)) is True
    gate = Confirmation("http://127.0.0.1:3210", {"scenes documents": 1})
    press("cancelled")
    with pytest.raises(ApplyCancelled, match="nothing was changed") as stopped:
        asyncio.run(gate.gate(False))
    assert len(stopped.value._render_traceback_()) == 1  # one line in the notebook, no traceback


def test_examples_open_on_documents_that_change_and_cover_each_table(tmp_path: Path) -> None:
    lines = [
        {"id": f"p{i}", "table": "scenes", "action": "problem", "expect": {}, "set": {}, "problems": [{"code": "x"}]} for i in range(3)
    ] + [
        {"id": f"s{i}", "table": "videoSessions", "action": "migrate", "expect": {}, "set": {"assetCount": i}} for i in range(3)
    ] + [{"id": "m0", "table": "scenes", "action": "migrate", "expect": {}, "set": {"assetVersion": 1}}]
    plan_file = plan_dir(tmp_path) / PLAN_FILE
    plan_file.parent.mkdir()
    with compression.open_write(plan_file) as sink:  # the plan as the dry-run stores it
        sink.write(b"".join(jsonio.dumps(line) + b"\n" for line in lines))
    bind_migration(tmp_path, "001_s3_asset_tracking")
    pairs = example_pairs(tmp_path, M001, 2)
    assert [before["_id"] for before, _ in pairs] == ["s0", "s1", "m0", "p0", "p1"]  # changes first, 2 per table and action
    assert pairs[-1][0]["_problems"] == [{"code": "x"}] and pairs[0][1]["assetCount"] == 0
    assert show.filter_choices(show.before_after_frame(pairs))[0] == "videoSessions s0 · migrate"


def test_examples_cover_every_problem_code_of_the_plan(tmp_path: Path) -> None:
    """The filter by problem code offers every code the plan found, however rare, each with documents to show."""
    lines = [{"id": f"m{i}", "table": "scenes", "action": "migrate", "expect": {}, "set": {"assetVersion": 1}} for i in range(5)]
    lines.append({"id": "rare", "table": "scenes", "action": "migrate", "expect": {}, "set": {"assetVersion": 1},
                  "problems": [{"code": "rare_code", "severity": "flagged", "message": "m"}]})
    bind_migration(tmp_path, M001.id)
    plan_file = plan_dir(tmp_path) / PLAN_FILE
    plan_file.parent.mkdir()
    with compression.open_write(plan_file) as sink:  # the plan as the dry-run stores it
        sink.write(b"".join(jsonio.dumps(line) + b"\n" for line in lines))
    pairs = example_pairs(tmp_path, M001, 2)
    assert [before["_id"] for before, _ in pairs] == ["m0", "m1", "rare"]
    assert show.filter_choices(show.before_after_frame(pairs), problem="rare_code") == ["scenes rare · migrate"]


def test_a_track_existing_document_says_what_will_be_created() -> None:
    reference = {"assetType": "video", "entityId": "00000000000000000000010040scenes", "s3Key": "k/chunk.mp4"}
    before = {"_id": "00000000000000000000010040scenes", "_table": "scenes", "_action": "track_existing", "_problems": [],
              "_references": [reference], "_side_label": M001.side_rows.label, "videoAsset": {"s3Key": "k/chunk.mp4"}}
    [row] = show.before_after_frame([(before, dict(before))], M001.derived_from).to_dict("records")
    assert row["new field"] == "asset references (created: 1)" and '"s3Key": "k/chunk.mp4"' in row["new value"]


def test_interactively_the_browser_comes_with_a_static_copy_and_a_text_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNBOOK_HEADLESS", raising=False)
    monkeypatch.setenv("JPY_SESSION_NAME", "02_dry_run.ipynb")
    shown: list = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **_: shown.append(obj))
    static = show.before_after_view([MIGRATED, BLOCKED], M001.derived_from)
    browser = next(obj for obj in shown if hasattr(obj, "_repr_mimebundle_") and hasattr(obj, "children"))
    text = browser._repr_mimebundle_()["text/plain"]
    assert "VBox" not in text and "2 example documents" in text
    assert LONG_URL in static.data and "used by 2 scenes" in static.data  # every document, whole, static


def test_the_confirmation_widget_reads_as_text_where_widgets_cannot_render(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Confirmation.for_plan("http://127.0.0.1:3210", Plan(), Backup())
    text = gate._widget()._repr_mimebundle_()["text/plain"]
    assert "About to change: scenes documents: 7" in text and "a" * 64 in text and "VBox" not in text


BATCH = b'{"start": 0, "end": 3, "results": [' + b'{"id": "s0", "outcome": "applied"}, ' * 40 + b"]}\n"


@pytest.mark.parametrize("name", [CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE])
@pytest.mark.parametrize("entries, cut, applied", [
    (None, 0, False),
    ([BATCH], 0, False),  # an apply cut off: the rest is still to change
    ([BATCH, b'{"complete": true}\n'], 0, True),
    ([BATCH, b'{"complete": true}\n'], 4, False),  # torn: apply reads it as not complete
])
def test_a_second_apply_of_the_same_plan_says_already_applied(
    entries: list[bytes] | None, cut: int, applied: bool, name: str, tmp_path: Path
) -> None:
    if entries is not None:
        (tmp_path / "apply").mkdir()
        path = tmp_path / "apply" / name
        stored = b"".join(compression.encode_record(path, entry) for entry in entries)
        path.write_bytes(stored[: len(stored) - cut])
    gate = Confirmation.for_plan("u", Plan(), Backup(), tmp_path)
    assert gate.already_applied is applied
    assert ("Already applied (running it again re-checks and writes nothing): scenes documents" in gate.text()) is applied
    assert ("About to change" in gate.text()) is not applied


@pytest.mark.parametrize("kept", ["checkpoint.1.jsonl.zst", "checkpoint.1.jsonl"])
def test_a_kept_complete_checkpoint_means_already_applied(tmp_path: Path, kept: str) -> None:
    """A re-check moves the complete checkpoint aside (checkpoint.1.jsonl.zst, or .jsonl in an older folder)
    and starts a new one."""
    (tmp_path / "apply").mkdir()
    (tmp_path / "apply" / kept).write_bytes(compression.encode_record(Path(kept), b'{"complete": true}\n'))
    (tmp_path / "apply" / CHECKPOINT_FILE).write_bytes(b"")
    assert Confirmation.for_plan("u", Plan(), Backup(), tmp_path).already_applied
