"""The migration chain's preconditions: which chain a writing step asks the deployment for, and the words of a refusal.

A migration applies only where its predecessor is in effect (a passed verify that no executed rollback followed),
and is rolled back only where no successor of it is in effect (no apply of it that no passed restore followed). The
rule itself is the deployment's (`convex/migrationRuns.ts` `chainProblem`), read from its ledger in the transaction
that acts on it: `migrationRuns:acquireLock` refuses a run the chain does not allow, `migration:applyBatch` asks again
before every batch of a guarded run (so a check and the write it guards are never separated), and
`migrationRuns:chainState` answers the early, read-only checks (before a backup, a plan or a rollback plan).
A rollback counts once it was executed: a preview (`05_rollback` with `execute=False`) changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from helpers.connection.calls import Chain, chain_problem
from helpers.connection.errors import ChainBroken, PreconditionFailed
from helpers.connection.transport import ConvexTransport
from helpers.migrations import all_migrations
from helpers.steps import names
from helpers.steps.migration import Migration

#: The ledger row of an executed rollback carries this in `details` (`mode=strip`, `mode=restore`); a preview does not.
EXECUTED_ROLLBACK_DETAILS = "mode="


def for_apply(migration: Migration) -> Chain:
    """An apply builds on its predecessor: that must be in effect."""
    return {"inEffect": [migration.predecessor] if migration.predecessor else [], "notInEffect": []}


def for_rollback(migration: Migration) -> Chain:
    """A rollback takes away what every successor builds on: none may be in effect."""
    return {"inEffect": [], "notInEffect": [m.id for m in all_migrations() if m.predecessor == migration.id]}


def rollback_mark(mode: str) -> str:
    """The `details` of an executed rollback's ledger row (`mode=strip`, `mode=restore`)."""
    return f"{EXECUTED_ROLLBACK_DETAILS}{mode}"


def executed_rollback(row: Mapping[str, Any]) -> bool:
    """A ledger row of a rollback that sent its plan (`execute_rollback` marks it before sending anything)."""
    return row.get("step") == names.ROLLBACK and str(row.get("details", "")).startswith(EXECUTED_ROLLBACK_DETAILS)


def refusal(problem: dict[str, Any], migration_id: str, nothing: str) -> PreconditionFailed:
    """The deployment's chain problem (`ChainProblem`) as a refusal of `migration_id`'s step; `nothing` says what
    the step did not do (e.g. "Nothing was sent.")."""
    reason, other = problem["reason"], problem["migrationId"]
    if reason == "not_verified":
        return PreconditionFailed(
            f"Migration {other} has no passed {names.VERIFY} in this deployment's ledger (migrationRuns): what "
            f"{migration_id} builds on is not known to be in place. {nothing}",
            hint=f"Run migration {other} to the end on this deployment first (runbook run --migration {other} "
            "--url …: backup, dry-run, apply, verify), then run this migration in a new run folder.",
        )
    if reason == "rolled_back":
        return PreconditionFailed(
            f"Migration {other} was rolled back (run {problem['runId']}, {names.ROLLBACK} executed, "
            f"{problem['status']}) after its last passed verify (run {problem['verifiedRunId']}): what {migration_id} "
            f"builds on is not known to be in place. {nothing}",
            hint=f"Run migration {other} again to the end (backup, dry-run, apply, verify), then run this migration "
            "in a new run folder.",
        )
    return PreconditionFailed(
        f"Migration {other} builds on {migration_id} and is applied (run {problem['runId']}): rolling "
        f"{migration_id} back now would lose what {other} relies on. {nothing}",
        hint=f"Roll {other} back first (its run folder, {names.ROLLBACK} with mode='restore'), then roll back {migration_id}.",
    )


def require_chain(transport: ConvexTransport, chain: Chain, migration_id: str, nothing: str) -> None:
    """The early, read-only chain check (before a backup, a plan or a rollback plan): refuses when the deployment's
    ledger does not allow `migration_id`'s step now. The check that counts is made again under the lock."""
    problem = chain_problem(transport, chain)
    if problem is not None:
        raise refusal(problem, migration_id, nothing)


def refused_batch(broken: ChainBroken, migration_id: str, run_id: str) -> PreconditionFailed:
    """applyBatch's refusal of a guarded batch, in the words of the step that sent it."""
    return refusal(broken.problem, migration_id, f"The deployment refused run {run_id}'s batch: nothing of it was written.")
