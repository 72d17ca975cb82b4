"""A TCP proxy on loopback that adds a fixed round-trip latency, for the benchmark's "hosted deployment" section.

Each direction is a delay line: every chunk is delivered `one_way` seconds after it arrived, in order, without
waiting for the chunks before it to be delayed one by one. So a request/response pays the round trip once, as on
a real network, and large bodies are not slowed by their number of TCP segments (latency, not bandwidth).

The proxy runs in a process of its own, as the network is not part of the client: in the measuring process its
event loop took the interpreter's lock from the runbook's threads for every chunk it forwarded.

    python benchmarks/latency_proxy.py --target-port PORT --round-trip-ms 20   # prints {"event": "ready", "port": N}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from types import TracebackType


async def _delay_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, one_way: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                writer.close()
                return
            writer.write(chunk)
            await writer.drain()

    delivery = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(1 << 16):
            queue.put_nowait((time.monotonic() + one_way, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((time.monotonic() + one_way, b""))
    try:
        await delivery
    except ConnectionError:
        pass


class LatencyProxy:
    """`with LatencyProxy(target_port, round_trip_ms=20) as proxy:` then talk to `proxy.url` (a child process)."""

    def __init__(self, target_port: int, *, round_trip_ms: float, target_host: str = "127.0.0.1") -> None:
        self.command = [sys.executable, __file__, "--target-host", target_host, "--target-port", str(target_port),
                        "--round-trip-ms", str(round_trip_ms)]
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LatencyProxy:
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the latency proxy did not start: {' '.join(self.command)}")
        self.port = int(json.loads(line)["port"])
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None


async def serve(target: tuple[str, int], one_way: float) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        await asyncio.gather(
            _delay_line(client_reader, upstream_writer, one_way),
            _delay_line(upstream_reader, client_writer, one_way),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(json.dumps({"event": "ready", "port": server.sockets[0].getsockname()[1]}), flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--round-trip-ms", type=float, required=True)
    options = parser.parse_args()
    asyncio.run(serve((options.target_host, options.target_port), options.round_trip_ms / 2000.0))


if __name__ == "__main__":
    main()
