"""Progress: widgets only in a Jupyter frontend; one readable text line per refresh under papermill."""

from __future__ import annotations

import pytest

from helpers.notebook_ui.progress import (
    MIN_SECONDS_FOR_RATE,
    is_interactive,
    progress,
    text_line,
)


def test_headless_progress_writes_whole_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    assert sum(progress(range(1000), desc="scenes", total=1000)) == sum(range(1000))
    out = capsys.readouterr().out
    assert "\r" not in out and out.endswith("\n")
    assert "scenes" in out.splitlines()[-1] and "1,000/1,000" in out.splitlines()[-1]


@pytest.mark.parametrize("total", [None, 0, 7])
def test_short_headless_work_prints_one_final_line_without_noise(
    total: int | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    bar = progress(desc="sessions (ids)", total=total)
    assert capsys.readouterr().out == ""  # nothing at the start: no 0% line before the 100% one
    bar.update(total or 0)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessions (ids): ")
    assert "?" not in lines[0] and "/s" not in lines[0] and "%|" not in lines[0]


def test_rate_only_once_it_is_measured_over_a_second() -> None:
    assert text_line("apply", 5, 10, MIN_SECONDS_FOR_RATE / 2, "doc") == "apply: 5/10 doc (50%) in 00:00"
    assert text_line("apply", 5, 10, 2.0, "doc") == "apply: 5/10 doc (50%) in 00:02, 2 doc/s"
    assert text_line("scenes", 0, None, 30.0, "doc") == "scenes: 0 doc in 00:30"
    assert text_line("download", 2048, 4096, 0.1, "B", unit_scale=True) == "download: 2.00k/4.00k B (50%) in 00:00"


def test_silent_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress(desc="apply", total=10, show=False)
    bar.update(10)
    bar.close()
    assert capsys.readouterr().out == ""


def test_interactive_only_in_a_jupyter_frontend(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JPY_SESSION_NAME", "VSCODE_PID", "RUNBOOK_HEADLESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JPY_PARENT_PID", "1")  # papermill's kernels have it too: not a frontend
    assert not is_interactive()
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/03_apply.ipynb")
    assert is_interactive()
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    assert not is_interactive()


def test_long_headless_work_prints_a_line_per_interval_with_its_rate(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    bar = progress(desc="apply", total=100)
    now = [bar.start_t]
    bar._time = lambda: now[0]  # tqdm's own clock, advanced by hand: no waiting, no timing in the test
    for seconds, done in [(6, 30), (1, 10), (6, 60)]:
        now[0] += seconds
        bar.update(done)
    bar.close()
    assert capsys.readouterr().out.splitlines() == [
        "apply: 30/100 doc (30%) in 00:06, 5 doc/s",  # nothing before the first interval: no 0% line
        "apply: 100/100 doc (100%) in 00:13, 7 doc/s",  # the closing redraw repeats it: printed once
    ]


class Handle:
    def __init__(self, shown: list) -> None:
        self.shown = shown

    def update(self, obj: object, **kwargs: object) -> None:
        self.shown.append(obj)


@pytest.mark.parametrize("done", [1000, 400])
def test_an_interactive_bar_ends_as_its_final_text_line(done: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The widget's saved form is its first state (a bar at 0 %): closed, its display becomes the final line,
    which says how far the work got."""
    monkeypatch.delenv("RUNBOOK_HEADLESS", raising=False)
    monkeypatch.setenv("JPY_SESSION_NAME", "03_apply.ipynb")
    shown: list = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj) or Handle(shown))
    bar = progress(desc="apply", total=1000)
    bar.update(done)
    bar.close()
    widget, final = shown
    assert type(widget).__name__ == "TqdmHBox"  # the live bar while the work lasts
    assert final["text/plain"].startswith(f"apply: {done:,}/1,000 doc ({done // 10}%) in 00:0")
