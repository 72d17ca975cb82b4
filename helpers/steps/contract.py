"""One step of a run, as a notebook opens and closes it: the same three calls in all five notebooks.

`Step.open` binds the run folder to its migration, refuses when the step before did not pass, and connects
(the deploy key comes from the environment, never from a parameter); `Step.record` builds the step's results
from what it produced and records them (results.json and the step's ledger row, see archive.record_step), with
the time between the two: how long the step's cells ran, interactively as headless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpers.connection import jsonio
from helpers.connection.errors import PreconditionFailed, RunbookError
from helpers.connection.transport import ConvexTransport, redact_url
from helpers.evidence import archive
from helpers.evidence.archive import RESULTS_FILE, StepResults, sha256_file, step_dir
from helpers.evidence.checkpoint_file import checkpoint_path
from helpers.evidence.run_folder import bind_migration, operator_for
from helpers.paths import CHECKOUT_ROOT
from helpers.steps import names
from helpers.steps.migration import Migration


@dataclass
class Step:
    name: str
    run_dir: Path
    migration: Migration
    transport: ConvexTransport
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def open(cls, name: str, convex_url: str, run_dir: str | Path | None, migration: str) -> Step:
        """The step in `run_dir` (created on the first step), after checking the folder runs `migration` and the
        step before passed there. `run_dir` is taken from where the kernel runs (a run folder's notebook has
        "..": JupyterLab and the runner start its kernel in its own folder); the step holds the real folder."""
        try:
            if run_dir is None:
                raise PreconditionFailed(
                    f"run_dir is not set: this is the template of {name}, not a run folder's notebook.",
                    hint=_where_to_run(name, None),
                )
            transport = ConvexTransport(convex_url)  # a malformed URL is refused before the folder is touched
            run_dir = Path(run_dir).resolve()
            _require_previous(name, run_dir)
            declared = bind_migration(run_dir, migration)
            return cls(name, run_dir, declared, transport)
        except RunbookError as refused:
            refused.nothing_written = True
            raise

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
        finished = datetime.now(UTC)
        results = results.model_copy(update={
            "started_at": self.started.isoformat(timespec="seconds"), "finished_at": finished.isoformat(timespec="seconds"),
            "duration_s": round((finished - self.started).total_seconds(), 3),
        })
        archive.record_step(self.transport, self.run_dir, results, operator=operator_for(self.run_dir), started_at=self.started)
        return results


def _require_previous(name: str, run_dir: Path) -> None:
    """Refuses a step whose previous step did not pass in `run_dir`, naming the folder where it did."""
    previous = names.PREVIOUS.get(name)
    if previous is None:
        return
    path = step_dir(run_dir, previous) / RESULTS_FILE
    if not path.is_file():
        raise PreconditionFailed(f"step {previous} has not run in {run_dir} ({previous}/{RESULTS_FILE} is missing).",
                                 hint=_where_to_run(name, run_dir))
    status = StepResults.model_validate_json(path.read_bytes()).status
    if status != "passed":
        raise PreconditionFailed(
            f"step {previous} did not pass in {run_dir} (status: {status}).",
            hint=f"Fix what {step_dir(run_dir, previous) / f'{previous}.ipynb'} reported and run it again there, then this step.",
        )


def _where_to_run(name: str, run_dir: Path | None) -> str:
    """The fix for a step opened in the wrong place: the run folder where the step before it last passed."""
    previous = names.PREVIOUS.get(name)
    found = last_passed(previous, run_dir) if previous else None
    if found is not None:
        return f"{previous} passed in {found}: run this step there, {step_dir(found, name) / f'{name}.ipynb'} (`runbook lab {found}`)."
    if run_dir is not None and previous is not None:
        return f"Run {previous} first in this run folder: {step_dir(run_dir, previous) / f'{previous}.ipynb'}, then this step."
    return f"Make a run folder with `runbook new-run --url URL` and run {name} from there (`runbook lab <run folder>`)."


def last_passed(step: str, near: Path | None) -> Path | None:
    """The run folder where `step` passed most recently: among `near`'s sibling folders and the runs/ folders of
    the working directory and the checkout."""
    places = {Path.cwd() / "runs", *([CHECKOUT_ROOT / "runs"] if CHECKOUT_ROOT else []), *([near.parent] if near else [])}
    passed = []
    for place in places:
        for results in place.glob(f"*/{step}/{RESULTS_FILE}"):
            try:
                if jsonio.loads(results.read_bytes()).get("status") == "passed":
                    passed.append((results.stat().st_mtime, results.parent.parent.resolve()))
            except (OSError, ValueError):
                continue
    return max(passed)[1] if passed else None


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
        outputs={"checkpoint_sha256": sha256_file(checkpoint_path(step.run_dir / "apply"))},
    )


def _verify(step: Step, report: Any) -> StepResults:
    return StepResults(
        step=step.name, status="passed" if report.passed else "failed", summary=report.model_dump(mode="json"),
        inputs={"plan_sha256": report.plan_sha256, "backup_sha256": report.backup_sha256,
                "apply_results_sha256": sha256_file(step_dir(step.run_dir, names.APPLY) / "results.json")},
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
    names.BACKUP: _backup,
    names.DRY_RUN: _dry_run,
    names.APPLY: _apply,
    names.VERIFY: _verify,
    names.ROLLBACK: _rollback,
}
