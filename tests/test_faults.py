"""The fault suite (make test-faults): transient failures, kills, dropped responses, re-runs, torn checkpoints,
a concurrent writer, two applies, bad corpora. After every fault, the data equals a clean run's and so do the
statistics, wherever they are read: apply's results.json, the ledger row and the runner's (CLI) summary.
Loopback only; each test bounded by pytest-timeout."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.connection import errors
from helpers.connection.calls import iter_documents, read_ledger
from helpers.connection.transport import ConvexTransport
from helpers.devtools.local_deployment import LocalDeployment
from helpers.evidence.archive import StepResults, write_step_results
from helpers.evidence.checkpoint_file import iter_entries
from helpers.evidence.run_folder import run_id
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m001_s3_asset_tracking.fields import legacy_part
from helpers.migrations.m001_s3_asset_tracking.plan_line import CHANGING_ACTIONS
from helpers.runner import statistics
from helpers.steps import names
from helpers.steps.apply import CHECKPOINT_FILE, ApplySettings, ApplySummary, apply_dir, apply_plan
from helpers.steps.plan import iter_plan_lines
from helpers.steps.verify import verify
from tests import checkpoints
from tests.corpus import bad_documents
from tests.flow import comparable, migration_references, prepare, seed, state

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parent.parent
FAULT_SCENES = 300
KILL_TRIALS = 10


def slow_deployment(deploy_key: str, rate: float = 1.0, seed: int = 1) -> LocalDeployment:
    """A deployment whose applyBatch calls are delayed 200–1000 ms (at the given rate): time to kill or race."""
    return LocalDeployment(deploy_key=deploy_key, fault_rate=rate, fault_kinds=("delay",),
                           fault_paths=("migration:applyBatch",), fault_seed=seed)


def reported(transport: ConvexTransport, run_dir: Path, summary: ApplySummary) -> dict[str, tuple]:
    """The statistics as each reader sees them: apply's results.json (written as notebook 03 writes it), the
    run's ledger row in the deployment, and the runner's summary that `runbook run` prints."""
    write_step_results(run_dir, names.APPLY, StepResults(step=names.APPLY, status=summary.status, summary=summary.model_dump(mode="json")))
    results = StepResults.model_validate_json((run_dir / names.APPLY / "results.json").read_bytes()).summary
    row = next(r for r in read_ledger(transport, M001.id) if r["runId"] == run_id(run_dir) and r["step"] == names.APPLY)
    cli = statistics(run_dir, M001, wall_seconds=0)
    assert cli is not None and not cli.planned
    return {
        "results.json": (results["migrated"]["scenes"], results["migrated"]["videoSessions"], results["references_created"],
                         results["already_applied"], results["conflicts"], len(results["errors"])),
        "ledger": tuple(int(row["counts"][k]) for k in ("scenesMigrated", "sessionsMigrated", "referencesCreated",
                                                         "alreadyApplied", "conflicts", "errors")),
        "cli": (cli.migrated["scenes"], cli.migrated["sessions"], cli.side_rows["asset references"], None, None, len(cli.errors)),
    }


def assert_reported_like(clean: dict[str, tuple], transport: ConvexTransport, run_dir: Path, summary: ApplySummary, what: str) -> None:
    assert reported(transport, run_dir, summary) == clean, what


@pytest.fixture(scope="module")
def clean_run(deploy_key: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, tuple]]:
    """The state and the statistics an uninterrupted, fault-free apply produces from the same sample data."""
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    with LocalDeployment(deploy_key=deploy_key) as clean, clean.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, run_dir)
        summary = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False))
        assert summary.passed and summary.statistics_confirmed and summary.migrated["scenes"] > 0
        figures = reported(transport, run_dir, summary)
        assert figures["results.json"] == figures["ledger"]
        assert [f for f in figures["cli"] if f is not None] == [figures["ledger"][i] for i in (0, 1, 2, 5)]
        return comparable(state(transport)), figures


@pytest.fixture(scope="module")
def clean_state(clean_run: tuple[dict, dict[str, tuple]]) -> dict:
    return clean_run[0]


@pytest.fixture(scope="module")
def clean_statistics(clean_run: tuple[dict, dict[str, tuple]]) -> dict[str, tuple]:
    return clean_run[1]


def assert_no_duplicate_references(transport) -> None:  # noqa: ANN001
    keys = [(r["entityId"], r["assetType"]) for r in migration_references(transport)]
    assert len(keys) == len(set(keys))


def test_transient_failures_during_apply_end_like_a_clean_run(deploy_key: str, tmp_path: Path, clean_state: dict,
                                                              clean_statistics: dict[str, tuple]) -> None:
    with LocalDeployment(
        deploy_key=deploy_key, fault_rate=0.1, fault_kinds=("5xx", "drop", "delay"), fault_seed=11,
        fault_paths=("migration:applyBatch", "migrationRuns:"),
    ) as flaky, flaky.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, tmp_path / "run")
        summary = apply_plan(transport, tmp_path / "run", M001, confirm=True, settings=ApplySettings(batch_size=10, show_progress=False))
        assert summary.passed and summary.round_trips > summary.batches_sent  # some requests were retried
        assert comparable(state(transport)) == clean_state
        assert_no_duplicate_references(transport)
        assert_reported_like(clean_statistics, transport, tmp_path / "run", summary, "transient failures")


def test_dropped_responses_on_apply_report_like_a_clean_run(deploy_key: str, tmp_path: Path, clean_state: dict,
                                                            clean_statistics: dict[str, tuple]) -> None:
    """The deployment applies a batch, then the connection drops: the re-sent batch answers already_applied,
    yet those documents and references were written by this run and are counted so."""
    run_dir = tmp_path / "run"
    with LocalDeployment(deploy_key=deploy_key, fault_rate=0.3, fault_kinds=("drop",), fault_paths=("migration:applyBatch",),
                         fault_seed=5) as dropping, dropping.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, run_dir)
        summary = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=10, show_progress=False))
        assert summary.passed
        assert sum(c.get("already_applied", 0) for c in summary.answers.values()) > 0  # responses were really lost
        assert comparable(state(transport)) == clean_state
        assert_reported_like(clean_statistics, transport, run_dir, summary, "dropped responses")


def test_rerun_of_a_finished_apply_is_a_recheck_that_keeps_the_figures(deploy_key: str, tmp_path: Path,
                                                                       clean_statistics: dict[str, tuple]) -> None:
    run_dir = tmp_path / "run"
    with LocalDeployment(deploy_key=deploy_key) as deployment, deployment.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, run_dir)
        first = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False))
        assert_reported_like(clean_statistics, transport, run_dir, first, "first apply")
        row = next(r for r in read_ledger(transport, M001.id) if r["step"] == names.APPLY)
        for attempt in range(2):
            again = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=23, show_progress=False))
            assert again.passed and again.recheck and not first.recheck
            assert sum(c.get("applied", 0) for c in again.answers.values()) == 0  # nothing was written again
            assert_reported_like(clean_statistics, transport, run_dir, again, f"re-check {attempt + 1}")
            rechecked = next(r for r in read_ledger(transport, M001.id) if r["step"] == names.APPLY)
            assert (rechecked["startedAt"], rechecked["finishedAt"]) == (row["startedAt"], row["finishedAt"])
        assert (apply_dir(run_dir) / "checkpoint.1.jsonl.zst").exists() and (apply_dir(run_dir) / "checkpoint.2.jsonl.zst").exists()


APPLY_SCRIPT = """
import sys
from pathlib import Path
from helpers.migrations import get
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.connection.transport import ConvexTransport
apply_plan(ConvexTransport(sys.argv[1]), Path(sys.argv[2]), get("001_s3_asset_tracking"), confirm=True,
           settings=ApplySettings(batch_size=5, concurrency=2, show_progress=False))
