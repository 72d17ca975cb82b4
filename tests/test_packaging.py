"""Project hygiene that checks rely on: one source of dependencies, output-free source notebooks, parameters."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _pins(lines: list[str], separator: str) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(rf"^\s*-?\s*([A-Za-z0-9_.-]+)\s*{separator}\s*([0-9][^\s#]*)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_environment_yml_lists_the_same_pins_as_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["lab"]
    from_pyproject = _pins([d.split("#")[0] for d in declared], "==")
    env_lines = (ROOT / "environment.yml").read_text().splitlines()
    from_env = {**_pins(env_lines, "="), **_pins(env_lines, "==")}
    from_env.pop("python", None)
    from_env.pop("nodejs", None)
    assert from_env == from_pyproject


def test_notebook_names_and_parameters() -> None:
    names = [path.stem for path in NOTEBOOKS]
    assert names == ["01_backup_snapshot", "02_dry_run", "03_apply", "04_verify", "05_rollback"]
    for path in NOTEBOOKS:
        parameters = papermill.inspect_notebook(str(path))
        assert {"convex_url", "run_dir"} <= set(parameters), path.name
        assert not any("key" in name.lower() or "secret" in name.lower() for name in parameters), path.name
    assert "confirm" in papermill.inspect_notebook(str(ROOT / "notebooks" / "03_apply.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_source_notebooks_are_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: run `make strip`"
    assert notebook.cells[0].cell_type == "markdown" and "Parameters" in notebook.cells[0].source


def test_notebooks_only_call_the_helpers_public_api() -> None:
    for path in NOTEBOOKS:
        source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
        assert not re.search(r"\bimport (httpx|requests|orjson)\b|from helpers\.\w+ import _|\._\w+\(", source), path.name
