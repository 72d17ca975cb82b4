"""Migration 002 against the local deployment: it refuses where 001 is not in effect, and runs after 001."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from helpers import MIGRATION_ID as M001, archive, errors
from helpers.apply import apply_plan
from helpers.deployment import iter_pages, read_ledger
from helpers.migration import PlanInputs
from helpers.migrations.m002_retire_legacy_fields import MIGRATION as M002
from helpers.plan import iter_plan_lines
from helpers.rollback import execute_rollback, plan_rollback
from helpers.transport import ConvexTransport
from helpers.verify import verify

from .flow import prepare, seed, state

SCENES = 30


def run_001(transport: ConvexTransport, run_dir: Path) -> None:
    """Migration 001 end to end, each step recorded in the ledger as its notebook records it."""
    prepare(transport, run_dir)
    applied = apply_plan(transport, run_dir, confirm=True, show_progress=False)
    archive.record_step(transport, run_dir, archive.StepResults(step="03_apply", status="passed" if applied.passed else "failed"))
    report = verify(transport, run_dir, show_progress=False)
    assert report.passed, [c for c in report.checks if not c.passed]
    archive.record_step(transport, run_dir, archive.StepResults(step="04_verify", status="passed"))


def test_002_refuses_where_001_never_ran(transport: ConvexTransport) -> None:
    seed(transport, SCENES)
    with pytest.raises(errors.PreconditionFailed, match="001_s3_asset_tracking has no passed 04_verify") as refused:
        M002.require(transport)
    assert "runbook run --migration 001_s3_asset_tracking" in refused.value.hint


def test_002_requires_001_verified_and_not_rolled_back_since(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, SCENES)
    prepare(transport, run_dir)
    apply_plan(transport, run_dir, confirm=True, show_progress=False)
    archive.record_step(transport, run_dir, archive.StepResults(step="03_apply", status="passed"))
    with pytest.raises(errors.PreconditionFailed, match="no passed 04_verify"):  # applied, not verified
        M002.require(transport)
    report = verify(transport, run_dir, show_progress=False)
    archive.record_step(transport, run_dir, archive.StepResults(step="04_verify", status="passed" if report.passed else "failed"))
    M002.require(transport)  # verified: 002 may run

    plan_rollback(transport, run_dir, "strip")
    execute_rollback(transport, run_dir, "strip")
    assert [row["step"] for row in read_ledger(transport, M001)][-1] == "05_rollback"
    with pytest.raises(errors.PreconditionFailed, match="was rolled back"):
        M002.require(transport)


#: What 001 flagged and stored normalised or left out: the legacy value is then not carried.
NOT_CARRIED_FLAGS = {"presigned_url", "url_plain_http", "invalid_size", "invalid_checksum"}


def plan_002(transport: ConvexTransport) -> dict[str, dict[str, Any]]:
    lines = M002.planner(PlanInputs(pages=lambda table, _desc: iter_pages(transport, table, 50), scratch=None, options={}, page_size=50))
    return {line["id"]: line for line in lines}


def test_002_plans_a_deployment_001_migrated_by_what_001_carried(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, 120)
    run_001(transport, run_dir)
    m001 = {line["id"]: line for line in iter_plan_lines(run_dir)}
    overtaken = [i for i, line in m001.items() if line["table"] == "scenes" and line["action"] == "migrate" and not line["problems"]
                 and "s3ChunkKey" in line["expect"]][:2]
    for scene in overtaken:  # a legacy writer after 001: a new chunk the asset does not hold
        transport.mutation("scenes:setChunk", {"id": scene, "s3ChunkKey": f"re/{scene}.mp4", "s3ChunkUrl": f"https://x/{scene}.mp4"})
    docs = {i: d for table in M002.tables for i, d in state(transport)[table].items()}
    plan = plan_002(transport)
    assert plan.keys() == docs.keys()

    def expected(doc_id: str) -> tuple[str, frozenset[str]]:
        table = m001[doc_id]["table"]
        if not M002.owned_part(table, docs[doc_id]):
            return "nothing_to_retire", frozenset()
        if m001[doc_id]["action"] == "problem":
            return "blocked", frozenset({"not_migrated"})
        if doc_id in overtaken:
            return "blocked", frozenset({"legacy_changed_since_migration"})
        # 001's flags on a legacy asset field: a blank key or URL built no asset, anything else was normalised
        reasons = frozenset(
            "not_migrated" if p["code"] == "empty_string" and p["field"] not in ("s3ChunkSize", "checksum") else "asset_disagrees_with_legacy"
            for p in m001[doc_id]["problems"]
            if p["field"] in M002.owned_fields[table] and (p["code"] in NOT_CARRIED_FLAGS or p["code"] == "empty_string")
        )
        return ("blocked", reasons) if reasons else ("retire", frozenset())

    got = {i: (line["action"], frozenset(p["code"] for p in line["problems"])) for i, line in plan.items()}
    assert got == {i: expected(i) for i in docs}
    counts = Counter((line["table"], line["action"]) for line in plan.values())
    assert counts[("scenes", "retire")] > 50 and counts[("videoSessions", "retire")] > 5
    assert counts[("scenes", "blocked")] and counts[("videoSessions", "blocked")]
