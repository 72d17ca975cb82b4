"""The seam between the core and its migrations: the registry, a run folder bound to one migration, the step
every notebook opens and records, and the core running a migration it has never heard of."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from helpers import migrations
from helpers.connection.errors import PreconditionFailed
from helpers.evidence.archive import (
    Manifest,
    StepResults,
    read_step_results,
    write_step_results,
)
from helpers.evidence.run_folder import bind_migration, migration_id, run_id
from helpers.steps import names
from helpers.steps.apply import ApplySummary
from helpers.steps.contract import Step
from helpers.steps.migration import PLAN_LINE_KEYS, Migration
from helpers.steps.plan import PlanSummary
from helpers.steps.rollback import RollbackSummary
from helpers.steps.verify import VerifyReport, run_checks
from tests.toy_migration import TOY, plan_note

ROOT = Path(__file__).resolve().parents[2]
#: Development tooling for migration 001's sample data (not in the wheel), and the migrations themselves.
#: What is not the core: the migrations themselves and the development tools (sample data speaks 001's world).
NOT_CORE = ("migrations", "devtools")


def core_files() -> list[Path]:
    """The core's Python modules (every folder of helpers/ but the migrations and the development tools) and the
    Convex functions every migration runs through."""
    modules = [path for path in sorted((ROOT / "helpers").rglob("*.py")) if path.relative_to(ROOT / "helpers").parts[0] not in NOT_CORE]
    return [*modules, *sorted((ROOT / "convex").glob("migration*.ts"))]


def names_of_001() -> set[str]:
    """Every name of migration 001's world: its tables, the fields it owns and reads, its side rows' table and
    fields, its asset types, its plan line keys, its wording, and the field legacy writers move."""
    from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
    from helpers.migrations.m001_s3_asset_tracking import fields

    side = M001.side_rows
    assert side is not None
    names = {*M001.tables, *(f for owned in M001.owned_fields.values() for f in owned), *fields.ASSET_TYPES.values()}
    names |= {f for pairs in fields.ASSET_SOURCES.values() for pair in pairs.values() for f in pair}
    names |= {side.table, side.owner, side.kind, side.group, side.index, *side.mirrored, *side.groups.values()}
    names |= {M001.status_key or "", M001.updated_at_field or "", "legacyField", "migratedFromLegacy", side.label}
    # Names the core once used for them (issue 22): the seam's 001-shaped fields and 001's wording.
    names |= {"reference_fields", "entity_types", "entityType", "s3Key", "REFERENCE_TABLE", "countRunReferences", "001"}
    # Four of its names are ordinary words the core uses for its own things (a batch size, a file's checksum, the
    # run folder's manifest, a kernel's session): every other name is searched, as a whole word.
    return names - {"", "size", "checksum", "manifest", "session"}


def occurrences(names: set[str], files: list[Path]) -> dict[str, str]:
    pattern = re.compile("|".join(rf"\b{re.escape(name)}\b" for name in sorted(names, key=len, reverse=True)), re.IGNORECASE)
    return {
        f"{path.name}:{number}": line.strip()
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    }


def test_the_core_names_no_table_field_or_migration_of_its_own() -> None:
    """Issue 22's check: a search of the core modules and convex/migration*.ts for every name of 001's world
    (tables, fields, side rows, asset types, plan line keys, wording) finds nothing."""
    assert occurrences(names_of_001(), core_files()) == {}


def test_the_search_would_find_each_kind_of_name() -> None:
    """The check above is not vacuous: it reads the core's files, its names are 001's, and the search finds each
    kind of name (table, owned field, side row field, asset type, plan line key, wording) where 001 uses it."""
    names = {path.name for path in core_files()}
    assert {"plan.py", "verify.py", "apply.py", "rollback.py", "runner.py", "cli.py", "calls.py", "migration.ts"} <= names
    wanted = {"assetReferences", "scenes", "videoSessions", "videoAsset", "s3Key", "s3Url", "contentType", "uploadedAt",
              "entityId", "entityType", "assetType", "legacyStatus", "updatedAt", "video_chunk", "asset references"}
    assert wanted <= names_of_001()
    m001 = sorted((ROOT / "helpers/migrations/m001_s3_asset_tracking").glob("*.py"))
    found = " ".join(occurrences(names_of_001(), m001).values())
    for name in wanted:
        assert re.search(rf"\b{re.escape(name)}\b", found, re.IGNORECASE), name
    planted = ROOT / "convex" / "migration.ts"
    assert occurrences({"assetReferences"}, [planted]) == {}
    assert occurrences({"applyBatch"}, [planted])  # the same search finds a name the file does hold


def test_the_registry_finds_each_migration_by_id_in_order() -> None:
    found = migrations.all_migrations()
    assert [m.id for m in found][:2] == ["001_s3_asset_tracking", "002_retire_legacy_fields"]
    assert migrations.default_id() == "001_s3_asset_tracking"
    assert migrations.get("002_retire_legacy_fields").predecessor == "001_s3_asset_tracking"
    for migration in found:
        assert migration.folder is not None and (migration.folder / "README.md").exists(), migration.id
        assert set(migration.changing_actions) <= set(migration.actions), migration.id
        assert set(migration.owned_fields) <= set(migration.tables), migration.id
        if migration.side_rows is not None:
            assert set(migration.side_rows.sources) <= set(migration.tables), migration.id
    with pytest.raises(PreconditionFailed, match="No migration '003_x'") as unknown:
        migrations.get("003_x")
    assert "001_s3_asset_tracking" in str(unknown.value)


def test_a_run_folder_runs_one_migration(tmp_path: Path) -> None:
    bind_migration(tmp_path / "a", "002_retire_legacy_fields")
    assert migration_id(tmp_path / "a") == "002_retire_legacy_fields" and run_id(tmp_path / "a")
    bind_migration(tmp_path / "a", "002_retire_legacy_fields")  # again: the same migration is fine
    with pytest.raises(PreconditionFailed, match="runs migration 002_retire_legacy_fields, not 001_s3_asset_tracking"):
        bind_migration(tmp_path / "a", "001_s3_asset_tracking")
    drawn = run_id(tmp_path / "b")  # a run id drawn before the migration is bound: the binding keeps it
    bind_migration(tmp_path / "b", "002_retire_legacy_fields")
    assert run_id(tmp_path / "b") == drawn and migration_id(tmp_path / "b") == "002_retire_legacy_fields"


@pytest.mark.parametrize("run_json", [None, {"run_id": "r"}])
def test_a_folder_that_records_no_migration_is_refused_not_judged_as_the_first(tmp_path: Path, run_json: dict[str, str] | None) -> None:
    if run_json is not None:
        (tmp_path / "run.json").write_text(json.dumps(run_json))
    with pytest.raises(PreconditionFailed, match="records no migration"):
        migration_id(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run.json"] if run_json else [])  # reading wrote nothing


@pytest.mark.parametrize("model", [PlanSummary, ApplySummary, VerifyReport, RollbackSummary, Manifest])
def test_a_steps_file_that_names_no_migration_is_refused(model: type[BaseModel]) -> None:
    """The five files a step writes name their migration; one that does not is never read as the first one's."""
    with pytest.raises(ValidationError) as refused:
        model.model_validate({})
    assert "migration_id" in {str(error["loc"][0]) for error in refused.value.errors()}


