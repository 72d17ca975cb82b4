"""One runbook pass (backup → dry-run → apply [→ verify]) against a loaded deployment, in its own process.

    CONVEX_DEPLOY_KEY=... python benchmarks/scale_step.py --url URL --run-dir DIR

Run by benchmarks/run_all.py once per data size, so its peak resident memory (VmHWM) is the
runbook's own footprint: nothing the benchmark did before (loading the data) counts. The deploy key comes from
the environment only. Prints one JSON object on stdout: seconds and round trips per phase, peak RSS after
each phase (MiB, monotonic), and the counts that show the pass really did its work.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from helpers.apply import apply_plan
from helpers.backup import take_backup
from helpers.migrations import default_id
from helpers.plan import build_plan
from helpers.run_folder import bind_migration
from helpers.transport import ConvexTransport
from helpers.verify import verify


def peak_rss_mib() -> float:
    """This process's peak RSS so far. On Linux its own memory's high-water mark (VmHWM): `ru_maxrss` also counts
    the parent's RSS at fork (the kernel carries it across exec), so a child of a large benchmark process would
    report at least the parent's size. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="deployment URL (the deploy key comes from CONVEX_DEPLOY_KEY)")
    parser.add_argument("--run-dir", required=True, type=Path, help="an empty run folder for this pass")
    parser.add_argument("--page-size", type=int, default=4000)
    parser.add_argument("--verify", action="store_true", help="also run verify after apply (a fourth phase)")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"rss_mib_start": peak_rss_mib(), "phases": {}}
    args.run_dir.mkdir(parents=True, exist_ok=True)
    bind_migration(args.run_dir, default_id())
    with ConvexTransport(args.url) as transport:

        def phase(name: str, step: Any) -> Any:
            trips, started = transport.round_trips, time.perf_counter()
            value = step()
            report["phases"][name] = {
                "seconds": round(time.perf_counter() - started, 3),
                "round_trips": transport.round_trips - trips,
                "peak_rss_mib": peak_rss_mib(),
            }
            return value

        backup = phase("backup", lambda: take_backup(transport, args.run_dir, show_progress=False))
        plan = phase("dry_run", lambda: build_plan(transport, args.run_dir, page_size=args.page_size, show_progress=False))
        applied = phase("apply", lambda: apply_plan(transport, args.run_dir, confirm=True, show_progress=False))
        checked = phase("verify", lambda: verify(transport, args.run_dir, page_size=args.page_size, show_progress=False)) if args.verify else None

    report.update(
        peak_rss_mib=peak_rss_mib(),
        documents=plan.documents,
        backup_counts=backup.counts,
        planned_changes=plan.changes,
        planned_references=plan.references,
        apply_status=applied.status,
        scenes_migrated=applied.migrated["scenes"],
        sessions_migrated=applied.migrated["videoSessions"],
        references_created=applied.references_created,
        conflicts=applied.conflicts,
        errors=len(applied.errors),
        batches_sent=applied.batches_sent,
        verify_passed=None if checked is None else checked.passed,
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
