"""The run folder as evidence: manifest hashes, tamper detection, hash chain between steps, secret scans."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers.connection.errors import PreconditionFailed
from helpers.evidence import archive, archive_check, compression
from helpers.evidence.archive import StepResults
from helpers.evidence.checkpoint_file import CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE, checkpoint_path
from helpers.evidence.run_folder import bind_migration
from helpers.steps import names

DEPLOYMENT = "https://ops:hunter2@happy-otter-123.convex.cloud/?token=abc123"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _results(run_dir: Path, step: str, inputs: dict[str, str], outputs: dict[str, str] | None = None) -> None:
    archive.write_step_results(run_dir, step, StepResults(step=step, status="passed", summary={}, inputs=inputs, outputs=outputs or {}))


def _seal(run_dir: Path) -> Path:
    return archive.write_manifest(run_dir, archive.RunFacts(
        deployment_url=DEPLOYMENT,
        operator="alice",
        started_at="2025-01-01T00:00:00+00:00",
        finished_at="2025-01-01T00:10:00+00:00",
        steps={names.DRY_RUN: "passed", names.APPLY: "passed", names.VERIFY: "passed"},
    ))


@pytest.fixture(params=[CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE])
def sealed(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A consistent run folder: backup, plan, dry-run, apply and verify results chained by hash, then sealed; its
    checkpoint compressed, or plain as in folders written before."""
    run_dir = tmp_path / "run"
    bind_migration(run_dir, "001_s3_asset_tracking")
    plan_lines = b'{"id":"s1","action":"migrate"}\n{"id":"s2","action":"skip"}\n'
    _write(run_dir / "plan" / "plan.jsonl", plan_lines)
    _write(run_dir / "plan" / "problems.csv", b"table,id,action,code,severity,field,message\n")
    archive.write_json_atomic(run_dir / "plan" / "plan.json", {
        "plan_file": "plan/plan.jsonl", "plan_sha256": _sha(plan_lines), "documents": 2,
    })
    snapshot = b"PK\x03\x04 not really a zip"
    _write(run_dir / "backup" / "snapshot_1.zip", snapshot)
    archive.write_json_atomic(run_dir / "backup" / "backup.json", {
        "zip_file": "snapshot_1.zip", "sha256": _sha(snapshot), "counts": {"scenes": 1},
    })
    checkpoint = run_dir / "apply" / request.param
    _write(checkpoint, compression.encode_record(checkpoint, b'{"start":0,"end":1,"results":[]}\n'))
    backup = {"backup_sha256": _sha(snapshot)}
    _results(run_dir, names.DRY_RUN, backup, {"plan_sha256": _sha(plan_lines)})
    _results(
        run_dir, names.APPLY, {"plan_sha256": _sha(plan_lines), **backup},
        {"checkpoint_sha256": archive.sha256_file(checkpoint)},  # of the bytes as stored
    )
    _results(
        run_dir, names.VERIFY,
        {"plan_sha256": _sha(plan_lines), **backup, "apply_results_sha256": archive.sha256_file(run_dir / names.APPLY / "results.json")},
    )
    _seal(run_dir)
    return run_dir


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_manifest_lists_every_file_with_its_hash_and_size(sealed: Path) -> None:
    manifest = _manifest(sealed)
    on_disk = {p.relative_to(sealed).as_posix() for p in sealed.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert len(on_disk) == 10  # run.json among them
    for name, entry in manifest["files"].items():
        data = (sealed / name).read_bytes()
        assert entry == {"sha256": _sha(data), "size": len(data)}


def test_manifest_records_who_what_where_without_credentials(sealed: Path) -> None:
    manifest = _manifest(sealed)
    assert manifest["operator"] == "alice"
    assert manifest["steps"] == {names.DRY_RUN: "passed", names.APPLY: "passed", names.VERIFY: "passed"}
    assert manifest["started_at"] == "2025-01-01T00:00:00+00:00"
    assert "happy-otter-123.convex.cloud" in manifest["deployment_url"]
    assert "hunter2" not in manifest["deployment_url"] and "abc123" not in manifest["deployment_url"]
    for name in ("python", "papermill", "nbformat", "nbconvert", "pandas", "convex", "httpx"):
        assert manifest["versions"][name] and manifest["versions"][name] != "not installed"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", manifest["runbook"]["commit"])


def test_check_passes_on_an_untouched_folder(sealed: Path) -> None:
    check = archive_check.check_archive(sealed)
    assert check.problems == []
    assert check.ok


def test_check_catches_a_modified_file(sealed: Path) -> None:
    (sealed / "plan" / "problems.csv").write_bytes(b"table,id\nscenes,forged\n")
    check = archive_check.check_archive(sealed)
    assert not check.ok
    assert len(check.problems) == 1
    assert check.problems[0].startswith("altered: plan/problems.csv")


def test_check_catches_a_same_size_modification(sealed: Path) -> None:
    path = sealed / "plan" / "problems.csv"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    assert [p.split(" (")[0] for p in archive_check.check_archive(sealed).problems] == ["altered: plan/problems.csv"]


def test_check_catches_a_missing_file(sealed: Path) -> None:
    checkpoint = checkpoint_path(sealed / "apply")
    assert archive.step_evidence(sealed, archive.read_step_results(sealed, names.APPLY)).keys() >= {f"apply/{checkpoint.name}"}
    checkpoint.unlink()
    problems = archive_check.check_archive(sealed).problems
    assert f"missing: apply/{checkpoint.name}" in problems
    # The apply results named the checkpoint's hash: the chain notices too.
    assert any(p.startswith("chain: 03_apply outputs.checkpoint_sha256") for p in problems)


def test_check_catches_an_added_file(sealed: Path) -> None:
    _write(sealed / "plan" / "extra.csv", b"slipped in later\n")
    assert archive_check.check_archive(sealed).problems == ["not in the manifest: plan/extra.csv"]


def test_check_fails_without_a_manifest(sealed: Path) -> None:
    (sealed / "manifest.json").unlink()
    check = archive_check.check_archive(sealed)
    assert not check.ok
    assert "manifest.json is missing" in check.problems[0]


def test_check_catches_apply_that_used_another_plan_even_when_resealed(sealed: Path) -> None:
    """A consistent manifest is not enough: apply must name the plan and backup of this folder."""
    _results(sealed, names.APPLY, {"plan_sha256": "0" * 64, "backup_sha256": "f" * 64})
    _seal(sealed)
    problems = archive_check.check_archive(sealed).problems
    assert any(p.startswith("chain: 03_apply inputs.plan_sha256 is " + "0" * 64) for p in problems)
    assert any(p.startswith("chain: 03_apply inputs.backup_sha256 is " + "f" * 64) for p in problems)
    # verify recorded the hash of the apply results it checked, which are no longer these.
    assert any(p.startswith("chain: 04_verify inputs.apply_results_sha256") for p in problems)


def test_check_catches_a_replaced_plan_even_when_resealed(sealed: Path) -> None:
    _write(sealed / "plan" / "plan.jsonl", b'{"id":"s1","action":"migrate","set":{"forged":true}}\n')
    _seal(sealed)
    problems = archive_check.check_archive(sealed).problems
    assert problems == ["chain: plan/plan.jsonl does not hash to the plan_sha256 recorded in plan/plan.json"]


def test_check_catches_a_replaced_snapshot_even_when_resealed(sealed: Path) -> None:
    _write(sealed / "backup" / "snapshot_1.zip", b"PK\x03\x04 another deployment's data")
    _seal(sealed)
    problems = archive_check.check_archive(sealed).problems
    assert problems == ["chain: backup/snapshot_1.zip does not hash to the sha256 recorded in backup/backup.json"]


def test_check_catches_steps_that_used_another_backup(sealed: Path) -> None:
    backup = json.loads((sealed / "backup" / "backup.json").read_text())
    archive.write_json_atomic(sealed / "backup" / "backup.json", {**backup, "sha256": "a" * 64})
    _seal(sealed)
    problems = archive_check.check_archive(sealed).problems
    assert {p.split(" is ")[0] for p in problems} == {
        "chain: backup/snapshot_1.zip does not hash to the sha256 recorded in backup/backup.json",
        "chain: 02_dry_run inputs.backup_sha256",
        "chain: 03_apply inputs.backup_sha256",
        "chain: 04_verify inputs.backup_sha256",
    }


def test_write_json_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    archive.write_json_atomic(path, {"b": 1, "a": [1, 2]})
    archive.write_json_atomic(path, {"b": 2, "a": "é"})
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert path.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 2\n}\n'
    assert path.stat().st_mode & 0o777 == archive.FILE_MODE  # not mkstemp's private 0600