def _declared(id_: str, predecessor: str | None) -> Migration:
    return replace(TOY, id=id_, predecessor=predecessor)


@pytest.mark.parametrize(("chain", "refusal"), [
    ([("m001_a", _declared("001_a", None)), ("m002_b", _declared("002_b", "001_a"))], None),
    ([("m001_a", _declared("001_a", None)), ("m002_b", _declared("002_c", "001_a"))], "folder m002_b declares id '002_c'"),
    ([("m001_a", _declared("001_a", None)), ("m002_b", _declared("002_b", "001_x"))], "unknown predecessor '001_x'"),
    ([("m001_a", _declared("001_a", None)), ("m002_b", _declared("002_b", "001_a")), ("m003_c", _declared("003_c", "001_a"))],
     r"2 heads \(002_b, 003_c\)"),
    ([("m001_a", _declared("001_a", None)), ("m002_b", _declared("002_b", None))], "2 heads"),
    ([("m001_a", _declared("001_a", "002_b")), ("m002_b", _declared("002_b", "001_a"))], "0 heads"),
    ([("m001_a", _declared("001_a", None)), ("m001_a", _declared("001_a", None))], "declared twice"),
])
def test_the_registry_refuses_a_broken_chain(chain: list[tuple[str, Migration]], refusal: str | None) -> None:
    if refusal is None:
        assert [m.id for m in migrations.check_chain(chain)] == ["001_a", "002_b"]
        return
    with pytest.raises(PreconditionFailed, match=refusal):
        migrations.check_chain(chain)


