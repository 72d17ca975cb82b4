"""Start and stop the local Convex test deployment (local_deployment/server.ts) from Python.

The server is a Node process running this project's convex/ functions through convex-test behind Convex's
HTTP API. Its admin key travels in the child's environment only (never argv, never a file).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from helpers.connection.errors import RunbookError
from helpers.connection.transport import (
    DEPLOY_KEY_ENV,
    ConvexTransport,
    deploy_key_from_env,
)
from helpers.devtools.sample_data import load

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
SERVER = PROJECT_ROOT / "local_deployment" / "server.ts"
TSX = PROJECT_ROOT / "node_modules" / ".bin" / "tsx"


class LocalDeploymentError(RunbookError):
    hint = "Run `make setup` (installs the npm packages: convex, convex-test, tsx) and check Node 20+ is on PATH."


def generate_local_key() -> str:
    """A throwaway admin key for a local deployment (held in memory and in child environments only)."""
    return "local-" + secrets.token_urlsafe(24)


class LocalDeployment:
    """A running local deployment; use as a context manager. ``port=0`` lets the OS choose a free port."""

    def __init__(
        self,
        *,
        port: int = 0,
        deploy_key: str | None = None,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = ("5xx", "drop", "delay"),
        fault_seed: int = 1,
        fault_paths: Sequence[str] = (),
        fault_delay_ms: int | None = None,
        export_fault: str | None = None,
        extra_functions: Path | None = None,
        data_dir: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.port = port
        self.deploy_key = deploy_key or os.environ.get(DEPLOY_KEY_ENV) or generate_local_key()
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.fault_seed = fault_seed
        self.fault_paths = tuple(fault_paths)
        self.fault_delay_ms = fault_delay_ms
        self.export_fault = export_fault
        self.extra_functions = extra_functions
        #: Where the server journals every committed transaction (None: memory only); a server started again on
        #: the same folder holds the same documents and ledger.
        self.data_dir = data_dir
        self.startup_timeout = startup_timeout
        self.url = ""
        #: Documents the server held when it became ready (those loaded from `data_dir`).
        self.documents = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        command = [str(TSX), str(SERVER), "--port", str(self.port), "--fault-rate", str(self.fault_rate),
                   "--fault-kinds", ",".join(self.fault_kinds), "--fault-seed", str(self.fault_seed),
                   "--fault-paths", ",".join(self.fault_paths)]
        if self.fault_delay_ms is not None:
            command += ["--fault-delay-ms", str(self.fault_delay_ms)]
        if self.export_fault:
            command += ["--export-fault", self.export_fault]
        if self.extra_functions:
            command += ["--extra-functions", str(self.extra_functions)]
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir)]
        return command

    def start(self) -> LocalDeployment:
        if not TSX.exists() or shutil.which("node") is None:
            raise LocalDeploymentError(f"Cannot start the local deployment: {TSX} or node is missing.")
        self._log = tempfile.TemporaryFile()
        env = {**os.environ, DEPLOY_KEY_ENV: self.deploy_key}
        self._process = subprocess.Popen(
            self.command(), cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL
        )
        ready: dict[str, Any] = {}
        reader = threading.Thread(target=self._read_ready_line, args=(ready,), daemon=True)
        reader.start()
        try:
            reader.join(self.startup_timeout)
        except BaseException:  # Ctrl-C or SIGTERM while starting: the server must not outlive us
            self.stop()
            raise
        if "url" not in ready:
            log = self._log_text()
            self.stop()
            raise LocalDeploymentError(f"The local deployment did not start within {self.startup_timeout:.0f} s.\n{log}")
        self.url = ready["url"]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.documents = int(ready.get("documents", 0))
        return self

    def _read_ready_line(self, ready: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("event") == "ready":
                ready.update(event)
                break

    def _log_text(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-4000:]

    def transport(self, deploy_key: str | None = None, **kwargs: object) -> ConvexTransport:
        return ConvexTransport(self.url, deploy_key or self.deploy_key, **kwargs)  # type: ignore[arg-type]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def kill(self) -> None:
        """SIGKILL, as a crash would stop it: the Node server (tsx runs it as a child) and tsx, nothing flushed."""

        if self._process is not None and self._process.poll() is None:
            tsx = psutil.Process(self._process.pid)
            for process in [*tsx.children(recursive=True), tsx]:
                process.kill()
            psutil.wait_procs([tsx], timeout=10)
        self.stop()

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            if self._process.stdout:
                self._process.stdout.close()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class CliOption:
    """One `runbook local-deployment` option and the LocalDeployment keyword it sets (None: the class default)."""

    flag: str
    keyword: str
    type: Callable[[str], Any]
    help: str


#: The options `runbook local-deployment` takes beyond --port and --seed-scenes, one per LocalDeployment keyword.
CLI_OPTIONS: tuple[CliOption, ...] = (
    CliOption("--fault-rate", "fault_rate", float, "share of calls that fail (0..1)"),
    CliOption("--fault-kinds", "fault_kinds", _names, "comma-separated faults to draw from: 5xx,drop,delay,timeout,oom"),
    CliOption("--fault-seed", "fault_seed", int, "seed of the fault sequence (the same seed, the same faults)"),
    CliOption("--fault-paths", "fault_paths", _names, "comma-separated function paths that fail (default: all)"),
    CliOption("--fault-delay-ms", "fault_delay_ms", int,
              "length of every delay fault in ms (default: 200-1,000 at random); a race test slows every call alike"),
    CliOption("--export-fault", "export_fault", str, "how snapshot exports fail: failed, canceled, truncate or lost-response"),
    CliOption("--data-dir", "data_dir", Path, "keep the documents and the ledger in this folder (journaled before each "
              "answer): started again on it, the deployment holds the same data; default: memory only"),
)


class _Stop(Exception):
    """SIGTERM or SIGINT, raised where the server is waited for, so the `with` block stops the Node process."""


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """`runbook local-deployment`'s arguments (the CLI asks the module: it exists only in a checkout)."""
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed-scenes", type=int, default=0, help="load this many sample scenes (with their sessions)")
    for option in CLI_OPTIONS:
        parser.add_argument(option.flag, dest=option.keyword, type=option.type, help=option.help)


def cli_main(args: argparse.Namespace) -> int:
    return serve(port=args.port, seed_scenes=args.seed_scenes, **{o.keyword: getattr(args, o.keyword) for o in CLI_OPTIONS})


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def serve(*, port: int, seed_scenes: int = 0, **options: Any) -> int:
    """`runbook local-deployment`: runs in the foreground until Ctrl-C or SIGTERM, and stops its Node server
    either way. `options` are LocalDeployment keywords (CLI_OPTIONS); None keeps the default. The admin key is
    CONVEX_DEPLOY_KEY."""

    given = {keyword: value for keyword, value in options.items() if value is not None}
    deployment = LocalDeployment(port=port, deploy_key=deploy_key_from_env(), **given)
    # Both handlers explicitly: a process started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler of its own.
    previous = {signum: signal.signal(signum, _raise_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with deployment:
            if deployment.documents:
                print(f"Holds {deployment.documents:,} documents from {deployment.data_dir}"
                      + (" (--seed-scenes seeds an empty data folder only: not loaded)" if seed_scenes else ""), flush=True)
            elif seed_scenes:
                with deployment.transport() as transport:
                    loaded = load(transport, seed_scenes)
                print(f"Loaded sample data: {loaded}", flush=True)
            print(f"Local Convex test deployment at {deployment.url} (admin key from {DEPLOY_KEY_ENV}). Ctrl-C stops it.", flush=True)
            assert deployment._process is not None
            deployment._process.wait()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
