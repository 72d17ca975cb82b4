"""`make bench`: the runbook's figures, measured side by side in one run.

    .venv/bin/python benchmarks/run_all.py [--quick] [--sizes 20k,200k] [--naive-scenes 10000]
                                           [--runbook-passes 3] [--latency-scenes 10000] [--latency-naive-every 10]
                                           [--simulated-sizes 100k,1m]
                                           [--conversion-docs 100000] [--seed 7]
                                           [--only naive,latency,scale,simulated,conversion] [--out FILE]

1. naive vs runbook: the seed's algorithm (benchmarks/naive_baseline.py) and the runbook (backup, dry-run,
   apply with default batch size and concurrency), each on a fresh local deployment loaded with the same data.
2. scale: for each size a fresh deployment, loaded here; the runbook pass runs in a separate process
   (benchmarks/scale_step.py), which reports its own peak RSS.
3. latency: naive vs runbook again, both through a proxy adding 20 ms of round trip (a hosted deployment); by
   default the naive side writes a 1-in-10 sample and its time is extrapolated (printed as such).
4. simulated: a deployment of 100k / 1M (/ 10M) scenes generated on the fly (benchmarks/simulated_deployment.py),
   the runbook's peak RSS and seconds per 1,000 documents for backup, dry-run, apply and verify, the run folder's
   bytes per document (at the end and, with the scratch, at the peak), verify's time over the dry-run's, and up to
   1M the dry-run again with one worker (`parallel_speedup_<size>`).
5. conversion cost: json.loads alone vs json.loads + rules.plan_scene over the same JSON lines.

Prints a table per section, the goals, and last one `name: value` line per figure. Nothing is written to the
repository (run folders live in a temporary directory, removed at the end); `--out FILE` also writes the
figures as JSON. See benchmarks/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import conversion  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402
from naive_baseline import run_naive  # noqa: E402

from helpers.connection.transport import DEPLOY_KEY_ENV, ConvexTransport  # noqa: E402
from helpers.devtools.local_deployment import LocalDeployment, generate_local_key  # noqa: E402
from helpers.devtools.sample_data import SCENES_PER_SESSION, load  # noqa: E402
from helpers.evidence.run_folder import bind_migration  # noqa: E402
from helpers.migrations import default_id  # noqa: E402
from helpers.steps.apply import ApplySettings, apply_plan  # noqa: E402
from helpers.steps.backup import take_backup  # noqa: E402
from helpers.steps.plan import build_plan  # noqa: E402

NAIVE_FUNCTIONS = BENCH_DIR / "convex"
SCALE_STEP = BENCH_DIR / "scale_step.py"
SIMULATED_DEPLOYMENT = BENCH_DIR / "simulated_deployment.py"
FULL = {"naive": 10_000, "sizes": [20_000, 200_000], "conversion": 100_000, "repeats": 3,
        "simulated": [100_000, 1_000_000], "latency": 10_000, "latency_naive_every": 10}
QUICK = {"naive": 1_000, "sizes": [2_000, 5_000], "conversion": 5_000, "repeats": 1,
         "simulated": [5_000, 20_000], "latency": 300, "latency_naive_every": 1}
SECTIONS = ("naive", "latency", "scale", "simulated", "conversion")
LATENCY_MS = 20
REQUIRED = ("round_trip_ratio", "wall_time_ratio", "peak_rss_mib_200k", "conversion_vs_json_loads",
            "peak_rss_mib_1m", "seconds_per_1k_docs_100k", "seconds_per_1k_docs_1m", "wall_time_ratio_20ms",
            "parallel_speedup_1m", "verify_vs_dry_run_1m", "run_folder_bytes_per_doc_1m", "disk_peak_bytes_per_doc_1m")
GIB = 1024.0
#: Disk a simulated size needs at its peak, per document (scenes and sessions): the run at its peak (~0.95 KB: the
#: compressed plan, the backup, apply's checkpoint, verify's scratch; `disk_peak_bytes_per_doc_<size>`) and the
#: simulated deployment's own files (its snapshot ~0.1 KB, its SQLite record of apply's writes ~2.6 KB: 28 GiB at
#: 10M scenes), with a margin. 10M scenes: about 45 GiB (measured 2026-12-06: ~40).
DISK_BYTES_PER_DOCUMENT = 4_400
#: The one-worker dry-run (for `parallel_speedup_<size>`) runs at sizes up to this: beyond it, it would add an hour.
SERIAL_DRY_RUN_MAX = 1_000_000
RUN_PHASES = ("backup", "dry_run", "apply", "verify")


def label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def parse_count(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    for suffix, factor in (("k", 1000), ("m", 1_000_000)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * factor)
    return int(text)


def say(message: str = "") -> None:
    print(message, flush=True)


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    say(f"\n{title}")
    for index, row in enumerate(cells):
        say("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if index == 0:
            say("  " + "  ".join("-" * w for w in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def node_peak_rss_mib(pid: int | None) -> float | None:
    """Peak RSS of the local deployment's largest process (tsx starts node as a child), from /proc (Linux)."""
    processes = _process_tree(pid)
    peaks = []
    for process in processes:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return round(max(peaks), 1) if peaks else None


