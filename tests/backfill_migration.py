"""Issue 22's ten-line migration: backfill `assetVersion = 1` on every scene that lacks it, declared with
`helpers.steps.migration.backfill`. A test fixture, not in the registry (tests/test_backfill.py registers it). Not a test module."""

from helpers.steps.migration import backfill

ASSET_VERSION = backfill(
    id="910_backfill_asset_version",
    title="Backfill assetVersion",
    predecessor=None,
    table="scenes",
    fields=("assetVersion",),
    migrate_one=lambda scene: None if "assetVersion" in scene else {"assetVersion": 1},
)
