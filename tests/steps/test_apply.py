"""Apply's engine: the adaptive batch size, the checkpoint (ranges of plan lines, torn lines cut off), and
statistics derived from the deployment rather than from what one process heard."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.connection import errors, jsonio
from helpers.connection.calls import apply_batch, iter_documents
from helpers.connection.transport import ConvexTransport
from helpers.evidence import checkpoint_file, compression
from helpers.evidence.checkpoint_file import UNCOMPRESSED_CHECKPOINT_FILE, iter_entries
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m001_s3_asset_tracking.plan_line import CHANGING_ACTIONS
from helpers.steps import names
from helpers.steps.apply import (
    CHECKPOINT_FILE,
    ApplySettings,
    ApplySummary,
    BatchSizer,
    apply_dir,
    apply_plan,
    check_no_apply_since_backup,
    read_checkpoint,
    used_ratio,
)
from helpers.steps.plan import iter_plan_lines
from tests import checkpoints
from tests.corpus import _scene
from tests.flow import migration_references, prepare, seed

FIGURES = ("migrated", "references_created", "already_applied", "conflicts")


def figures(summary) -> tuple:  # noqa: ANN001
    return (*(getattr(summary, name) for name in FIGURES), len(summary.errors))


# --- the sizing policy ----------------------------------------------------------------------------------------

events = st.lists(
    st.one_of(
        st.tuples(st.just("limit"), st.integers(1, 500)),
        st.tuples(st.just("success"), st.floats(0, 2, allow_nan=False)),
    ),
    max_size=60,
)


@given(configured=st.integers(1, 500), history=events)
def test_the_size_stays_between_one_and_the_configured_size(configured: int, history: list) -> None:
    sizer = BatchSizer(configured)
    for kind, value in history:
        before = sizer.size
        if kind == "limit":
            sizer.after_limit(value)
            assert sizer.size <= max(1, value // 2)
        else:
            sizer.after_success(sizer.size, value)
            assert sizer.size >= before  # success never shrinks
            if value > sizer.target_ratio:
                assert sizer.size == before  # a busy call never grows the batch
        assert 1 <= sizer.size <= configured
        if sizer.failed_at is not None and sizer.failed_at > 1:
            assert sizer.size < sizer.failed_at  # never back to a size that hit a limit


@given(configured=st.integers(2, 500), failed=st.integers(2, 500), ratio=st.floats(0, 0.5))
def test_calm_calls_grow_the_size_back_to_just_below_the_limit(configured: int, failed: int, ratio: float) -> None:
    sizer = BatchSizer(configured)
    sizer.after_limit(failed)
    for _ in range(configured):
        sizer.after_success(sizer.size, ratio)
    assert sizer.size == min(configured, failed - 1)


def test_halving_and_growing_by_the_room_left() -> None:
    sizer = BatchSizer(200)
    sizer.after_limit(200)
    assert sizer.size == 100
    sizer.after_success(100, 0.1)  # 10 % used: room for 5x, but not back to 200
    assert sizer.size == 150
    sizer.after_success(40, 0.0)  # a short batch (the plan's end) says nothing
    assert sizer.size == 150


def test_used_ratio_is_the_tightest_limit() -> None:
    assert used_ratio(8_000, 0, 0.1) == 0.5
    assert used_ratio(1, 8 * 1024 * 1024, 0.1) == 0.5
    assert used_ratio(1, 0, 0.75) == 0.75


def checkpoint_line(start: int, end: int, outcome: str = "applied") -> dict[str, Any]:
    results = [{"id": f"d{n}", "table": "scenes", "outcome": outcome, "refs": 1} for n in range(start, end)]
    return {"start": start, "end": end, "size": end - start, "calls": 1, "limit_hits": 0, "results": results}


def stored(path: Path, *entries: dict[str, Any]) -> bytes:
    """`entries` as apply stores them in `path` (a frame each, or a line each in an older folder's plain file)."""
    return b"".join(compression.encode_record(path, jsonio.dumps(entry) + b"\n") for entry in entries)


@pytest.mark.parametrize("name", [CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE])
def test_an_unreadable_checkpoint_entry_and_all_after_it_are_cut_off(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    good = stored(path, checkpoint_line(0, 5), checkpoint_line(10, 12, "conflict"))
    path.write_bytes(good + b"\x00\x00\x00\n" + stored(path, checkpoint_line(5, 10)))  # blocks a crash left unwritten
    checkpoint = read_checkpoint(path)
    assert path.read_bytes() == good
    assert checkpoint.done == [(0, 5), (10, 12)] and checkpoint.lines_read == 2 and not checkpoint.complete
    assert dict(checkpoint.figures().outcomes["scenes"]) == {"applied": 5, "conflict": 2}


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=8), data=st.data())
def test_a_checkpoint_cut_inside_its_last_frame_reads_as_the_entries_before_it(sizes: list[int], data: st.DataObject) -> None:
    """A kill while apply appends a batch's frame leaves it cut at any byte: the batches before it read back, the
    file is cut back to them, and the next entry appended after the cut reads back with them."""
    starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    lines = [checkpoint_line(low, high) for low, high in itertools.pairwise(starts)]
    with tempfile.TemporaryDirectory(prefix="checkpoint-test-") as folder:
        path = Path(folder) / CHECKPOINT_FILE
        before = stored(path, *lines[:-1])
        last = stored(path, lines[-1])
        path.write_bytes(before + last[: data.draw(st.integers(0, len(last) - 1), label="cut")])
        checkpoint = read_checkpoint(path)
        assert path.read_bytes() == before and checkpoint.lines_read == len(lines) - 1
        assert checkpoint.done == ([(0, starts[-2])] if len(lines) > 1 else [])
        with path.open("ab") as sink:
            checkpoint_file.append(sink, path, lines[-1])
        assert read_checkpoint(path).done == [(0, starts[-1])]