"""


def checkpoint_lines(run_dir: Path) -> int:
    return checkpoints.count(apply_dir(run_dir) / CHECKPOINT_FILE)


def kill_apply_midway(url: str, run_dir: Path, rng: random.Random, batches_left: int) -> bool:
    """Starts apply in a child process, SIGKILLs it after a random number of batches (anywhere inside the
    next batch, or between two); True when the kill landed while apply was still running."""
    kill_after = checkpoint_lines(run_dir) + rng.randint(0, max(0, batches_left - 2))
    child = subprocess.Popen([sys.executable, "-c", APPLY_SCRIPT, url, str(run_dir)], cwd=REPO)
    deadline = time.monotonic() + 120
    while checkpoint_lines(run_dir) < kill_after and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.random() * 0.3)
    running = child.poll() is None
    child.send_signal(signal.SIGKILL)
    child.wait()
    return running


def test_apply_killed_at_random_points_resumes_to_the_clean_state_and_statistics(
    deploy_key: str, tmp_path: Path, clean_state: dict, clean_statistics: dict[str, tuple]
) -> None:
    rng = random.Random(2026)
    kills = killed_mid_run = torn = 0
    for trial in range(KILL_TRIALS):
        run_dir = tmp_path / f"trial-{trial}"
        with slow_deployment(deploy_key, rate=0.3, seed=trial + 1) as slow, slow.transport() as transport:
            seed(transport, FAULT_SCENES)
            prepare(transport, run_dir)
            batches = sum(1 for line in iter_plan_lines(run_dir) if line["action"] in CHANGING_ACTIONS) // 5
            for _ in range(rng.randint(1, 3)):  # any number of kills, each followed by a resume
                kills += 1
                killed_mid_run += kill_apply_midway(slow.url, run_dir, rng, batches - checkpoint_lines(run_dir))
                if rng.random() < 0.3:
                    checkpoints.tear_last(apply_dir(run_dir) / CHECKPOINT_FILE)
                    torn += 1
            resumed = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=5, show_progress=False))
            assert resumed.passed, (trial, resumed.errors)
            assert comparable(state(transport)) == clean_state, f"trial {trial}"
            assert_no_duplicate_references(transport)
            assert_reported_like(clean_statistics, transport, run_dir, resumed, f"trial {trial} ({kills} kills so far)")
            assert verify(transport, run_dir, M001, show_progress=False).passed
    assert killed_mid_run >= kills * 0.7 and kills >= KILL_TRIALS  # the kills landed while apply was running
    assert torn > 0


def test_torn_checkpoint_entry_after_a_kill_resumes_like_a_clean_run(deploy_key: str, tmp_path: Path, clean_state: dict,
                                                                    clean_statistics: dict[str, tuple]) -> None:
    run_dir = tmp_path / "run"
    with slow_deployment(deploy_key, rate=0.3) as slow, slow.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, run_dir)
        child = subprocess.Popen([sys.executable, "-c", APPLY_SCRIPT, slow.url, str(run_dir)], cwd=REPO)
        while checkpoint_lines(run_dir) < 10:
            assert child.poll() is None
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        path = apply_dir(run_dir) / CHECKPOINT_FILE
        whole = checkpoints.count(path)
        checkpoints.tear_last(path)
        assert checkpoints.count(path) == whole - 1
        resumed = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=5, show_progress=False))
        assert checkpoints.entries(path)[-1] == {"complete": True}
        assert [end for _, end in iter_entries(path)][-1] == path.stat().st_size  # every frame whole, nothing after them
        assert resumed.passed and comparable(state(transport)) == clean_state
        assert_reported_like(clean_statistics, transport, run_dir, resumed, "torn line")


def test_concurrent_writer_is_never_overwritten(deploy_key: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with slow_deployment(deploy_key) as slow, slow.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, run_dir)
        scenes = [line["id"] for line in iter_plan_lines(run_dir) if line["table"] == "scenes" and line["action"] == "migrate"]
        before_apply, during_apply = scenes[-5:], scenes[-25:-5]
        for scene in before_apply:
            transport.mutation("scenes:setChunk", {"id": scene, "s3ChunkKey": f"writer/{scene}.mp4", "s3ChunkUrl": f"https://w/{scene}.mp4"})
        written: list[str] = []

        def writer() -> None:
            with slow.transport() as own:
                for scene in during_apply:
                    own.mutation("scenes:setChunk", {"id": scene, "s3ChunkKey": f"writer/{scene}.mp4", "s3ChunkUrl": f"https://w/{scene}.mp4"})
                    written.append(scene)
                    time.sleep(0.05)

        thread = threading.Thread(target=writer)
        thread.start()
        summary = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=10, show_progress=False))
        thread.join()
        outcomes = {row.id: row.outcome for row in summary.conflict_examples}
        docs = {d["_id"]: d for d in iter_documents(transport, "scenes")}
        for scene in before_apply + written:
            assert docs[scene]["s3ChunkKey"] == f"writer/{scene}.mp4"  # never overwritten
        conflicted = {o.id for o in _all_conflicts(run_dir)}
        assert set(before_apply) <= conflicted
        for scene in written:  # a write during apply is a conflict unless apply had already migrated the scene
            assert scene in conflicted or docs[scene].get("videoAsset") is not None
        assert summary.conflicts == len(conflicted) and outcomes


def _all_conflicts(run_dir: Path) -> list:
    from helpers.steps.apply import _iter_outcomes

    return list(_iter_outcomes(apply_dir(run_dir) / CHECKPOINT_FILE, {"conflict"}))


def test_second_apply_at_once_is_refused_by_the_lock(deploy_key: str, tmp_path: Path) -> None:
    with slow_deployment(deploy_key) as slow, slow.transport() as transport:
        seed(transport, FAULT_SCENES)
        first, second = tmp_path / "first", tmp_path / "second"
        prepare(transport, first)
        prepare(transport, second)
        child = subprocess.Popen([sys.executable, "-c", APPLY_SCRIPT, slow.url, str(first)], cwd=REPO)
        try:
            while checkpoint_lines(first) < 1:
                assert child.poll() is None
                time.sleep(0.01)
            with pytest.raises(errors.PreconditionFailed, match=f"run {run_id(first)}"):
                apply_plan(transport, second, M001, confirm=True, settings=ApplySettings(show_progress=False))
            with pytest.raises(errors.PreconditionFailed, match=r"step 03_apply \(pid \d+\) is running"):
                apply_plan(transport, first, M001, confirm=True, settings=ApplySettings(show_progress=False))
        finally:
            assert child.wait(300) == 0
        assert verify(transport, first, M001, show_progress=False).passed


def test_bad_corpus_is_reported_and_left_untouched(transport, run_dir: Path) -> None:  # noqa: ANN001
    seed(transport, 20)
    session = next(iter_documents(transport, "videoSessions"))["_id"]
    gone = transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "pending"}]})["ids"][0]
    transport.function("sampleData:deleteBatch", {"ids": [gone]})
    corpus = bad_documents(session, gone)
    ids = transport.function("sampleData:insertBatch", {"table": "scenes", "documents": [doc for _, _, doc in corpus]})["ids"]
    expected = {doc_id: (code, severity) for doc_id, (code, severity, _) in zip(ids, corpus, strict=False)}
    before = {d["_id"]: d for d in iter_documents(transport, "scenes") if d["_id"] in expected}
    prepare(transport, run_dir)
    lines = {line["id"]: line for line in iter_plan_lines(run_dir) if line["id"] in expected}
    for doc_id, (code, severity) in expected.items():
        problems = {(p["code"], p["severity"]) for p in lines[doc_id]["problems"]}
        assert (code, severity) in problems, (code, problems)
        assert all(p["message"].strip() for p in lines[doc_id]["problems"])
        assert (lines[doc_id]["action"] == "problem") == (severity == "blocking"), (code, lines[doc_id]["action"])
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    after = {d["_id"]: d for d in iter_documents(transport, "scenes") if d["_id"] in expected}
    for doc_id, (code, severity) in expected.items():
        if severity == "blocking":
            assert after[doc_id] == before[doc_id], code  # left exactly as it was
        else:
            assert legacy_part("scenes", after[doc_id]) == legacy_part("scenes", before[doc_id]), code


# --- Convex stopping one-document batches, a deployment restarted mid-apply -----------------------------------


@pytest.mark.parametrize("batch_size", [1, 20])
def test_timeouts_and_oom_on_one_document_batches_end_like_a_clean_run(
    deploy_key: str, tmp_path: Path, clean_state: dict, clean_statistics: dict[str, tuple], batch_size: int
) -> None:
    """30 % of applyBatch calls are stopped at Convex's time or memory limit: a batch splits down to one document,
    which is sent again with backoff; one that still fails is sent again by the resume; the statistics confirm."""
    run_dir = tmp_path / "run"
    with LocalDeployment(deploy_key=deploy_key, fault_rate=0.3, fault_kinds=("timeout", "oom"), fault_seed=batch_size,
                         fault_paths=("migration:applyBatch", "migrationRuns:", "migration:readPage")) as limited, \
            limited.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, run_dir)  # the dry-run's ledger and page reads meet the faults too
        summary = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=batch_size, show_progress=False))
        for _ in range(3):  # a document stopped on every attempt is an error of this attempt only: resume
            if summary.passed:
                break
            summary = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=batch_size, show_progress=False))
        assert summary.passed and summary.statistics_confirmed and not summary.errors
        assert summary.round_trips > summary.batches_sent  # stopped calls were sent again
        assert comparable(state(transport)) == clean_state
        assert_no_duplicate_references(transport)
        assert_reported_like(clean_statistics, transport, run_dir, summary, f"timeouts/oom, batch_size={batch_size}")


RESTART_APPLY = """
import sys
from pathlib import Path
from helpers.migrations import get
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.connection.transport import ConvexTransport
summary = apply_plan(ConvexTransport(sys.argv[1], max_attempts=12), Path(sys.argv[2]), get("001_s3_asset_tracking"), confirm=True,
                     settings=ApplySettings(batch_size=5, concurrency=2, show_progress=False))
