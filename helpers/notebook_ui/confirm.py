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

import ipywidgets as widgets
from IPython import display as ipython  # looked up when called: a test may stand in for it

from helpers.connection.errors import RunbookError
from helpers.evidence import checkpoint_file
from helpers.notebook_ui.display import described
from helpers.notebook_ui.progress import is_interactive

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
        already_applied: bool = False,
    ) -> None:
        self.url = url
        self.changes = dict(changes)
        self.plan_sha256 = plan_sha256
        self.backup_sha256 = backup_sha256
        #: Apply already sent this run folder's whole plan: running it again only re-checks, and writes nothing.
        self.already_applied = already_applied
        self.confirmed = False
        self.cancelled = False

    @classmethod
    def for_plan(cls, url: str, plan: Any, backup: Any, run_dir: Path | None = None) -> Confirmation:
        """From the plan's summary (documents per table and action) and the backup record apply checked; with the
        run folder, says whether apply already sent that plan whole."""
        changing = plan.migration.changing_actions
        changes = {
            f"{table} documents": sum(n for action, n in actions.items() if action in changing)
            for table, actions in plan.actions.items()
        }
        side = plan.migration.side_rows
        if side is not None:
            changes[f"{side.label} to create"] = plan.references
        return cls(url, changes, plan_sha256=plan.plan_sha256, backup_sha256=backup.sha256,
                   already_applied=run_dir is not None and _sent_whole(run_dir))

    def rows(self) -> list[tuple[str, str]]:
        """The confirmation's facts, as label and plain value."""
        verb = "Already applied (running it again re-checks and writes nothing)" if self.already_applied else "About to change"
        rows = [("Deployment", self.url)]
        rows += [(f"{verb}: {what}", f"{n:,}") for what, n in self.changes.items()]
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

        if confirm or not is_interactive():
            self.confirmed = bool(confirm)
            ipython.display(ipython.HTML(self.text() + self.decision(by_parameter=True)))
            return self.confirmed
        handle = ipython.display(self._widget(), display_id=True)
        await self._wait()
        # The decision replaces the buttons with static HTML: the saved notebook holds what was decided.
        handle.update(ipython.HTML(self.text() + self.decision(by_parameter=False)))
        if self.cancelled:
            raise ApplyCancelled("Apply cancelled: nothing was changed.")
        return self.confirmed

    def _widget(self) -> Any:

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


def _sent_whole(run_dir: Path) -> bool:
    """Whether apply sent the folder's whole plan, as apply itself tells a re-check: its checkpoint ends with the
    complete mark, or an earlier complete checkpoint was kept (`checkpoint.1.jsonl.zst`). Reads the file's end only."""
    folder = Path(run_dir) / "apply"
    return checkpoint_file.has_kept(folder) or checkpoint_file.ends_complete(checkpoint_file.checkpoint_path(folder))
