"""`runbook demo` (`make demo`): local deployment + sample data, the whole runbook headless, a short summary.

Development tooling, like the local deployment and the sample data it uses: it needs the checkout and is not in
the wheel (setup.py).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from helpers.cli import StepPrinter, print_error, print_summary
from helpers.connection.transport import DEPLOY_KEY_ENV
from helpers.devtools.local_deployment import LocalDeployment, generate_local_key
from helpers.devtools.sample_data import load
from helpers.evidence.archive_check import check_archive, find_secret
from helpers.runner import StepFailed, run_migration


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """`runbook demo`'s arguments (the CLI asks the module: it exists only in a checkout)."""
    parser.add_argument("--seed-scenes", type=int, default=3000)
    parser.add_argument("--runs-dir", default="runs", help="where the run folder goes (default: runs)")


def cli_main(args: argparse.Namespace) -> int:
    return run_demo(args.seed_scenes, Path(args.runs_dir))


def run_demo(seed_scenes: int, runs_dir: Path) -> int:
    key = os.environ.get(DEPLOY_KEY_ENV) or generate_local_key()
    os.environ[DEPLOY_KEY_ENV] = key  # the notebooks' kernels inherit it; nothing writes it down
    started = time.monotonic()
    with LocalDeployment(deploy_key=key) as deployment:
        print(f"Local deployment at {deployment.url}; loading {seed_scenes:,} sample scenes…", flush=True)
        with deployment.transport() as transport:
            loaded = load(transport, seed_scenes)
        print(f"Loaded {loaded.sessions:,} sessions and {loaded.scenes:,} scenes. Running the runbook:", flush=True)
        try:
            result = run_migration(deployment.url, confirm=True, runs_dir=runs_dir, on_step=StepPrinter())
        except StepFailed as failure:
            print_error(failure)
            return 1
        with deployment.transport() as transport:
            check = check_archive(result.run_dir, transport)
    leaks = find_secret(result.run_dir, key)
    print("\nSummary")
    print_summary(result, deployment.url)  # the verdicts first, as index.html leads with them
    print(f"archive check: {'OK (folder and ledger)' if check.ok else 'FAILED: ' + '; '.join(check.problems)}")
    print(f"deploy key in run folder: {'FOUND in ' + ', '.join(leaks) if leaks else 'nowhere'}")
    print(f"demo time (with loading): {time.monotonic() - started:.1f} s")
    return 0 if result.passed and check.ok and not leaks else 1
