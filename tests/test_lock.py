"""A lock that holds: one run id per run folder, a lease that stops apply when lost and is renewed while
batches are in flight, one step at a time per run folder, one `runbook run` per folder, no apply on a plan
another run's apply made stale, and no notebook kernel left behind by a killed runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.connection import errors
from helpers.connection.calls import (
    acquire_lock,
    apply_batch,
    count_side_rows,
    read_ledger,
    release_lock,
)
from helpers.connection.transport import ConvexTransport
from helpers.devtools.local_deployment import LocalDeployment
from helpers.evidence.archive import MANIFEST_FILE
from helpers.evidence.run_folder import run_id, step_lock
from helpers.migrations.m001_s3_asset_tracking import ASSET_REFERENCES
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m001_s3_asset_tracking.plan_line import CHANGING_ACTIONS
from helpers.runner import run_migration
from helpers.steps import names
from helpers.steps.apply import CHECKPOINT_FILE, ApplySettings, _item, apply_dir, apply_plan
from helpers.steps.backup import take_backup
from helpers.steps.plan import build_plan, iter_plan_lines
from helpers.steps.rollback import execute_rollback, plan_rollback
from helpers.steps.verify import verify
from tests import checkpoints
from tests.flow import prepare, seed

REPO = Path(__file__).resolve().parent.parent
SCENES = 60
#: Apply in a child process, so the test can pause, kill or race it. argv: url, run_dir, lease_ms.
APPLY_SCRIPT = """
import sys
from pathlib import Path
from helpers.migrations import get
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.connection.transport import ConvexTransport
apply_plan(ConvexTransport(sys.argv[1]), Path(sys.argv[2]), get("001_s3_asset_tracking"), confirm=True,
           settings=ApplySettings(batch_size=3, concurrency=1, show_progress=False, lease_ms=int(sys.argv[3])))
"""
#: Holds a lock of a run folder until its stdin closes. argv: kind (step|run), run_dir.
HOLD_SCRIPT = """
import sys
from pathlib import Path
from helpers.evidence.run_folder import run_lock, step_lock
from helpers.steps import names
lock = step_lock(Path(sys.argv[2]), names.BACKUP) if sys.argv[1] == "step" else run_lock(Path(sys.argv[2]))
with lock:
    print("held", flush=True)
    sys.stdin.read()
