"""Migration 002: retire the legacy asset fields that migration 001's asset fields fully carry.

One folder, declared through `helpers.steps.migration.Migration`: the pure rules (`rules.py`), the verify check that
no removed value is lost (`checks.py`), the refusal to run before 001 is in effect (`precondition.py`). README.md
beside it says when to run it and in which order to deploy the schema; mapping.md which field carries which.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers.migrations.m002_retire_legacy_fields import rules
from helpers.migrations.m002_retire_legacy_fields.checks import (
    LEGACY_VALUES_RECOVERABLE,
)
from helpers.migrations.m002_retire_legacy_fields.precondition import (
    require_predecessor_in_effect,
)
from helpers.steps.migration import Migration, PlanInputs

ID = "002_retire_legacy_fields"
PREDECESSOR = "001_s3_asset_tracking"
TABLES = ("scenes", "videoSessions")
LABELS = {"scenes": "scenes", "videoSessions": "sessions"}


def plan(inputs: PlanInputs) -> Iterator[dict[str, Any]]:
    """Every scene, then every session, one line each: a page at a time, nothing kept between documents."""
    for table in TABLES:
        for page in inputs.pages(table, LABELS[table]):
            for doc in page:
                yield rules.plan_document(table, doc)


def require(transport: Any) -> None:
    require_predecessor_in_effect(transport, MIGRATION)


MIGRATION = Migration(
    id=ID,
    title="Retire the legacy asset fields",
    predecessor=PREDECESSOR,
    tables=TABLES,
    owned_fields={table: rules.RETIRED_FIELDS[table] for table in TABLES},
    changing_actions=frozenset({rules.RETIRE}),
    actions=rules.ACTIONS,
    planner=plan,
    checks=(LEGACY_VALUES_RECOVERABLE,),
    require=require,
    labels=LABELS,
    derived_from={table: {legacy: (asset,) for legacy, (asset, _) in rules.CARRIED_BY[table].items()} for table in TABLES},
    rollback_modes=("restore",),
    folder=Path(__file__).parent,
    updated_at_field="updatedAt",
    status_key="legacyStatus",
)
