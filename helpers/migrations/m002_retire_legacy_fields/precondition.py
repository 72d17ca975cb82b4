"""002 runs only where its predecessor is in effect: a passed verify in the predecessor's ledger, not rolled back since."""

from __future__ import annotations

from typing import Any

from ...deployment import read_ledger
from ...errors import PreconditionFailed

VERIFY_STEP = "04_verify"
ROLLBACK_STEP = "05_rollback"


def require_verified(transport: Any, predecessor: str) -> None:
    """Refuses unless the deployment's ledger (migrationRuns) has a passed verify of `predecessor` that no
    rollback of it started after (a rollback of any outcome: a failed one may have changed documents back)."""
    rows = read_ledger(transport, predecessor)
    verified = [row for row in rows if row.get("step") == VERIFY_STEP and row.get("status") == "passed"]
    if not verified:
        raise PreconditionFailed(
            f"Migration {predecessor} has no passed {VERIFY_STEP} in this deployment's ledger (migrationRuns): "
            "its asset fields are not known to be in place, so no legacy field can be retired. Nothing was read or sent.",
            hint=f"Run migration {predecessor} to the end on this deployment first (runbook run --migration {predecessor} "
            "--url …: backup, dry-run, apply, verify), then run this migration in a new run folder.",
        )
    last = max(verified, key=lambda row: row["startedAt"])
    undone = [row for row in rows if row.get("step") == ROLLBACK_STEP and row["startedAt"] > last["startedAt"]]
    if undone:
        raise PreconditionFailed(
            f"Migration {predecessor} was rolled back (run {undone[-1]['runId']}, {ROLLBACK_STEP} "
            f"{undone[-1].get('status')}) after its last passed verify (run {last['runId']}): its asset fields are not "
            "known to be in place. Nothing was read or sent.",
            hint=f"Run migration {predecessor} again to the end (backup, dry-run, apply, verify), then run this migration.",
        )
