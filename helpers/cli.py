"""`runbook`: the runbook from a terminal, mirroring the Python API (run_migration, check_archive, ...).

Exit codes: 0 done, 1 a step or an archive check failed, 2 the command was refused (usage, preconditions).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import papermill

from helpers.connection.errors import DiskFull, PreconditionFailed, RunbookError
from helpers.connection.transport import ConvexTransport, redact_url
from helpers.evidence.archive_check import check_archive
from helpers.evidence.pages import check_command, run_verdicts
from helpers.evidence.run_folder import RUN_FILE, migration_id, migration_of, operator_of
from helpers.history import deployment_status
from helpers.migrations import all_migrations
from helpers.paths import CHECKOUT_ROOT
from helpers.runner import (
    NOTEBOOKS_DIR,
    RunResult,
    StepFailed,
    notebook_path,
    prepare_run,
    run_migration,
)
from helpers.sealing import seal
from helpers.steps import names

EXIT_FAILED = 1
EXIT_REFUSED = 2
ERRORS_SHOWN = 20


def parse_value(text: str) -> Any:
    """The same typing as `papermill -p`: True/False/None, int, float, otherwise the string itself."""
    literals: dict[str, Any] = {"True": True, "False": False, "None": None}
    if text in literals:
        return literals[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_parameter(item: str) -> tuple[str, str, Any]:
    """`03_apply.batch_size=500` → ("03_apply", "batch_size", 500)."""
    target, sep, value = item.partition("=")
    step, dot, name = target.partition(".")
    if not (sep and dot and step and name):
        raise argparse.ArgumentTypeError(f"expected STEP.NAME=VALUE (e.g. 03_apply.batch_size=500), got {item!r}")
    return step, name, parse_value(value)


def group_parameters(items: Sequence[tuple[str, str, Any]]) -> dict[str, dict[str, Any]]:
    parameters: dict[str, dict[str, Any]] = {}
    for step, name, value in items:
        parameters.setdefault(step, {})[name] = value
    return parameters


def with_workers(parameters: dict[str, dict[str, Any]], workers: int | None, steps: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`--workers N` as the `workers` parameter of the dry-run and verify, those of them among `steps` (the steps run)."""
    if workers is None:
        return parameters
    for step in names.WITH_WORKERS:
        if step in steps:
            parameters.setdefault(step, {}).setdefault("workers", workers)
    return parameters


