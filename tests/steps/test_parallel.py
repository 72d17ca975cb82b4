"""The dry-run and verify split over worker processes (helpers.steps.parallel): the same plan bytes, plan_sha256,
problems.csv and findings as one process, on corpora whose cross-document cases (a session's scenes, an S3 key
two scenes share, a scene already tracked) fall in different ranges."""

from __future__ import annotations

import gc
import random
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import helpers.steps.parallel
from helpers.connection import jsonio
from helpers.devtools import sample_data
from helpers.evidence.run_folder import bind_migration
from helpers.migrations import get
from helpers.migrations.m001_s3_asset_tracking.fields import SCENE_ASSET_SOURCES
from helpers.steps.backup import iter_backup_documents
from helpers.steps.parallel import Ranged, RangeResults, map_ranges, map_records, split
from helpers.steps.plan import PLAN_FILE, build_plan, iter_plan_lines, plan_dir
from helpers.steps.verify import run_checks
from tests.steps.test_plan import PagedTables, _snapshot_of

M001 = get("001_s3_asset_tracking")


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges of any size, so a corpus of a few hundred documents splits over several workers."""
    monkeypatch.setattr(helpers.steps.parallel, "MIN_RANGE", 1)


def corpus(seed: int, n_scenes: int) -> dict[str, list[dict[str, Any]]]:
    """Sample data with every defect, scenes shuffled (a session's scenes spread over all ranges), an S3 key the first
    and the last scene share, and references already held by a few scenes."""
    sessions = [{"_id": f"session{i:05d}", "_creationTime": 1.7e12 + i, **doc}
                for i, doc in enumerate(sample_data.iter_sessions(max(1, n_scenes // 10), seed))]
    scenes = [{"_id": f"scene{i:05d}", "_creationTime": 1.7e12 + i, **doc}
              for i, doc in enumerate(sample_data.iter_scenes([s["_id"] for s in sessions], n_scenes, seed, "session-missing"))]
    random.Random(seed).shuffle(scenes)
    with_video = [scene for scene in scenes if all(f in scene for f in SCENE_ASSET_SOURCES["videoAsset"])]
    for name in SCENE_ASSET_SOURCES["videoAsset"]:
        with_video[-1][name] = with_video[0][name]
    references = [{"_id": f"ref{i}", "_creationTime": 1.7e12, "entityId": scene["_id"], "entityType": "scene",
                   "assetType": "thumbnail", "s3Key": "k", "metadata": {"migrationId": "older"}} for i, scene in enumerate(scenes[::37])]
    return {table: [_as_stored(doc) for doc in docs] for table, docs in
            {"videoSessions": sessions, "scenes": scenes, "assetReferences": references}.items()}


def _as_stored(value: Any) -> Any:
    """A sample value as a deployment stores it: every plain int a float64 (`v.number()`); Int64 stays."""
    if type(value) is int:
        return float(value)
    if type(value) is dict:
        return {key: _as_stored(item) for key, item in value.items()}
    if type(value) is list:
        return [_as_stored(item) for item in value]
    return value


def dry_run(tmp_path: Path, name: str, tables: dict[str, list[dict[str, Any]]], workers: int) -> Path:
    """A dry-run with `workers` from one snapshot ZIP (written once: a ZIP holds its writing time, hence its hash)."""
    snapshot = tmp_path / "snapshot"
    if not snapshot.exists():
        _snapshot_of(snapshot, tables)
    run_dir = tmp_path / name
    bind_migration(run_dir, M001.id)
    shutil.copytree(snapshot / "backup", run_dir / "backup")
    build_plan(PagedTables(tables), run_dir, M001, page_size=17, show_progress=False, workers=workers)  # type: ignore[arg-type]
    return run_dir


def applied(tables: dict[str, list[dict[str, Any]]], run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The deployment after a partial apply: two changing lines in three written, their references created (one
    twice), the others left as the backup holds them."""
    plans = {line["id"]: line for line in iter_plan_lines(run_dir)}
    live: dict[str, list[dict[str, Any]]] = {"assetReferences": list(tables["assetReferences"])}
    for table in M001.tables:
        live[table] = []
        for n, doc in enumerate(tables[table]):
            line = plans[doc["_id"]]
            if M001.changes(line) and n % 3:
                doc = {**doc, **line["set"]}
                for ref in line["references"] * (2 if n % 41 == 1 else 1):
                    row = {"_id": f"new{len(live['assetReferences'])}", "_creationTime": 1.8e12, "entityId": doc["_id"],
                           **ref, "metadata": {"migrationId": M001.id}}
                    live["assetReferences"].append(row)
            live[table].append(doc)
    return live


def _collector_state() -> tuple[int, bool]:
    return gc.get_threshold()[0], gc.get_freeze_count() > 0


def test_verifys_page_workers_scan_for_cycles_as_seldom_as_a_pass_over_pages() -> None:
    from helpers.steps.scratch import FEWER_COLLECTIONS
    from helpers.steps.verify import _PageChecker

    found: list[tuple[int, bool]] = []
    with _PageChecker(2) as checker:
        checker.submit(found.append, _collector_state)
    assert found == [(FEWER_COLLECTIONS, True)]


def test_shared_s3_keys_past_what_memory_holds_are_looked_up_per_page_to_the_same_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.migrations.m001_s3_asset_tracking import planner

    tables = corpus(7, 300)
    in_memory = dry_run(tmp_path, "in_memory", tables, 2)
    monkeypatch.setattr(planner, "SHARED_KEYS_IN_MEMORY", 0)
    looked_up = dry_run(tmp_path, "looked_up", tables, 2)
    assert (plan_dir(in_memory) / PLAN_FILE).read_bytes() == (plan_dir(looked_up) / PLAN_FILE).read_bytes()
    assert "duplicate_s3_key" in (plan_dir(looked_up) / "problems.csv").read_text()


def test_a_page_whose_key_digest_collides_with_a_shared_key_is_checked_key_by_key_to_the_same_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pass 2 keeps a worker's page whole when none of its key digests is a shared key's; with every digest the same,
    every page is opened and its keys looked at one by one, and the plan is the same."""
    from helpers.migrations.m001_s3_asset_tracking import planner

    tables = corpus(5, 300)
    opened: list[int] = []
    monkeypatch.setattr(planner, "_fields_of", lambda page, fields_of=planner._fields_of: opened.append(1) or fields_of(page))
    by_digest = dry_run(tmp_path, "by_digest", tables, 1)  # in this process: the patched pass 2 counts the pages it opens
    pages, opened_by_digest = -(-len(tables["scenes"]) // 17), len(opened)
    monkeypatch.setattr(planner, "_key_digest", lambda key: b"same key")
    one_by_one = dry_run(tmp_path, "one_by_one", tables, 1)
    for name in (PLAN_FILE, "problems.csv"):
        assert (plan_dir(by_digest) / name).read_bytes() == (plan_dir(one_by_one) / name).read_bytes()
    assert 0 < opened_by_digest < pages and len(opened) - opened_by_digest == pages


def test_a_second_pass_over_the_workers_results_keeps_their_ranges_and_order(tmp_path: Path) -> None:
    for workers in (1, 3):
        first = map_ranges(partial(_numbers, 100), 100, workers=3, folder=tmp_path, name=f"first{workers}")
        again = map_records(first, _doubled, workers=workers, folder=tmp_path, name=f"again{workers}")
        assert [n for page in again for n in page] == [2 * n for n in range(100)]
        assert [len(list(RangeResults((path,)))) for path in again.files] == [len(list(RangeResults((path,)))) for path in first.files]


@pytest.mark.parametrize(("seed", "n_scenes", "workers"), [(7, 300, 3), (11, 150, 2), (3, 500, 4)])
def test_workers_write_the_plan_and_find_what_one_process_does(tmp_path: Path, seed: int, n_scenes: int, workers: int) -> None:
    tables = corpus(seed, n_scenes)
    one, many = dry_run(tmp_path, "one", tables, 1), dry_run(tmp_path, "many", tables, workers)

    for name in (PLAN_FILE, "problems.csv"):
        assert (plan_dir(one) / name).read_bytes() == (plan_dir(many) / name).read_bytes()
    summaries = [jsonio.loads((plan_dir(run) / "plan.json").read_bytes()) for run in (one, many)]
    for summary in summaries:
        del summary["created_at"]
    assert summaries[0] == summaries[1]
    codes = {problem["code"] for problem in summaries[0]["problems"]}
    assert {"duplicate_s3_key", "missing_session"} <= codes  # the cross-document cases are there to be merged

    live = applied(tables, one)
    zip_path = one / "backup" / "snapshot_1.zip"

    def findings(workers: int) -> Any:
        return run_checks(
            Ranged(partial(iter_plan_lines, one), summaries[0]["documents"]),
            lambda table: Ranged(partial(iter_backup_documents, zip_path, table), len(tables[table])),
            lambda table: iter(live[table]), migration=M001, page_size=13, workers=workers,
        )

    serial, parallel = findings(1), findings(workers)
    assert serial == parallel
    failed = {check.name for check in serial.checks if not check.passed}
    assert {"planned_fields_written", "no_duplicate_references", "session_totals"} <= failed  # examples merged too


def test_a_count_that_falls_short_loses_no_document(tmp_path: Path) -> None:
    """The last range reads to the end of the source, whatever its count said."""
    results = map_ranges(partial(_numbers, 100), 10, workers=3, folder=tmp_path, name="short")
    assert [n for page in results for n in page] == list(range(100))


def test_ranges_cover_the_source_in_order() -> None:
    for total in (0, 1, 5, 99, 1000):
        for parts in (1, 2, 3, 8):
            ranges = split(total, parts)
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_an_error_in_a_worker_reaches_the_caller(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="range starting at"):
        map_ranges(_failing, 10, workers=2, folder=tmp_path, name="failing")


@pytest.mark.parametrize("workers", [0, -1])
def test_fewer_than_one_worker_is_refused_before_any_work(tmp_path: Path, workers: int) -> None:
    first = map_ranges(partial(_numbers, 10), 10, workers=1, folder=tmp_path, name="first")
    with pytest.raises(ValueError, match=f"^workers must be at least 1, not {workers}$"):
        map_ranges(_failing, 10, workers=workers, folder=tmp_path, name="ranges")
    with pytest.raises(ValueError, match=f"^workers must be at least 1, not {workers}$"):
        map_records(first, _doubled, workers=workers, folder=tmp_path, name="records")
    assert sorted(path.name for path in tmp_path.iterdir()) == [path.name for path in first.files]  # nothing written


def _numbers(n: int, start: int, stop: int | None) -> Any:
    items = list(range(n))[start:stop]
    for i in range(0, len(items), 7):
        yield items[i:i + 7]


def _doubled(page: list[int]) -> list[int]:
    return [2 * n for n in page]


def _failing(start: int, stop: int | None) -> Any:
    if start:
        raise ValueError(f"range starting at {start}")
    yield [start]
