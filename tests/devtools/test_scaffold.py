"""`runbook new-migration ID` in a temporary copy of the checkout: the folder it writes passes its own tests
(collected where it lives) and dry-runs against the local deployment at once; a taken or malformed id is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.devtools.local_deployment import LocalDeployment
from helpers.migrations import head_id
from tests.flow import seed

ROOT = Path(__file__).resolve().parents[2]
NEW = "003_backfill_version"


def checkout_copy(target: Path) -> Path:
    """The checkout's files as git sees them (tracked, or new and not ignored): no runs, no venv, no caches."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in (n for n in listed if n and (ROOT / n).is_file()):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    return target


def runbook(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`runbook ARGS` with the copy's helpers first on the path, for this process and the notebook kernels."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    return subprocess.run([sys.executable, "-m", "helpers.cli", *args], cwd=copy, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.deployment
@pytest.mark.slow
def test_new_migration_scaffolds_a_folder_that_passes_its_tests_and_dry_runs(tmp_path: Path, deployment: LocalDeployment) -> None:
    copy = checkout_copy(tmp_path / "checkout")
    made = runbook(copy, "new-migration", NEW)
    assert made.returncode == 0, made.stderr
    folder = copy / "helpers" / "migrations" / f"m{NEW}"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "__init__.py", "checks.py", "rules.py", "test_rules.py"]
    assert not (ROOT / "helpers" / "migrations" / f"m{NEW}").exists()  # only the copy changed

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder.relative_to(copy))], cwd=copy,
                           env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout[-2000:]  # collected beside the migration

    with deployment.transport() as transport:
        seed(transport, 20)
    ran = runbook(copy, "run", "--url", deployment.url, "--migration", NEW, "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "references" not in ran.stdout  # it declares no side rows: none are mentioned
    [run_dir] = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "plan" / "plan.json").read_text())
    assert summary["migration_id"] == NEW and summary["actions"] == {"scenes": {"no_change": 20}}  # the rule plans nothing yet

    again = runbook(copy, "new-migration", "003_another")
    assert again.returncode == 2 and "A migration numbered 003 exists already" in again.stderr
    malformed = runbook(copy, "new-migration", "backfill")
    assert malformed.returncode == 2 and "is not a migration id" in malformed.stderr
    chain = subprocess.run([sys.executable, "-c", "from helpers import migrations as m; print(m.get('003_backfill_version').predecessor, m.head_id())"],
                           cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True, text=True)
    assert chain.stdout.split() == [head_id(), NEW]
