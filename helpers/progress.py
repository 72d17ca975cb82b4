"""Progress for long work: a tqdm widget in a Jupyter frontend, plain text lines under papermill and in
terminals (an executed notebook then holds a readable log instead of a frozen 0% widget)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO


def is_interactive() -> bool:
    """True in a Jupyter frontend that can render widgets; False under papermill/nbclient (headless).

    Jupyter Server names the notebook in JPY_SESSION_NAME for the kernels it starts (VS Code sets VSCODE_PID);
    papermill's kernels get neither (JPY_PARENT_PID is set for both, so it proves nothing).
    """
    return any(name in os.environ for name in ("JPY_SESSION_NAME", "VSCODE_PID")) and not os.environ.get("RUNBOOK_HEADLESS")


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into one line per refresh."""

    def __init__(self, sink: TextIO) -> None:
        self.sink = sink

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.sink.write(line + "\n")

    def flush(self) -> None:
        self.sink.flush()


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
        from tqdm.auto import tqdm

        return tqdm(iterable, mininterval=0.5, **kwargs)
    from tqdm import tqdm as text_tqdm

    return text_tqdm(iterable, file=_Lines(sys.stdout), mininterval=5.0, ascii=True, ncols=100, **kwargs)
