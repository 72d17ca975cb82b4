"""The papermill chain: run the step notebooks in order, headless, each leaving its executed copy as evidence.

The notebooks hold the runbook's visible record; this module only sequences them. A step runs only when the
one before it passed, and the run folder is sealed whatever happens: index.html, the manifest, and the
manifest's sha256 in the deployment's ledger.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import getpass
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import papermill
from ipykernel.kernelspec import RESOURCES, get_kernel_dict
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from pydantic import BaseModel
from traitlets import default

from helpers.connection import errors
from helpers.connection.errors import (
    DeployKeyMissing,
    DiskFull,
    PreconditionFailed,
    RunbookError,
)
from helpers.connection.transport import (
    ConvexTransport,
    check_deployment_url,
    deploy_key_from_env,
    redact_url,
)
from helpers.evidence.archive import (
    STEP_STARTED_ENV,
    Manifest,
    RunFacts,
    StepResults,
    commit_label,
    new_run_dir,
    read_manifest,
    read_step_results,
    step_dir,
    write_json_atomic,
    writing,
)
from helpers.evidence.pages import (
    REPORT_SUFFIX,
    PageContext,
    render_step,
    resume_command,
    section_of,
    split_fix,
)
from helpers.evidence.pages import where as where_failed
from helpers.evidence.run_folder import (
    bind_migration,
    create_run,
    holds_its_notebooks,
    migration_id,
    operator_for,
    operator_of,
    run_id,
    run_lock,
)
from helpers.migrations import default_id
from helpers.migrations import get as get_migration
from helpers.paths import NOTEBOOKS_DIR
from helpers.sealing import Sealed, seal_folder
from helpers.steps import names
from helpers.steps.migration import Migration

#: The steps a migration's `require` guards (its own steps refuse too; the runner asks once, before a folder exists).
GUARDED_STEPS = frozenset({names.FORWARD[0], *names.PLANNING})
#: The seal is recorded after the steps: a deployment that stopped answering must not hold up the run's end.
SEAL_ATTEMPTS = 3


class StepFailed(RunbookError):
    """A step notebook raised, or finished without a passed results file; its executed copy shows why."""

    #: The sealed manifest's sha256, set by run_migration once the folder is sealed after the failure.
    manifest_sha256: str | None = None

    def __init__(
        self,
        step: str,
        cell_index: int | None,
        ename: str,
        evalue: str,
        notebook_path: Path,
        cell_source: str = "",
        exec_count: int | None = None,
        section: str | None = None,
        resume: str | None = None,
    ) -> None:
        self.step = step
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        self.notebook_path = Path(notebook_path)
        if section and exec_count is not None:
            where = f" in {where_failed(section, f'In [{exec_count}]')}"  # as the step's page names it
        elif section:
            where = f" in section “{section}” (cell {cell_index})"
        elif cell_index is not None:
            first_line = next((line.strip() for line in cell_source.splitlines() if line.strip()), "")
            prompt = "" if exec_count is None else f"In [{exec_count}]: "
            where = f" in cell {cell_index} ({prompt}{first_line!r})"
        else:
            where = ""
        message, fix = split_fix(evalue)
        then = (f"resume the run with `{resume}` (the step's page names the same command), or start a new run" if resume else
                f"run the step again in this run folder (--run-dir {self.notebook_path.parent.parent}) or start a new run")
        details = f"{self.notebook_path.with_suffix(REPORT_SUFFIX)} (executed notebook: {self.notebook_path})"
        if fix and getattr(getattr(errors, ename, None), "names_next_step", False):
            hint = f"{fix.rstrip('.')}. Details: {details}."  # its fix says where to go on; "this run folder" may be wrong
        elif fix:
            hint = f"{fix.rstrip('.')}. Then {then}. Details: {details}."
        else:
            hint = f"Read {details}, fix the cause, then {then}."
        super().__init__(f"step {step} failed{where}: {ename}: {message}", hint=hint)


class Statistics(BaseModel):
    """The figures the migration promises; planned counts when the run was a dry run. Applied figures count
    what the run folder's apply did in total, across resumes; `recheck` says the last apply only re-confirmed them."""

    planned: bool
    recheck: bool = False
    #: The migration's label of each table it changes -> documents migrated (or to migrate, when planned).
    migrated: dict[str, int]
    #: The label of the side rows the migration creates -> how many (created, or to create when planned); empty
    #: for a migration that creates none.
    side_rows: dict[str, int]
    errors: list[dict[str, str]]
    #: apply's own duration ("total execution time" of the migration); None when apply did not run.
    apply_seconds: float | None
    #: the whole run's wall time, from the first step's start to the seal.
    wall_seconds: float


