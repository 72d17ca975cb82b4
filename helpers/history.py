"""The deployment's history (`runbook status`): per migration of the registry, its state on this deployment and its
runs, read from the ledger, as Flyway's `info` or Alembic's `history`. It only reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from helpers.connection.calls import read_ledger
from helpers.evidence.archive import MANIFEST_FILE, run_rows
from helpers.evidence.archive_check import trusted_seals
from helpers.migrations import all_migrations
from helpers.steps import names
from helpers.steps.chain import executed_rollback


@dataclass(frozen=True)
class RunRecord:
    """One run as the deployment's ledger holds it: each step's last status, and the manifest it was sealed with."""

    run_id: str
    operator: str
    started_ms: int
    steps: dict[str, str]
    #: sha256 of the manifest of the run's last trusted seal; None when the run was never sealed.
    sealed: str | None


@dataclass(frozen=True)
class MigrationState:
    """A migration of the registry on one deployment: pending, applied, rolled back or apply failed, with the
    run that decided it and every run of it."""

    migration_id: str
    state: Literal["pending", "applied", "rolled back", "apply failed"]
    decided_by: RunRecord | None
    runs: list[RunRecord]


def _changed_documents(row: Mapping[str, Any]) -> bool:
    """An apply, or a rollback that changed documents (executed: a preview changes nothing)."""
    return row.get("step") == names.APPLY or executed_rollback(row)


def deployment_status(transport: Any) -> list[MigrationState]:
    """What the deployment's ledger holds, per migration of the registry (as Flyway's `info`): its state here
    and its runs, oldest first. Only reads (one ledger query per migration)."""

    states = []
    for migration in all_migrations():
        ledger = read_ledger(transport, migration.id)
        runs = {}
        for this_run in dict.fromkeys(str(r.get("runId")) for r in ledger):
            rows = run_rows(ledger, this_run)
            seals = trusted_seals(rows)
            runs[this_run] = RunRecord(
                run_id=this_run, operator=str(rows[0].get("operator")), started_ms=int(min(r.get("startedAt") or 0 for r in rows)),
                steps={str(r["step"]): str(r.get("status")) for r in rows if r.get("step") != names.SEAL},
                sealed=(seals[-1].get("evidence") or {}).get(MANIFEST_FILE) if seals else None,
            )
        changes = sorted(filter(_changed_documents, ledger), key=lambda r: r.get("startedAt") or 0)
        last = changes[-1] if changes else None
        state: Literal["pending", "applied", "rolled back", "apply failed"] = "pending"
        if last is not None and last.get("step") == names.APPLY:
            state = "applied" if last.get("status") == "passed" else "apply failed"
        elif last is not None:
            state = "rolled back"
        ordered = sorted(runs.values(), key=lambda run: run.started_ms)
        states.append(MigrationState(migration.id, state, runs.get(str(last.get("runId"))) if last else None, ordered))
    return states
