"""Apply's orchestration against an in-process fake deployment (no Node, no network): figures, checkpoint,
outcomes, ledger, lease and refusals, exactly. The fake mirrors convex/migration.ts (applyBatch's
compare-and-set, reference-only items, the lock refusal) and convex/migrationRuns.ts (lock, ledger), and
injects faults: a Convex limit, a whole-batch failure, a lost answer, a kill, a stolen lock."""

from __future__ import annotations

import csv
import errno
import os
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.connection import calls as deployment
from helpers.connection import jsonio
from helpers.connection.errors import (
    ArgumentValidationError,
    FunctionFailed,
    FunctionTerminated,
    LeaseLost,
    LimitExceeded,
    PreconditionFailed,
    StatisticsUnconfirmed,
    TransientFailure,
)
from helpers.evidence.archive import sha256_file
from helpers.evidence.checkpoint_file import UNCOMPRESSED_CHECKPOINT_FILE, checkpoint_path, iter_entries
from helpers.evidence.run_folder import bind_migration
from helpers.evidence.run_folder import run_id as folder_run_id
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.steps import names
from helpers.steps.apply import (
    CHECKPOINT_FILE,
    OUTCOMES_FILE,
    ApplySettings,
    BatchSizer,
    DeploymentLease,
    _item,
    apply_dir,
    apply_plan,
    check_preconditions,
    raise_unless_passed,
    read_checkpoint,
    take_migration_lock,
)
from helpers.steps.chain import for_apply
from tests import checkpoints

URL = "https://happy-otter-123.convex.cloud"
TABLES = {"scenes": "scene", "videoSessions": "session"}


def now_ms() -> float:
    return time.time() * 1000


class Killed(BaseException):
    """A kill -9 stand-in: nothing after it runs in the deployment call that raised it."""


class FakeDeployment:
    """The deployment as apply sees it through ConvexTransport.function."""

    def __init__(self, url: str = URL) -> None:
        self.url = url
        self.round_trips = 0
        self.docs: dict[str, dict[str, dict[str, Any]]] = {table: {} for table in TABLES}
        self.references: list[dict[str, Any]] = []
        self.lock: dict[str, Any] | None = None
        self.runs: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.batches = 0  # applyBatch calls that executed
        #: Faults: batches over this many items exceed a Convex limit; a batch holding one of these ids fails
        #: whole; the answer of these executed batch numbers is lost; these batch numbers are killed before
        #: executing; after this batch number another run takes the lock.
        self.limit_over: int | None = None
        self.failing: dict[str, str] = {}
        #: Per id: how many more calls holding it Convex stops at its time limit (answered without executing).
        self.terminate: dict[str, int] = {}
        self.drop: set[int] = set()
        self.kill: set[int] = set()
        self.steal_after: int | None = None
        self.delay = 0.0  # seconds each batch takes
        self.fail_record: str | None = None  # the ledger refuses a record with this status
        self.ledger_while_sending: list[dict[str, Any]] = []
        self.sent_ids: list[str] = []  # every item applyBatch was called with, in order

    def function(self, path: str, args: dict[str, Any] | None = None, *, idempotent: bool = True, writes_documents: bool = False,
                 retry_terminated: bool = True) -> Any:
        self.round_trips += 1
        self.paths.append(path)
        args = args or {}
        # The functions' argument validators: these are v.string() / v.number(), never null.
        for name, kind in (("migrationId", str), ("runId", str), ("operator", str), ("step", str), ("status", str),
                           ("leaseMs", int), ("startedAt", int)):
            if name in args and not isinstance(args[name], kind):
                raise ArgumentValidationError(f"ArgumentValidationError: {name} {args[name]!r} is not a {kind.__name__}")
        if "migrationId" in args and args["migrationId"] != M001.id:
            raise AssertionError(f"the fake holds only {M001.id}")
        if path == "migrationRuns:record" and not {"step", "status", "operator", "startedAt"} <= args.keys():
            raise ArgumentValidationError(f"ArgumentValidationError: missing a required field of {sorted(args)}")
        if path == "migrationRuns:record" and args["status"] == self.fail_record:
            raise FunctionFailed("Server Error\nthe ledger is unavailable")
        return getattr(self, path.replace(":", "_"))(**args)

    def state(self) -> Any:
        return jsonio.dumps([self.docs, self.references, self.lock, self.runs])

    # --- convex/migration.ts ---

    def migration_readPage(self, table: str, cursor: str | None, numItems: int) -> dict[str, Any]:
        assert table == "assetReferences"
        start = int(cursor or 0)
        page = self.references[start:start + numItems]
        end = start + len(page)
        return {"page": page, "isDone": end >= len(self.references), "continueCursor": str(end)}

    def migration_countSideRows(self, sideRows: dict[str, str], migrationId: str, runId: str, cursor: str | None,
                                numItems: int) -> dict[str, Any]:
        assert sideRows == M001.side_rows.protocol()  # type: ignore[union-attr]
        result = self.migration_readPage("assetReferences", cursor, numItems)
        page = result.pop("page")
        ours = [r["entityType"] for r in page if (r["metadata"]["migrationId"], r["metadata"]["runId"]) == (migrationId, runId)]
        return {**result, "counts": dict(Counter(ours))}

    def migration_applyBatch(self, migrationId: str, runId: str, items: list[dict[str, Any]],
                             sideRows: dict[str, str] | None = None, guard: Any = None) -> dict[str, Any]:
        self.sent_ids.extend(item["id"] for item in items)
        lock = self.lock
        if lock is not None and lock["runId"] != runId and lock["leaseExpiresAt"] > now_ms():
            raise FunctionFailed(f"Server Error\nUncaught Error: the migration lock is held by run {lock['runId']}: run {runId} may not write")
        assert guard in (None, {"inEffect": [], "notInEffect": []})  # 001 builds on nothing; None: a write outside the runbook
        if self.limit_over is not None and len(items) > self.limit_over:
            raise LimitExceeded("Server Error\nToo many bytes written in a single function execution")
        for item in items:
            if self.terminate.get(item["id"], 0) > 0:
                self.terminate[item["id"]] -= 1
                raise FunctionTerminated("Server Error\nFunction execution timed out (maximum duration: 1s)")
        for item in items:
            if item["id"] in self.failing:
                raise FunctionFailed(f"Server Error\nUncaught Error: {self.failing[item['id']]}")
        if self.batches + 1 in self.kill:
            raise Killed
        self.batches += 1
        self.ledger_while_sending = [dict(r) for r in self.runs]
        time.sleep(self.delay)
        results = [self._apply_item(migrationId, runId, item) for item in items]
        if self.batches in self.drop:
            raise TransientFailure("The connection broke after the request was sent")
        if self.steal_after is not None and self.batches >= self.steal_after:
            self.lock = {"runId": "thief", "operator": "mallory", "leaseExpiresAt": now_ms() + 3_600_000}
        return {"results": results}

    def _apply_item(self, migration_id: str, run_id: str, it: dict[str, Any]) -> dict[str, Any]:
        if "_id" in it["set"]:
            return {"id": it["id"], "outcome": "error", "message": "system fields cannot be changed: _id"}
        if not it["id"].startswith(it["table"][0]):
            return {"id": it["id"], "outcome": "error", "message": f"not an id of table {it['table']}"}
        doc = self.docs[it["table"]].get(it["id"])
        if doc is None:
            return {"id": it["id"], "outcome": "conflict", "message": "document no longer exists"}
        if not it["set"] and not it["unset"] and it["insertReferences"]:
            held = {(r["entityId"], r["assetType"]) for r in self.references}
            missing = [r for r in it["insertReferences"] if (it["id"], r["assetType"]) not in held]
            if not missing:
                return {"id": it["id"], "outcome": "already_applied"}
            conflict = self._conflict(doc, it)
            return conflict or {"id": it["id"], "outcome": "applied", "referenceIds": self._insert(migration_id, run_id, it["id"], missing)}
        if all(doc.get(k) == v for k, v in it["set"].items()) and all(k not in doc for k in it["unset"]):
            return {"id": it["id"], "outcome": "already_applied"}
        conflict = self._conflict(doc, it)
        if conflict:
            return conflict
        doc.update(it["set"])
        ids = self._insert(migration_id, run_id, it["id"], it["insertReferences"])
        return {"id": it["id"], "outcome": "applied", **({"referenceIds": ids} if ids else {})}

    @staticmethod
    def _conflict(doc: dict[str, Any], it: dict[str, Any]) -> dict[str, Any] | None:
        changed = [f"{k} changed" for k, v in it["expect"].items() if doc.get(k) != v]
        changed += [f"{k} present" for k in it["expectAbsent"] if k in doc]
        return {"id": it["id"], "outcome": "conflict", "message": f"changed since the plan: {', '.join(changed)}"} if changed else None

    def _insert(self, migration_id: str, run_id: str, entity: str, references: list[dict[str, Any]]) -> list[str]:
        ids = []
        for ref in references:
            ref_id = f"r{len(self.references)}"
            self.references.append({**ref, "_id": ref_id, "entityId": entity, "createdAt": now_ms(),
                                    "metadata": {"migratedFromLegacy": True, "migrationId": migration_id, "runId": run_id}})
            ids.append(ref_id)
        return ids

    # --- convex/migrationRuns.ts ---

    def migrationRuns_acquireLock(self, migrationId: str, runId: str, operator: str, leaseMs: int, chain: Any) -> dict[str, Any]:
        expires = now_ms() + leaseMs
        if self.lock is None or self.lock["runId"] == runId or self.lock["leaseExpiresAt"] <= now_ms():
            self.lock = {"runId": runId, "operator": operator, "migrationId": migrationId, "leaseExpiresAt": expires}
            return {"acquired": True, "expiresAt": expires}
        return {"acquired": False, "holder": {"runId": self.lock["runId"], "operator": self.lock["operator"],
                                              "migrationId": self.lock["migrationId"], "expiresAt": self.lock["leaseExpiresAt"]}}

    def migrationRuns_renewLock(self, runId: str, leaseMs: int) -> dict[str, Any]:
        if self.lock is None or self.lock["runId"] != runId:
            return {"renewed": False}
        self.lock["leaseExpiresAt"] = now_ms() + leaseMs
        return {"renewed": True, "expiresAt": self.lock["leaseExpiresAt"]}

    def migrationRuns_releaseLock(self, runId: str) -> dict[str, Any]:
        if self.lock is None or self.lock["runId"] != runId:
            return {"released": False}
        self.lock = None
        return {"released": True}

    def migrationRuns_record(self, **args: Any) -> None:
        assert all(isinstance(v, float) for v in args.get("counts", {}).values())
        row = next((r for r in self.runs if r["runId"] == args["runId"] and r["step"] == args["step"]), None)
        if row is None:
            self.runs.append({"kind": "run", **args})
        else:
            row.update({**args, "startedAt": min(row["startedAt"], args["startedAt"])})

    def migrationRuns_ledger(self, migrationId: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.runs if r["migrationId"] == migrationId]


