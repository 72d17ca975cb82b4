"""A run folder's identity and its lock: one random run id per folder, one step at a time in it.

The run id names the run everywhere (deployment lock, ledger rows, asset references, evidence). It is drawn
once, when the folder's first step starts, and stored in the folder, so two folders that happen to share a
base name (alice/migration-001, bob/migration-001) never share a run id, and a resumed step keeps its own.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from . import jsonio
from .errors import PreconditionFailed

RUN_FILE = "run.json"
#: Holds the name and pid of the step at work; not evidence (the manifest leaves it out).
LOCK_FILE = ".runbook.lock"


def run_id(run_dir: Path) -> str:
    """This folder's run id, drawn and stored on first use (atomically: two first callers agree)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"run_id": f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"}
        try:
            with path.open("xb") as sink:  # exclusive create: a second caller reads the first one's id
                sink.write(jsonio.dumps(record))
        except FileExistsError:
            pass
    return str(jsonio.loads(path.read_bytes())["run_id"])


@contextmanager
def step_lock(run_dir: Path, step: str) -> Iterator[None]:
    """One step at a time per run folder, on this machine. The kernel frees the lock when a process dies,
    so a killed step never leaves the folder locked."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another step"
            raise PreconditionFailed(
                f"{holder} is running in {run_dir} right now; {step} was not started.",
                hint="Wait for it to finish, or use a new run folder for a separate run.",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"step {step} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
