"""One step of a run, as a notebook opens and closes it: the same three calls in all five notebooks.

`Step.open` binds the run folder to its migration, refuses when the step before did not pass, and connects
(the deploy key comes from the environment, never from a parameter); `Step.record` builds the step's results
from what it produced and records them (results.json and the step's ledger row, see archive.record_step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import archive
from .archive import StepResults, read_step_results, sha256_file, step_dir
from .migration import Migration
from .run_folder import bind_migration
from .transport import ConvexTransport, redact_url

#: The step each step builds on: it must have passed in the same run folder.
PREVIOUS_STEP = {
    "02_dry_run": "01_backup_snapshot",
    "03_apply": "02_dry_run",
    "04_verify": "03_apply",
    "05_rollback": "02_dry_run",
}


@dataclass
class Step:
    name: str
    run_dir: Path
    migration: Migration
    transport: ConvexTransport

    @classmethod
    def open(cls, name: str, convex_url: str, run_dir: str | Path, migration: str) -> Step:
        """The step in `run_dir` (created on the first step), after checking the folder runs `migration` and the
        step before passed there."""
        run_dir = Path(run_dir)
        declared = bind_migration(run_dir, migration)
        previous = PREVIOUS_STEP.get(name)
        if previous is not None:
            read_step_results(run_dir, previous).require_passed()
        return cls(name, run_dir, declared, ConvexTransport(convex_url))

    @property
    def deployment(self) -> str:
        """The deployment's URL as evidence may show it (credentials removed)."""
        return redact_url(self.transport.url)

    def heading(self) -> str:
        """The Markdown line each notebook shows first: which migration, which deployment, which folder."""
        return (
            f"**Migration:** {self.migration.id} ({self.migration.title}) &nbsp; "
            f"**Deployment:** {self.deployment} &nbsp; **Run folder:** `{self.run_dir}`"
        )

    def record(self, outcome: Any, **extra: Any) -> StepResults:
        """Builds this step's results from what it produced (the summary or report its helper returned) and
        records them; returns them (a failed verify or rollback is recorded before the notebook raises)."""
        results = _RESULTS[self.name](self, outcome, **extra)
        archive.record_step(self.transport, self.run_dir, results)
        return results


def _backup(step: Step, summary: Any) -> StepResults:
    return StepResults(
        step=step.name, status="passed", summary=summary.model_dump(mode="json"), inputs={},
        outputs={"backup_sha256": summary.sha256, "snapshot_ts": summary.snapshot_ts},
    )


def _dry_run(step: Step, summary: Any) -> StepResults:
    return StepResults(
        step=step.name, status="passed", summary=summary.model_dump(mode="json", exclude={"by_status", "problems"}),
        inputs={"backup_sha256": summary.backup_sha256}, outputs={"plan_sha256": summary.plan_sha256},
    )


def _apply(step: Step, summary: Any) -> StepResults:
    return StepResults(
        step=step.name, status=summary.status, summary=summary.model_dump(mode="json"),
        inputs={"plan_sha256": summary.plan_sha256, "backup_sha256": summary.backup_sha256},
        outputs={"checkpoint_sha256": sha256_file(step.run_dir / "apply" / "checkpoint.jsonl")},
    )


def _verify(step: Step, report: Any) -> StepResults:
    return StepResults(
        step=step.name, status="passed" if report.passed else "failed", summary=report.model_dump(mode="json"),
        inputs={"plan_sha256": report.plan_sha256, "backup_sha256": report.backup_sha256,
                "apply_results_sha256": sha256_file(step_dir(step.run_dir, "03_apply") / "results.json")},
        outputs={},
    )


def _rollback(step: Step, done: Any, *, check: Any = None) -> StepResults:
    """`done`: the rollback summary (planned only, or executed); `check`: its own check after executing."""
    passed = check is None or (check.passed and not done.errors)
    return StepResults(
        step=step.name, status="passed" if passed else "failed",
        summary={**done.model_dump(mode="json"), "check": None if check is None else check.model_dump(mode="json")},
        inputs={"plan_sha256": done.plan_sha256}, outputs={"rollback_plan_sha256": done.rollback_plan_sha256},
    )


_RESULTS: dict[str, Callable[..., StepResults]] = {
    "01_backup_snapshot": _backup,
    "02_dry_run": _dry_run,
    "03_apply": _apply,
    "04_verify": _verify,
    "05_rollback": _rollback,
}