# --- a run folder: a plan and a backup as the dry-run and the backup step leave them ----------------------------


def reference(table: str, asset: str, n: int) -> dict[str, Any]:
    return {"entityType": TABLES[table], "assetType": asset, "s3Key": f"k/{n}/{asset}", "s3Url": f"https://b/k/{n}/{asset}",
            "contentType": "video/mp4", "uploadedAt": 1_700_000_000_000, "version": 1}


def plan_line(table: str, n: int, action: str) -> dict[str, Any]:
    doc_id = f"{table[0]}{n}"
    line: dict[str, Any] = {"table": table, "id": doc_id, "action": action, "expect": {"legacyKey": f"k/{n}"},
                            "expectAbsent": [], "set": {}, "references": []}
    if action == "migrate":
        assets = ["video_chunk", "thumbnail"][: 1 + n % 2]
        line.update(expectAbsent=["asset"], set={"asset": {"key": f"k/{n}"}, "assetsStatus": "ready"},
                    references=[reference(table, a, n) for a in assets])
    elif action == "fill_missing":
        line.update(set={"assetsStatus": "ready"})
    elif action == "track_existing":
        line.update(references=[reference(table, "video_chunk", n)])
    return line


ACTIONS = ("migrate", "migrate", "track_existing", "no_change", "fill_missing")