class RunResult(BaseModel):
    run_dir: Path
    passed: bool
    steps: dict[str, str]
    statistics: Statistics | None
    #: sha256 of the sealed manifest: the line an operator pastes into the change ticket.
    manifest_sha256: str
    #: None when the seal is recorded in the deployment's ledger; otherwise why it is not.
    seal_not_recorded: str | None = None


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """The kernel inherits this process's environment: the deploy key reaches it this way, never as a parameter."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_PR_SET_PDEATHSIG = 1


def _die_with(parent_pid: int, prctl: Any) -> None:
    """Runs in the kernel's process between fork and exec: the kernel gets SIGKILL when its runner dies."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the runner died before the line above took effect
        os.kill(os.getpid(), signal.SIGKILL)


class QuietShutdownKernelManager(AsyncKernelManager):
    """Shuts the kernel down without first sending it SIGINT.

    jupyter_client interrupts a kernel before asking it to shut down, to stop a cell still running. papermill
    shuts the kernel down only once no cell runs, so that interrupt can only land while the kernel finishes
    handling its last message, which ipykernel then logs as "ERROR | KeyboardInterrupt caught in kernel"
    during a run that passed. The shutdown request and the SIGTERM/SIGKILL that follow a kernel that does not
    stop are unchanged; an interrupt outside shutdown (a cell timeout) still goes through."""

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()


class OwnPythonKernelSpecs(KernelSpecManager):
    """"python3" is the Python running the runbook (ipykernel's native kernel), whatever kernel specs are registered.

    The notebooks import the helpers of the runbook that runs them; a "python3" spec another Python registered
    (in ~/.local/share/jupyter, JUPYTER_PATH or the system's share/jupyter) would run them with that Python's
    packages, or none. Other kernel names resolve as Jupyter resolves them."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name != NATIVE_KERNEL_NAME:
            return super().get_kernel_spec(kernel_name)

        return self.kernel_spec_class(resource_dir=RESOURCES, **get_kernel_dict())


class BoundKernelManager(QuietShutdownKernelManager):
    """A notebook kernel that cannot outlive the process that started it. Jupyter starts kernels in their own
    session, so a runner killed with SIGKILL would leave its kernel running (and applying); on Linux the
    kernel asks the OS to kill it when its parent dies (PR_SET_PDEATHSIG, strictly: when the thread that
    started it ends, which is the thread executing the step, alive until the kernel is shut down);
    ipykernel's own parent poller (a 1 s poll) remains as the fallback elsewhere. Its "python3" kernel is the
    Python running the runbook (OwnPythonKernelSpecs)."""

    @default("kernel_spec_manager")
    def _own_python_kernel_specs(self) -> KernelSpecManager:
        return OwnPythonKernelSpecs(data_dir=self.data_dir)

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        if sys.platform.startswith("linux"):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
            kw["preexec_fn"] = functools.partial(_die_with, os.getpid(), prctl)
        await super()._async_launch_kernel(kernel_cmd, **kw)


def notebook_path(step: str, notebooks_dir: Path = NOTEBOOKS_DIR) -> Path:
    path = Path(notebooks_dir) / f"{step}.ipynb"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in Path(notebooks_dir).glob("*.ipynb")))
        raise PreconditionFailed(f"No notebook for step {step!r} in {notebooks_dir}.", hint=f"Known steps: {known}.")
    return path


def check_parameters(step: str, parameters: Mapping[str, Any], notebooks_dir: Path = NOTEBOOKS_DIR) -> None:
    """Refuses names the notebook does not declare (papermill would only warn) and any value holding the deploy key."""
    declared = papermill.inspect_notebook(str(notebook_path(step, notebooks_dir)))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise PreconditionFailed(
            f"{step} has no parameter {', '.join(unknown)}.", hint=f"Its parameters are: {', '.join(declared)}."
        )
    url = str(parameters.get("convex_url", ""))
    if url and redact_url(url) != url:
        raise PreconditionFailed(
            f"The deployment URL given to {step} carries credentials ({redact_url(url)}).",
            hint="Give the plain deployment URL; the key goes in CONVEX_DEPLOY_KEY (parameters are written into the evidence).",
        )
    key = _deploy_key()
    if key and any(key in str(value) for value in parameters.values()):
        raise PreconditionFailed(
            f"A parameter of {step} holds the deploy key.",
            hint="Never pass the key as a parameter (it would be written into the evidence): export CONVEX_DEPLOY_KEY.",
        )


def _deploy_key() -> str | None:
    try:
        return deploy_key_from_env()
    except DeployKeyMissing:
        return None


#: run_dir as each step's notebook is given it: relative to the notebook's own folder (`<run>/<step>/`), where
#: JupyterLab and the runner start its kernel, so the folder stays right wherever it is moved or archived.
RUN_DIR_FROM_STEP = ".."


def step_notebook(run_dir: Path, step: str) -> Path:
    """Where a step's notebook lives in its run folder: prepared by `runbook new-run`, executed in place."""
    return step_dir(run_dir, step) / f"{step}.ipynb"


