"""Migration 001, S3 asset tracking: adds asset objects and their assetReferences rows beside the legacy
S3 fields of scenes and videoSessions, never touching a legacy field (README.md, mapping.md, fields.md)."""

from __future__ import annotations

from pathlib import Path

from ...migration import Migration
from . import checks, planner
from .fields import ASSET_EXTRA_SOURCES, ASSET_SOURCES, ASSET_TYPES, MIGRATED_TABLES, NEW_FIELDS
from .plan_line import CHANGING_ACTIONS

MIGRATION = Migration(
    id="001_s3_asset_tracking",
    title="S3 asset tracking",
    predecessor=None,
    tables=MIGRATED_TABLES,
    owned_fields=NEW_FIELDS,
    reference_fields={table: {f: ASSET_TYPES[f] for f in sources} for table, sources in ASSET_SOURCES.items()},
    entity_types={"scenes": "scene", "videoSessions": "session"},
    changing_actions=CHANGING_ACTIONS,
    actions=("migrate", "fill_missing", "track_existing", "no_change", "problem"),
    planner=planner.plan,
    checks=checks.CHECKS,
    cross_checks=checks.cross_checks,
    labels={"scenes": "scenes", "videoSessions": "sessions"},
    derived_from={
        table: {**{asset: (*pair, *ASSET_EXTRA_SOURCES.get(asset, ())) for asset, pair in sources.items()}, "assetsStatus": ("status",)}
        for table, sources in ASSET_SOURCES.items()
    },
    folder=Path(__file__).parent,
)