def test_the_shipped_registry_is_one_chain_whose_head_is_the_newest() -> None:
    shipped = migrations.all_migrations()
    assert migrations.check_chain([(f"m{m.id}", m) for m in shipped]) == shipped
    assert migrations.head_id() == shipped[-1].id != migrations.default_id()


@pytest.mark.parametrize("step", sorted(names.PREVIOUS))
def test_every_step_refuses_when_the_step_before_did_not_pass(tmp_path: Path, step: str) -> None:
    before = names.PREVIOUS[step]
    with pytest.raises(PreconditionFailed):  # not run at all
        Step.open(step, "http://127.0.0.1:9", tmp_path, "001_s3_asset_tracking")
    write_step_results(tmp_path, before, StepResults(step=before, status="failed"))
    with pytest.raises(PreconditionFailed, match=f"step {before} did not pass"):
        Step.open(step, "http://127.0.0.1:9", tmp_path, "001_s3_asset_tracking")
    write_step_results(tmp_path, before, StepResults(step=before, status="passed"))
    opened = Step.open(step, "http://127.0.0.1:9", tmp_path, "001_s3_asset_tracking")
    assert opened.migration.id == "001_s3_asset_tracking" and "001_s3_asset_tracking" in opened.heading()


def test_a_step_records_its_results_and_its_ledger_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows: list[dict[str, Any]] = []
    monkeypatch.setattr("helpers.evidence.archive.read_ledger", lambda transport, migration: [])
    monkeypatch.setattr("helpers.evidence.archive.record_run", lambda transport, migration, run, **row: rows.append({"migration": migration, **row}))
    write_step_results(tmp_path, names.APPLY, StepResults(step=names.APPLY, status="passed"))
    step = Step.open(names.VERIFY, "http://127.0.0.1:9", tmp_path, "001_s3_asset_tracking")

    class Report:
        passed, plan_sha256, backup_sha256 = False, "p" * 64, "b" * 64

        def model_dump(self, mode: str) -> dict[str, Any]:
            return {"checks": []}

    results = step.record(Report())
    assert results.status == "failed" and read_step_results(tmp_path, names.VERIFY).status == "failed"
    assert results.inputs["plan_sha256"] == "p" * 64
    [row] = rows
    assert (row["migration"], row["step"], row["status"]) == ("001_s3_asset_tracking", names.VERIFY, "failed")
    assert "04_verify/results.json" in row["evidence"]


def test_verify_runs_the_core_checks_and_the_migrations_own_on_a_migration_it_never_heard_of(toy_registered: Migration) -> None:
    backup = [{"_id": "n1", "text": "a b", "updatedAt": 1}, {"_id": "n2", "text": "c", "updatedAt": 1}, {"_id": "n3", "text": 5}]
    plan = [plan_note(doc) for doc in backup]
    assert all(set(PLAN_LINE_KEYS) <= set(line) for line in plan)
    live = [{**doc, **line["set"]} for doc, line in zip(backup, plan, strict=False)]

    def outcome(documents: list[dict[str, Any]]) -> dict[str, int]:
        result = run_checks(plan, lambda table: iter(backup), lambda table: iter(documents), migration=toy_registered)
        return {check.name: check.failed for check in result.checks}

    assert outcome(live) == {
        "planned_fields_written": 0, "legacy_fields_unchanged": 0, "nothing_outside_plan_changed": 0,
        "no_backup_document_missing": 0, "word_count_right": 0,  # no reference check: it tracks no asset
    }
    wrong = [{**live[0], "wordCount": 9}, live[1], live[2]]
    assert outcome(wrong)["planned_fields_written"] == 1 and outcome(wrong)["word_count_right"] == 1
    touched = [{**live[0], "text": "x y"}, live[1], live[2]]  # a field the migration does not own
    assert outcome(touched)["legacy_fields_unchanged"] == 1
    extra = [live[0], live[1], {**live[2], "wordCount": 0}]  # an owned field the plan does not set
    assert outcome(extra)["nothing_outside_plan_changed"] == 1
    assert outcome(live[:2])["no_backup_document_missing"] == 1
