"""A TCP proxy that injects network faults between nodes and the broker.

Modes, switchable at any time from the test thread:
- `pass`: forward bytes as they come (plus `latency_ms` each way);
- `stall`: keep every connection open but forward nothing: a half-open link, as when a Wi-Fi
  access point dies without a word; new connections are accepted and stall too;
- `partition`: as `stall`, and new connection attempts are refused at once (the access point is
  back but the route to the broker is not);
- `drop()`: close every current connection abruptly (RST-like), then carry on in the current mode.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from fleet.broker import free_port


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int | None = None):
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = listen_port or free_port()
        self.mode = "pass"
        self.latency_ms = 0
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = None  # asyncio.Event, set while mode == pass
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    def set_mode(self, mode: str, latency_ms: int | None = None) -> None:
        if mode not in ("pass", "stall", "partition"):
            raise ValueError(mode)

        def apply():
            self.mode = mode
            if latency_ms is not None:
                self.latency_ms = latency_ms
            if mode == "pass":
                self._flowing.set()
            else:
                self._flowing.clear()

        self._loop.call_soon_threadsafe(apply)

    def drop(self) -> None:
        def close_all():
            for w in list(self._writers):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                w.close()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close_all)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "partition":
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_w))
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer), return_exceptions=True)
        for w in (writer, up_w):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                await self._flowing.wait()  # a stalled link passes on nothing, not even a close
                if not data:
                    break
                if self.latency_ms:
                    await asyncio.sleep(self.latency_ms / 1000)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def stop(self) -> None:
        async def shutdown():
            self._server.close()
            for w in list(self._writers):
                w.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