def step_values(step: str, convex_url: str, run_dir: Path, parameters: Mapping[str, Any] | None, notebooks_dir: Path) -> dict[str, Any]:
    """The parameters a step's notebook gets, refused (check_parameters) before anything is written."""
    values = {"convex_url": convex_url, "run_dir": RUN_DIR_FROM_STEP, "migration": migration_id(run_dir), **(parameters or {})}
    check_parameters(step, values, notebooks_dir)
    return values


def prepare_run(
    convex_url: str,
    *,
    migration: str | None = None,
    runs_dir: Path = Path("runs"),
    operator: str | None = None,
    steps: Sequence[str] = names.FORWARD,
    notebooks_dir: Path = NOTEBOOKS_DIR,
) -> Path:
    """A new run folder holding each step's notebook with its parameters set (papermill's prepare-only mode), at
    `<run>/<step>/<step>.ipynb`: the analyst opens and runs them as they are (`runbook lab <run>`), `runbook run
    --run-dir <run>` executes the same files headless, and `runbook seal <run>` seals them where they are. The
    templates in notebooks/ are only read, so the runbook's checkout stays clean."""
    declared = get_migration(migration or default_id())
    if redact_url(convex_url) != convex_url:
        raise PreconditionFailed(
            f"The deployment URL carries credentials ({redact_url(convex_url)}). No run folder was made.",
            hint="Give the plain deployment URL; the key goes in CONVEX_DEPLOY_KEY (the URL is written into the notebooks).",
        )
    run_dir = new_run_dir(runs_dir)
    with writing(run_dir):
        create_run(run_dir, declared.id, operator or os.environ.get("RUNBOOK_OPERATOR") or getpass.getuser())
        for step in steps:
            values = step_values(step, convex_url, run_dir, None, notebooks_dir)
            step_dir(run_dir, step).mkdir()
            papermill.execute_notebook(
                str(notebook_path(step, notebooks_dir)), str(step_notebook(run_dir, step)), parameters=values,
                prepare_only=True, progress_bar=False,
            )
    return run_dir


