"""The fault suite (make test-faults): transient failures, kills, a concurrent writer, two applies, bad corpora.
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

from helpers import errors
from helpers.apply import CHECKPOINT_FILE, apply_dir, apply_plan
from helpers.deployment import iter_documents
from helpers.fields import legacy_part
from helpers.local_deployment import LocalDeployment
from helpers.plan import iter_plan_lines
from helpers.verify import verify

from .corpus import bad_documents
from .flow import comparable, migration_references, prepare, seed, state

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parent.parent
FAULT_SCENES = 200


def clean_run(deploy_key: str, tmp_path: Path) -> dict:
    """The state an uninterrupted, fault-free apply produces from the same sample data."""
    with LocalDeployment(deploy_key=deploy_key) as clean, clean.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, tmp_path / "clean")
        assert apply_plan(transport, tmp_path / "clean", confirm=True, show_progress=False).passed
        return comparable(state(transport))


@pytest.fixture(scope="module")
def clean_state(deploy_key: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return clean_run(deploy_key, tmp_path_factory.mktemp("clean"))


def assert_no_duplicate_references(transport) -> None:  # noqa: ANN001
    keys = [(r["entityId"], r["assetType"]) for r in migration_references(transport)]
    assert len(keys) == len(set(keys))


def test_transient_failures_during_apply_end_like_a_clean_run(deploy_key: str, tmp_path: Path, clean_state: dict) -> None:
    with LocalDeployment(
        deploy_key=deploy_key, fault_rate=0.1, fault_kinds=("5xx", "drop", "delay"), fault_seed=11,
        fault_paths=("migration:applyBatch", "migrationRuns:"),
    ) as flaky, flaky.transport() as transport:
        seed(transport, FAULT_SCENES)
        prepare(transport, tmp_path / "run")
        summary = apply_plan(transport, tmp_path / "run", confirm=True, batch_size=10, show_progress=False)
        assert summary.passed and summary.round_trips > summary.batches_sent  # some requests were retried
        assert comparable(state(transport)) == clean_state
        assert_no_duplicate_references(transport)


APPLY_SCRIPT = """
import sys
from pathlib import Path
from helpers.apply import apply_plan
from helpers.transport import ConvexTransport
apply_plan(ConvexTransport(sys.argv[1]), Path(sys.argv[2]), confirm=True, batch_size=5, concurrency=2, show_progress=False)
"""


def checkpoint_lines(run_dir: Path) -> int:
    path = apply_dir(run_dir) / CHECKPOINT_FILE
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_apply_killed_at_random_points_resumes_to_the_clean_state(deploy_key: str, tmp_path: Path, clean_state: dict) -> None:
    rng = random.Random(2026)
    killed_mid_run = 0
    for trial in range(10):
        run_dir = tmp_path / f"trial-{trial}"
        with LocalDeployment(deploy_key=deploy_key, fault_rate=0.3, fault_kinds=("delay",), fault_paths=("migration:applyBatch",),
                             fault_seed=trial + 1) as slow, slow.transport() as transport:
            seed(transport, FAULT_SCENES)
            prepare(transport, run_dir)
            batches = sum(1 for line in iter_plan_lines(run_dir) if line["action"] in ("migrate", "fill_missing")) // 5
            kill_after = rng.randint(0, max(0, batches - 2))
            child = subprocess.Popen([sys.executable, "-c", APPLY_SCRIPT, slow.url, str(run_dir)], cwd=REPO)
            deadline = time.monotonic() + 120
            while checkpoint_lines(run_dir) < kill_after and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.random() * 0.3)  # anywhere inside the next batch, or between two
            killed_mid_run += child.poll() is None
            child.send_signal(signal.SIGKILL)
            child.wait()
            resumed = apply_plan(transport, run_dir, confirm=True, batch_size=5, show_progress=False)
            assert resumed.passed, (trial, resumed.errors)
            assert comparable(state(transport)) == clean_state, f"trial {trial} (killed after {kill_after} batches)"
            assert_no_duplicate_references(transport)
            assert verify(transport, run_dir, show_progress=False).passed
    assert killed_mid_run >= 8  # the kills landed while apply was running, not after it finished


def test_concurrent_writer_is_never_overwritten(deploy_key: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with LocalDeployment(deploy_key=deploy_key, fault_rate=1.0, fault_kinds=("delay",), fault_paths=("migration:applyBatch",)) as slow, \
            slow.transport() as transport:
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
        summary = apply_plan(transport, run_dir, confirm=True, batch_size=10, show_progress=False)
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
    from helpers.apply import _iter_outcomes

    return list(_iter_outcomes(apply_dir(run_dir) / CHECKPOINT_FILE, {"conflict"}))


def test_second_apply_at_once_is_refused_by_the_lock(deploy_key: str, tmp_path: Path) -> None:
    with LocalDeployment(deploy_key=deploy_key, fault_rate=1.0, fault_kinds=("delay",), fault_paths=("migration:applyBatch",)) as slow, \
            slow.transport() as transport:
        seed(transport, FAULT_SCENES)
        first, second = tmp_path / "first", tmp_path / "second"
        prepare(transport, first)
        prepare(transport, second)
        child = subprocess.Popen([sys.executable, "-c", APPLY_SCRIPT, slow.url, str(first)], cwd=REPO)
        try:
            while checkpoint_lines(first) < 1:
                assert child.poll() is None
                time.sleep(0.01)
            with pytest.raises(errors.PreconditionFailed, match=f"run {first.name}"):
                apply_plan(transport, second, confirm=True, show_progress=False)
            with pytest.raises(errors.PreconditionFailed, match="Another apply is running"):
                apply_plan(transport, first, confirm=True, show_progress=False)
        finally:
            assert child.wait(300) == 0
        assert verify(transport, first, show_progress=False).passed


def test_bad_corpus_is_reported_and_left_untouched(transport, run_dir: Path) -> None:  # noqa: ANN001
    seed(transport, 20)
    session = next(iter_documents(transport, "videoSessions"))["_id"]
    gone = transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "pending"}]})["ids"][0]
    transport.function("sampleData:deleteBatch", {"ids": [gone]})
    corpus = bad_documents(session, gone)
    ids = transport.function("sampleData:insertBatch", {"table": "scenes", "documents": [doc for _, _, doc in corpus]})["ids"]
    expected = {doc_id: (code, severity) for doc_id, (code, severity, _) in zip(ids, corpus)}
    before = {d["_id"]: d for d in iter_documents(transport, "scenes") if d["_id"] in expected}
    prepare(transport, run_dir)
    lines = {line["id"]: line for line in iter_plan_lines(run_dir) if line["id"] in expected}
    for doc_id, (code, severity) in expected.items():
        problems = {(p["code"], p["severity"]) for p in lines[doc_id]["problems"]}
        assert (code, severity) in problems, (code, problems)
        assert all(p["message"].strip() for p in lines[doc_id]["problems"])
        assert (lines[doc_id]["action"] == "problem") == (severity == "blocking"), (code, lines[doc_id]["action"])
    assert apply_plan(transport, run_dir, confirm=True, show_progress=False).passed
    after = {d["_id"]: d for d in iter_documents(transport, "scenes") if d["_id"] in expected}
    for doc_id, (code, severity) in expected.items():
        if severity == "blocking":
            assert after[doc_id] == before[doc_id], code  # left exactly as it was
        else:
            assert legacy_part("scenes", after[doc_id]) == legacy_part("scenes", before[doc_id]), code
