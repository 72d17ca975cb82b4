"""Exceptions a person can act on: each names the cause and carries a hint with the fix."""

from __future__ import annotations

from typing import Any


class RunbookError(Exception):
    """Base of every error the runbook raises on purpose."""

    hint: str = ""
    #: True when the error stopped a step before it wrote anything (run folder or deployment); the notebook says so.
    nothing_written: bool = False
    #: The fix already says where to go on (e.g. a new run folder): the runner appends no "run the step again".
    names_next_step: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        """The cause alone, without the fix line: for wrapping in another error that brings its own fix."""
        return super().__str__()

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message

    def _render_traceback_(self) -> list[str]:
        """What IPython shows in a notebook instead of the traceback: the cause and the fix on one screen (the
        frames are the runbook's own; the analyst acts on the cause)."""
        lines = [f"\x1b[1;31m{type(self).__name__}\x1b[0m: {self.message}"]
        if self.hint:
            lines.append(f"\x1b[1m  fix:\x1b[0m {self.hint}")
        if self.nothing_written:
            lines.append("  Nothing was written: the run folder and the deployment are as they were.")
        return lines


class DeploymentUnreachable(RunbookError):
    hint = (
        "Check the URL (e.g. https://<name>.convex.cloud or http://127.0.0.1:<port>): the host must resolve and "
        "accept connections from here (network, VPN, local deployment running)."
    )


class InvalidDeploymentUrl(RunbookError):
    hint = (
        "Give the deployment's URL as scheme://host[:port] with nothing after it, e.g. https://happy-otter-123.convex.cloud "
        "or http://127.0.0.1:3210 (a port is digits only; an IPv6 host is written in [brackets])."
    )


class DeployKeyMissing(RunbookError):
    hint = (
        "Export CONVEX_DEPLOY_KEY (Convex dashboard > Settings > Deploy key), or name a file holding it "
        "in CONVEX_DEPLOY_KEY_FILE. The key is never taken as a notebook parameter."
    )


class DeployKeyRejected(RunbookError):
    hint = "The deploy key does not belong to this deployment or was revoked: create a new one in the dashboard."


class FunctionsNotDeployed(RunbookError):
    hint = "Deploy this project's convex/ folder first: `npx convex deploy` (see README, 'Running against a real deployment')."


class SchemaNotDeployed(RunbookError):
    hint = "The deployed schema lacks the migration's fields: deploy convex/schema.ts with `npx convex deploy` before applying."


class ArgumentValidationError(RunbookError):
    hint = "The deployed functions do not match this runbook's version: redeploy convex/ from this checkout."


class LimitExceeded(RunbookError):
    hint = "A call exceeded a Convex per-function limit (size, time or memory): lower the batch size or page size parameter."


class FunctionTerminated(LimitExceeded):
    """Convex stopped the function at its time or memory limit. Nothing it did was committed, and a busy
    deployment can cause it as much as the call's size: the transport retries it like a transient failure,
    except for a caller that splits its work when it meets a limit (apply's batches)."""


class InvalidValue(RunbookError, ValueError):  # a ValueError, as the `convex` package raises for these
    hint = "Convex cannot hold this value (e.g. text that is not valid Unicode): correct it where it comes from, then run the step again."


class FunctionFailed(RunbookError):
    """A Convex function threw; the message is the server's."""

    hint = "Read the server's message above: it names what the function refused; correct that and run the step again."


class TransientFailure(RunbookError):
    hint = "The deployment kept failing transiently (5xx, dropped connections, timeouts); wait and run the step again: it resumes."


class ExportInProgress(RunbookError):
    hint = "A snapshot export is already requested or in progress. Only one can run at a time: wait for it and run the backup again."


class ExportFailed(RunbookError):
    hint = "The deployment reported the export as failed. Try again later; nothing was written to the run folder."


class ExportCanceled(RunbookError):
    hint = "Someone canceled the export (dashboard or CLI); nothing was written to the run folder: run the backup again."


class PreconditionFailed(RunbookError):
    """A step refused to start: what it needs from earlier steps or from the operator is missing."""

    hint = "Run the earlier steps of the runbook in this run folder first (01 backup, 02 dry-run, 03 apply, 04 verify)."


class StepNotPassed(RunbookError):
    """A step ran to its end and recorded a verdict other than passed (apply over its error budget, a failed
    check): its results are recorded, the tables above it say why."""

    hint = "Read the tables above: they name each document and check that failed. Correct the cause, then run this notebook again."


class NewRunFolderNeeded(PreconditionFailed):
    """This run folder cannot go on: another run changed (or is changing) the deployment after its backup, so
    its plan no longer describes it. The fix names the next step itself (the runner adds no "run the step again
    in this run folder")."""

    names_next_step = True

    hint = (
        "Take a new backup and make a new plan in a new run folder (runbook run --url … --confirm starts one), "
        "then apply that; this run folder's plan is stale and is refused."
    )


class LockHeld(NewRunFolderNeeded):
    """Another run holds the deployment's migration lock: once it has applied or rolled back, this folder's plan is stale."""

    hint = (
        "Wait for that run to finish (or for its lease to expire if it was killed), then start a new run folder "
        "(runbook run --url … --confirm): after another run's apply or rollback this folder's plan is stale and is refused."
    )


class LeaseLost(NewRunFolderNeeded):
    """The deployment's migration lock passed to another run while this one was paused or cut off: the client
    found it (its lease renewal was refused) or the deployment did (applyBatch refuses a run not holding it)."""

    hint = (
        "Another run took the migration lock after this run's lease ran out (it was paused or cut off); nothing "
        "more was sent. Once that run has finished, start a new run folder (runbook run --url … --confirm): this "
        "folder's plan is stale after another run's apply and is refused (the ledger, migrationRuns, names the run)."
    )


class StatisticsUnconfirmed(RunbookError):
    """Apply sent its whole plan, but the deployment does not hold the side rows the documents counted
    migrated should have (e.g. it restarted and lost writes): the figures are not confirmed, so it did not pass."""

    hint = "Run apply again in this run folder to resume: it sends the plan again and the deployment confirms every document."
    names_next_step = True


class DiskFull(RunbookError):
    """The disk holding the run folder is full (ENOSPC); the message names the disk, the fix how to resume."""

    hint = (
        "Free space on the disk holding the run folder (or move the runs folder to one with room), then resume the "
        "run in its folder (runbook run --url … --run-dir DIR)."
    )

    names_next_step = True


class ChainBroken(PreconditionFailed):
    """The deployment refused a guarded write: the migration chain no longer allows it (`problem`: its
    `ChainProblem`, which helpers.steps.chain words for the step that asked). Nothing of the batch was written."""

    def __init__(self, message: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.problem = problem or {}