def run_step(
    step: str,
    *,
    convex_url: str,
    run_dir: Path,
    parameters: Mapping[str, Any] | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    kernel_name: str = "python3",
    log_output: bool = False,
    planned: Sequence[str] = (),
    on_output: Callable[[str], None] | None = None,
) -> StepResults:
    """Executes one step's notebook in run_dir/<step>/ (.ipynb, .html, parameters.json) and returns its results:
    the notebook `runbook new-run` prepared there, in place, else the template from notebooks_dir (a folder
    `runbook run` made: its step folder holds the executed copy, and a fixed template runs again).
    `planned` names the steps of the run from this one on: a failure names the command that resumes them.
    `on_output` gets each line the notebook prints (its progress lines), as it prints it."""
    run_dir = Path(run_dir)
    executed = step_notebook(run_dir, step)
    source = executed if holds_its_notebooks(run_dir) and executed.is_file() else notebook_path(step, notebooks_dir)
    values = step_values(step, convex_url, run_dir, parameters, notebooks_dir)
    out = executed.parent
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "parameters.json", values)
        # A results file left by an earlier execution must not vouch for this one.
        (out / "results.json").unlink(missing_ok=True)
    started_ms = str(int(time.time() * 1000))
    resume = resume_command(run_dir, step, redact_url(convex_url), tuple(planned))
    failed: StepFailed | None = None
    try:
        with _environment(RUNBOOK_HEADLESS="1", **{STEP_STARTED_ENV: started_ms}):
            papermill.execute_notebook(
                str(source),
                str(executed),
                parameters=values,
                kernel_name=kernel_name,
                kernel_manager_class=BoundKernelManager,
                progress_bar=False,
                log_output=log_output,
                stdout_file=_LineSink(on_output) if on_output else None,
                # The kernel starts in the step's folder, as JupyterLab starts it: run_dir ("..") is right from there,
                # and a helpers/ folder wherever the operator stands cannot shadow the runbook's own.
                cwd=str(out),
                # The kernel talks to papermill over loopback TCP, as Jupyter does; its start-up warning about
                # that is noise on the operator's terminal.
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
    except papermill.PapermillExecutionError as exc:
        index = _source_cell_index(source, exc.cell_index)
        cells = nbformat.read(source, as_version=4).cells
        failed = StepFailed(step, index, exc.ename, exc.evalue, executed, exc.source, exc.exec_count, section_of(cells, index),
                            resume=resume)
        raise failed from exc
    finally:
        if executed.exists():
            with _secondary(failed, "Its pages could not be rendered either"), writing(out):
                render_step(executed, replace(page_context(run_dir, convex_url), planned=tuple(planned)))
    return _passed_results(run_dir, step, executed, resume)


class _LineSink:
    """A file for papermill's stdout_file: hands each whole line the notebook prints to `sink`."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self.sink = sink
        self.pending = ""

    def write(self, text: str) -> None:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.sink(line.strip())

    def flush(self) -> None:
        pass


@contextmanager
def _secondary(failure: BaseException | None, what: str) -> Iterator[None]:
    """Work done while an error propagates must not replace it: its own error becomes a note on the first (none
    on a full disk: every later write fails alike, and the disk-full line already says the folder is not sealed)."""
    try:
        yield
    except Exception as exc:
        if failure is None:
            raise
        if not isinstance(failure, DiskFull):
            failure.add_note(f"{what}: {str(exc).partition(chr(10))[0]}")  # its fix line would make two


def page_context(run_dir: Path, convex_url: str) -> PageContext:
    return PageContext(
        run_id=run_id(run_dir),
        migration=migration_id(run_dir),
        operator=operator_for(run_dir),
        commit=commit_label(),
        deployment=redact_url(convex_url),
    )


def _source_cell_index(source: Path, executed_index: int) -> int:
    """papermill counts the injected-parameters cell it inserted after `parameters`; authors edit the source."""
    tags = [cell.metadata.get("tags", []) for cell in nbformat.read(source, as_version=4).cells]
    if any("injected-parameters" in t for t in tags):
        return executed_index  # papermill replaced that cell in place
    parameters_at = next((i for i, t in enumerate(tags) if "parameters" in t), -1)
    return executed_index - 1 if executed_index > parameters_at else executed_index


def _passed_results(run_dir: Path, step: str, executed: Path, resume: str) -> StepResults:
    try:
        results = read_step_results(run_dir, step)
    except PreconditionFailed as exc:
        raise StepFailed(step, None, "ResultsMissing", f"the notebook finished without writing it ({exc})", executed, resume=resume) from exc
    if not results.passed:
        raise StepFailed(step, None, "StepNotPassed", f"results.json has status {results.status!r}", executed, resume=resume)
    return results


def run_migration(
    url: str,
    dry_run: bool = False,
    *,
    migration: str | None = None,
    confirm: bool = False,
    runs_dir: Path = Path("runs"),
    steps: Sequence[str] | None = None,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    operator: str | None = None,
    run_dir: Path | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    on_step: Callable[[str, str], None] | None = None,
    on_output: Callable[[str, str], None] | None = None,
) -> RunResult:
    """Backup → dry run (→ apply → verify) in a new run folder, sealed with a manifest even when a step fails.

    `migration` is a migration's id (`helpers.migrations`; default: the run folder's, else the first one).
    `run_dir` continues an existing run folder instead (resume an apply, verify later, roll back); its manifest
    is rewritten with the earlier steps kept. `on_step(step, status)` is told "running" before each step and its
    status after, for live progress; `on_output(step, line)` each line a step's notebook prints (its progress).
    A folder `runbook new-run` made is run with its own notebooks and its recorded operator.
    """
    requested = get_migration(migration) if migration is not None else None  # an unknown id is refused first
    chosen = _chosen_steps(dry_run, steps, confirm)
    per_step = {step: dict((parameters or {}).get(step, {})) for step in chosen}
    _check_step_parameters(chosen, parameters or {}, per_step, notebooks_dir)
    if per_step.get(names.ROLLBACK, {}).get("execute") and not confirm:
        raise PreconditionFailed(
            "Rolling back with execute=True changes the deployment and was not confirmed. Nothing was run.",
            hint="Pass confirm=True / --confirm as well, or leave execute out to see the rollback plan only.",
        )
    if names.APPLY in per_step:
        per_step[names.APPLY]["confirm"] = True
    recorded = operator_of(run_dir) if run_dir is not None else None
    if operator and recorded and operator != recorded:
        raise PreconditionFailed(
            f"The run folder {run_dir} is {recorded}'s run (runbook new-run --operator), not {operator}'s. Nothing was run.",
            hint=f"Leave --operator out to run it as {recorded}, or make your own run folder: runbook new-run --operator {operator}.",
        )
    operator = recorded or operator or os.environ.get("RUNBOOK_OPERATOR") or getpass.getuser()
    notify = on_step or (lambda step, status: None)
    with preflight(url) as transport:
        declared = requested or get_migration(migration_id(run_dir) if run_dir is not None else default_id())
        if declared.require is not None and GUARDED_STEPS & set(chosen):
            declared.require(transport)  # a deployment not ready for it is refused before a run folder exists
        run_dir, earlier = _open_run_dir(run_dir, runs_dir)
        with run_lock(run_dir):  # a second `runbook run` on this folder is refused here, before it writes anything
            started_at = earlier.started_at if earlier else datetime.now(UTC)
            started = time.monotonic()
            statuses = {**(earlier.steps if earlier else {}), **dict.fromkeys(chosen, "not run")}
            failure: BaseException | None = None
            try:
                with writing(run_dir):
                    # Drawn before the first step, so every page and ledger row names the same run and migration.
                    bind_migration(run_dir, declared.id)
                    run_id(run_dir)
                with _environment(RUNBOOK_OPERATOR=operator):
                    for index, step in enumerate(chosen):
                        notify(step, "running")
                        statuses[step] = "failed"
                        try:
                            results = run_step(
                                step, convex_url=url, run_dir=run_dir, parameters=per_step[step], notebooks_dir=notebooks_dir,
                                planned=chosen[chosen.index(step):], on_output=on_output and functools.partial(on_output, step),
                            )
                            statuses[step] = results.status
                        except Exception as exc:
                            if _disk_full(exc):
                                raise disk_full(run_dir, url, chosen[index:], confirm) from exc
                            raise
                        finally:
                            notify(step, statuses[step])
            except BaseException as exc:
                failure = exc
                raise
            finally:
                facts = RunFacts(deployment_url=url, operator=operator, started_at=started_at, finished_at=datetime.now(UTC),
                                 steps=statuses)
                sealed = _seal(run_dir, failure, facts, transport)
    wall_seconds = time.monotonic() - started
    assert sealed is not None  # sealing can fail silently only while another error propagates
    return RunResult(
        run_dir=run_dir,
        passed=all(statuses[step] == "passed" for step in chosen),
        steps=statuses,
        statistics=statistics(run_dir, declared, wall_seconds=wall_seconds) if names.PLANNING & set(chosen) else None,
        manifest_sha256=sealed.sha256,
        seal_not_recorded=sealed.not_recorded,
    )


@contextmanager
def preflight(url: str) -> Iterator[ConvexTransport]:
    """Refuses, before any run folder exists, a URL that is not a deployment's (malformed, with a path) or that
    carries credentials, a missing deploy key, and a deployment that does not answer (a closed port, an unknown
    host: at once, without retries), is not Convex's API, or refuses the key; yields the transport the seal is
    recorded with."""
    check_deployment_url(url)
    if redact_url(url) != url:
        raise PreconditionFailed(
            f"The deployment URL carries credentials ({redact_url(url)}). Nothing was run.",
            hint="Give the plain deployment URL; the key goes in CONVEX_DEPLOY_KEY (the URL is written into the evidence).",
        )
    with ConvexTransport(url, max_attempts=SEAL_ATTEMPTS) as transport:
        transport.check_access()
        yield transport


def _disk_full(error: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain: papermill and nbformat turn it into a half-written notebook that "does not
    appear to be JSON", a notebook cell into an execution error naming Errno 28."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if isinstance(error, papermill.PapermillExecutionError) and f"[Errno {errno.ENOSPC}]" in error.evalue:
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full(run_dir: Path, url: str, steps: Sequence[str], confirm: bool) -> DiskFull:
    """One line naming the full disk, and the command that resumes the run in its folder once there is room."""
    folder = Path(run_dir).resolve()
    mount = folder
    while not os.path.ismount(mount):
        mount = mount.parent
    usage = shutil.disk_usage(mount)
    command = f"runbook run --url {redact_url(url)} --run-dir {run_dir} --steps {','.join(steps)}" + (" --confirm" if confirm else "")
    return DiskFull(
        f"The disk holding the run folder is full (No space left on device): {mount}, {usage.free:,} of "
        f"{usage.total:,} bytes free. Step {steps[0]} stopped; the run folder is not sealed.",
        hint=f"Free space on {mount} (or move the runs folder to a disk with room), then resume: {command}",
    )


def _seal(run_dir: Path, failure: BaseException | None, facts: RunFacts, transport: ConvexTransport) -> Sealed | None:
    """Seals the folder whatever happened; if sealing fails too, the step's error stays the one reported."""
    sealed = None
    with _secondary(failure, "The run folder could not be sealed either"):
        sealed = seal_folder(run_dir, facts, transport=transport)
    if isinstance(failure, StepFailed) and sealed is not None:
        failure.manifest_sha256 = sealed.sha256
    return sealed