class Meter:
    """Wall time, round trips and CPU time (this process, all threads + the deployment's process tree) of a step."""

    def __init__(self, transport: Any, deployment_pid: int | None) -> None:
        self.transport = transport
        self.processes = _process_tree(deployment_pid)

    def _cpu_node(self) -> float:
        total = 0.0
        for process in self.processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except Exception:  # noqa: BLE001 - optional figure
                continue
        return total

    def run(self, step: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
        trips, node, cpu, started = self.transport.round_trips, self._cpu_node(), time.process_time(), time.perf_counter()
        value = step()
        figures = {
            "seconds": time.perf_counter() - started,
            "round_trips": self.transport.round_trips - trips,
            "cpu_python": time.process_time() - cpu,
            "cpu_node": self._cpu_node() - node,
        }
        figures["cpu"] = figures["cpu_python"] + figures["cpu_node"]
        return value, figures


def _process_tree(pid: int | None) -> list[Any]:
    if pid is None:
        return []
    try:
        import psutil

        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except Exception:  # noqa: BLE001 - optional figure
        return []


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


# -- 1. naive vs runbook ------------------------------------------------------------------------------------


def _naive_side(n_scenes: int, seed: int, key: str) -> tuple[Any, dict[str, float], float | None]:
    with LocalDeployment(deploy_key=key, extra_functions=NAIVE_FUNCTIONS) as deployment:
        with deployment.transport() as transport:
            loaded = load(transport, n_scenes, seed=seed)
        say(f"naive: loaded {loaded.scenes:,} scenes, {loaded.sessions:,} sessions; running the seed's algorithm "
            f"(load average {_load_average()})…")
        with deployment.transport() as transport:
            naive, figures = Meter(transport, deployment.pid).run(lambda: run_naive(transport))
        return naive, figures, node_peak_rss_mib(deployment.pid)


def _runbook_side(n_scenes: int, seed: int, key: str, run_dir: Path) -> dict[str, Any]:
    migration = bind_migration(run_dir, default_id())
    with LocalDeployment(deploy_key=key) as deployment:
        with deployment.transport() as transport:
            load(transport, n_scenes, seed=seed)
        load_before = _load_average()
        with deployment.transport() as transport:
            meter = Meter(transport, deployment.pid)
            backup, backup_f = meter.run(lambda: take_backup(transport, run_dir, migration, show_progress=False))
            plan, plan_f = meter.run(lambda: build_plan(transport, run_dir, migration, show_progress=False))
            applied, apply_f = meter.run(lambda: apply_plan(transport, run_dir, migration, confirm=True, settings=ApplySettings(show_progress=False)))
        return {"backup": backup, "plan": plan, "applied": applied, "phases": {"backup": backup_f, "dry_run": plan_f, "apply": apply_f},
                "node_peak": node_peak_rss_mib(deployment.pid), "load_average": load_before}


def bench_naive_vs_runbook(n_scenes: int, seed: int, tmp: Path, repeats: int) -> dict[str, Any]:
    say(f"\n== Naive vs runbook at {n_scenes:,} scenes (fresh deployments, same data, seed {seed}; "
        f"runbook passes: {repeats}, median reported) ==")
    key = generate_local_key()
    naive, naive_f, naive_node = _naive_side(n_scenes, seed, key)
    passes = []
    for index in range(repeats):
        result = _runbook_side(n_scenes, seed, key, tmp / f"naive-vs-runbook-{index}")
        phases = result["phases"]
        say(f"runbook pass {index + 1}/{repeats}: dry-run {phases['dry_run']['seconds']:.1f} s + apply "
            f"{phases['apply']['seconds']:.1f} s (load average {result['load_average']})")
        passes.append(result)

    def median(phase: str, name: str) -> float:
        return _median([p["phases"][phase][name] for p in passes])

    def both(name: str) -> float:
        return _median([p["phases"]["dry_run"][name] + p["phases"]["apply"][name] for p in passes])

    last = passes[-1]
    plan, applied = last["plan"], last["applied"]
    rows = [
        ["naive: read", naive.read_round_trips, naive.read_seconds, "", "", "", "", "", ""],
        ["naive: writes", naive.write_round_trips, naive.write_seconds, "", naive.scenes_updated, naive.sessions_updated,
         naive.references_created, naive.skipped, naive_node or "?"],
        ["naive: total", naive.round_trips, naive.seconds, naive_f["cpu"], "", "", "", "", ""],
    ]
    for phase, title in (("backup", "backup"), ("dry_run", "dry-run"), ("apply", "apply")):
        extra = ["", "", "", "", ""]
        if phase == "dry_run":
            extra = ["", "", "", f"{sum(t.get('problem', 0) for t in plan.actions.values())} blocked", ""]
        if phase == "apply":
            extra = [applied.migrated["scenes"], applied.migrated["videoSessions"], applied.references_created,
                     f"{applied.conflicts} conflicts, {len(applied.errors)} errors", last["node_peak"] or "?"]
        rows.append([f"runbook: {title}", last["phases"][phase]["round_trips"], median(phase, "seconds"), median(phase, "cpu"), *extra])
    runbook_rt = last["phases"]["dry_run"]["round_trips"] + last["phases"]["apply"]["round_trips"]
    backup_rt = last["phases"]["backup"]["round_trips"]
    runbook_s, runbook_cpu = both("seconds"), both("cpu")
    rows.append(["runbook: dry-run + apply", runbook_rt, runbook_s, runbook_cpu, "", "", "", "", ""])
    table(
        "Round trips, wall time and CPU time (runbook: median of its passes; CPU = Python process + local deployment)",
        ["", "round trips", "seconds", "CPU s", "scenes written", "sessions written", "references", "skipped/blocked", "node peak MiB"],
        rows,
    )
    if repeats > 1:
        say("  runbook dry-run + apply seconds per pass: "
            + ", ".join(f"{p['phases']['dry_run']['seconds'] + p['phases']['apply']['seconds']:.1f}" for p in passes))
    say(f"  (runbook apply status: {applied.status}; backup counts {last['backup'].counts}; planned changes {plan.changes:,})")
    return {
        "naive_scenes": n_scenes,
        "naive_round_trips": naive.round_trips,
        "naive_seconds": naive.seconds,
        "naive_cpu_seconds": naive_f["cpu"],
        "naive_write_round_trips": naive.write_round_trips,
        "naive_write_seconds": naive.write_seconds,
        "naive_references_created": naive.references_created,
        "naive_skipped": naive.skipped,
        "runbook_passes": repeats,
        "runbook_round_trips": runbook_rt,
        "runbook_seconds": runbook_s,
        "runbook_cpu_seconds": runbook_cpu,
        "runbook_dry_run_seconds": median("dry_run", "seconds"),
        "runbook_apply_round_trips": last["phases"]["apply"]["round_trips"],
        "runbook_apply_seconds": median("apply", "seconds"),
        "runbook_backup_round_trips": backup_rt,
        "runbook_backup_seconds": median("backup", "seconds"),
        "runbook_references_created": applied.references_created,
        "runbook_apply_status": applied.status,
        "round_trip_ratio": naive.round_trips / runbook_rt,
        "wall_time_ratio": naive.seconds / runbook_s,
        "cpu_time_ratio": naive_f["cpu"] / runbook_cpu if runbook_cpu else None,
        "round_trip_ratio_apply_only": naive.write_round_trips / last["phases"]["apply"]["round_trips"],
        "wall_time_ratio_apply_only": naive.write_seconds / median("apply", "seconds"),
        "wall_time_ratio_incl_backup": naive.seconds / both_incl_backup(passes),
    }


def both_incl_backup(passes: list[dict[str, Any]]) -> float:
    return _median([sum(p["phases"][phase]["seconds"] for phase in ("backup", "dry_run", "apply")) for p in passes])


# -- 2. scale -------------------------------------------------------------------------------------------------


def bench_scale(sizes: list[int], seed: int, tmp: Path) -> dict[str, Any]:
    say(f"\n== Scale: {', '.join(f'{n:,}' for n in sizes)} scenes (fresh deployment each; runbook in its own process) ==")
    figures: dict[str, Any] = {}
    rows = []
    reports = []
    for n in sizes:
        key = generate_local_key()
        with LocalDeployment(deploy_key=key) as deployment:
            started = time.perf_counter()
            with deployment.transport() as transport:
                loaded = load(transport, n, seed=seed)
            load_s = time.perf_counter() - started
            say(f"{label(n)}: loaded {loaded.scenes:,} scenes + {loaded.sessions:,} sessions in {load_s:.1f} s; running scale_step…")
            run_dir = tmp / f"scale-{label(n)}"
            process = subprocess.run(
                [sys.executable, str(SCALE_STEP), "--url", deployment.url, "--run-dir", str(run_dir)],
                env={**os.environ, DEPLOY_KEY_ENV: key}, capture_output=True, text=True, timeout=4 * 3600, check=False,
            )
            node_peak = node_peak_rss_mib(deployment.pid)
        if process.returncode != 0:
            raise RuntimeError(f"scale_step failed at {n:,} scenes (exit {process.returncode}):\n{process.stderr[-4000:]}")
        report = json.loads(process.stdout.strip().splitlines()[-1])
        reports.append((n, report))
        phases = report["phases"]
        runbook_s = phases["dry_run"]["seconds"] + phases["apply"]["seconds"]
        total_s = runbook_s + phases["backup"]["seconds"]
        docs = report["documents"]
        tag = label(n)
        figures[f"peak_rss_mib_{tag}"] = report["peak_rss_mib"]
        figures[f"seconds_per_1k_docs_{tag}"] = total_s / docs * 1000
        figures[f"dry_run_apply_seconds_{tag}"] = runbook_s
        figures[f"node_peak_rss_mib_{tag}"] = node_peak
        rows.append([
            tag, docs, phases["backup"]["seconds"], phases["dry_run"]["seconds"], phases["apply"]["seconds"], total_s,
            total_s / docs * 1000, phases["backup"]["peak_rss_mib"], phases["dry_run"]["peak_rss_mib"], report["peak_rss_mib"],
            sum(p["round_trips"] for p in phases.values()), f"{report['apply_status']} ({report['errors']} err)", node_peak or "?",
        ])
    table(
        "Runbook pass per size (scale_step.py; RSS = its own peak, VmHWM, after each phase)",
        ["size", "documents", "backup s", "dry-run s", "apply s", "total s", "s / 1k docs", "RSS backup", "RSS dry-run",
         "peak RSS MiB", "round trips", "apply", "node peak MiB"],
        rows,
    )
    (n0, first), (n1, last) = reports[0], reports[-1]
    if n1 > n0:
        rss_growth = last["peak_rss_mib"] / first["peak_rss_mib"]
        data_growth = last["documents"] / first["documents"]
        figures["rss_growth_ratio"] = rss_growth
        figures["data_growth_ratio"] = data_growth
        figures["rss_growth_vs_data_growth"] = rss_growth / data_growth
        figures["rss_mib_per_1k_extra_docs"] = (last["peak_rss_mib"] - first["peak_rss_mib"]) / ((last["documents"] - first["documents"]) / 1000)
        say(f"  peak RSS grew {rss_growth:.2f}x while the data grew {data_growth:.2f}x "
            f"({figures['rss_mib_per_1k_extra_docs']:.3f} MiB per 1k extra documents)")
    figures["peak_rss_mib_largest"] = last["peak_rss_mib"]
    figures["largest_size"] = n1
    return figures


# -- latency: naive vs runbook through a proxy adding a hosted deployment's round trip -------------------------


def bench_latency(n_scenes: int, seed: int, tmp: Path, naive_every: int = 1) -> dict[str, Any]:
    sampled = f"; the naive side writes 1 document in {naive_every}, its time extrapolated" if naive_every > 1 else ""
    say(f"\n== Naive vs runbook at {n_scenes:,} scenes through a proxy adding {LATENCY_MS} ms of round trip{sampled} ==")
    key = generate_local_key()
    sides: dict[str, dict[str, Any]] = {}
    for side in ("naive", "runbook"):
        extra = {"extra_functions": NAIVE_FUNCTIONS} if side == "naive" else {}
        with LocalDeployment(deploy_key=key, **extra) as deployment:
            with deployment.transport() as transport:
                load(transport, n_scenes, seed=seed)
            with LatencyProxy(deployment.port, round_trip_ms=LATENCY_MS) as proxy, ConvexTransport(proxy.url, key) as transport:
                started, trips = time.perf_counter(), transport.round_trips
                if side == "naive":
                    naive = run_naive(transport, every=naive_every)
                    phases = {"naive": naive.extrapolated_seconds, "naive_measured": naive.seconds}
                else:
                    live_started = time.perf_counter()  # the dry-run's live mode (pages prefetched), for comparison
                    migration = bind_migration(tmp / "latency-live-plan", default_id())
                    build_plan(transport, tmp / "latency-live-plan", migration, show_progress=False, source="live")
                    live_plan_s = time.perf_counter() - live_started
                    started, trips = time.perf_counter(), transport.round_trips
                    run_dir = tmp / "latency-runbook"
                    bind_migration(run_dir, default_id())
                    take_backup(transport, run_dir, migration, show_progress=False)
                    backup_s = time.perf_counter() - started
                    build_plan(transport, run_dir, migration, show_progress=False)
                    plan_s = time.perf_counter() - started - backup_s
                    apply_plan(transport, run_dir, migration, confirm=True, settings=ApplySettings(show_progress=False))
                    phases = {"backup": backup_s, "dry_run": plan_s, "apply": time.perf_counter() - started - backup_s - plan_s,
                              "dry_run_live": live_plan_s}
                sides[side] = {"phases": phases, "round_trips": transport.round_trips - trips}
        say(f"{side}: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    naive_s = sides["naive"]["phases"]["naive"]
    runbook_s = sides["runbook"]["phases"]["dry_run"] + sides["runbook"]["phases"]["apply"]
    if naive_every > 1:
        say(f"  EXTRAPOLATED: the naive run read all {naive.scenes:,} scenes and {naive.sessions:,} sessions "
            f"({naive.read_seconds:.1f} s) but wrote only 1 document in {naive_every} ({naive.written_scenes:,} scenes, "
            f"{naive.written_sessions:,} sessions: {naive.write_seconds:.1f} s, {naive.write_round_trips:,} round trips); its "
            f"seconds and round trips below are the read plus the writes x {naive.sample_factor:.2f} (one round trip per "
            "write: linear). --latency-naive-every 1 measures every write.")
    table(
        f"Through the {LATENCY_MS} ms proxy (runbook: dry-run + apply, as in the loopback comparison; backup listed apart)",
        ["", "round trips", "seconds"],
        [["naive" + (" (extrapolated from its sample)" if naive_every > 1 else ""), naive.extrapolated_round_trips, naive_s],
         ["runbook: dry-run + apply", sides["runbook"]["round_trips"], runbook_s],
         ["runbook: backup (export)", "", sides["runbook"]["phases"]["backup"]],
         ["runbook: dry-run from the live tables instead of the snapshot", "", sides["runbook"]["phases"]["dry_run_live"]]],
    )
    return {
        "latency_scenes": n_scenes,
        "naive_seconds_20ms": naive_s,
        "naive_seconds_20ms_extrapolated": naive_every > 1,
        "naive_write_sample_every_20ms": naive_every,
        "naive_measured_seconds_20ms": naive.seconds,
        "runbook_seconds_20ms": runbook_s,
        "runbook_dry_run_seconds_20ms": sides["runbook"]["phases"]["dry_run"],
        "runbook_apply_seconds_20ms": sides["runbook"]["phases"]["apply"],
        "runbook_dry_run_live_seconds_20ms": sides["runbook"]["phases"]["dry_run_live"],
        "wall_time_ratio_20ms": naive_s / runbook_s,
    }


# -- simulated scale: a deployment of any size, the runbook's own memory and time per document ----------------


def bench_simulated(sizes: list[int], seed: int, tmp: Path) -> dict[str, Any]:
    say(f"\n== Simulated deployment: {', '.join(f'{n:,}' for n in sizes)} scenes (benchmarks/simulated_deployment.py; "
        "backup, dry-run, apply, verify in their own process) ==")
    figures: dict[str, Any] = {}
    rows = []
    for n in sizes:
        needed, free = round(n * (1 + 1 / SCENES_PER_SESSION) * DISK_BYTES_PER_DOCUMENT), shutil.disk_usage(tmp).free
        if free < needed:  # a full disk mid-run would stop every other process on the machine too
            say(f"{label(n)}: SKIPPED: needs about {needed / 2**30:,.0f} GiB free in {tmp} "
                f"({DISK_BYTES_PER_DOCUMENT:,} bytes per document), {free / 2**30:,.0f} GiB are free")
            continue
        key = generate_local_key()
        env = {**os.environ, DEPLOY_KEY_ENV: key, "PYTHONPATH": str(BENCH_DIR.parent)}
        server = subprocess.Popen([sys.executable, str(SIMULATED_DEPLOYMENT), "--scenes", str(n), "--seed", str(seed)],
                                  env=env, stdout=subprocess.PIPE, text=True)
        try:
            ready = json.loads(server.stdout.readline()) if server.stdout else {}
            serial = ["--serial-dry-run"] if n <= SERIAL_DRY_RUN_MAX else []
            process = subprocess.run(
                [sys.executable, str(SCALE_STEP), "--url", ready["url"], "--run-dir", str(tmp / f"simulated-{label(n)}"), "--verify", *serial],
                env=env, capture_output=True, text=True, timeout=6 * 3600, check=False,
            )
        finally:
            server.terminate()
            server.wait(timeout=60)
        if process.returncode != 0:
            raise RuntimeError(f"scale_step failed at {n:,} simulated scenes (exit {process.returncode}):\n{process.stderr[-4000:]}")
        report = json.loads(process.stdout.strip().splitlines()[-1])
        phases = report["phases"]
        docs = report["documents"]
        total_s = sum(phases[p]["seconds"] for p in RUN_PHASES)
        tag = label(n)
        shutil.rmtree(tmp / f"simulated-{tag}")  # the next size needs the disk
        figures[f"peak_rss_mib_{tag}"] = report["peak_rss_mib"]
        figures[f"seconds_per_1k_docs_{tag}"] = total_s / docs * 1000
        figures[f"run_folder_bytes_per_doc_{tag}"] = round(report["run_folder_bytes"] / docs)
        figures[f"disk_peak_bytes_per_doc_{tag}"] = round(report["disk_peak_bytes"] / docs)
        figures[f"verify_vs_dry_run_{tag}"] = phases["verify"]["seconds"] / phases["dry_run"]["seconds"]
        figures[f"workers_{tag}"] = report["workers"]
        figures[f"worker_peak_rss_mib_{tag}"] = report["worker_peak_rss_mib"]
        speedup = ""
        if "dry_run_1_worker" in phases:
            figures[f"parallel_speedup_{tag}"] = phases["dry_run_1_worker"]["seconds"] / phases["dry_run"]["seconds"]
            # The same from CPU seconds, as on an idle machine: the main process's part is serial, the workers' shared.
            dry = phases["dry_run"]
            figures[f"parallel_speedup_cpu_{tag}"] = phases["dry_run_1_worker"]["cpu_seconds"] / (
                dry["cpu_seconds"] + dry["workers_cpu_seconds"] / report["workers"])
            speedup = f"{figures[f'parallel_speedup_{tag}']:.2f}x ({phases['dry_run_1_worker']['seconds']:.1f} s with 1)"
            if not report["serial_plan_identical"]:
                raise RuntimeError(f"at {n:,} scenes the one-worker dry-run wrote another plan than {report['workers']} workers")
        rows.append([tag, docs, *(phases[p]["seconds"] for p in RUN_PHASES), total_s,
                     total_s / docs * 1000, report["peak_rss_mib"], round(report["run_folder_bytes"] / docs),
                     round(report["disk_peak_bytes"] / docs), report["workers"], speedup,
                     f"{report['apply_status']}, verify {'passed' if report['verify_passed'] else 'FAILED'}"])
        say(f"{tag}: {total_s:.1f} s, peak RSS {report['peak_rss_mib']} MiB")
    table(
        "Runbook pass per simulated size (RSS = the runbook process's own peak, VmHWM)",
        ["size", "documents", "backup s", "dry-run s", "apply s", "verify s", "total s", "s / 1k docs", "peak RSS MiB",
         "run folder bytes / doc", "disk peak bytes / doc", "workers", "dry-run speedup", "result"],
        rows,
    )
    measured = [n for n in sizes if f"seconds_per_1k_docs_{label(n)}" in figures]
    if len(measured) > 1:
        first, last = label(measured[0]), label(measured[-1])
        figures["seconds_per_1k_docs_growth"] = figures[f"seconds_per_1k_docs_{last}"] / figures[f"seconds_per_1k_docs_{first}"]
        say(f"  time per 1k documents: {figures['seconds_per_1k_docs_growth']:.2f}x from {first} to {last} (flat is 1.0)")
    return figures


# -- 3. conversion --------------------------------------------------------------------------------------------


def bench_conversion(n: int, seed: int) -> dict[str, Any]:
    say(f"\n== Conversion cost: {n:,} generated scenes as JSON lines (best of {conversion.REPEATS}) ==")
    result = conversion.measure(n, seed)
    table(
        "Per document",
        ["", "seconds (all)", "µs / doc"],
        [
            ["json.loads", result["json_loads_seconds"], result["json_loads_us_per_doc"]],
            ["json.loads + plan_scene", result["json_loads_plus_plan_seconds"], result["json_loads_plus_plan_seconds"] / result["documents"] * 1e6],
            ["conversion only (difference)", result["conversion_seconds"], result["conversion_us_per_doc"]],
            ["orjson.loads (for reference)", result["orjson_loads_seconds"], result["orjson_loads_seconds"] / result["documents"] * 1e6],
        ],
    )
    say(f"  {result['documents']:,} documents, {result['bytes_per_document']} bytes each on average")
    return {
        "conversion_docs": result["documents"],
        "conversion_vs_json_loads": result["conversion_vs_json_loads"],
        "conversion_vs_orjson_loads": result["conversion_vs_orjson_loads"],
        "conversion_us_per_doc": result["conversion_us_per_doc"],
        "json_loads_us_per_doc": result["json_loads_us_per_doc"],
    }


# -- figures --------------------------------------------------------------------------------------------------


def goals(figures: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    def check(name: str, text: str, ok: Callable[[Any], bool]) -> tuple[str, str, bool | None]:
        value = figures.get(name)
        return name, text, None if value is None else ok(value)

    return [
        check("round_trip_ratio", ">= 20 (naive / runbook dry-run + apply)", lambda v: v >= 20),
        check("wall_time_ratio", ">= 10 (naive / runbook dry-run + apply)", lambda v: v >= 10),
        check("peak_rss_mib_200k", f"<= {GIB:.0f} MiB", lambda v: v <= GIB),
        check("rss_growth_vs_data_growth", "clearly below 1 (RSS grows slower than data): <= 0.5", lambda v: v <= 0.5),
        check("conversion_vs_json_loads", "<= 3", lambda v: v <= 3),
        check("peak_rss_mib_1m", "<= 512 MiB (simulated deployment, 1M scenes)", lambda v: v <= 512),
        check("seconds_per_1k_docs_growth", "<= 1.3 (time per 1k documents flat from the smallest to the largest simulated size)", lambda v: v <= 1.3),
        check("parallel_speedup_1m", ">= 1.6 (dry-run with one worker / with the cores, 1M simulated scenes)", lambda v: v >= 1.6),
        check("verify_vs_dry_run_1m", "<= 1.0 (verify's seconds / the dry-run's, 1M simulated scenes)", lambda v: v <= 1.0),
        check("run_folder_bytes_per_doc_1m", "<= 1,500 (run folder at the end of the run, 1M simulated scenes)", lambda v: v <= 1500),
        check("disk_peak_bytes_per_doc_1m", "<= 1,500 (run folder + scratch at the run's peak, 1M simulated scenes)", lambda v: v <= 1500),
        check("peak_rss_mib_10m", "<= 512 MiB (simulated deployment, 10M scenes, with --simulated-sizes ...,10m)", lambda v: v <= 512),
        check("run_folder_bytes_per_doc_10m", "<= 1,500 (10M simulated scenes)", lambda v: v <= 1500),
        check("wall_time_ratio_20ms", ">= 200 (naive / runbook dry-run + apply through 20 ms of round trip"
              + (f"; naive EXTRAPOLATED from the writes of 1 document in {figures['naive_write_sample_every_20ms']})"
                 if figures.get("naive_seconds_20ms_extrapolated") else ")"), lambda v: v >= 200),
    ]


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return json.dumps(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (naive 1k, scale 2k/5k, conversion 5k)")
    parser.add_argument("--sizes", help="scale sizes in scenes, comma-separated (e.g. 20k,100k,200k)")
    parser.add_argument("--naive-scenes", type=parse_count, help="scenes for naive vs runbook (default 10k)")
    parser.add_argument("--conversion-docs", type=parse_count, help="documents for the conversion cost (default 100k)")
    parser.add_argument("--runbook-passes", type=int, help="runbook passes for naive vs runbook, median reported (default 3; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=7, help="sample data seed (the same data for every deployment)")
    parser.add_argument("--simulated-sizes", help="simulated deployment sizes in scenes (default 100k,1m; e.g. 100k,1m,10m)")
    parser.add_argument("--latency-scenes", type=parse_count, help=f"scenes for naive vs runbook through {LATENCY_MS} ms of round trip (default 10k)")
    parser.add_argument("--latency-naive-every", type=int,
                        help="the naive side through the proxy writes every k-th document and its time is extrapolated "
                             "(default 10: ~2 min instead of ~17 at 10k; 1 measures every write)")
    parser.add_argument("--only", help=f"comma-separated sections to run: {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    defaults = QUICK if args.quick else FULL
    naive_scenes = args.naive_scenes or defaults["naive"]
    sizes = sorted(parse_count(s) for s in args.sizes.split(",")) if args.sizes else defaults["sizes"]
    conversion_docs = args.conversion_docs or defaults["conversion"]
    repeats = max(1, args.runbook_passes or defaults["repeats"])
    simulated = sorted(parse_count(s) for s in args.simulated_sizes.split(",")) if args.simulated_sizes else defaults["simulated"]
    latency_scenes = args.latency_scenes or defaults["latency"]
    latency_naive_every = max(1, args.latency_naive_every or defaults["latency_naive_every"])
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    figures: dict[str, Any] = {}
    failures = []
    with tempfile.TemporaryDirectory(prefix="runbook-bench-") as tmp:
        for name, run in (
            ("naive", lambda: bench_naive_vs_runbook(naive_scenes, args.seed, Path(tmp), repeats)),
            ("latency", lambda: bench_latency(latency_scenes, args.seed, Path(tmp), latency_naive_every)),
            ("scale", lambda: bench_scale(sizes, args.seed, Path(tmp))),
            ("simulated", lambda: bench_simulated(simulated, args.seed, Path(tmp))),
            ("conversion", lambda: bench_conversion(conversion_docs, args.seed)),
        ):
            if name not in sections:
                continue
            try:
                figures.update(run())
            except Exception as error:  # noqa: BLE001 - report and go on with the other sections
                failures.append(name)
                say(f"\n!! {name} failed: {type(error).__name__}: {error}")
                traceback.print_exc()
    figures["bench_seconds"] = time.perf_counter() - started

    say("\nGoals")
    for name, text, ok in goals(figures):
        state = "not measured" if ok is None else "met" if ok else "MISSED"
        say(f"  {name:<28} {fmt(figures.get(name)):>10}  {text}: {state}")
    if args.quick:
        say("  (--quick: smaller sizes than the goals are set for (10k scenes, 200k scenes); a smoke run, not a verdict)")
    if failures:
        say(f"  sections that failed: {', '.join(failures)}")

    if args.out:
        args.out.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")

    say("\nFigures")
    ordered = [*REQUIRED, *(k for k in figures if k not in REQUIRED)]
    for name in ordered:
        say(f"{name}: {fmt(figures.get(name))}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