def test_answered_ranges_merge_whatever_order_batches_finished_in(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(stored(path, checkpoint_line(10, 20), checkpoint_line(0, 10), checkpoint_line(30, 40), checkpoint_line(20, 25)))
    assert read_checkpoint(path).done == [(0, 25), (30, 40)]


SNAPSHOT_NS = 1_700_000_000_000 * 1_000_000


@pytest.mark.parametrize(("started", "finished", "refused"), [
    (1_700_000_000_001, None, True),  # started after the snapshot (and perhaps still running)
    (1_699_999_999_000, 1_700_000_000_500, True),  # began before, still writing after it (e.g. resumed)
    (1_699_999_999_000, 1_699_999_999_900, False),  # over before the snapshot: its changes are in the backup
])
def test_an_apply_by_another_run_after_the_snapshot_makes_the_plan_stale(started: int, finished: int | None, refused: bool) -> None:
    row = {"step": names.APPLY, "runId": "other", "operator": "bob", "startedAt": started, **({"finishedAt": finished} if finished else {})}
    mine = {**row, "runId": "mine", "startedAt": started + 10_000}
    check_no_apply_since_backup([mine], "mine", SNAPSHOT_NS, "then")  # this run's own apply never counts
    verify_row = {**row, "step": names.VERIFY}  # reading changes nothing
    check_no_apply_since_backup([verify_row], "mine", SNAPSHOT_NS, "then")
    preview = {**row, "step": names.ROLLBACK}  # a rollback planned, not executed, changed nothing
    check_no_apply_since_backup([preview], "mine", SNAPSHOT_NS, "then")
    for changed, did in (({"step": names.APPLY}, "applied"), ({"step": names.ROLLBACK, "details": "mode=strip"}, "rolled back")):
        if refused:
            with pytest.raises(errors.PreconditionFailed, match=f"{did} this migration .* after this run's backup"):
                check_no_apply_since_backup([{**row, **changed}], "mine", SNAPSHOT_NS, "then")
        else:
            check_no_apply_since_backup([{**row, **changed}], "mine", SNAPSHOT_NS, "then")


# --- against a local deployment --------------------------------------------------------------------------------


def apply(transport: ConvexTransport, run_dir: Path, **knobs: Any) -> ApplySummary:
    """apply_plan of migration 001, confirmed, without a progress bar; `knobs`: ApplySettings' fields."""
    return apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False, **knobs))


