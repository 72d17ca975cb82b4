"""A run folder's identity and its lock: one random run id per folder, one step at a time in it.

The folder also records which migration it runs (`run.json`'s `migration`): a step is handed its migration and
refuses one the folder does not run.
The run id names the run everywhere (deployment lock, ledger rows, side rows, evidence). It is drawn
once, when the folder's first step starts, and stored in the folder, so two folders that happen to share a
base name (alice/nightly, bob/nightly) never share a run id, and a resumed step keeps its own.
"""

from __future__ import annotations

import fcntl
import functools
import getpass
import inspect
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from helpers.connection import jsonio
from helpers.connection.errors import PreconditionFailed
from helpers.migrations import get

if TYPE_CHECKING:
    from helpers.steps.migration import Migration

RUN_FILE = "run.json"
#: Holds the name and pid of the step at work; not evidence (the manifest leaves it out).
LOCK_FILE = ".runbook.lock"

_P = ParamSpec("_P")
_R = TypeVar("_R")
#: (run folder, thread) pairs holding the step lock, with how many nested steps hold it: a step that calls
#: another locked step must not lock itself out (flock locks one open file, not one caller).
_held: dict[tuple[Path, int], int] = {}
_held_guard = threading.Lock()


def run_id(run_dir: Path) -> str:
    """This folder's run id, drawn and stored on first use (atomically: two first callers agree)."""
    return str(_record(run_dir)["run_id"])


def migration_id(run_dir: Path) -> str:
    """The migration this folder runs, recorded with its run id (a folder runs one migration); reading it never
    writes the folder (a check must not change what it checks). A folder that records none is refused: guessing
    one would judge another migration's evidence by the first migration's rules."""
    recorded = _recorded(Path(run_dir)).get("migration")
    if not recorded:
        raise PreconditionFailed(
            f"The run folder {run_dir} records no migration ({RUN_FILE} is missing or names none).",
            hint="Start the run with `runbook run --migration ID` (or `bind_migration`), which records it; "
            "a folder written by hand must hold run.json with its run id and migration.",
        )
    return str(recorded)


def migration_of(run_dir: Path) -> Migration:
    """The migration a folder records, for what starts from the folder alone (a sealed folder's index.html, the CLI's
    summary of a finished run); a step is handed its migration and checks it with `require_migration`."""
    return get(migration_id(run_dir))


def require_migration(run_dir: Path, migration: Migration) -> None:
    """Refuses a step handed another migration than the one its folder runs (run.json's), or a folder that records
    none: one folder's evidence is judged by one migration's rules."""
    recorded = migration_id(run_dir)
    if recorded != migration.id:
        raise _runs_another(run_dir, recorded, migration.id)


def _runs_another(run_dir: Path, recorded: str, given: str) -> PreconditionFailed:
    return PreconditionFailed(
        f"The run folder {run_dir} runs migration {recorded}, not {given}.",
        hint=f"Use a new run folder for {given} (each run folder holds one migration's evidence).",
    )


def operator_of(run_dir: Path) -> str | None:
    """The operator the folder was made for (`runbook new-run --operator`), or None: then each step names whoever
    runs it (RUNBOOK_OPERATOR or the user)."""
    return _recorded(run_dir).get("operator") or None


def operator_for(run_dir: Path) -> str:
    """Who a step in this folder runs as: the folder's operator (`runbook new-run --operator`), else RUNBOOK_OPERATOR,
    else the user. The same name then holds the lock, signs the ledger rows and heads the pages."""
    return operator_of(run_dir) or os.environ.get("RUNBOOK_OPERATOR") or getpass.getuser()


def holds_its_notebooks(run_dir: Path) -> bool:
    """Whether `runbook new-run` made the folder with its step notebooks, which then run where they are (a folder
    `runbook run` made runs the templates, its step folders hold the executed copies)."""
    return bool(_recorded(run_dir).get("prepared"))


def create_run(run_dir: Path, migration: str, operator: str) -> dict[str, str]:
    """Draws the run id of a folder made with its step notebooks (`runbook new-run`), with its migration and operator."""
    return _record(run_dir, migration, {"operator": operator, "prepared": True})


def _recorded(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    return dict(jsonio.loads(path.read_bytes())) if path.exists() else {}


def bind_migration(run_dir: Path, migration: str) -> Migration:
    """Records that this folder runs `migration` (on its first step), or refuses when it already runs another."""

    declared = get(migration)
    recorded = _record(run_dir, declared.id)["migration"]
    if recorded != declared.id:
        raise _runs_another(run_dir, recorded, declared.id)
    return declared


def _record(run_dir: Path, migration: str | None = None, more: dict[str, Any] | None = None) -> dict[str, str]:
    """run.json, drawn on first use; `migration` is recorded when the folder names none yet (a run id drawn
    before the migration was bound keeps its id); `more`: what else the run records there (its operator)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"run_id": f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}", **({"migration": migration} if migration else {})}
        record.update(more or {})
        draft = path.with_name(f".{RUN_FILE}.{secrets.token_hex(4)}")
        draft.write_bytes(jsonio.dumps(record))
        try:
            os.link(draft, path)  # appears whole or not at all; a second caller reads the first one's id
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    record = _recorded(Path(run_dir))
    if migration and not record.get("migration"):
        draft = path.with_name(f".{RUN_FILE}.{secrets.token_hex(4)}")
        draft.write_bytes(jsonio.dumps({**record, "migration": migration}))
        os.replace(draft, path)  # atomic: a reader sees the run id with or without the migration, never a torn file
        record = _recorded(Path(run_dir))
    return record


@contextmanager
def step_lock(run_dir: Path, step: str) -> Iterator[None]:
    """One step at a time per run folder, on this machine. The kernel frees the lock when a process dies,
    so a killed step never leaves the folder locked."""
    folder = Path(run_dir).resolve()
    holder = (folder, threading.get_ident())
    with _held_guard:
        if holder in _held:
            _held[holder] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[holder] -= 1
        return
    path = folder / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            running = handle.read().strip() or "another step"
            raise PreconditionFailed(
                f"{running} is running in {run_dir} right now; {step} was not started.",
                hint="Wait for it to finish, or use a new run folder for a separate run.",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"step {step} (pid {os.getpid()})")
        handle.flush()
        with _held_guard:
            _held[holder] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[holder]
            handle.seek(0)
            handle.truncate()


def locked_step(step: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Runs the decorated step function under `step_lock` of the run folder given as its `run_dir` argument."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            run_dir = signature.bind(*args, **kwargs).arguments["run_dir"]
            with step_lock(Path(run_dir), step):
                return function(*args, **kwargs)

        return locked

    return decorate


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One `runbook run` at a time per run folder, held by the runner for the whole run. It locks the folder
    itself (a directory can be flocked), not the step lock file: the steps take that one in the notebook
    kernel, another process. Freed by the kernel when the runner dies."""
    fd = os.open(Path(run_dir), os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreconditionFailed(
                f"Another `runbook run` is using {run_dir} right now; nothing was started.",
                hint="Wait for it to finish, or start a separate run in a new run folder.",
            ) from None
        yield
    finally:
        os.close(fd)