def _open_run_dir(run_dir: Path | None, runs_dir: Path) -> tuple[Path, Manifest | None]:
    """A new run folder, or the given one with the manifest it was sealed with so far."""
    if run_dir is None:
        return new_run_dir(runs_dir), None
    if not Path(run_dir).is_dir():
        raise PreconditionFailed(f"No run folder {run_dir}.", hint="Name an existing run folder, or leave run_dir out to start one.")
    return Path(run_dir), read_manifest(run_dir)


def _chosen_steps(dry_run: bool, steps: Sequence[str] | None, confirm: bool) -> list[str]:
    """The steps to run, refused before anything runs when they cannot make sense together."""
    known = (*names.FORWARD, names.ROLLBACK)
    chosen = list(steps) if steps else list(names.DRY_RUN_STEPS if dry_run else names.FORWARD)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise PreconditionFailed(f"Unknown step(s): {', '.join(unknown)}.", hint=f"Steps are: {', '.join(known)}.")
    if dry_run and any(s not in names.DRY_RUN_STEPS for s in chosen):
        raise PreconditionFailed(
            f"A dry run changes nothing, so it runs only {' and '.join(names.DRY_RUN_STEPS)}.",
            hint="Drop dry_run=True / --dry-run to apply, or drop the other steps.",
        )
    if names.APPLY in chosen and not confirm:
        raise PreconditionFailed(
            "Applying changes the deployment and was not confirmed. Nothing was run.",
            hint="Pass confirm=True / --confirm to apply, or dry_run=True / --dry-run to only plan.",
        )
    return chosen


