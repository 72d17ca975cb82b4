"""One writer per deployment, across migrations: a 001 rollback strip and a 002 apply started close together (each
way round), and 001's apply beside 002's, on a local deployment that slows every call the writing steps make to
decide and to write, so both operators pass every check made before a write. The invariant is on the data: every
legacy value is still in the deployment, as the legacy field or as the asset field that carries it; and the second
writer is refused, naming the run, operator and migration that holds the lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.connection import errors
from helpers.connection.transport import ConvexTransport
from helpers.connection.values import equal
from helpers.devtools.local_deployment import LocalDeployment
from helpers.devtools.sample_data import load
from helpers.evidence.run_folder import create_run, run_id
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m002_retire_legacy_fields import MIGRATION as M002
from helpers.migrations.m002_retire_legacy_fields.rules import CARRIED_BY, is_carried
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.steps.rollback import execute_rollback, plan_rollback
from tests.flow import prepare, seed, state
from tests.migrations.test_retire_legacy_fields import apply_and_verify, folder

pytestmark = pytest.mark.deployment

SCENES = 40
#: Every lock, ledger and batch call waits this long before it executes (--fault-delay-ms): longer than any gap
#: between the two operators' checks and writes on loopback, so today's checks-then-write would interleave.
DELAY_MS = 1_500
DELAY_S = DELAY_MS / 1000


@pytest.fixture
def slow(deploy_key: str) -> Any:
    """Every call a writing step makes to decide (lock, ledger, chain) and to write (applyBatch) is delayed
    exactly DELAY_MS; reads of documents are not, so the preparation stays quick."""
    with LocalDeployment(deploy_key=deploy_key, fault_rate=1.0, fault_kinds=("delay",), fault_delay_ms=DELAY_MS,
                         fault_paths=("migration:applyBatch", "migrationRuns:")) as deployment:
        yield deployment


def legacy_values(snapshot: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, str, Any]]:
    """Every legacy asset value of the documents: (table, id, field, value)."""
    return [(table, doc_id, name, doc[name]) for table in M002.tables for doc_id, doc in snapshot[table].items()
            for name in CARRIED_BY[table] if name in doc]


def lost(values: list[tuple[str, str, str, Any]], after: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The values no longer in the deployment, neither as the legacy field nor as the asset field carrying it."""
    missing = []
    for table, doc_id, name, value in values:
        doc = after[table].get(doc_id, {})
        asset_field, attribute = CARRIED_BY[table][name]
        if not ((name in doc and equal(doc[name], value)) or is_carried(value, doc.get(asset_field), attribute)):
            missing.append(f"{doc_id}.{name}")
    return missing


def race(url: str, first: Callable[[ConvexTransport], Any], second: Callable[[ConvexTransport], Any], gap_s: float) -> list[Any]:
    """Starts `first`, then `second` `gap_s` later, each with its own client; what each returned or raised."""
    outcomes: list[Any] = [None, None]

    def run(index: int, step: Callable[[ConvexTransport], Any]) -> None:
        with ConvexTransport(url) as own:
            try:
                outcomes[index] = step(own)
            except errors.RunbookError as refused:
                outcomes[index] = refused

    threads = [threading.Thread(target=run, args=(0, first)), threading.Thread(target=run, args=(1, second))]
    threads[0].start()
    time.sleep(gap_s)
    threads[1].start()
    for thread in threads:
        thread.join(timeout=300)
    return outcomes


def migrated_by_001(transport: ConvexTransport, tmp_path: Path) -> Path:
    seed(transport, SCENES)
    run_dir = folder(tmp_path, M001.id)
    prepare(transport, run_dir)
    apply_and_verify(transport, run_dir, M001)
    return run_dir


def operated_by(operator: str, tmp_path: Path, name: str, migration_id: str | None = None) -> Path:
    """A run folder made for `operator` (as `runbook new-run --operator` makes it): its steps sign with that name."""
    run_dir = tmp_path / name
    create_run(run_dir, migration_id or name, operator)
    return run_dir


def assert_refused_naming(refused: Any, holder: Path, operator: str, migration_id: str) -> None:
    assert isinstance(refused, errors.PreconditionFailed), refused
    assert f"Another run holds the deployment lock: run {run_id(holder)} by {operator}, writing migration {migration_id}" in str(refused)
    assert "new run folder" in str(refused)


# When 002 starts first, it asks the chain (one call) and then for the lock; the strip, started 1.5 delays later,
# asks for the lock at once: 002's request executes first. When the strip starts first, 002 starts half a delay
# later and passes its early chain check before the strip's ledger row exists. Either way both pass every check
# made before a write, and only the lock keeps the second from writing.
@pytest.mark.parametrize("first", ["002 apply", "001 strip"])
def test_a_001_strip_and_a_002_apply_started_together_never_lose_a_legacy_value(first: str, slow: LocalDeployment,
                                                                                 tmp_path: Path) -> None:
    with slow.transport() as transport:
        m001 = migrated_by_001(transport, tmp_path)
        m002 = operated_by("alice", tmp_path, M002.id)  # apply signs as its folder's operator
        prepare(transport, m002, M002)
        plan_rollback(transport, m001, M001, "strip")  # planned while 002 is not applied
        values = legacy_values(state(transport))

        def apply_002(own: ConvexTransport) -> Any:
            return apply_plan(own, m002, M002, confirm=True, settings=ApplySettings(batch_size=10, show_progress=False))

        def strip_001(own: ConvexTransport) -> Any:
            return execute_rollback(own, m001, M001, "strip", batch_size=10, operator="bob")

        if first == "002 apply":
            applied, stripped = race(slow.url, apply_002, strip_001, gap_s=1.5 * DELAY_S)
        else:
            stripped, applied = race(slow.url, strip_001, apply_002, gap_s=0.5 * DELAY_S)
        after = state(transport)
    assert values and lost(values, after) == []
    if first == "002 apply":
        assert applied.passed, applied
        assert_refused_naming(stripped, m002, "alice", M002.id)
    else:
        assert stripped.executed and not stripped.errors, stripped
        assert_refused_naming(applied, m001, "bob", M001.id)
    retired = sum(name not in after[table][doc_id] for table, doc_id, name, _ in values)
    assert (retired > 0) == (first == "002 apply")  # the winner did write: the loser was refused, not idle


def test_001_s_apply_and_002_s_apply_started_together_one_is_refused(slow: LocalDeployment, tmp_path: Path) -> None:
    with slow.transport() as transport:
        migrated_by_001(transport, tmp_path)
        load(transport, 20, seed=11)  # a legacy writer adds scenes 001 has not migrated yet
        again = operated_by("carol", tmp_path, "001-again", M001.id)
        prepare(transport, again)
        m002 = operated_by("alice", tmp_path, M002.id)
        prepare(transport, m002, M002)
        values = legacy_values(state(transport))

        def apply_001(own: ConvexTransport) -> Any:
            return apply_plan(own, again, M001, confirm=True, settings=ApplySettings(batch_size=10, show_progress=False))

        def apply_002(own: ConvexTransport) -> Any:
            return apply_plan(own, m002, M002, confirm=True, settings=ApplySettings(batch_size=10, show_progress=False))

        applied, refused = race(slow.url, apply_001, apply_002, gap_s=0.5 * DELAY_S)
        assert applied.passed and sum(applied.migrated.values()) > 0, applied
        assert_refused_naming(refused, again, "carol", M001.id)
        assert lost(values, state(transport)) == []
