"""A one-table backfill from one function (helpers.steps.migration.backfill): its plan lines, and the ten-line
`assetVersion = 1` migration run through apply, verify and rollback strip against the local deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import migrations
from helpers.connection.calls import apply_batch, iter_documents
from helpers.connection.transport import ConvexTransport
from helpers.evidence import archive
from helpers.evidence.run_folder import bind_migration
from helpers.steps import names
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.steps.migration import Migration, PlanInputs, backfill
from helpers.steps.plan import iter_plan_lines
from helpers.steps.rollback import check_rollback, execute_rollback, plan_rollback
from helpers.steps.verify import verify
from tests.backfill_migration import ASSET_VERSION
from tests.flow import prepare, seed


def plan_of(migration: Migration, *docs: dict[str, Any]) -> list[dict[str, Any]]:
    def pages(table: str, desc: str) -> Any:
        assert table == migration.tables[0]
        return iter([list(docs)])

    return list(migration.planner(PlanInputs(pages=pages, scratch=None, options={}, page_size=10)))


def test_a_backfill_plans_from_one_function_with_what_it_read_as_the_precondition() -> None:
    missing, held, other = {"_id": "a", "status": "x"}, {"_id": "b", "assetVersion": 1}, {"_id": "c", "assetVersion": 2}
    [fill, keep, kept] = plan_of(ASSET_VERSION, missing, held, other)
    assert (fill["action"], fill["set"], fill["expect"], fill["expectAbsent"]) == ("backfill", {"assetVersion": 1}, {}, ["assetVersion"])
    assert keep["action"] == kept["action"] == "no_change" and keep["set"] == kept["set"] == {}
    by_status = backfill(id="x", title="x", predecessor=None, table="t", fields=("done",),
                         migrate_one=lambda doc: {"done": True} if doc.get("status") == "ready" else None)
    [ready, other_status] = plan_of(by_status, {"_id": "r", "status": "ready"}, {"_id": "s", "status": "new"})
    assert ready["expect"] == {"status": "ready"} and ready["expectAbsent"] == ["done"]  # a writer changing status conflicts
    assert other_status["action"] == "no_change"
    overwrite = backfill(id="x", title="x", predecessor=None, table="t", fields=("n",), migrate_one=lambda doc: {"n": 2})
    assert plan_of(overwrite, {"_id": "o", "n": 1})[0]["expect"] == {"n": 1}  # an owned value it replaces is expected too
    whole = backfill(id="x", title="x", predecessor=None, table="t", fields=("n",),
                     migrate_one=lambda doc: {"n": sum(v for k, v in doc.items() if k != "_id")})
    assert plan_of(whole, {"_id": "w", "a": 1, "b": 2})[0]["expect"] == {"_id": "w", "a": 1, "b": 2}  # it read every field
    stray = backfill(id="x", title="x", predecessor=None, table="t", fields=("n",), migrate_one=lambda doc: {"other": 1})
    with pytest.raises(ValueError, match=r"migrate_one set \['other'\], which are not among its fields \['n'\]"):
        plan_of(stray, {"_id": "s"})


@pytest.fixture
def backfill_registered(monkeypatch: pytest.MonkeyPatch) -> Migration:
    real = migrations.all_migrations()
    monkeypatch.setattr(migrations, "all_migrations", lambda: (*real, ASSET_VERSION))
    return ASSET_VERSION


def scenes(transport: ConvexTransport) -> dict[str, dict[str, Any]]:
    return {doc["_id"]: doc for doc in iter_documents(transport, "scenes")}


@pytest.mark.deployment
def test_the_ten_line_backfill_applies_verifies_and_strips(transport: ConvexTransport, tmp_path: Path, backfill_registered: Migration) -> None:
    seed(transport, 40)
    before = scenes(transport)
    run_dir = tmp_path / "run"
    bind_migration(run_dir, backfill_registered.id)
    prepare(transport, run_dir, backfill_registered)
    planned = {line["id"] for line in iter_plan_lines(run_dir) if line["action"] == "backfill"}
    assert planned == {i for i, doc in before.items() if "assetVersion" not in doc} and planned

    applied = apply_plan(transport, run_dir, backfill_registered, confirm=True, settings=ApplySettings(show_progress=False))
    assert applied.passed and applied.migrated == {"scenes": len(planned)} and applied.references_created == 0
    assert applied.statistics_confirmed  # it creates no side rows: nothing to count, nothing missing
    after = scenes(transport)
    assert all(after[i]["assetVersion"] == 1 for i in planned)
    assert all(after[i] == doc for i, doc in before.items() if i not in planned)
    archive.record_step(transport, run_dir, archive.StepResults(step=names.APPLY, status="passed"))

    report = verify(transport, run_dir, backfill_registered, show_progress=False)
    assert report.passed, [c for c in report.checks if not c.passed]
    checks = {c.name: c for c in report.checks}
    assert checks["backfill_recomputed"].checked == len(planned) and "references_match_assets" not in checks
    archive.record_step(transport, run_dir, archive.StepResults(step=names.VERIFY, status="passed"))

    plan_rollback(transport, run_dir, backfill_registered, "strip")
    execute_rollback(transport, run_dir, backfill_registered, "strip")
    assert check_rollback(transport, run_dir, backfill_registered, "strip").passed
    assert scenes(transport) == before  # what it set is gone, what was there before is kept


@pytest.mark.deployment
def test_the_backfills_own_check_fires_on_a_value_its_rule_does_not_compute(
    transport: ConvexTransport, tmp_path: Path, backfill_registered: Migration
) -> None:
    seed(transport, 20)
    run_dir = tmp_path / "run"
    bind_migration(run_dir, backfill_registered.id)
    prepare(transport, run_dir, backfill_registered)
    assert apply_plan(transport, run_dir, backfill_registered, confirm=True, settings=ApplySettings(show_progress=False)).passed
    target = next(line["id"] for line in iter_plan_lines(run_dir) if line["action"] == "backfill")
    item = {"table": "scenes", "id": target, "expect": {"assetVersion": 1}, "expectAbsent": [], "set": {"assetVersion": 7},
            "unset": [], "insertReferences": [], "deleteReferences": []}
    assert apply_batch(transport, "a-faulty-writer", "r", [item])[0]["outcome"] == "applied"
    failed = {c.name: c for c in verify(transport, run_dir, backfill_registered, show_progress=False).checks if not c.passed}
    assert set(failed) == {"planned_fields_written", "backfill_recomputed"} and failed["backfill_recomputed"].examples == [target]
