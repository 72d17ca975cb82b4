"""One runbook pass (backup → dry-run → apply [→ verify]) against a loaded deployment, in its own process.

    CONVEX_DEPLOY_KEY=... python benchmarks/scale_step.py --url URL --run-dir DIR

Run by benchmarks/run_all.py once per data size, so its peak resident memory (VmHWM) is the
runbook's own footprint: nothing the benchmark did before (loading the data) counts. The deploy key comes from
the environment only. Prints one JSON object on stdout: seconds and round trips per phase, peak RSS after
each phase (MiB, monotonic), and the counts that show the pass really did its work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers.connection.transport import ConvexTransport
from helpers.evidence.run_folder import bind_migration
from helpers.migrations import default_id
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.steps.backup import take_backup
from helpers.steps.parallel import default_workers
from helpers.steps.plan import build_plan
from helpers.steps.verify import verify


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


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its ended child processes (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def folder_bytes(folder: Path) -> int:
    """What a folder holds on disk (its files' sizes; a file removed meanwhile counts 0)."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size if path.is_file() else 0
    return total


class DiskPeak:
    """The most the run folder and the steps' scratch folders (helpers.steps.scratch) held at once, sampled every `interval`
    seconds in a thread: the disk a run needs at its peak, run folder included. The scratch folders go to a folder of
    this pass's own (`tempfile.tempdir`), so other work on the machine is not counted."""

    def __init__(self, run_dir: Path, interval: float = 1.0) -> None:
        self.run_dir, self.interval, self.peak = run_dir, interval, 0
        self.scratch_root = run_dir.with_name(run_dir.name + ".scratch")
        self.stop, self.pausing = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._sample, name="disk-peak", daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(self.interval):
            if self.pausing.is_set():
                continue
            scratch = folder_bytes(self.scratch_root)
            self.peak = max(self.peak, folder_bytes(self.run_dir) + scratch)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pausing.set()
        try:
            yield
        finally:
            self.pausing.clear()

    def __enter__(self) -> DiskPeak:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(self.scratch_root)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        tempfile.tempdir = None
        shutil.rmtree(self.scratch_root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="deployment URL (the deploy key comes from CONVEX_DEPLOY_KEY)")
    parser.add_argument("--run-dir", required=True, type=Path, help="an empty run folder for this pass")
    parser.add_argument("--page-size", type=int, default=4000)
    parser.add_argument("--verify", action="store_true", help="also run verify after apply (a fourth phase)")
    parser.add_argument("--workers", type=int, default=None, help="processes for the dry-run and verify (default: the cores)")
    parser.add_argument("--serial-dry-run", action="store_true",
                        help="after the dry-run, plan again with one worker from the same backup (phase `dry_run_1_worker`): "
                        "the same plan bytes, the time the workers saved")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"rss_mib_start": peak_rss_mib(), "phases": {}}
    args.run_dir.mkdir(parents=True, exist_ok=True)
    migration = bind_migration(args.run_dir, default_id())
    with ConvexTransport(args.url) as transport, DiskPeak(args.run_dir) as disk:

        def phase(name: str, step: Any) -> Any:
            trips, started, cpu = transport.round_trips, time.perf_counter(), cpu_seconds()
            value = step()
            own, workers = (round(after - before, 3) for after, before in zip(cpu_seconds(), cpu, strict=True))
            report["phases"][name] = {
                "seconds": round(time.perf_counter() - started, 3),
                "cpu_seconds": own,  # this process's CPU: what load on a shared machine distorts least
                "workers_cpu_seconds": workers,  # its worker processes' (counted once they ended)
                "round_trips": transport.round_trips - trips,
                "peak_rss_mib": peak_rss_mib(),
            }
            return value

        backup = phase("backup", lambda: take_backup(transport, args.run_dir, migration, show_progress=False))
        plan = phase("dry_run", lambda: build_plan(transport, args.run_dir, migration, page_size=args.page_size, show_progress=False, workers=args.workers))
        if args.serial_dry_run:  # right after the workers' dry-run, so both meet the same load on a shared machine
            serial_dir = args.run_dir.with_name(args.run_dir.name + "-1-worker")
            shutil.copytree(args.run_dir / "backup", serial_dir / "backup")
            bind_migration(serial_dir, migration.id)
            with disk.paused():  # not part of the run: its disk is not the run's
                serial = phase("dry_run_1_worker", lambda: build_plan(transport, serial_dir, migration, page_size=args.page_size,
                                                                      show_progress=False, workers=1))
            report["serial_plan_identical"] = serial.plan_sha256 == plan.plan_sha256
            shutil.rmtree(serial_dir)
        applied = phase("apply", lambda: apply_plan(transport, args.run_dir, migration, confirm=True,
                                                       settings=ApplySettings(show_progress=False)))
        checked = phase("verify", lambda: verify(transport, args.run_dir, migration, page_size=args.page_size, show_progress=False,
                                                 workers=args.workers)) if args.verify else None
        report["run_folder_bytes"] = folder_bytes(args.run_dir)
        report["disk_peak_bytes"] = disk.peak

    report.update(
        workers=args.workers or default_workers(),
        # the largest worker's peak RSS (ru_maxrss of the ended children, KiB on Linux): what it inherited at fork and
        # touched included, so an upper bound of what one worker adds
        worker_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
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
