"""Project hygiene that checks rely on (one source of dependencies, output-free source notebooks, parameters) and the\ninstalled package: the wheel, installed into a fresh venv, runs the runbook outside the checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import nbformat
import papermill
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from helpers import runner
from helpers.devtools import sample_data
from helpers.devtools.local_deployment import LocalDeployment
from helpers.steps import names

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
    stems = [path.stem for path in NOTEBOOKS]
    assert stems == list(names.ALL)
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


# --- the installed package, outside the checkout ----------------------------------------------------------------

#: Development tooling: it needs the checkout (local_deployment/, node_modules/) and stays out of the wheel.
DEVELOPMENT_TOOLS = "helpers/devtools/"
#: Checkout folders that are not the runbook: none of them may be in the wheel.
CHECKOUT_ONLY = ("convex/", "tests/", "local_deployment/", "benchmarks/", "notebooks/", "docs/")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` installs, built from a copy of the checkout's files (what git tracks or would
    track), so that setuptools' build/ and egg-info, stale or not, stay out of the checkout and of the wheel."""
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    # This venv's build backend (the test extra pins setuptools): no download, no isolated build environment.
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(dist), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, f"{built.stderr[-3000:]}\nfix: `make setup` installs the pinned setuptools into the venv"
    (wheel_file,) = dist.glob("convex_asset_runbook-*.whl")
    return wheel_file


def _checkout_files() -> list[str]:
    """The checkout's files as git sees them (tracked, or new and not ignored), relative POSIX paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]


def _notebook_imports() -> set[str]:
    """The helpers modules the step notebooks import (their kernels run `from helpers import …`)."""
    modules = set()
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                for source, names in re.findall(r"^from (helpers(?:\.\w+)*) import (.+)$", cell.source, re.M):
                    folder = source.replace(".", "/")  # `from helpers.steps import plan` imports a module of a package
                    modules |= {folder} | {f"{folder}/{name.split(' as ')[0].strip()}" for name in names.split(",")}
    return {module for module in modules if (ROOT / f"{module}.py").is_file()}


@pytest.mark.slow
def test_the_wheel_carries_the_notebooks_and_leaves_development_tooling_out(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in NOTEBOOKS:
            assert archive.read(f"helpers/notebooks/{path.name}") == path.read_bytes(), path.name
    assert not [name for name in names if name.startswith(DEVELOPMENT_TOOLS)]
    migration_tests = {name for name in names if re.fullmatch(r"helpers/migrations/m[^/]+/test_\w+\.py", name)}
    assert not migration_tests, migration_tests  # a migration's tests stay beside it in the checkout
    runbook = {name for name in _checkout_files() if name.startswith("helpers/") and "/test_" not in name and not name.startswith(DEVELOPMENT_TOOLS)}
    assert runbook <= names, runbook - names  # a module or data file of a migration added later is shipped too
    assert not [name for name in names if name.startswith(CHECKOUT_ONLY)]
    imported = _notebook_imports()
    assert {"helpers/steps/contract", "helpers/notebook_ui/display", "helpers/steps/plan", "helpers/steps/verify"} <= imported  # the parse works
    assert {f"{module}.py" for module in imported} <= names, {f"{m}.py" for m in imported} - names


def test_python3_kernels_are_the_runbooks_own_python_whatever_spec_jupyter_finds_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("python3", "other"):
        (tmp_path / "kernels" / name).mkdir(parents=True)
        (tmp_path / "kernels" / name / "kernel.json").write_text(
            json.dumps({"argv": [f"/elsewhere/{name}", "-f", "{connection_file}"], "display_name": name, "language": "python"})
        )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == "/elsewhere/python3"  # what Jupyter alone picks
    assert runner.BoundKernelManager(kernel_name="python3").kernel_spec.argv[0] == sys.executable
    assert runner.BoundKernelManager(kernel_name="other").kernel_spec.argv[0] == "/elsewhere/other"  # as Jupyter


def _venv_without_the_runbook(venv: Path, links: Path) -> Path:
    """A fresh venv whose dependencies are this venv's distributions (the same pins) minus the runbook itself,
    reached through a folder of links: pip resolves the wheel's requirements against them, offline, in seconds.
    The data files they install beside the venv (nbconvert's templates in share/jupyter) are linked too, all but
    the kernel specs: which Python runs the notebooks is for the runbook to decide."""
    site = Path(sysconfig.get_paths()["purelib"])
    links.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(("__editable__", "convex_asset_runbook", "helpers")):
            (links / entry.name).symlink_to(entry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "share" / "jupyter").mkdir(parents=True)
    for entry in (Path(sys.prefix) / "share" / "jupyter").iterdir():
        if entry.name != "kernels":
            (venv / "share" / "jupyter" / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    (Path(fresh_site) / "dependencies.pth").write_text(f"{links}\n")
    return python


@pytest.mark.slow
@pytest.mark.deployment
def test_the_installed_wheel_runs_the_runbook_outside_the_checkout(wheel: Path, tmp_path: Path, deployment: LocalDeployment) -> None:
    python = _venv_without_the_runbook(tmp_path / "venv", tmp_path / "dependencies")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    runbook = python.parent / "runbook"
    operator = tmp_path / "operator"  # where the operator stands: no checkout, and someone else's helpers/ folder
    (operator / "helpers").mkdir(parents=True)
    (operator / "helpers" / "__init__.py").write_text('raise ImportError("the helpers/ where the operator stands")\n')
    # A "python3" kernel spec of another Python, found first by Jupyter: the runbook must not run its notebooks there.
    decoy = tmp_path / "jupyter" / "kernels" / "python3"
    decoy.mkdir(parents=True)
    (decoy / "kernel.json").write_text(json.dumps(
        {"argv": ["/nonexistent/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "decoy", "language": "python"}
    ))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JUPYTER_PATH"] = str(tmp_path / "jupyter")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(runbook), *args], cwd=operator, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([str(python), "-I", "-c", "import helpers; print(helpers.__file__)"], cwd=operator, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where
    with deployment.transport() as transport:
        sample_data.load(transport, 120)

    done = run("run", "--url", deployment.url, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (operator / "runs").iterdir()
    for step in (names.BACKUP, names.DRY_RUN):
        executed = nbformat.read(run_dir / step / f"{step}.ipynb", as_version=4)
        code = [cell for cell in executed.cells if cell.cell_type == "code"]
        assert code and all(cell.execution_count for cell in code), step
        assert json.loads((run_dir / step / "results.json").read_text())["status"] == "passed"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert manifest["runbook"] == {"commit": "unknown", "dirty": None, "installed_version": version}
    checked = run("check-archive", str(run_dir), "--url", deployment.url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = run("params", names.APPLY)
    assert listed.returncode == 0 and "confirm: bool = False" in listed.stdout, listed.stdout + listed.stderr

    for command in (["demo"], ["local-deployment", "--port", "1", "--fault-rate", "0.5"]):
        refused = run(*command)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "development tooling" in refused.stderr and "fix: Clone the runbook's repository" in refused.stderr
