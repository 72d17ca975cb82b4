"""`runbook local-deployment`: the fault options the Python class has, and no Node server left behind when it
is stopped with SIGTERM or SIGINT (checked by PID and by port)."""

from __future__ import annotations

import inspect
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import cli
from helpers.connection.calls import iter_documents, read_ledger
from helpers.connection.errors import TransientFailure
from helpers.connection.transport import ConvexTransport
from helpers.devtools.local_deployment import CLI_OPTIONS, LocalDeployment
from helpers.steps import names

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_every_cli_option_is_a_keyword_of_the_class_and_parses() -> None:
    keywords = inspect.signature(LocalDeployment).parameters
    assert {option.keyword for option in CLI_OPTIONS} <= set(keywords)
    args = cli.build_parser().parse_args([
        "local-deployment", "--port", "0", "--fault-rate", "0.25", "--fault-kinds", "5xx,drop", "--fault-seed", "9",
        "--fault-paths", "migration:applyBatch, migration:readPage", "--export-fault", "failed", "--fault-delay-ms", "4000",
    ])
    assert {option.keyword: getattr(args, option.keyword) for option in CLI_OPTIONS} == {
        "fault_rate": 0.25, "fault_kinds": ("5xx", "drop"), "fault_seed": 9,
        "fault_paths": ("migration:applyBatch", "migration:readPage"), "export_fault": "failed", "fault_delay_ms": 4000, "data_dir": None,
    }
    assert cli.build_parser().parse_args(["local-deployment", "--port", "0", "--data-dir", "d"]).data_dir == Path("d")
    defaults = cli.build_parser().parse_args(["local-deployment", "--port", "0"])
    assert all(getattr(defaults, option.keyword) is None for option in CLI_OPTIONS)  # the class keeps its defaults


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_server_stops_with_the_command_and_the_fault_options_reach_it(stop: signal.Signals, deploy_key: str) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "helpers.cli", "local-deployment", "--port", str(port),
               "--fault-rate", "1", "--fault-kinds", "5xx", "--fault-paths", "migration:readPage"]
    runbook = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    servers: list[psutil.Process] = []
    try:
        assert runbook.stdout is not None
        line = runbook.stdout.readline()
        assert line.startswith(f"Local Convex test deployment at http://127.0.0.1:{port}"), line + runbook.stderr.read()
        servers = psutil.Process(runbook.pid).children(recursive=True)
        assert servers and _port_open(port)

        with ConvexTransport(f"http://127.0.0.1:{port}", max_attempts=1) as transport:
            with pytest.raises(TransientFailure, match="503|502"):
                transport.function("migration:readPage", {"table": "scenes", "cursor": None, "numItems": 1})
            assert transport.function("migrationRuns:ledger", {"migrationId": "m"}) == []  # only the named path fails

        runbook.send_signal(stop)
        assert runbook.wait(30) == 0
        gone, alive = psutil.wait_procs(servers, timeout=15)
        assert alive == [] and not _port_open(port)
    finally:
        for process in [*servers, psutil.Process(runbook.pid)] if runbook.poll() is None else servers:
            if process.is_running():
                process.kill()
        runbook.wait()


def test_fault_delay_ms_fixes_the_length_of_every_delay(deploy_key: str) -> None:
    """A race test starts two operators a second apart and needs both past their checks before either writes: every
    call slowed by exactly --fault-delay-ms, not 200-1,000 ms at random."""
    with LocalDeployment(deploy_key=deploy_key, fault_rate=1.0, fault_kinds=("delay",), fault_delay_ms=1_500,
                         fault_paths=("migration:readPage",)) as slow, slow.transport() as transport:
        times = []
        for _ in range(3):
            began = time.monotonic()
            transport.function("migration:readPage", {"table": "scenes", "cursor": None, "numItems": 1})
            times.append(time.monotonic() - began)
        assert all(t >= 1.5 for t in times), times  # not 200-1,000 ms at random

def _kill_all(runbook: subprocess.Popen[str]) -> None:
    """SIGKILL the command and its Node server (tsx and node): what a crash leaves, and no server left behind."""
    if runbook.poll() is None:
        for process in [*psutil.Process(runbook.pid).children(recursive=True), psutil.Process(runbook.pid)]:
            process.kill()
    runbook.wait()


def _start(port: int, data: Path, seed: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "helpers.cli", "local-deployment", "--port", str(port), "--data-dir", str(data),
               "--seed-scenes", str(seed)]
    runbook = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert runbook.stdout is not None
    first = runbook.stdout.readline()
    return runbook, first


def test_a_killed_server_started_again_on_its_data_dir_holds_the_same_data(deploy_key: str, tmp_path: Path) -> None:
    """--data-dir: every acknowledged write (documents and the ledger) survives a SIGKILL of the server; --seed-scenes
    seeds only an empty folder."""
    port, data = _free_port(), tmp_path / "data"
    runbook, first = _start(port, data, 20)
    try:
        assert first.startswith("Loaded sample data"), first + runbook.stderr.read()
        assert runbook.stdout.readline().startswith(f"Local Convex test deployment at http://127.0.0.1:{port}")
        with ConvexTransport(f"http://127.0.0.1:{port}") as transport:
            transport.function("migrationRuns:record", {"migrationId": "m", "runId": "r", "step": names.APPLY,
                                                        "status": "running", "operator": "o", "startedAt": 1})
            before = {table: list(iter_documents(transport, table)) for table in ("scenes", "videoSessions")}
            ledger = read_ledger(transport, "m")
    finally:
        _kill_all(runbook)  # no shutdown code runs: only what was written before each answer remains
    assert len(before["scenes"]) == 20 and ledger
    again, first = _start(port, data, 20)
    try:
        assert first.startswith(f"Holds {sum(len(d) for d in before.values()) + 1:,} documents from {data} (--seed-scenes"), first
        with ConvexTransport(f"http://127.0.0.1:{port}") as transport:
            assert {table: list(iter_documents(transport, table)) for table in before} == before
            assert read_ledger(transport, "m") == ledger
            [session] = transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "pending"}]})["ids"]
            assert session not in {doc["_id"] for doc in before["videoSessions"]}  # new ids never reuse stored ones
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
    finally:
        _kill_all(again)