class StepPrinter:
    """One line when a step starts and one with its status and duration when it ends: steps take minutes."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    def __call__(self, step: str, status: str) -> None:
        if status == "running":
            self.started[step] = time.monotonic()
            print(f"{step:<20} running…", flush=True)
        else:
            print(f"{step:<20} {status} ({time.monotonic() - self.started.pop(step):.1f} s)", flush=True)

    @staticmethod
    def output(step: str, line: str) -> None:
        """A line the step's notebook printed: its progress every few seconds (what, done/total, rate)."""
        print(f"{step:<20}   {line}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    printer = StepPrinter()
    try:
        result = run_migration(
            args.url,
            args.dry_run,
            migration=args.migration,
            confirm=args.confirm,
            runs_dir=args.runs_dir,
            steps=args.steps,
            parameters=with_workers(group_parameters(args.parameters), args.workers, args.steps or (names.DRY_RUN_STEPS if args.dry_run else names.FORWARD)),
            operator=args.operator,
            run_dir=args.run_dir,
            on_step=printer,
            on_output=printer.output,
        )
    except StepFailed as exc:
        print_error(exc)
        print(f"Evidence: {exc.notebook_path.parent.parent}")
        if exc.manifest_sha256:
            print(manifest_line(exc.manifest_sha256))
        return EXIT_FAILED
    except DiskFull as exc:  # a step stopped: a failure, not a refusal
        print_error(exc)
        return EXIT_FAILED
    print_summary(result, args.url)
    return 0


def print_summary(result: RunResult, url: str) -> None:
    """The run's verdicts first (as index.html shows them), then the documents that failed, the times, where
    the evidence is and the command that checks it; the manifest's sha256 last (the line for the ticket)."""
    for verdict in run_verdicts(result.run_dir, result.steps, migration_of(result.run_dir)):
        print(f"{verdict.label}: {verdict.text}")
    stats = result.statistics
    if stats is not None:
        if stats.recheck:
            print("re-check of a finished apply: nothing new written; the figures are those of the first apply")
        if stats.planned:
            print(f"to migrate (planned): {', '.join(f'{label} {n:,}' for label, n in stats.migrated.items())}")
        for label, n in stats.side_rows.items():  # only a migration that creates side rows has any
            print(f"{label} {'to create' if stats.planned else 'created'}: {n:,}")
        print(f"documents with errors: {len(stats.errors)}")
        for error in stats.errors[:ERRORS_SHOWN]:
            print(f"  {error['id']}: {error['reason']}")
        if len(stats.errors) > ERRORS_SHOWN:
            print(f"  … and {len(stats.errors) - ERRORS_SHOWN:,} more in apply/outcomes.csv")
        apply_time = "" if stats.apply_seconds is None else f"apply {stats.apply_seconds:.1f} s, "
        print(f"time: {apply_time}whole run {stats.wall_seconds:.1f} s")
    print(f"Evidence: {result.run_dir}")
    print(f"Check it: {check_command(result.run_dir, redact_url(url))}")
    if result.seal_not_recorded is not None:
        print(f"Record the seal once the deployment answers: runbook seal {result.run_dir} --url {redact_url(url)}")
    print(manifest_line(result.manifest_sha256, result.seal_not_recorded))


def print_error(exc: BaseException) -> None:
    """The error, its fix, and what else went wrong meanwhile (sealing a folder that cannot be written)."""
    print(f"error: {exc}", file=sys.stderr)
    for note in getattr(exc, "__notes__", []):
        print(f"  also: {note}", file=sys.stderr)


def manifest_line(sha256: str, not_recorded: str | None = None) -> str:
    """The line for the change ticket; `runbook check-archive DIR --url URL` compares the folder with it."""
    where = f" (NOT recorded in the deployment's ledger: {not_recorded})" if not_recorded else ""
    return f"Manifest sha256: {sha256}{where}"


def cmd_check_archive(args: argparse.Namespace) -> int:
    if args.url:
        with ConvexTransport(args.url) as transport:
            check = check_archive(args.dir, transport)
    else:
        check = check_archive(args.dir)
    if check.ok:
        if check.anchored:
            print(f"OK: {args.dir} matches its manifest, its hash chain and the deployment's ledger.")
        else:
            print(f"OK: {args.dir} (only the folder's own consistency was checked: its manifest and hash chain. "
                  "Whoever can write the folder can reseal it; add --url URL to compare it with the deployment's ledger.)")
        return 0
    for problem in check.problems:
        print(problem)
    return EXIT_FAILED


def cmd_seal(args: argparse.Namespace) -> int:

    sealed = seal(args.dir, convex_url=args.url, notebooks_dir=args.notebooks, operator=args.operator)
    if sealed.action == "unchanged":
        print(f"Already sealed: {args.dir} is unchanged since its seal, which the deployment's ledger holds. Nothing was written.")
    elif sealed.action == "recorded":
        print(f"Recorded: {args.dir} is unchanged since it was sealed; the deployment's ledger now holds that seal.")
    else:
        print(f"Sealed: {args.dir} (overview: {Path(args.dir) / 'index.html'})")
    if sealed.not_recorded is not None:
        print(f"Sealed locally only. Record the seal once the deployment answers: runbook seal {args.dir} --url URL")
    print(manifest_line(sealed.sha256, sealed.not_recorded))
    return 0 if sealed.not_recorded is None else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    """`runbook status`: the deployment's ledger, per migration of the registry, then each run. Writes nothing."""

    with ConvexTransport(args.url) as transport:
        states = deployment_status(transport)
    print(f"Deployment {redact_url(args.url)}: what its ledger (migrationRuns) holds. Nothing was written.")
    width = max(len(state.migration_id) for state in states)
    for state in states:
        by = f" (run {state.decided_by.run_id} by {state.decided_by.operator}, {_when(state.decided_by.started_ms)})" if state.decided_by else ""
        print(f"  {state.migration_id:<{width}}  {state.state}{by}")
    for state in states:
        print(f"\n{state.migration_id}: {len(state.runs)} run{'s' if len(state.runs) != 1 else ''}")
        for run in state.runs:
            steps = ", ".join(f"{step} {status}" for step, status in run.steps.items()) or "no step recorded"
            print(f"  {run.run_id}  {run.operator}  {_when(run.started_ms)}  {steps}")
            print(f"    sealed manifest sha256: {run.sealed or 'not sealed'}")
    return 0


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def cmd_new_run(args: argparse.Namespace) -> int:
    run_dir = prepare_run(args.url, migration=args.migration, runs_dir=args.runs_dir, operator=args.operator)
    print(f"Run folder for {migration_id(run_dir)} on {args.url}, operator {operator_of(run_dir)}: "
          f"{', '.join(names.FORWARD)} prepared (each <step>/<step>.ipynb, parameters set).")
    print("Open it, run each notebook (Run All), save it, then `runbook seal` the folder:")
    print(f"runbook lab {shlex.quote(str(run_dir))}")
    print(run_dir.resolve())
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    """JupyterLab rooted at the run folder, on 127.0.0.1 (as root, as in containers, it needs --allow-root). It
    replaces this process: Ctrl-C stops JupyterLab as it always does."""
    folder = Path(args.dir).resolve()
    if not (folder / RUN_FILE).is_file():
        raise PreconditionFailed(f"{args.dir} is not a run folder (it has no {RUN_FILE}).",
                                 hint="Make one with `runbook new-run --url URL`; it prints the command that opens it.")
    _commonjs_venv()
    env = {name: value for name, value in os.environ.items() if name != "RUNBOOK_HEADLESS"}  # widgets, the click
    argv = [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--ServerApp.root_dir={folder}",
            *(["--allow-root"] if os.geteuid() == 0 else []), *args.lab_args]
    os.execve(sys.executable, argv, env)
    return 0  # not reached: JupyterLab replaced this process


def _commonjs_venv() -> None:
    """A checkout's venv lies inside its ESM package ("type": "module"): without a package.json of its own, Node
    loads JupyterLab's bundled yarn.js as ESM and lab cannot check its build (the Makefile's `lab` target writes the
    same file)."""
    venv = Path(sys.prefix).resolve()
    if CHECKOUT_ROOT is not None and venv.is_relative_to(CHECKOUT_ROOT) and not (venv / "package.json").exists():
        (venv / "package.json").write_text('{"type": "commonjs"}\n')


def cmd_params(args: argparse.Namespace) -> int:
    given = Path(args.notebook)
    path = given if given.suffix == ".ipynb" else notebook_path(args.notebook, NOTEBOOKS_DIR)
    if not path.is_file():
        raise PreconditionFailed(f"No notebook at {path}.", hint=f"Name a step ({', '.join(names.ALL)}) or an .ipynb file.")
    for name, spec in papermill.inspect_notebook(str(path)).items():
        help_text = f"  # {spec['help']}" if spec["help"] else ""
        print(f"{name}: {_type_name(spec)} = {spec['default']}{help_text}")
    return 0


def _type_name(spec: dict[str, Any]) -> str:
    """The annotation when the cell has one, else the type of the default (papermill reports "None" for both)."""
    if spec["inferred_type_name"] != "None":
        return str(spec["inferred_type_name"])
    try:
        default = ast.literal_eval(spec["default"])
    except (ValueError, SyntaxError):
        return "?"
    return "None" if default is None else type(default).__name__


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{__package__}.{name}") is not None
    except ModuleNotFoundError:  # its package is not installed either (helpers.devtools in a wheel)
        return False


#: Commands whose module only a checkout has (setup.py leaves them out of the wheel): each module declares its
#: own arguments (`add_cli_arguments`) and runs them (`cli_main`).
DEVELOPMENT_COMMANDS = {
    "local-deployment": ("devtools.local_deployment", "serve the local test deployment (admin key: CONVEX_DEPLOY_KEY)"),
    "demo": ("devtools.demo", "the whole runbook against a local deployment with sample data"),
    "new-migration": ("devtools.scaffold", "a new migration's folder (README, rules, checks, tests) that dry-runs at once"),
}


def _refuse_development_tool(command: str, args: argparse.Namespace) -> int:
    """What a development command answers in an installed runbook (whose wheel left its module out)."""
    raise PreconditionFailed(
        f"`runbook {command}` is development tooling: it needs a checkout of the runbook, and this one is an installed package.",
        hint=f"Clone the runbook's repository and run `make setup`, then `.venv/bin/runbook {command} …` in the checkout.",
    )


def _steps(text: str) -> list[str]:
    return [step.strip() for step in text.split(",") if step.strip()]


def _workers(text: str) -> int:
    workers = int(text)
    if workers < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {workers}")
    return workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runbook", description="Convex migration runbook (backup, dry run, apply, verify, rollback), headless.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the steps in a new run folder (backup, dry run, apply, verify)")
    run.add_argument("--url", required=True, help="deployment URL; the deploy key comes from CONVEX_DEPLOY_KEY")
    run.add_argument(
        "--migration", choices=[m.id for m in all_migrations()],
        help=f"the migration to run (default: the run folder's, else {all_migrations()[0].id})",
    )
    run.add_argument("--steps", type=_steps, help=f"comma-separated subset of {','.join(names.ALL)}")
    run.add_argument("--dry-run", action="store_true", help="only back up and plan; change nothing")
    run.add_argument("--confirm", action="store_true", help="required to apply: this changes the deployment")
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders are created (default: runs)")
    run.add_argument("--run-dir", type=Path, help="continue this existing run folder (resume, verify, roll back)")
    run.add_argument("--operator", help="recorded in the manifest and the ledger (default: RUNBOOK_OPERATOR or the user)")
    run.add_argument(
        "-p", dest="parameters", type=parse_parameter, action="append", default=[], metavar="STEP.NAME=VALUE",
        help="a notebook parameter, typed like papermill -p (repeatable)",
    )
    run.add_argument("--workers", type=_workers, help="processes for the dry-run and verify (default: this machine's cores)")
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser(
        "check-archive", help="verify a run folder against its manifest and hash chain, and with --url the deployment's ledger"
    )
    check.add_argument("dir", type=Path)
    check.add_argument("--url", help="the deployment the run was made against: compare the folder with its ledger")
    check.set_defaults(handler=cmd_check_archive)

    new_run = commands.add_parser(
        "new-run", help="make a run folder whose step notebooks have their parameters set, to run in JupyterLab (runbook lab)"
    )
    new_run.add_argument("--url", required=True, help="deployment URL; the deploy key comes from CONVEX_DEPLOY_KEY")
    new_run.add_argument("--migration", choices=[m.id for m in all_migrations()],
                         help=f"the migration to run (default: {all_migrations()[0].id})")
    new_run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders are created (default: runs)")
    new_run.add_argument("--operator", help="the run's operator in the ledger, manifest and pages (default: RUNBOOK_OPERATOR or the user)")
    new_run.set_defaults(handler=cmd_new_run)

    lab = commands.add_parser("lab", help="open a run folder in JupyterLab (on 127.0.0.1)")
    lab.add_argument("dir", type=Path, metavar="RUN_DIR")
    lab.add_argument("lab_args", nargs=argparse.REMAINDER, metavar="LAB_ARGS", help="passed to jupyter lab (e.g. --port=8890 --no-browser)")
    lab.set_defaults(handler=cmd_lab)

    seal = commands.add_parser(
        "seal", help="seal a run made interactively: step notebooks, HTML pages, index.html, manifest, ledger"
    )
    seal.add_argument("dir", type=Path)
    seal.add_argument("--url", help="the deployment (default: convex_url as the notebooks ran)")
    seal.add_argument("--notebooks", type=Path, help="folder of the saved, executed notebooks (default: notebooks/)")
    seal.add_argument("--operator", help="recorded in the manifest (default: RUNBOOK_OPERATOR or the user)")
    seal.set_defaults(handler=cmd_seal)

    status = commands.add_parser(
        "status", help="what the deployment's ledger holds: each migration's state (pending, applied, rolled back) and each run"
    )
    status.add_argument("--url", required=True, help="the deployment; the deploy key comes from CONVEX_DEPLOY_KEY")
    status.set_defaults(handler=cmd_status)

    params = commands.add_parser("params", help="list a step notebook's parameters")
    params.add_argument("notebook", metavar="NOTEBOOK_OR_STEP")
    params.set_defaults(handler=cmd_params)

    for command, (module, text) in DEVELOPMENT_COMMANDS.items():
        tool = commands.add_parser(command, help=text)
        if _has_module(module):
            development = importlib.import_module(f"{__package__}.{module}")
            development.add_cli_arguments(tool)
            tool.set_defaults(handler=development.cli_main)
        else:  # an installed runbook: whatever its arguments, the command answers where it lives
            tool.description = f"Development tooling: `runbook {command}` runs from a checkout of the runbook."
            tool.set_defaults(any_arguments=True, handler=functools.partial(_refuse_development_tool, command))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # what parse_args says
    try:
        return args.handler(args)
    except RunbookError as exc:
        print_error(exc)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
