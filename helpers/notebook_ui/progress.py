"""Progress for long work: a tqdm widget in a Jupyter frontend, plain text lines under papermill and in
terminals. Either way the cell keeps one final text line (what, how many, how long): the widget turns into it
when the work ends, so a saved notebook holds that line instead of a bar frozen at 0 % (a widget's saved form)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from IPython import display as ipython  # looked up when called: a test may stand in for it
from tqdm import tqdm
from tqdm.notebook import tqdm as notebook_tqdm


def is_interactive() -> bool:
    """True in a Jupyter frontend that can render widgets; False under papermill/nbclient (headless).

    Jupyter Server names the notebook in JPY_SESSION_NAME for the kernels it starts (VS Code sets VSCODE_PID);
    papermill's kernels get neither (JPY_PARENT_PID is set for both, so it proves nothing).
    """
    return any(name in os.environ for name in ("JPY_SESSION_NAME", "VSCODE_PID")) and not os.environ.get("RUNBOOK_HEADLESS")


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into one line per refresh (a repeat is dropped:
    the closing redraw of a bar that just printed 100%)."""

    def __init__(self, sink: TextIO) -> None:
        self.sink = sink
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            self.sink.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.sink.flush()


#: A rate measured over less than this is noise (``1.24doc/s`` after 0.8 s of start-up): not printed.
MIN_SECONDS_FOR_RATE = 1.0


def text_line(desc: str, n: float, total: float | None, elapsed: float, unit: str, unit_scale: bool = False) -> str:
    """One log line of a bar: what, how many of how many, how long, and the rate once it means something."""

    def amount(value: float) -> str:
        return tqdm.format_sizeof(value, divisor=1024) if unit_scale else f"{int(value):,}"

    done = f"{amount(n)}/{amount(total)} {unit} ({100 * n / total:.0f}%)" if total else f"{amount(n)} {unit}"
    line = f"{desc}: {done} in {tqdm.format_interval(elapsed)}"
    if elapsed >= MIN_SECONDS_FOR_RATE and n:
        line += f", {amount(n / elapsed)} {unit}/s"
    return line


def _text_tqdm() -> type:

    class TextProgress(tqdm):
        """Plain lines for logs and executed notebooks: nothing at the start (no ``0%`` line), a line per
        refresh while the work lasts, and always one final line."""

        def __str__(self) -> str:
            d = self.format_dict
            return text_line(d["prefix"] or "", d["n"], d["total"], d["elapsed"], d["unit"], bool(d["unit_scale"]))

        def close(self) -> None:
            never_shown = not self.disable and self.last_print_t < self.start_t + self.delay
            super().close()
            if never_shown:
                self.fp.write(str(self) + "\n")

    return TextProgress


def _widget_tqdm() -> type:

    class WidgetProgress(notebook_tqdm):
        """The notebook bar while the work lasts; closed, its display becomes the final text line."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, display=False, **kwargs)
            self.handle = None if self.disable else ipython.display(self.container, display_id=True)
            self.displayed = True

        def close(self) -> None:
            if self.disable or self.handle is None:
                return super().close()
            d = self.format_dict
            line = text_line(d["prefix"] or "", d["n"], d["total"], d["elapsed"], d["unit"], bool(d["unit_scale"]))
            super().close()
            self.handle.update({"text/plain": line}, raw=True)

    return WidgetProgress


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "doc",
    initial: int = 0,
    unit_scale: bool = False,
    show: bool = True,
) -> Any:
    """A tqdm bar (iterate through it, or call .update/.close); silent when show is False."""
    kwargs = dict(desc=desc, total=total, unit=unit, initial=initial, unit_scale=unit_scale, disable=not show)
    if is_interactive():
        return _widget_tqdm()(iterable, mininterval=0.5, **kwargs)
    interval = 5.0
    return _text_tqdm()(iterable, file=_Lines(sys.stdout), mininterval=interval, delay=interval, **kwargs)
