"""The apply notebook's confirmation gate: one text that names what is about to change, shown the same way
interactively and in the headless evidence; interactively the cell waits for the analyst's click.

Waiting in the cell is what makes Run All safe: the cells after the gate run only once the analyst decided, so
apply starts from the click, below it, and Cancel stops Run All with one line instead of a traceback. The cell
awaits (`await ....gate(confirm)`): while a cell awaits, ipykernel (7.4+) still delivers widget messages to it,
and holds the cells Run All queued behind it. (jupyter-ui-poll's blocking wait relies on
`Kernel.do_one_iteration`, which ipykernel 7 no longer has: its clicks are never seen.)
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .archive import RESULTS_FILE, StepResults, step_dir
from .display import described
from .errors import RunbookError
from .progress import is_interactive

#: Seconds between two looks at the widget's click while the cell waits.
POLL_SECONDS = 0.1


class ApplyCancelled(RunbookError):
    """The analyst clicked Cancel: nothing changed. Shown as one line (no traceback); Run All stops here."""

    hint = "Run this cell again to decide again (the cells below run after Confirm apply)."

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of the traceback
        return [f"\x1b[1m{self}\x1b[0m"]


class Confirmation:
    """What apply is about to do to which deployment, from which plan and backup, and the analyst's decision."""

    def __init__(
        self,
        url: str,
        changes: Mapping[str, int],
        *,
        plan_sha256: str | None = None,
        backup_sha256: str | None = None,
        applied_at: str | None = None,
    ) -> None:
        self.url = url
        self.changes = dict(changes)
        self.plan_sha256 = plan_sha256
        self.backup_sha256 = backup_sha256
        #: When apply already passed with this plan in this run folder: running it again writes nothing.
        self.applied_at = applied_at
        self.confirmed = False
        self.cancelled = False

    @classmethod
    def for_plan(cls, url: str, plan: Any, backup: Any, run_dir: Path | None = None) -> Confirmation:
        """From the plan's summary (documents per table and action) and the backup record apply checked; with the
        run folder, says when apply already passed there with this plan."""
        changing = plan.migration.changing_actions
        changes = {
            f"{table} documents": sum(n for action, n in actions.items() if action in changing)
            for table, actions in plan.actions.items()
        }
        changes["references to create"] = plan.references
        return cls(url, changes, plan_sha256=plan.plan_sha256, backup_sha256=backup.sha256,
                   applied_at=_applied_at(run_dir, plan.plan_sha256) if run_dir is not None else None)

    def rows(self) -> list[tuple[str, str]]:
        """The confirmation's facts, as label and plain value."""
        verb = "Already applied (running it again writes nothing)" if self.applied_at else "About to change"
        rows = [("Deployment", self.url)]
        rows += [(f"{verb}: {what}", f"{n:,}") for what, n in self.changes.items()]
        if self.applied_at:
            rows.append(("Applied with this plan in this run folder", self.applied_at))
        if self.plan_sha256:
            rows.append(("Plan sha256", self.plan_sha256))
        if self.backup_sha256:
            rows.append(("Backup sha256", self.backup_sha256))
        return rows

    def text(self) -> str:
        """The confirmation as HTML: the same words in JupyterLab and in the archived page."""
        code = {"Plan sha256", "Backup sha256"}
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
            f"{f'<code>{html.escape(v)}</code>' if k in code else html.escape(v)}</td></tr>"
            for k, v in self.rows()
        )
        return f"<table class='runbook-confirmation'>{body}</table>"

    def plain(self) -> str:
        """The confirmation as text: what a notebook shows of the buttons where widgets cannot be rendered."""
        return "\n".join([*(f"{k}: {v}" for k, v in self.rows()), "Waiting for Confirm apply or Cancel."])

    def decision(self, *, by_parameter: bool) -> str:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if self.confirmed:
            how = "by the parameter <code>confirm=True</code>" if by_parameter else "with the button"
            return f"<p><b>Confirmed {how}</b> at {when}.</p>"
        if self.cancelled:
            return f"<p><b>Cancelled</b> at {when}: nothing was changed.</p>"
        return ("<p><b>Not confirmed</b> (<code>confirm=False</code>): apply refuses and nothing changes. "
                "Run headless with <code>confirm=True</code>.</p>")

    async def gate(self, confirm: bool = False) -> bool:
        """Shows the confirmation and returns whether apply may run.

        Headless (papermill) only the `confirm` parameter counts. Interactively `confirm=True` counts too; otherwise
        the cell waits for Confirm apply (returns True) or Cancel (raises ApplyCancelled, which stops Run All)."""
        from IPython.display import HTML, display

        if confirm or not is_interactive():
            self.confirmed = bool(confirm)
            display(HTML(self.text() + self.decision(by_parameter=True)))
            return self.confirmed
        handle = display(self._widget(), display_id=True)
        await self._wait()
        # The decision replaces the buttons with static HTML: the saved notebook holds what was decided.
        handle.update(HTML(self.text() + self.decision(by_parameter=False)))
        if self.cancelled:
            raise ApplyCancelled("Apply cancelled: nothing was changed.")
        return self.confirmed

    def _widget(self) -> Any:
        import ipywidgets as widgets

        confirm = widgets.Button(description="Confirm apply", button_style="danger", icon="check")
        cancel = widgets.Button(description="Cancel", icon="times")
        status = widgets.HTML("Waiting for your decision: nothing changes until you click <b>Confirm apply</b>.")

        def decide(button: Any) -> None:
            self.confirmed, self.cancelled = button is confirm, button is cancel
            confirm.disabled = cancel.disabled = True
            status.value = "Confirmed: applying below." if self.confirmed else "Cancelled."

        confirm.on_click(decide)
        cancel.on_click(decide)
        return described([widgets.HTML(self.text()), widgets.HBox([confirm, cancel]), status], self.plain())

    async def _wait(self) -> None:
        """Yields to the kernel's event loop, which delivers the widget's click, until a button was clicked."""
        while not (self.confirmed or self.cancelled):
            await asyncio.sleep(POLL_SECONDS)


def _applied_at(run_dir: Path, plan_sha256: str) -> str | None:
    """When apply passed in `run_dir` with this plan (its results.json), else None."""
    path = step_dir(run_dir, "03_apply") / RESULTS_FILE
    if not path.is_file():
        return None
    results = StepResults.model_validate_json(path.read_bytes())
    return results.finished_at if results.passed and results.inputs.get("plan_sha256") == plan_sha256 else None