def make_run(tmp: Path, fake: FakeDeployment, scenes: int = 12, sessions: int = 5, *, name: str = "run",
             snapshot: datetime | None = None, url: str = URL) -> Path:
    """A run folder whose plan covers `scenes` scenes and `sessions` sessions (actions cycling through ACTIONS),
    and the fake deployment holding those documents as the plan found them."""
    run_dir = tmp / name
    bind_migration(run_dir, M001.id)
    (run_dir / "plan").mkdir(parents=True)
    (run_dir / "backup").mkdir()
    lines = [plan_line(table, n, ACTIONS[n % len(ACTIONS)]) for table, count in (("scenes", scenes), ("videoSessions", sessions))
             for n in range(count)]
    for line in lines:
        fake.docs[line["table"]][line["id"]] = {"_id": line["id"], **line["expect"]}
    plan_path = run_dir / "plan" / "plan.jsonl"
    plan_path.write_bytes(b"".join(jsonio.dumps(line) + b"\n" for line in lines))
    actions: dict[str, Counter[str]] = {}
    for line in lines:
        actions.setdefault(line["table"], Counter())[line["action"]] += 1
    zip_path = run_dir / "backup" / "snapshot.zip"
    zip_path.write_bytes(b"PK snapshot of " + url.encode())
    taken = snapshot or datetime.now(UTC) - timedelta(minutes=5)
    (run_dir / "backup" / "backup.json").write_bytes(jsonio.dumps({
        "zip_file": "snapshot.zip", "sha256": sha256_file(zip_path), "size_bytes": zip_path.stat().st_size,
        "snapshot_ts": int(taken.timestamp() * 1e9), "snapshot_time": taken.isoformat(), "counts": {"scenes": scenes},
        "deployment_url": url, "taken_at": taken.isoformat(),
    }))
    (run_dir / "plan" / "plan.json").write_bytes(jsonio.dumps({
        "migration_id": M001.id, "plan_file": "plan.jsonl", "plan_sha256": sha256_file(plan_path), "documents": len(lines),
        "created_at": taken.isoformat(), "deployment_url": url, "backup_sha256": sha256_file(zip_path), "parameters": {},
        "actions": {t: dict(c) for t, c in actions.items()}, "by_status": {}, "references_by_type": {}, "problems": [],
    }))
    return run_dir


def planned(run_dir: Path) -> list[dict[str, Any]]:
    return [jsonio.loads(raw) for raw in (run_dir / "plan" / "plan.jsonl").read_bytes().splitlines()
            if jsonio.loads(raw)["action"] != "no_change"]


@pytest.fixture(autouse=True)
def signed_by_alice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply signs as the folder's operator, here RUNBOOK_OPERATOR (these folders record none)."""
    monkeypatch.setenv("RUNBOOK_OPERATOR", "alice")


def apply(fake: FakeDeployment, run_dir: Path, *, allow_stale_backup: bool = False, **knobs: Any) -> Any:
    """apply_plan of migration 001 in batches of 3, one at a time, unless `knobs` (ApplySettings' fields) say otherwise."""
    settings = ApplySettings(**{"batch_size": 3, "concurrency": 1, "show_progress": False, **knobs})
    return apply_plan(fake, run_dir, M001, confirm=True, settings=settings, allow_stale_backup=allow_stale_backup)  # type: ignore[arg-type]


FIGURES = ("migrated", "references_created", "already_applied", "conflicts",
           "references_by_group", "outcomes", "statistics_confirmed")


def figures(summary: Any) -> dict[str, Any]:
    return {**{name: getattr(summary, name) for name in FIGURES}, "errors": summary.errors}


def checkpoint_lines(run_dir: Path) -> list[dict[str, Any]]:
    return checkpoints.entries(checkpoint_path(apply_dir(run_dir)))


def outcome_rows(run_dir: Path) -> list[list[str]]:
    with (apply_dir(run_dir) / OUTCOMES_FILE).open(newline="", encoding="utf-8") as source:
        return list(csv.reader(source))


def ledger_row(fake: FakeDeployment) -> dict[str, Any]:
    (row,) = [r for r in fake.runs if r["step"] == names.APPLY]
    return row


# --- a clean run ------------------------------------------------------------------------------------------------


def test_a_clean_run_reports_exactly_what_the_deployment_holds(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    before, began = time.time() * 1000, time.monotonic()
    summary = apply(fake, run_dir)
    after, took = time.time() * 1000, time.monotonic() - began
    assert 0 <= summary.duration_s <= round(took, 3) + 0.001
    changes = planned(run_dir)
    # 12 scenes: 0,1,5,6,10,11 migrate, 2,7 track, 4,9 fill; 5 sessions: 0,1 migrate, 2 track, 4 fill.
    assert (summary.migrated["scenes"], summary.migrated["videoSessions"]) == (10, 4)
    assert summary.references_created == len(fake.references) == sum(len(line["references"]) for line in changes) == 15
    assert summary.references_by_group == {"scene": 11, "session": 4}
    assert summary.outcomes == {"scenes": {"applied": 10}, "videoSessions": {"applied": 4}}
    assert summary.answers == summary.outcomes
    assert (summary.already_applied, summary.conflicts, summary.errors, summary.conflict_examples) == (0, 0, [], [])
    assert summary.statistics_confirmed and summary.passed and summary.status == "passed" and not summary.recheck
    assert summary.planned_changes == 14 and summary.run_id == folder_run_id(run_dir)
    assert summary.plan_sha256 == sha256_file(run_dir / "plan" / "plan.jsonl")
    assert summary.backup_sha256 == sha256_file(run_dir / "backup" / "snapshot.zip")
    assert summary.deployment_url == URL and summary.operator == "alice" and not summary.backup_age_override
    assert 0.08 <= summary.backup_age_hours <= 0.1
    assert summary.batches_sent == 5 and summary.batches_resumed == 0 and summary.batch_sizes == {"2": 1, "3": 4}
    assert summary.round_trips == fake.round_trips - 3 and summary.lease_ms == 120_000
    for line in changes:
        doc = fake.docs[line["table"]][line["id"]]
        assert all(doc[k] == v for k, v in line["set"].items())
    assert {r["metadata"]["runId"] for r in fake.references} == {summary.run_id}
    lines = checkpoint_lines(run_dir)
    assert lines[-1] == {"complete": True} and read_checkpoint(apply_dir(run_dir) / CHECKPOINT_FILE).complete
    assert [(line["start"], line["end"], line["size"], line["calls"], line["limit_hits"]) for line in lines[:-1]] == [
        (0, 3, 3, 1, 0), (4, 7, 3, 1, 0), (7, 11, 3, 1, 0), (11, 14, 3, 1, 0), (14, 17, 2, 1, 0)]
    assert lines[0]["results"][0] == {"id": "s0", "outcome": "applied", "referenceIds": ["r0"], "table": "scenes", "refs": 1}
    assert outcome_rows(run_dir) == [["table", "id", "outcome", "message"]]
    row = ledger_row(fake)
    assert row["status"] == "passed" and row["operator"] == "alice" and row["migrationId"] == M001.id
    assert row["runId"] == summary.run_id and before - 1 <= row["startedAt"] <= row["finishedAt"] <= after + 1
    assert row["counts"] == {"scenesMigrated": 10.0, "sessionsMigrated": 4.0, "referencesCreated": 15.0, "alreadyApplied": 0.0,
                             "conflicts": 0.0, "errors": 0.0}
    assert jsonio.loads(row["details"]) == {"recheck": False, "statistics_confirmed": True}
    assert fake.lock is None  # released
    (running,) = fake.ledger_while_sending  # while batches were sent the ledger said so
    assert (running["status"], running["operator"], running["startedAt"]) == ("running", "alice", row["startedAt"])
    assert "finishedAt" not in running and "counts" not in running
    assert fake.paths[:3] == ["migrationRuns:acquireLock", "migrationRuns:ledger", "migrationRuns:record"]


def test_the_operator_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_OPERATOR", "carol")
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, 3, 0)
    summary = apply_plan(fake, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False))  # type: ignore[arg-type]
    assert summary.operator == "carol" and summary.migrated["videoSessions"] == 0 and summary.migrated["scenes"] == 3
    assert fake.lock is None and ledger_row(fake)["operator"] == "carol"


