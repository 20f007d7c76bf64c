"""A real TCP server for the L4 tests, on 127.0.0.1 (port 0), with its own asyncio loop in a background thread.

Modes:

==========  ===========================================================================================
``echo``    sends back what it reads; on the client's end of input, finishes and closes
``greet``   sends ``<name>\\n`` on connect (as a database or SMTP server speaks first), then echoes
``count``   reads to the client's end of input, then answers ``<bytes> <sha256 hex>\\n`` and closes: an
            answer that only comes back through a proxy that passes a half-close on and keeps the
            other way open
``flood``   writes ``flood_bytes`` of ``pattern_bytes`` with a small send buffer, as fast as the reader
            takes them; ``flood_sent`` counts what the socket has taken so far
==========  ===========================================================================================

``connections`` counts accepted connections, ``open`` those still open; ``wait_open(n)`` waits for a count.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from typing import Literal

from tests.support.upstream import PIECE, _close_leftover_transports, pattern_bytes

Mode = Literal["echo", "greet", "count", "flood"]


class TcpServer:
    """A TCP server in its own thread: ``.port``, ``.address`` (``127.0.0.1:port``), counters, ``stop()``."""

    def __init__(self, name: str = "tcp", mode: Mode = "echo", flood_bytes: int = 0) -> None:
        self.name = name
        self.mode = mode
        self.flood_bytes = flood_bytes
        self.flood_sent = 0
        self.connections = 0
        self.open = 0
        self.peers: list[str] = []  # client addresses as this server saw them (the proxy's, behind it)
        self.port = 0
        self._changed = threading.Condition()
        self._loop = asyncio.SelectorEventLoop()  # plain asyncio: it shares no code with the proxy it tests
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tcp-{name}", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("tcp server did not start")
        return self

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            _close_leftover_transports(loop)
        finally:
            loop.close()

    def stop(self) -> None:
        """Stop listening and close every connection (a server going away: its port then refuses)."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._server.wait_closed()
        for _ in range(3):  # let the transports' connection_lost callbacks run, closing their sockets
            await asyncio.sleep(0)

    def wait_open(self, count: int, timeout: float = 10) -> None:
        """Wait until exactly ``count`` connections are open."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.open == count, timeout):
                raise TimeoutError(f"{self.name}: {self.open} connections open, not {count}")

    def _count(self, opened: int) -> None:
        with self._changed:
            self.open += opened
            if opened > 0:
                self.connections += 1
            self._changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        self.peers.append(f"{peer[0]}:{peer[1]}")
        self._count(1)
        try:
            if self.mode == "flood":
                await self._flood(writer)
            elif self.mode == "count":
                await self._count_bytes(reader, writer)
            else:
                if self.mode == "greet":
                    writer.write(f"{self.name}\n".encode())
                while data := await reader.read(PIECE):
                    writer.write(data)
                    await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            writer.transport.abort()
        finally:
            self._writers.discard(writer)
            self._count(-1)

    async def _count_bytes(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256()
        total = 0
        while data := await reader.read(PIECE):
            digest.update(data)
            total += len(data)
        writer.write(f"{total} {digest.hexdigest()}\n".encode())
        await writer.drain()

    async def _flood(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        writer.transport.set_write_buffer_limits(high=PIECE)
        sent = 0
        while sent < self.flood_bytes:
            piece = pattern_bytes(min(PIECE, self.flood_bytes - sent), sent)
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            self.flood_sent = sent