@pytest.mark.deployment
def test_a_torn_last_checkpoint_line_is_cut_off_and_resumed(transport: ConvexTransport, tmp_path: Path) -> None:
    torn = tmp_path / "torn"
    seed(transport, 60)
    prepare(transport, torn)
    path = apply_dir(torn) / CHECKPOINT_FILE
    # Write the torn run's checkpoint as a killed apply would leave it: some batches, then half a frame.
    first = apply(transport, torn, batch_size=7)
    ends = [end for _, end in iter_entries(path)]
    path.write_bytes(path.read_bytes()[: (ends[2] + ends[3]) // 2])
    resumed = apply(transport, torn, batch_size=7)
    entries = checkpoints.entries(path)
    assert [end for _, end in iter_entries(path)][-1] == path.stat().st_size  # every frame whole, nothing after them
    assert entries[-1] == {"complete": True} and not resumed.recheck
    assert resumed.batches_resumed == 3 and figures(resumed) == figures(first)
    assert read_checkpoint(path).complete
    planned = sum(1 for line in iter_plan_lines(torn) if line["action"] in CHANGING_ACTIONS)
    assert sum(len(e["results"]) for e in entries[:-1]) == planned  # each planned document answered once


@pytest.mark.deployment
def test_a_document_someone_else_brought_to_its_target_state_is_not_counted_as_ours(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, 40)
    prepare(transport, run_dir)
    line = next(line for line in iter_plan_lines(run_dir) if line["action"] == "migrate" and line["table"] == "scenes" and line["references"])
    item = {"table": line["table"], "id": line["id"], "expect": line["expect"], "expectAbsent": line["expectAbsent"],
            "set": line["set"], "unset": [], "insertReferences": line["references"], "deleteReferences": []}
    assert apply_batch(transport, M001.id, "someone-elses-run", [item], side_rows=M001.side_rows)[0]["outcome"] == "applied"
    planned = [line for line in iter_plan_lines(run_dir) if line["action"] in CHANGING_ACTIONS]
    summary = apply(transport, run_dir)
    assert summary.passed and summary.statistics_confirmed  # once that document is attributed to the other run
    assert summary.already_applied == 1
    assert summary.migrated["scenes"] + summary.migrated["videoSessions"] == len(planned) - 1
    ours = [r for r in migration_references(transport) if r["metadata"]["runId"] == summary.run_id]
    assert summary.references_created == len(ours) == sum(len(p["references"]) for p in planned) - len(line["references"])


@pytest.mark.deployment
def test_batches_halve_on_a_convex_limit_and_grow_back(transport: ConvexTransport, run_dir: Path) -> None:
    """Each scene is ~0.95 MB, so a batch of 24 writes more than the 16 MiB Convex allows per call."""
    session = transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "pending"}]})["ids"][0]
    for chunk in range(8):
        scenes = [_scene(session, chunk * 6 + i, title="t" * 950_000) for i in range(6)]
        transport.function("sampleData:insertBatch", {"table": "scenes", "documents": scenes})
    prepare(transport, run_dir)
    summary = apply(transport, run_dir, batch_size=24, concurrency=1)
    assert summary.passed and summary.migrated["scenes"] == 48
    lines = checkpoints.entries(apply_dir(run_dir) / CHECKPOINT_FILE)[:-1]
    limited = [line for line in lines if line["limit_hits"]]
    assert limited and limited[0]["size"] > 17 and limited[0]["calls"] > 1  # halved and retried
    after = lines[lines.index(limited[0]) + 1:]
    assert after and all(line["size"] < limited[0]["size"] for line in after)  # never that size again
    assert any(b["size"] > a["size"] for a, b in zip(after, after[1:], strict=False))  # grew back while there was room
    assert sum(1 for d in iter_documents(transport, "scenes") if "videoAsset" in d) == 48