def test_a_rerun_of_a_finished_apply_is_a_recheck_that_keeps_the_figures(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    first = apply(fake, run_dir)
    finished = ledger_row(fake)["finishedAt"]
    first_lines = (apply_dir(run_dir) / CHECKPOINT_FILE).read_bytes()
    again = apply(fake, run_dir, batch_size=100)
    assert again.recheck and figures(again) == figures(first) and again.passed
    assert again.answers == {"scenes": {"already_applied": 10}, "videoSessions": {"already_applied": 4}}
    assert (apply_dir(run_dir) / "checkpoint.1.jsonl.zst").read_bytes() == first_lines  # kept as evidence
    assert again.batches_sent == 1 and again.batches_resumed == 0 and again.batch_sizes == {"14": 1}
    assert again.round_trips == 4  # lock, ledger, record, one batch (on a transport that had made calls before)
    row = ledger_row(fake)
    assert row["finishedAt"] == finished and row["counts"]["scenesMigrated"] == 10
    assert jsonio.loads(row["details"])["recheck"] is True
    third = apply(fake, run_dir)  # the .1 file says it was finished, even when the current checkpoint is cut short
    assert third.recheck and (apply_dir(run_dir) / "checkpoint.2.jsonl.zst").exists()
    assert len(fake.references) == 15
    # A re-run that had to write again (a document put back to its planned state) is no re-check: it says what it
    # wrote, and records a new finish time.
    fake.docs["scenes"]["s0"] = {"_id": "s0", "legacyKey": "k/0"}
    time.sleep(0.002)
    fourth = apply(fake, run_dir)
    assert not fourth.recheck and fourth.answers["scenes"] == {"applied": 1, "already_applied": 9}
    assert jsonio.loads(ledger_row(fake)["details"])["recheck"] is False
    assert ledger_row(fake)["finishedAt"] > finished


def test_a_folder_with_an_uncompressed_checkpoint_resumes_it_in_its_format(tmp_path: Path) -> None:
    """A folder written before the checkpoint was compressed holds checkpoint.jsonl, a line per entry: a resume
    reads it and continues it as such; a re-check keeps it as checkpoint.1.jsonl and starts a compressed one."""
    clean_fake = FakeDeployment()
    clean = apply(clean_fake, make_run(tmp_path, clean_fake, name="clean"))
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.kill = {3}
    with pytest.raises(Killed):
        apply(fake, run_dir, concurrency=1)
    packed, plain = apply_dir(run_dir) / CHECKPOINT_FILE, apply_dir(run_dir) / UNCOMPRESSED_CHECKPOINT_FILE
    answered = checkpoints.entries(packed)
    plain.write_bytes(b"".join(jsonio.dumps(entry) + b"\n" for entry in answered))  # as the earlier version wrote it
    packed.unlink()
    fake.kill = set()
    resumed = apply(fake, run_dir)
    assert figures(resumed) == figures(clean) and resumed.batches_resumed == len(answered) == 2
    lines = [jsonio.loads(line) for line in plain.read_bytes().splitlines()]
    assert lines[:2] == answered and lines[-1] == {"complete": True} and not packed.exists()
    again = apply(fake, run_dir)
    assert again.recheck and figures(again) == figures(clean)
    assert (apply_dir(run_dir) / "checkpoint.1.jsonl").read_bytes() == b"".join(jsonio.dumps(line) + b"\n" for line in lines)
    assert not plain.exists() and checkpoints.entries(packed)[-1] == {"complete": True}


# --- kills, lost answers, resumes ---------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kills=st.lists(st.integers(1, 8), max_size=3), drops=st.sets(st.integers(1, 8), max_size=2),
       cut=st.integers(0, 6), torn=st.booleans(), size=st.integers(1, 5))
def test_any_sequence_of_kills_lost_answers_and_resumes_gives_the_clean_figures(
    tmp_path_factory: pytest.TempPathFactory, kills: list[int], drops: set[int], cut: int, torn: bool, size: int
) -> None:
    tmp = tmp_path_factory.mktemp("resume")
    clean_fake = FakeDeployment()
    clean = apply(clean_fake, make_run(tmp, clean_fake, name="clean"))
    fake = FakeDeployment()
    run_dir = make_run(tmp, fake)
    fake.drop = set(drops)
    finished = False  # an apply that ran to its end makes every later one a re-check
    for kill in kills:
        fake.kill = {fake.batches + kill}
        try:
            finished = apply(fake, run_dir, batch_size=size).passed or finished
        except (Killed, TransientFailure):
            pass
    fake.kill, fake.drop = set(), set()
    path = apply_dir(run_dir) / CHECKPOINT_FILE
    if path.exists() and not finished:  # a kill while writing the checkpoint: the last entries lost, the one before torn
        ends = [0] + [end for entry, end in iter_entries(path) if not entry.get("complete")][:cut]
        path.write_bytes(path.read_bytes()[: ends[-1]] + (path.read_bytes()[ends[-1]:][:5] if torn else b""))
    summary = apply(fake, run_dir, batch_size=size)
    assert figures(summary) == figures(clean) and summary.recheck == finished and summary.passed
    assert ledger_row(fake)["counts"] == ledger_row(clean_fake)["counts"]
    assert len(fake.references) == len(clean_fake.references) and fake.lock is None
    answered = [r["id"] for line in checkpoint_lines(run_dir)[:-1] for r in line["results"]]
    assert sorted(answered) == sorted(line["id"] for line in planned(run_dir))  # each document answered once


