"""Runbook for Convex migration 001 (S3 asset tracking): all logic behind the notebooks."""

MIGRATION_ID = "001_s3_asset_tracking"