"""


def slow_applies(deploy_key: str, **options: object) -> LocalDeployment:
    """A deployment whose every applyBatch is delayed, so a test can act while apply is mid-batch."""
    return LocalDeployment(deploy_key=deploy_key, fault_rate=1.0, fault_kinds=("delay",), fault_paths=("migration:applyBatch",),
                           **options)  # type: ignore[arg-type]


def start_apply(url: str, run_dir: Path, lease_ms: int = 120_000) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", APPLY_SCRIPT, url, str(run_dir), str(lease_ms)], cwd=REPO, stderr=subprocess.PIPE)


def checkpoint_lines(run_dir: Path) -> int:
    return checkpoints.count(apply_dir(run_dir) / CHECKPOINT_FILE)


def wait_for(condition, what: str, child: subprocess.Popen[bytes] | None = None, limit: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + limit
    while not condition():
        assert child is None or child.poll() is None, f"the child ended before {what}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


@pytest.fixture
def held(tmp_path: Path):  # noqa: ANN201
    """Another process holding a lock of a run folder: held(kind, run_dir)."""
    children: list[subprocess.Popen[bytes]] = []

    def hold(kind: str, run_dir: Path) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, kind, str(run_dir)], cwd=REPO,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline() == b"held\n"
        children.append(child)
        return child

    yield hold
    for child in children:
        child.communicate()


def test_run_id_is_drawn_once_per_folder_and_differs_between_same_named_folders(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice" / "migration-001", tmp_path / "bob" / "migration-001"
    assert run_id(alice) == run_id(alice) != run_id(bob)
    assert alice.name not in run_id(alice)


def test_callers_racing_to_draw_the_run_id_all_read_the_one_stored(tmp_path: Path) -> None:
    for attempt in range(20):
        folder = tmp_path / f"race-{attempt}"
        seen: list[str] = []
        threads = [threading.Thread(target=lambda seen=seen, folder=folder: seen.append(run_id(folder))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 8 and len(set(seen)) == 1
        assert sorted(p.name for p in folder.iterdir()) == ["run.json"]


UNREACHABLE = "http://127.0.0.1:9"
STEP_CALLS = {
    "take_backup": lambda t, d: take_backup(t, d, M001, show_progress=False),
    "build_plan": lambda t, d: build_plan(t, d, M001, show_progress=False),
    "apply_plan": lambda t, d: apply_plan(t, d, M001, confirm=True, settings=ApplySettings(show_progress=False)),
    "verify": lambda t, d: verify(t, d, M001, show_progress=False),
    "execute_rollback": lambda t, d: execute_rollback(t, d, M001, "strip"),
}


@pytest.mark.parametrize("step", sorted(STEP_CALLS))
def test_every_step_is_refused_while_another_step_holds_the_run_folder(step: str, run_dir: Path, held) -> None:  # noqa: ANN001
    held("step", run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    with ConvexTransport(UNREACHABLE, deploy_key="unused") as transport, \
            pytest.raises(errors.PreconditionFailed, match=r"step 01_backup_snapshot \(pid \d+\) is running"):
        STEP_CALLS[step](transport, run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == before  # refused before it wrote anything


def test_a_step_may_call_another_locked_step_of_its_own_folder(run_dir: Path) -> None:
    with step_lock(run_dir, "outer"), step_lock(run_dir, "inner"):
        pass
    with step_lock(run_dir, "again"):  # and the lock was released
        pass


def test_second_runbook_run_on_one_folder_is_refused_at_once(run_dir: Path, held, shared_deployment) -> None:  # noqa: ANN001
    held("run", run_dir)
    with pytest.raises(errors.PreconditionFailed, match="Another `runbook run` is using"):
        run_migration(shared_deployment.url, run_dir=run_dir, steps=[names.VERIFY])
    assert not (run_dir / MANIFEST_FILE).exists() and not (run_dir / names.VERIFY).exists()


def test_same_named_folders_under_different_parents_do_not_share_the_deployment_lock(deploy_key: str, tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice" / "migration-001", tmp_path / "bob" / "migration-001"
    with slow_applies(deploy_key) as slow, slow.transport() as transport:
        seed(transport, SCENES)
        prepare(transport, alice)
        prepare(transport, bob)
        child = start_apply(slow.url, alice)
        try:
            wait_for(lambda: checkpoint_lines(alice) >= 1, "alice's first batch", child)
            with pytest.raises(errors.PreconditionFailed, match=f"Another run holds the deployment lock: run {run_id(alice)}"):
                apply_plan(transport, bob, M001, confirm=True, settings=ApplySettings(show_progress=False))
        finally:
            child.kill()
            child.communicate()


def test_apply_after_another_runs_apply_since_the_backup_is_refused(deploy_key: str, tmp_path: Path) -> None:
    first, stale, fresh = tmp_path / "first", tmp_path / "stale", tmp_path / "fresh"
    with LocalDeployment(deploy_key=deploy_key) as deployment, deployment.transport() as transport:
        seed(transport, SCENES)
        prepare(transport, first)
        prepare(transport, stale)
        assert apply_plan(transport, first, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
        with pytest.raises(errors.PreconditionFailed, match=f"Run {run_id(first)} .* after this run's backup") as refused:
            apply_plan(transport, stale, M001, confirm=True, settings=ApplySettings(show_progress=False))
        assert "new backup and make a new plan in a new run folder" in str(refused.value)
        assert not apply_dir(stale).joinpath(CHECKPOINT_FILE).exists()
        assert [row["runId"] for row in read_ledger(transport, M001.id) if row["step"] == names.APPLY] == [run_id(first)]
        prepare(transport, fresh)  # a backup taken after that apply is not stale
        assert apply_plan(transport, fresh, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed


def test_rollback_takes_the_migration_lock_and_is_refused_while_another_run_holds_it(deploy_key: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with LocalDeployment(deploy_key=deploy_key) as deployment, deployment.transport() as transport:
        seed(transport, SCENES)
        prepare(transport, run_dir)
        assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
        plan_rollback(transport, run_dir, M001, "strip")
        references = count_side_rows(transport, ASSET_REFERENCES, M001.id, run_id(run_dir))
        assert sum(references.values()) > 0
        assert acquire_lock(transport, M001.id, "the-other-run", "bob", 600_000)["acquired"]
        with pytest.raises(errors.PreconditionFailed, match="run the-other-run by bob"):
            execute_rollback(transport, run_dir, M001, "strip")
        assert count_side_rows(transport, ASSET_REFERENCES, M001.id, run_id(run_dir)) == references  # nothing was sent
        release_lock(transport, "the-other-run")
        assert not execute_rollback(transport, run_dir, M001, "strip").errors
        assert sum(count_side_rows(transport, ASSET_REFERENCES, M001.id, run_id(run_dir)).values()) == 0
        [row] = [r for r in read_ledger(transport, M001.id) if r["step"] == names.ROLLBACK]
        assert row["runId"] == run_id(run_dir) and row["status"] == "passed" and row["finishedAt"] >= row["startedAt"]
        assert acquire_lock(transport, M001.id, "after", "carol", 1_000)["acquired"]  # rollback released it


def test_apply_planned_before_another_runs_rollback_is_refused_as_stale(deploy_key: str, tmp_path: Path) -> None:
    first, stale = tmp_path / "first", tmp_path / "stale"
    with LocalDeployment(deploy_key=deploy_key) as deployment, deployment.transport() as transport:
        seed(transport, SCENES)
        prepare(transport, first)
        assert apply_plan(transport, first, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
        prepare(transport, stale)  # planned on the migrated state, before the rollback below
        plan_rollback(transport, first, M001, "strip")
        execute_rollback(transport, first, M001, "strip")
        with pytest.raises(errors.PreconditionFailed, match=f"Run {run_id(first)} .* rolled back this migration"):
            apply_plan(transport, stale, M001, confirm=True, settings=ApplySettings(show_progress=False))


def test_a_paused_apply_that_lost_its_lease_stops_and_sends_nothing_more(deploy_key: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "paused"
    with slow_applies(deploy_key) as slow, slow.transport() as transport:
        seed(transport, SCENES)
        prepare(transport, run_dir)
        child = start_apply(slow.url, run_dir, lease_ms=2_000)
        paused_run = run_id(run_dir)
        try:
            wait_for(lambda: checkpoint_lines(run_dir) >= 2, "two batches", child)
            child.send_signal(signal.SIGSTOP)
            wait_for(lambda: acquire_lock(transport, M001.id, "the-other-run", "bob", 600_000)["acquired"], "the lease run out")
            written = count_side_rows(transport, ASSET_REFERENCES, M001.id, paused_run)
            lines = checkpoint_lines(run_dir)
            child.send_signal(signal.SIGCONT)
            _, stderr = child.communicate(timeout=120)
        finally:
            child.kill()
        assert child.returncode != 0
        assert b"LeaseLost" in stderr and b"lease lost" in stderr, stderr.decode()[-2000:]
        assert count_side_rows(transport, ASSET_REFERENCES, M001.id, paused_run) == written  # nothing sent after the pause
        assert checkpoint_lines(run_dir) <= lines + 1  # at most the batch that was in flight when it was paused
        release_lock(transport, "the-other-run")
        resumed = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False))  # the checkpoint is valid
        assert resumed.passed and resumed.batches_resumed >= 2


def test_the_lease_is_renewed_while_a_slow_batch_is_in_flight(deploy_key: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "slow"
    taken: list[bool] = []
    with slow_applies(deploy_key, fault_seed=7) as slow, slow.transport() as transport:
        seed(transport, 20)
        prepare(transport, run_dir)
        done = threading.Event()

        def contender() -> None:
            with slow.transport() as own:
                while not done.is_set():
                    taken.append(acquire_lock(own, M001.id, "contender", "carol", 60_000)["acquired"])
                    time.sleep(0.05)

        thread = threading.Thread(target=contender)
        thread.start()
        try:
            # Batches of one take 200–1000 ms each (the injected delay, seed 7: three take over 800 ms): longer than the 700 ms lease.
            summary = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=1, concurrency=1, lease_ms=700, show_progress=False))
        finally:
            done.set()
            thread.join()
        # Had the lease run out during a batch, the contender would have taken the lock and apply would have
        # stopped with LeaseLost; it passed, while the contender kept trying.
        assert summary.passed and summary.batches_sent >= 5 and len(taken) >= 20


def test_a_killed_runner_leaves_no_kernel_behind(deploy_key: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with slow_applies(deploy_key) as slow, slow.transport() as transport:
        seed(transport, SCENES)
        prepare(transport, run_dir)
        runner = subprocess.Popen(
            [sys.executable, "-m", "helpers.cli", "run", "--url", slow.url, "--confirm", "--run-dir", str(run_dir),
             "--steps", names.APPLY, "-p", "03_apply.batch_size=2", "-p", "03_apply.concurrency=1"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        kernels: list[int] = []
        try:
            wait_for(lambda: checkpoint_lines(run_dir) >= 1, "the kernel's first batch", runner)
            with pytest.raises(errors.PreconditionFailed, match="Another `runbook run`"):
                run_migration(slow.url, run_dir=run_dir, steps=[names.VERIFY])
            kernels = children(runner.pid)
            assert kernels, "the runner has no kernel process"
            for pid in kernels:  # paused, so only the OS can end it (ipykernel's own parent poller cannot run)
                os.kill(pid, signal.SIGSTOP)
            runner.send_signal(signal.SIGKILL)
            runner.wait()
            wait_for(lambda: not any(alive(pid) for pid in kernels), "the kernel die", limit=30)
        finally:
            runner.kill()
            for pid in kernels:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        lines = checkpoint_lines(run_dir)
        time.sleep(1.5)  # the server finishes the batch that was in flight (its injected delay is at most 1 s)
        written = count_side_rows(transport, ASSET_REFERENCES, M001.id, run_id(run_dir))
        time.sleep(2)  # a surviving kernel would have sent more batches by now
        assert count_side_rows(transport, ASSET_REFERENCES, M001.id, run_id(run_dir)) == written
        assert checkpoint_lines(run_dir) == lines


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_deployment_refuses_a_batch_from_a_run_that_does_not_hold_the_lock(transport: ConvexTransport, run_dir: Path) -> None:
    """A request still on its way when the lease ran out (a retry, a paused process) reaches applyBatch after
    another run took the lock over: the deployment refuses it, whatever the client believes."""
    seed(transport, SCENES)
    prepare(transport, run_dir)
    items = [_item(line) for line in iter_plan_lines(run_dir) if line["action"] in CHANGING_ACTIONS][:5]
    assert acquire_lock(transport, M001.id, "the-other-run", "bob", 600_000)["acquired"]
    with pytest.raises(errors.LeaseLost, match="the migration lock is held by run the-other-run"):
        apply_batch(transport, M001.id, run_id(run_dir), items, side_rows=M001.side_rows)
    assert sum(count_side_rows(transport, ASSET_REFERENCES, M001.id, run_id(run_dir)).values()) == 0
    assert apply_batch(transport, M001.id, "the-other-run", items, side_rows=M001.side_rows)[0]["outcome"] == "applied"  # the holder may write
    release_lock(transport, "the-other-run")
    assert {r["outcome"] for r in apply_batch(transport, M001.id, run_id(run_dir), items, side_rows=M001.side_rows)} == {"already_applied"}  # no holder: not refused
