"""Upstream servers for tunnel tests: a real WebSocket server (the ``websockets`` package) and a raw one.

``WsUpstream`` serves, by path:

- ``/ws/echo``: every message back as it came (text as text, binary as binary);
- ``/ws/hello``: sends ``hello from NAME`` as soon as the handshake is done, then echoes;
- ``/ws/headers``: sends the handshake's request headers as one JSON message, then echoes;
- ``/ws/close``: closes at once with code 4001 and reason ``bye``;
- ``/ws/drop``: drops the TCP connection at once, with no close frame;
- ``/ws/reject``: answers the handshake with ``403`` (no upgrade).

It records every handshake's path and headers and every close code it saw; with ``ssl`` it serves wss.

``RawUpgradeServer`` answers any request head with a fixed response (``101`` by default) and then
reads nothing more (``reading=False``) or echoes raw bytes, for backpressure and lying-upstream tests.
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

T = TypeVar("T")


class _Threaded:
    """An asyncio loop in a daemon thread, with a server started on it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"upstream-{name}", daemon=True)

    async def _start(self) -> int:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.port = self.loop.run_until_complete(self._start())
        except BaseException as err:  # reported to the starting thread
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.close()

    def start(self) -> Any:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError(f"{self.name} did not start")
        if self._error is not None:
            raise self._error
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.port}"


class WsUpstream(_Threaded):
    """A WebSocket server on 127.0.0.1 (see the module docstring for its paths)."""

    def __init__(self, name: str = "ws", ssl: ssl_module.SSLContext | None = None) -> None:
        super().__init__(name)
        self.ssl = ssl  # served over TLS (wss) when given
        self._server: Server | None = None
        self._lock = threading.Lock()
        self.handshakes: list[tuple[str, Headers]] = []
        self.close_codes: list[int | None] = []
        self.open = 0

    async def _start(self) -> int:
        self._server = await serve(
            self._handle, "127.0.0.1", 0, process_request=self._process, max_size=4 * 1024 * 1024,
            ping_interval=None, compression=None, ssl=self.ssl,
        )
        port: int = self._server.sockets[0].getsockname()[1]  # type: ignore[index]
        return port

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _process(self, conn: ServerConnection, request: Request) -> Response | None:
        with self._lock:
            self.handshakes.append((request.path, request.headers))
        if request.path == "/ws/reject":
            return conn.respond(403, "no websocket here\n")
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        with self._lock:
            self.open += 1
        path = conn.request.path if conn.request is not None else ""
        try:
            if path == "/ws/close":
                await conn.close(4001, "bye")
                return
            if path == "/ws/drop":
                conn.transport.abort()
                return
            if path == "/ws/hello":
                await conn.send(f"hello from {self.name}")
            elif path == "/ws/headers" and conn.request is not None:
                await conn.send(json.dumps([[k, v] for k, v in conn.request.headers.raw_items()]))
            async for message in conn:
                await conn.send(message)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self.open -= 1
                self.close_codes.append(conn.close_code)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl is not None else 'http'}://127.0.0.1:{self.port}"

    def handshake_count(self) -> int:
        with self._lock:
            return len(self.handshakes)


class RawUpgradeServer(_Threaded):
    """Answers a request head with ``answer``, then reads nothing (``reading=False``) or echoes what comes."""

    SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"

    def __init__(self, answer: bytes = SWITCH, reading: bool = True, send: int = 0, name: str = "raw") -> None:
        super().__init__(name)
        self.answer = answer
        self.reading = reading
        self.send = send  # after the answer, this many bytes are written to the client side
        self._server: asyncio.Server | None = None
        self.transports: list[asyncio.Transport] = []
        self.received = 0

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        for transport in self.transports:
            transport.abort()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self.transports.append(transport)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.answer)
            if self.send:
                chunk = b"x" * 65536
                left = self.send
                while left > 0:
                    writer.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
                    await writer.drain()
            if not self.reading:
                transport.pause_reading()
                await asyncio.sleep(3600)
            while data := await reader.read(65536):
                self.received += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def write_buffered(self) -> int:
        async def size() -> int:
            return sum(t.get_write_buffer_size() for t in self.transports if not t.is_closing())

        return self.call(size())