def _check_step_parameters(
    chosen: Sequence[str],
    given: Mapping[str, Mapping[str, Any]],
    per_step: Mapping[str, Mapping[str, Any]],
    notebooks_dir: Path,
) -> None:
    """Every parameter problem is reported before a run folder exists, not after the backup took minutes."""
    stray = sorted(set(given) - set(chosen))
    if stray:
        raise PreconditionFailed(
            f"Parameters given for step(s) not run: {', '.join(stray)}.", hint=f"Steps run: {', '.join(chosen)}."
        )
    for step, values in per_step.items():
        if "confirm" in values or {"convex_url", "run_dir", "migration"} & set(values):
            raise PreconditionFailed(
                f"{step}: convex_url, run_dir, migration and confirm are set by the runner, not as parameters.",
                hint="Use url=… / --url, migration=… / --migration, and confirm=True / --confirm; the run folder is "
                "created for each run.",
            )
        check_parameters(step, values, notebooks_dir)


def _side_rows(migration: Migration, count: int) -> dict[str, int]:
    return {migration.side_rows.label: count} if migration.side_rows is not None else {}


def statistics(run_dir: Path, migration: Migration, *, wall_seconds: float) -> Statistics | None:
    """Apply's figures when the folder has them, else the dry run's planned counts, else None; labelled as
    `migration` (the one the run was given and the folder was bound to) names its tables and side rows."""
    applied = Path(run_dir) / names.APPLY / "results.json"
    planned = Path(run_dir) / names.DRY_RUN_STEPS[1] / "results.json"
    if applied.exists():
        summary = read_step_results(run_dir, names.APPLY).summary
        return Statistics(
            planned=False,
            recheck=summary.get("recheck", False),
            migrated={migration.label(table): n for table, n in summary["migrated"].items()},
            side_rows=_side_rows(migration, summary["references_created"]),
            errors=[{"id": e["id"], "reason": e.get("message", "")} for e in summary.get("errors", [])],
            apply_seconds=summary["duration_s"],
            wall_seconds=round(wall_seconds, 3),
        )
    if planned.exists():
        summary = read_step_results(run_dir, names.DRY_RUN_STEPS[1]).summary
        actions = summary.get("actions", {})
        return Statistics(
            planned=True,
            migrated={
                migration.label(table): sum(n for action, n in actions.get(table, {}).items() if action in migration.changing_actions)
                for table in migration.tables
            },
            side_rows=_side_rows(migration, sum(summary.get("references_by_type", {}).values())),
            errors=[],
            apply_seconds=None,
            wall_seconds=round(wall_seconds, 3),
        )
    return None
