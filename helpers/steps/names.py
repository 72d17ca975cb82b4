"""The steps of a run by name: the one place for what the notebooks, the run folder's step folders, the ledger's rows
and the CLI call them. A leaf (it imports nothing), so every layer may read it."""

from __future__ import annotations

BACKUP = "01_backup_snapshot"
DRY_RUN = "02_dry_run"
APPLY = "03_apply"
VERIFY = "04_verify"
ROLLBACK = "05_rollback"
#: The ledger row of a run's seal (not a notebook).
SEAL = "seal"

#: What `runbook run` runs by default, in order; a dry run stops after the plan.
FORWARD = (BACKUP, DRY_RUN, APPLY, VERIFY)
DRY_RUN_STEPS = (BACKUP, DRY_RUN)
#: Every step notebook.
ALL = (*FORWARD, ROLLBACK)
#: The steps that write to the deployment (they take its lock), and those that plan (they read the plan file).
CHANGING = frozenset({APPLY, ROLLBACK})
PLANNING = frozenset({DRY_RUN, APPLY})
#: The steps whose per-document work is spread over worker processes (their `workers` parameter).
WITH_WORKERS = (DRY_RUN, VERIFY)
#: The step each step builds on: it must have passed in the same run folder.
PREVIOUS = {DRY_RUN: BACKUP, APPLY: DRY_RUN, VERIFY: APPLY, ROLLBACK: DRY_RUN}