print(summary.status, summary.statistics_confirmed)
"""


def test_a_deployment_restarted_from_its_data_dir_mid_apply_ends_like_a_clean_run(
    deploy_key: str, tmp_path: Path, clean_state: dict, clean_statistics: dict[str, tuple]
) -> None:
    """The deployment is SIGKILLed while apply runs and started again on its --data-dir: it holds every write it
    acknowledged, apply goes on (or its resume does), and the result equals a clean run with confirmed statistics."""
    run_dir, data = tmp_path / "run", tmp_path / "data"
    slow = slow_deployment(deploy_key, rate=0.3)
    slow.data_dir = data
    with slow, slow.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, run_dir)
        before_kill = state(transport)
        port = slow.port
        child = subprocess.Popen([sys.executable, "-c", RESTART_APPLY, slow.url, str(run_dir)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        while checkpoint_lines(run_dir) < 5:
            assert child.poll() is None
            time.sleep(0.01)
        slow.kill()
    restarted = LocalDeployment(deploy_key=deploy_key, port=port, data_dir=data, fault_rate=0.3, fault_kinds=("delay",),
                                fault_paths=("migration:applyBatch",))
    with restarted, restarted.transport() as transport:
        assert restarted.documents >= sum(len(docs) for docs in before_kill.values())  # nothing acknowledged was lost
        out, _ = child.communicate(timeout=600)
        summary = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=5, show_progress=False))  # resume or re-check
        assert "passed False" not in out and summary.passed and summary.statistics_confirmed, (out, summary.status)
        assert comparable(state(transport)) == clean_state
        assert_no_duplicate_references(transport)
        assert_reported_like(clean_statistics, transport, run_dir, summary, "restart from --data-dir")
        assert verify(transport, run_dir, M001, show_progress=False).passed