def test_write_json_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    archive.write_json_atomic(path, {"ok": True})
    with pytest.raises(TypeError):
        archive.write_json_atomic(path, {"not json": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert json.loads(path.read_text()) == {"ok": True}


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # several chunks
    (tmp_path / "big").write_bytes(data)
    assert archive.sha256_file(tmp_path / "big") == _sha(data)


def test_step_results_round_trip_and_refusals(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed, match="step 03_apply has not run in this run folder") as missing:
        archive.read_step_results(tmp_path, names.APPLY)
    assert "03_apply/03_apply.ipynb" in missing.value.hint  # the run folder's notebook

    archive.write_step_results(tmp_path, names.APPLY, StepResults(step=names.APPLY, status="failed", summary={"errors": 3}, inputs={}, outputs={}))
    read = archive.read_step_results(tmp_path, names.APPLY)
    assert (read.status, read.summary) == ("failed", {"errors": 3})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", read.finished_at)
    with pytest.raises(PreconditionFailed, match="03_apply did not pass") as refused:
        read.require_passed()
    assert names.APPLY in refused.value.hint
    archive.write_step_results(tmp_path, names.APPLY, read.model_copy(update={"status": "passed"}))
    archive.read_step_results(tmp_path, names.APPLY).require_passed()


def test_new_run_dir_names_by_utc_time_and_never_collides(tmp_path: Path) -> None:
    first, second = archive.new_run_dir(tmp_path / "runs"), archive.new_run_dir(tmp_path / "runs")
    assert first != second and first.is_dir() and second.is_dir()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", first.name)


SECRET = "prod:happy-otter-123|eyJ2MiI6ImMzZjQ1YTk5YjIxZDRjZmE5In0="


@pytest.mark.parametrize(
    "name, content",
    [
        ("raw.txt", f"key={SECRET}\n".encode()),
        ("base64.json", b'{"image/png": "' + base64.b64encode(b"xx" + SECRET.encode() + b"yy") + b'"}'),
        ("urlsafe.txt", base64.urlsafe_b64encode(b"." + SECRET.encode())),
        ("url.log", f"GET /?auth={quote(SECRET, safe='')} 200".encode()),
    ],
)
def test_find_secret_finds_a_planted_key(sealed: Path, name: str, content: bytes) -> None:
    _write(sealed / names.VERIFY / name, content)
    assert archive_check.find_secret(sealed, SECRET) == [f"04_verify/{name}"]
    with pytest.raises(archive.SecretLeaked, match=f"04_verify/{name}"):
        archive_check.assert_no_secret(sealed, SECRET)


def test_find_secret_finds_a_key_across_a_chunk_boundary(tmp_path: Path) -> None:
    _write(tmp_path / "plan" / "plan.jsonl", b"x" * (archive.CHUNK - 10) + SECRET.encode() + b"x" * 100)
    assert archive_check.find_secret(tmp_path, SECRET) == ["plan/plan.jsonl"]


def test_find_secret_finds_nothing_in_a_clean_folder(sealed: Path) -> None:
    assert archive_check.find_secret(sealed, SECRET) == []
    archive_check.assert_no_secret(sealed, SECRET)