def test_a_lost_answer_fails_the_call_and_the_resume_counts_what_it_wrote(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.drop = {2}
    with pytest.raises(TransientFailure):
        apply(fake, run_dir)
    row = ledger_row(fake)
    # the checkpoint's word (s0, s1, s2: 4 references), not a recount of what the lost batch also wrote
    assert row["status"] == "failed" and row["counts"]["scenesMigrated"] == 3 and row["counts"]["referencesCreated"] == 4
    assert fake.lock is None
    assert outcome_rows(run_dir) == [["table", "id", "outcome", "message"]]
    fake.drop = set()
    summary = apply(fake, run_dir)
    assert summary.migrated["scenes"] == 10 and summary.statistics_confirmed and summary.batches_resumed == 1
    assert summary.answers["scenes"] == {"applied": 7, "already_applied": 3}
    assert summary.already_applied == 0


def test_a_document_someone_else_migrated_is_not_counted_as_ours(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    line = planned(run_dir)[1]  # s1, two references
    item = {"table": line["table"], "id": line["id"], "expect": line["expect"], "expectAbsent": line["expectAbsent"],
            "set": line["set"], "unset": [], "insertReferences": line["references"], "deleteReferences": []}
    fake.migration_applyBatch(M001.id, "other-run", [item])
    fake.batches, fake.drop = 0, {2}  # and this run's second answer is lost: its documents answer already_applied later
    with pytest.raises(TransientFailure):
        apply(fake, run_dir)
    fake.drop = set()
    summary = apply(fake, run_dir)
    assert summary.answers["scenes"] == {"applied": 6, "already_applied": 4}
    assert summary.statistics_confirmed and summary.already_applied == 1 and summary.passed  # confirmed once attributed
    assert summary.outcomes["scenes"] == {"applied": 9, "already_applied": 1}
    assert summary.migrated["scenes"] == 9 and summary.references_created == 13
    assert ledger_row(fake)["counts"]["alreadyApplied"] == 1


# --- conflicts, errors, the error budget -----------------------------------------------------------------------


def test_conflicts_and_errors_are_listed_with_the_deployment_s_reasons(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.docs["scenes"]["s0"]["legacyKey"] = "edited"
    fake.docs["scenes"]["s1"]["asset"] = {"key": "mine"}
    del fake.docs["scenes"]["s5"]
    fake.failing = {"s6": "Value is too large"}
    summary = apply(fake, run_dir, error_budget=1)
    assert summary.passed and summary.conflicts == 3 and summary.migrated["scenes"] == 6
    assert [(o.id, o.table, o.outcome, o.message) for o in summary.errors] == [("s6", "scenes", "error", "Uncaught Error: Value is too large")]
    assert [(o.id, o.message) for o in summary.conflict_examples] == [
        ("s0", "changed since the plan: legacyKey changed"), ("s1", "changed since the plan: asset present"),
        ("s5", "document no longer exists")]
    assert summary.outcomes["scenes"] == {"conflict": 3, "applied": 6, "error": 1}
    assert outcome_rows(run_dir)[1:] == [
        ["scenes", "s0", "conflict", "changed since the plan: legacyKey changed"],
        ["scenes", "s1", "conflict", "changed since the plan: asset present"],
        ["scenes", "s5", "conflict", "document no longer exists"],
        ["scenes", "s6", "error", "Uncaught Error: Value is too large"]]
    counts = ledger_row(fake)["counts"]
    assert (counts["conflicts"], counts["errors"], counts["scenesMigrated"]) == (3, 1, 6)
    assert fake.docs["scenes"]["s0"] == {"_id": "s0", "legacyKey": "edited"}  # a conflict changes nothing


def test_conflict_examples_are_capped(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, 30, 0)
    for doc in fake.docs["scenes"].values():
        doc["legacyKey"] = "edited"
    summary = apply(fake, run_dir, batch_size=50)
    assert summary.conflicts == 24 and len(summary.conflict_examples) == 10 and len(outcome_rows(run_dir)) == 25
    assert summary.passed and summary.migrated["scenes"] == 0 and summary.statistics_confirmed
    assert ledger_row(fake)["finishedAt"] is not None  # a first run that wrote nothing still finished


def test_errors_beyond_the_budget_stop_sending_and_fail(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.failing = {"s1": "boom"}
    summary = apply(fake, run_dir)
    assert summary.status == "failed" and not summary.passed and len(summary.errors) == 1
    assert summary.batches_sent == 1 and summary.migrated["scenes"] == 2  # s0 and s2, then nothing after their batch
    assert checkpoint_lines(run_dir)[-1] != {"complete": True}
    assert ledger_row(fake)["status"] == "failed" and fake.lock is None
    # A resume sends the document again (its range is not done), and the budget counts this attempt's errors only.
    again = apply(fake, run_dir)
    assert again.status == "failed" and [e.id for e in again.errors] == ["s1"]
    within = apply(fake, run_dir, error_budget=1)  # one error of this attempt: within the budget
    assert within.passed and [e.id for e in within.errors] == ["s1"] and within.migrated["scenes"] == 9
    fake.failing = {}
    resumed = apply(fake, run_dir)  # finished (complete): the re-run sends the whole plan, s1 applies at last
    assert resumed.passed and resumed.errors == [] and resumed.migrated["scenes"] == 10 and not resumed.recheck
    assert resumed.outcomes["scenes"].get("error", 0) == 0 and outcome_rows(run_dir)[1:] == []


def test_a_resume_sends_again_the_documents_that_ended_in_an_error(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.failing = {"s1": "boom"}
    first = apply(fake, run_dir)
    assert first.status == "failed" and [e.id for e in first.errors] == ["s1"]
    assert [tuple(line["retry"]) for line in checkpoint_lines(run_dir) if "retry" in line] == [("s1",)]
    fake.failing = {}
    fake.sent_ids.clear()
    resumed = apply(fake, run_dir)
    assert "s1" in fake.sent_ids and not {"s0", "s2"} & set(fake.sent_ids)  # answered ones are not sent again
    assert resumed.passed and resumed.errors == [] and resumed.migrated["scenes"] == 10 and resumed.statistics_confirmed
    assert resumed.answers["scenes"] == {"applied": 10}  # each document's last answer, once
    assert outcome_rows(run_dir)[1:] == []


def test_an_item_the_deployment_refuses_is_an_error(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, 2, 0)
    lines = (run_dir / "plan" / "plan.jsonl").read_bytes().replace(b'"id":"s1"', b'"id":"v1"')
    (run_dir / "plan" / "plan.jsonl").write_bytes(lines)
    plan = jsonio.loads((run_dir / "plan" / "plan.json").read_bytes())
    (run_dir / "plan" / "plan.json").write_bytes(jsonio.dumps({**plan, "plan_sha256": sha256_file(run_dir / "plan" / "plan.jsonl")}))
    summary = apply(fake, run_dir, error_budget=5)
    assert [(o.id, o.message) for o in summary.errors] == [("v1", "not an id of table scenes")]


# --- limits and batch sizes -------------------------------------------------------------------------------------


def test_a_convex_limit_halves_the_batch_and_is_recorded(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, 40, 0)
    fake.limit_over = 5
    summary = apply(fake, run_dir, batch_size=8)
    assert summary.passed and summary.migrated["scenes"] == 32 and summary.statistics_confirmed
    lines = checkpoint_lines(run_dir)[:-1]
    # 8 refused, sent as 4 + 4; 4 grows to 6 (below the 8 that failed), refused again; 3, 4, 5 stay below 6.
    assert [(line["size"], line["calls"], line["limit_hits"]) for line in lines] == [
        (8, 3, 1), (4, 1, 0), (6, 3, 1), (3, 1, 0), (4, 1, 0), (5, 1, 0), (2, 1, 0)]
    assert summary.batch_sizes == {"2": 1, "3": 1, "4": 2, "5": 1, "6": 1, "8": 1}
    assert sum(int(size) * n for size, n in summary.batch_sizes.items()) == 32


def test_calm_batches_grow_toward_the_configured_size(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, 60, 0)
    fake.limit_over = 7
    summary = apply(fake, run_dir, batch_size=10)
    sizes = [line["size"] for line in checkpoint_lines(run_dir)[:-1]]
    # grows back, but never to a size that failed: 10 fails, 5 grows to 7, then 8 (below 10) fails, 4 grows to 7
    assert sizes == [10, 5, 7, 8, 4, 6, 7, 1]
    assert summary.migrated["scenes"] == 48


# --- the lease ----------------------------------------------------------------------------------------------------


def test_a_lost_lease_stops_sending_and_leaves_a_valid_checkpoint(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.steal_after = 2
    with pytest.raises(LeaseLost, match="lease lost"):
        apply(fake, run_dir)
    assert fake.batches == 2 and fake.lock["runId"] == "thief"  # nothing sent after; the thief keeps its lock
    checkpoint = read_checkpoint(apply_dir(run_dir) / CHECKPOINT_FILE)
    assert checkpoint.lines_read == 2 and checkpoint.done == [(0, 3), (4, 7)] and not checkpoint.complete
    assert ledger_row(fake)["status"] == "failed"
    fake.lock, fake.steal_after = None, None
    summary = apply(fake, run_dir)
    assert summary.passed and summary.batches_resumed == 2 and summary.migrated["scenes"] == 10 and summary.statistics_confirmed


def test_a_refused_renewal_loses_the_lease_for_good(tmp_path: Path) -> None:
    fake = FakeDeployment()
    fake.lock = {"runId": "thief", "operator": "m", "leaseExpiresAt": now_ms() + 60_000}
    lease = DeploymentLease(fake, "mine", 60_000, time.monotonic())  # type: ignore[arg-type]
    lease.ensure()  # fresh: nothing asked
    assert fake.paths == []
    stale = DeploymentLease(fake, "mine", 60_000, time.monotonic() - 45)  # type: ignore[arg-type]
    with pytest.raises(LeaseLost, match="run mine no longer holds the migration lock .*lease of 60 s"):
        stale.ensure()
    with pytest.raises(LeaseLost):
        stale.ensure()
    stale.renew()
    assert fake.paths == ["migrationRuns:renewLock"]  # asked once, then known lost


def test_a_lease_near_its_end_is_renewed_before_sending(tmp_path: Path) -> None:
    fake = FakeDeployment()
    fake.lock = {"runId": "mine", "operator": "a", "leaseExpiresAt": now_ms() + 1}
    lease = DeploymentLease(fake, "mine", 60_000, time.monotonic() - 41)  # type: ignore[arg-type]
    lease.ensure()
    assert fake.paths == ["migrationRuns:renewLock"] and lease.lost is None
    assert lease.valid_until > time.monotonic() + 59
    lease.ensure()
    assert fake.paths == ["migrationRuns:renewLock"]


def test_the_lease_is_renewed_in_the_background_until_it_is_lost() -> None:
    fake = FakeDeployment()
    fake.lock = {"runId": "mine", "operator": "a", "leaseExpiresAt": now_ms() + 1}
    with DeploymentLease(fake, "mine", 30, time.monotonic()) as lease:  # type: ignore[arg-type]
        while fake.paths.count("migrationRuns:renewLock") < 2:
            time.sleep(0.005)
        fake.lock = None
        lease._thread.join(timeout=10)
        assert not lease._thread.is_alive() and lease.lost is not None
    renewals = fake.paths.count("migrationRuns:renewLock")
    with pytest.raises(LeaseLost):
        lease.ensure()
    assert fake.paths.count("migrationRuns:renewLock") == renewals


def test_a_failing_renewal_is_retried_in_the_background() -> None:
    fake = FakeDeployment()
    fake.lock = {"runId": "mine", "operator": "a", "leaseExpiresAt": now_ms() + 1}
    calls = []

    def flaky(path: str, args: dict[str, Any] | None = None, *, idempotent: bool = True) -> Any:
        calls.append(path)
        if len(calls) == 1:
            raise TransientFailure("down")
        return FakeDeployment.function(fake, path, args)

    fake.function = flaky  # type: ignore[method-assign]
    with DeploymentLease(fake, "mine", 30, time.monotonic()) as lease:  # type: ignore[arg-type]
        while len(calls) < 3:
            time.sleep(0.005)
        assert lease.lost is None


# --- refusals change nothing -------------------------------------------------------------------------------------


def refused(fake: FakeDeployment, run_dir: Path, match: str, hint: str, **kwargs: Any) -> None:
    """The refusal fires with its message and its one fix line, and the deployment and the folder stay as they were."""
    before = fake.state()
    with pytest.raises(PreconditionFailed, match=match) as refusal:
        kwargs.setdefault("confirm", True)
        apply_plan(fake, run_dir, M001, settings=ApplySettings(show_progress=False), **kwargs)  # type: ignore[arg-type]
    assert refusal.value.hint == hint
    assert fake.state() == before and "migration:applyBatch" not in fake.paths
    assert not (apply_dir(run_dir) / CHECKPOINT_FILE).exists()


STALE_HINT = "Take a fresh backup in a new run folder, or set allow_stale_backup=True (the override is recorded)."


def test_an_unconfirmed_apply_changes_nothing(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    refused(fake, run_dir, f"Not confirmed: 14 documents of {URL} would change",
            "Confirm with the button (interactive) or run with confirm=True (papermill -p confirm True).", confirm=False)
    assert fake.paths == [] and not apply_dir(run_dir).exists()


def test_an_altered_plan_is_refused(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    with (run_dir / "plan" / "plan.jsonl").open("ab") as sink:
        sink.write(b"\n")
    refused(fake, run_dir, "does not match the dry-run's hash", "Never edit a plan: run the dry-run again in a new run folder.")


def test_an_altered_backup_is_refused(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    (run_dir / "backup" / "snapshot.zip").write_bytes(b"other")
    refused(fake, run_dir, "does not match its recorded sha256", "Take a new backup in a new run folder.")


def test_a_backup_of_another_deployment_is_refused(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, url="https://other-deployment-456.convex.cloud")
    refused(fake, run_dir, f"taken from https://other-deployment-456.convex.cloud, not from {URL}",
            "Take the backup, the dry-run and the apply against the same deployment, in one run folder.")
    fake_with_slash = FakeDeployment(URL + "/")  # a trailing slash on either side is the same deployment
    assert check_preconditions(fake_with_slash, make_run(tmp_path, fake_with_slash, name="slash"), M001)  # type: ignore[arg-type]
    assert check_preconditions(fake, make_run(tmp_path, fake, name="slash-backup", url=URL + "/"), M001)  # type: ignore[arg-type]


def test_a_stale_backup_is_refused_unless_overridden(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, snapshot=datetime.now(UTC) - timedelta(hours=24.5))
    refused(fake, run_dir, "The backup is 24.5 h old; this apply accepts at most 24 h", STALE_HINT)
    with pytest.raises(PreconditionFailed, match="24.5 h old"):
        check_preconditions(fake, run_dir, M001)  # type: ignore[arg-type]
    refused(fake, run_dir, "accepts at most 2.5 h", STALE_HINT, max_backup_age_hours=2.5)
    assert check_preconditions(fake, run_dir, M001, max_backup_age_hours=26)[2] > timedelta(hours=24)  # type: ignore[arg-type]
    old_fake = FakeDeployment()
    old = make_run(tmp_path, old_fake, name="old", snapshot=datetime.now(UTC) - timedelta(hours=120.06))
    refused(old_fake, old, "The backup is 120.1 h old", STALE_HINT)
    summary = apply(old_fake, old, allow_stale_backup=True)
    assert summary.passed and summary.backup_age_override and abs(summary.backup_age_hours - 120.06) < 0.01
    fresh_fake = FakeDeployment()
    fresh = apply(fresh_fake, make_run(tmp_path, fresh_fake, name="fresh"), allow_stale_backup=True)
    assert not fresh.backup_age_override  # nothing was overridden


def test_a_lock_held_by_another_run_is_refused_naming_it(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.lock = {"runId": "run-bob", "operator": "bob", "migrationId": M001.id, "leaseExpiresAt": 1_800_000_000_000}
    refused(fake, run_dir, rf"run run-bob by bob, writing migration {M001.id}, lease until 2027-01-15 08:00:00 UTC",
            "Wait for that run to finish (or for its lease to expire if it was killed), then start a new run folder "
            "(runbook run --url … --confirm): after another run's apply or rollback this folder's plan is stale and is refused.")
    assert not fake.runs
    fake.lock["leaseExpiresAt"] = now_ms() - 1  # expired: taken over
    assert apply(fake, run_dir).passed


def test_take_migration_lock_returns_when_it_asked() -> None:
    fake = FakeDeployment()
    before = time.monotonic()
    asked = take_migration_lock(fake, M001.id, "mine", "alice", 5_000, for_apply(M001))  # type: ignore[arg-type]
    assert before <= asked <= time.monotonic() and fake.lock["runId"] == "mine" and fake.lock["operator"] == "alice"
    assert fake.lock["leaseExpiresAt"] <= now_ms() + 5_000


def test_another_run_s_apply_after_the_snapshot_is_refused_and_the_lock_released(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.runs.append({"kind": "run", "migrationId": M001.id, "runId": "run-bob", "step": names.APPLY, "status": "passed",
                      "operator": "bob", "startedAt": now_ms() - 60_000, "finishedAt": now_ms()})
    # this run's own earlier apply, listed first, never counts (and does not hide the others)
    fake.runs.insert(0, {**fake.runs[0], "runId": folder_run_id(run_dir), "operator": "alice"})
    finished = 1_900_000_000_000
    fake.runs[-1]["finishedAt"] = finished
    snapshot_time = jsonio.loads((run_dir / "backup" / "backup.json").read_bytes())["snapshot_time"]
    with pytest.raises(PreconditionFailed) as refusal:
        apply(fake, run_dir)
    assert str(refusal.value).startswith(
        f"Run run-bob by bob applied this migration at 2030-03-17 17:46:40 UTC, after this run's backup ({snapshot_time}): "
        "this run's plan no longer describes the deployment. Nothing was sent.")
    assert refusal.value.hint == ("Take a new backup and make a new plan in a new run folder (runbook run --url … --confirm "
                                  "starts one), then apply that; this run folder's plan is stale and is refused.")
    assert fake.lock is None and len(fake.runs) == 2 and fake.batches == 0
    assert not (apply_dir(run_dir) / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"concurrency": 0}, {"lease_ms": 0}])
def test_sizes_below_one_are_refused(tmp_path: Path, bad: dict[str, int]) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    with pytest.raises(ValueError, match="must be at least 1"):
        apply(fake, run_dir, **bad)
    assert fake.paths == []


def test_concurrent_batches_give_the_same_figures(tmp_path: Path) -> None:
    serial_fake, parallel_fake = FakeDeployment(), FakeDeployment()
    serial = apply(serial_fake, make_run(tmp_path, serial_fake, 30, 10, name="serial"), batch_size=2)
    parallel = apply(parallel_fake, make_run(tmp_path, parallel_fake, 30, 10, name="parallel"), batch_size=2, concurrency=4)
    assert figures(parallel) == figures(serial) and parallel.batches_sent == serial.batches_sent


def test_a_record_the_ledger_refuses_fails_the_apply(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, 3, 0)
    fake.fail_record = "passed"
    with pytest.raises(FunctionFailed, match="the ledger is unavailable"):
        apply(fake, run_dir)
    assert fake.batches == 1 and fake.lock is not None  # left to expire: the next step may retake it
    other = FakeDeployment()
    other_dir = make_run(tmp_path, other, 3, 0, name="other")
    other.fail_record, other.drop = "failed", {1}
    with pytest.raises(TransientFailure):  # the deployment's failure reaches the operator, not the ledger's
        apply(other, other_dir)


def test_the_lease_is_renewed_before_each_batch_once_it_may_have_run_out(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.delay = 0.003  # each batch outlasts the 1 ms lease
    summary = apply(fake, run_dir, lease_ms=1)
    assert summary.passed and summary.lease_ms == 1 and fake.paths.count("migrationRuns:renewLock") >= 5


def test_a_refused_renewal_before_a_batch_stops_the_apply(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.delay, fake.steal_after = 0.003, 1
    with pytest.raises(LeaseLost, match="no longer holds the migration lock"):
        apply(fake, run_dir, lease_ms=1)
    assert fake.batches == 1 and read_checkpoint(apply_dir(run_dir) / CHECKPOINT_FILE).lines_read == 1
    assert checkpoint_lines(run_dir)[-1] != {"complete": True} and ledger_row(fake)["status"] == "failed"


def test_the_renewal_thread_does_not_keep_the_process_alive() -> None:
    lease = DeploymentLease(FakeDeployment(), "mine", 60_000, time.monotonic())  # type: ignore[arg-type]
    assert lease._thread.daemon and lease._thread.name == "lease-renewal"


def write_plan(run_dir: Path, lines: list[dict[str, Any]]) -> None:
    plan_path = run_dir / "plan" / "plan.jsonl"
    plan_path.write_bytes(b"".join(jsonio.dumps(line) + b"\n" for line in lines))
    plan = jsonio.loads((run_dir / "plan" / "plan.json").read_bytes())
    (run_dir / "plan" / "plan.json").write_bytes(jsonio.dumps({**plan, "plan_sha256": sha256_file(plan_path),
                                                               "actions": {"scenes": {"migrate": len(lines)}}}))


def test_a_batch_stops_at_exactly_half_of_convex_s_write_limit(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, 5, 0)
    lines = [plan_line("scenes", n, "migrate") for n in range(5)]
    for line in lines:  # 1 document + 3,999 references: 4,000 writes, two fill the 8,000 allowed exactly
        line["references"] = [{**reference("scenes", "video_chunk", 0), "version": v} for v in range(3_999)]
        fake.docs["scenes"][line["id"]] = {"_id": line["id"], **line["expect"]}
    write_plan(run_dir, lines)
    summary = apply(fake, run_dir, batch_size=10)
    assert [line["size"] for line in checkpoint_lines(run_dir)[:-1]] == [2, 2, 1]
    assert summary.migrated["scenes"] == 5 and summary.references_created == 5 * 3_999


def test_a_batch_stops_at_exactly_a_quarter_of_convex_s_argument_limit(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake, 3, 0)
    lines = [plan_line("scenes", n, "migrate") for n in range(3)]
    for line in lines:  # each item exactly 2 MiB as sent: two fill the 4 MiB allowed exactly
        line["set"]["title"] = ""
        padding = 2 * 1024 * 1024 - len(jsonio.dumps(_item(line)))
        line["set"]["title"] = "t" * padding
        assert len(jsonio.dumps(_item(line))) == 2 * 1024 * 1024
    write_plan(run_dir, lines)
    summary = apply(fake, run_dir, batch_size=10)
    assert [line["size"] for line in checkpoint_lines(run_dir)[:-1]] == [2, 1]
    assert summary.migrated["scenes"] == 3


def test_the_progress_bar_counts_the_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    apply_plan(fake, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=3, show_progress=False))  # type: ignore[arg-type]
    assert capsys.readouterr() == ("", "")
    run_dir = make_run(tmp_path, fake := FakeDeployment(), name="shown")
    fake.drop = {5}
    with pytest.raises(TransientFailure):
        apply(fake, run_dir)
    fake.drop = set()
    apply_plan(fake, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=3))  # type: ignore[arg-type]
    out, err = capsys.readouterr()  # resumed at the 12 answered: 2 more make 14 of 14
    assert re.fullmatch(r"apply: 14/14 doc \(100%\) in \d\d:\d\d\n", out) and err == ""


def test_batch_sizer_rules_at_their_edges() -> None:
    with pytest.raises(ValueError, match="^batch_size must be at least 1$"):
        BatchSizer(0)
    sizer = BatchSizer(1000, size=100)
    sizer.after_success(100, 0.1)  # a tenth used: five times the room at half the limits
    assert sizer.size == 500
    sizer = BatchSizer(1000, size=100)
    sizer.after_success(100, 0.0)  # nothing measurable used: one more
    assert sizer.size == 101
    sizer.after_success(101, 0.5)  # exactly the target: one more
    assert sizer.size == 102
    sizer.after_limit(100)
    sizer.after_limit(200)
    assert sizer.failed_at == 100 and sizer.size == 50


# --- Convex stopping a one-document batch, unconfirmed statistics, a full disk --------------------------------


def test_a_one_document_batch_convex_stops_is_retried_before_it_counts_as_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deployment, "SINGLE_DOCUMENT_ATTEMPTS", 3)
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    fake.terminate = {"s1": 2, "s4": 4}  # s1 gets through on its third call; s4 does not
    summary = apply(fake, run_dir, batch_size=1, error_budget=1)
    assert fake.sent_ids.count("s1") == 3 and fake.sent_ids.count("s4") == 3
    assert [(e.id, "timed out" in e.message) for e in summary.errors] == [("s4", True)] and summary.passed
    resumed = apply(fake, run_dir, batch_size=1)  # the resume sends it again, and it gets through
    assert resumed.passed and resumed.errors == [] and resumed.migrated == clean_figures(tmp_path)["migrated"]


def clean_figures(tmp_path: Path) -> dict[str, Any]:
    fake = FakeDeployment()
    return figures(apply(fake, make_run(tmp_path, fake, name="clean")))


def test_unconfirmed_statistics_are_never_passed_and_say_to_resume(tmp_path: Path) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    assert apply(fake, run_dir).passed
    fake.references.append({**fake.references[0], "_id": "stray"})  # the deployment does not hold what the figures say
    again = apply(fake, run_dir)
    assert again.status == "unconfirmed" and not again.passed and not again.statistics_confirmed
    assert ledger_row(fake)["status"] == "unconfirmed"
    with pytest.raises(StatisticsUnconfirmed) as raised:
        raise_unless_passed(again, run_dir, 0)
    assert f"--run-dir {run_dir} --steps 03_apply,04_verify --confirm" in raised.value.hint
    raise_unless_passed(apply(FakeDeployment(), make_run(tmp_path, FakeDeployment(), name="other")), run_dir, 0)  # passed: silent


def test_a_full_disk_during_apply_closes_the_ledger_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDeployment()
    run_dir = make_run(tmp_path, fake)
    real_fsync = os.fsync
    written = []

    def fsync(fd: int) -> None:  # the third checkpoint line meets a full disk
        written.append(fd)
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on device"):
        apply(fake, run_dir)
    assert ledger_row(fake)["status"] == "failed" and fake.lock is None  # closed, not left running
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert apply(fake, run_dir).passed  # the resume finishes it
