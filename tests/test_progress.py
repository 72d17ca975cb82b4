"""Progress: widgets only in a Jupyter frontend; one readable text line per refresh under papermill."""

from __future__ import annotations

import pytest

from helpers.progress import is_interactive, progress


def test_headless_progress_writes_whole_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    assert sum(progress(range(1000), desc="scenes", total=1000)) == sum(range(1000))
    out = capsys.readouterr().out
    assert "\r" not in out and out.endswith("\n")
    assert "scenes" in out.splitlines()[-1] and "1000/1000" in out.splitlines()[-1]


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
