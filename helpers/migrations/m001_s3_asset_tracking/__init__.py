"""Migration 001, S3 asset tracking: adds asset objects and their assetReferences rows beside the legacy
S3 fields of scenes and videoSessions, never touching a legacy field (README.md, mapping.md, fields.md)."""

from __future__ import annotations

from pathlib import Path

from helpers.connection.calls import SideRows
from helpers.migrations.m001_s3_asset_tracking import checks, planner
from helpers.migrations.m001_s3_asset_tracking.fields import (
    ASSET_EXTRA_SOURCES,
    ASSET_OBJECT_FIELDS,
    ASSET_SOURCES,
    ASSET_TYPES,
    ENTITY_TYPES,
    MIGRATED_TABLES,
    NEW_FIELDS,
)
from helpers.migrations.m001_s3_asset_tracking.plan_line import (
    CHANGING_ACTIONS,
    REFERENCE_KIND,
    STATUS_KEY,
)
from helpers.steps.migration import Migration

#: One assetReferences row per asset a document holds (convex/schema.ts `assetReferenceFields`).
ASSET_REFERENCES = SideRows(
    table="assetReferences",
    label="asset references",
    owner="entityId",
    kind=REFERENCE_KIND,
    index="by_entity",
    group="entityType",
    stamp="metadata",
    created_at="createdAt",
    sources={table: {f: ASSET_TYPES[f] for f in sources} for table, sources in ASSET_SOURCES.items()},
    groups=ENTITY_TYPES,
    mirrored=ASSET_OBJECT_FIELDS,
)

MIGRATION = Migration(
    id="001_s3_asset_tracking",
    title="S3 asset tracking",
    predecessor=None,
    tables=MIGRATED_TABLES,
    owned_fields=NEW_FIELDS,
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
    updated_at_field="updatedAt",
    side_rows=ASSET_REFERENCES,
    status_key=STATUS_KEY,
)
