"""A TCP proxy on loopback that adds a fixed round-trip latency, for the benchmark's "hosted deployment" section.

Each direction is a delay line: every chunk is delivered `one_way` seconds after it arrived, in order, without
waiting for the chunks before it to be delayed one by one. So a request/response pays the round trip once, as on
a real network, and large bodies are not slowed by their number of TCP segments (latency, not bandwidth).
"""

from __future__ import annotations

import asyncio
import threading
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
    """`with LatencyProxy(target_port, round_trip_ms=20) as proxy:` then talk to `proxy.url`."""

    def __init__(self, target_port: int, *, round_trip_ms: float, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.one_way = round_trip_ms / 2000.0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        try:
            await asyncio.gather(
                _delay_line(client_reader, upstream_writer, self.one_way),
                _delay_line(upstream_reader, client_writer, self.one_way),
                return_exceptions=True,
            )
        except asyncio.CancelledError:  # the proxy is stopping: connections end with it
            upstream_writer.close()
            client_writer.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
