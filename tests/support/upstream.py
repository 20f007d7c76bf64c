"""Real HTTP/1.1 upstream servers for tests: fast, slow, dead, hanging and lying ones.

``UpstreamServer`` listens on 127.0.0.1 (port 0, the real port read back) and runs its own asyncio loop in a
background thread, so sync tests and async tests use it alike. Requests are parsed by hand (not by httptools, so the
proxy's parser is never tested against itself) and every response is written byte for byte, which lets the server
misbehave exactly.

Connections are keep-alive by default for HTTP/1.1 and closed after the response on ``Connection: close``; HTTP/1.0
keeps the connection only on ``Connection: keep-alive``. Request bodies may be framed by Content-Length or chunked
(decoded, trailers kept). Pipelined requests are answered in order. A request the server cannot parse gets a 400 and
the connection is closed; the reason is kept in ``protocol_errors``. Given an ``ssl`` context it serves the same over
TLS (``url`` is then https://), and keeps each connection's client certificate in ``peer_certs``.

Behaviour is selected by the request path (the query string carries options):

===============================  ==================================================================================
``/`` and any unknown path       200, body ``ok <name>\\n``
``/echo``                        200 JSON: method, path (full target), headers ([[name, value], ...] in order),
                                 body_len, body_sha256, http_version, server (the name), conn (connection number)
``/status/NNN``                  that status with body ``status NNN\\n``; no body (and no Content-Length) for
                                 204 and 304; a 1xx is sent as an interim response, followed by a final
                                 200 ``ok after NNN\\n``
``/bytes/N``                     N bytes of ``pattern_bytes`` with Content-Length
``/chunked/N?chunks=K``          the same N bytes in K chunks (default 1), Transfer-Encoding: chunked;
                                 ``&trailer=1`` adds a trailer ``X-Body-Sha256`` (announced in ``Trailer``)
``/eof/N``                       the same N bytes with neither Content-Length nor chunking: the close ends the body
``/slow-head/MS``                waits MS ms, then answers like ``/``
``/slow-body/MS?n=K&size=S``     head at once (Content-Length K*S), then K pieces of S bytes (default 1), each
                                 after a wait of MS ms
``/hang``                        reads the request and never answers (the connection ends when the peer closes
                                 it or the server stops)
``/reset``                       reads the request, then closes with a TCP RST (SO_LINGER 0)
``/close-early``                 sends half a response head, then closes
``/garbage``                     sends bytes that are not HTTP, then closes
``/bad-cl``                      two different Content-Length headers, then closes
``/cl-and-te``                   both Content-Length and Transfer-Encoding: chunked, then closes
``/obs-fold``                    a header folded onto a second line (obsolete line folding), then closes
``/huge-head?kb=N``              a valid response whose head carries N KiB (default 64) of headers
``/extra-bytes``                 a correct response followed, in the same write, by junk bytes; the connection
                                 stays open
``/truncated``                   Content-Length 100 but only 50 bytes, then closes
``/continue``                    on ``Expect: 100-continue`` sends ``100 Continue`` before reading the body,
                                 then 200 JSON ``{"body_len": N, "sent_continue": bool}``
``/204``                         204 with no body
``/304``                         304 with an ETag and ``Content-Length: 10`` but no body (legal for a 304)
``/health``                      200 ``ok\\n`` while ``server.healthy`` is true, else 503 ``unhealthy\\n``
===============================  ==================================================================================

HEAD on any path gets the head a GET would get (same Content-Length) and no body. Every response carries
``X-Upstream-Name: <name>``. Only ``/continue`` answers ``Expect: 100-continue``; elsewhere the body is read at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import socket
import ssl as ssl_module
import struct
import threading
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs

T = TypeVar("T")

#: The byte pattern of generated bodies: byte i of a body is ``PATTERN[i % len(PATTERN)]``.
PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PIECE = 64 * 1024
_BLOCK = PATTERN * (PIECE // len(PATTERN) + 2)
_HEAD_LIMIT = 1024 * 1024
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_NUMBERED = frozenset({"status", "bytes", "chunked", "eof", "slow-head", "slow-body"})


def pattern_bytes(n: int, offset: int = 0) -> bytes:
    """The ``n`` body bytes that generated bodies carry from ``offset`` on (what ``/bytes/N`` sends)."""
    out = bytearray()
    while n > 0:
        take = min(n, PIECE)
        start = offset % len(PATTERN)
        out += _BLOCK[start : start + take]
        n -= take
        offset += take
    return bytes(out)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the upstream received it."""

    method: str
    target: str
    version: str  # "HTTP/1.1"
    headers: list[tuple[str, str]]  # as received, in order
    body: bytes
    conn: int  # connection number, from 1
    trailers: list[tuple[str, str]]

    @property
    def http_version(self) -> str:
        return self.version

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive name), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of a header, in order."""
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


class RefusingPort:
    """A port on 127.0.0.1 that refuses connections while this object lives.

    The port is bound but never listened on, so a connection attempt gets a RST at once, and no other socket can
    take the port meanwhile (unlike bind-then-close, which frees the port for the next ephemeral bind).
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._finalizer = weakref.finalize(self, self._sock.close)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> RefusingPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refusing_port() -> RefusingPort:
    """A port sure to refuse connections as long as the returned object is kept (``.port``, ``.url``)."""
    return RefusingPort()


class _BadRequest(Exception):
    pass


@dataclass
class _Conn:
    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.transport.close()

    def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _open_transport_of(obj: object, loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return isinstance(obj, asyncio.Transport) and getattr(obj, "_loop", None) is loop and not obj.is_closing()
    except ReferenceError:  # a weak proxy (other libraries' objects) whose referent is gone
        return False


def _close_leftover_transports(loop: asyncio.AbstractEventLoop) -> None:
    """Close socket transports of ``loop`` that are still open as it stops.

    A connection accepted in the last moments before the server stops can leave a transport that no
    handler ever saw; unclosed, it would surface later as a ResourceWarning in an unrelated test.
    """
    leftovers = [obj for obj in gc.get_objects() if _open_transport_of(obj, loop)]
    for transport in leftovers:
        transport.abort()
    if leftovers:
        loop.run_until_complete(asyncio.sleep(0))


class UpstreamServer:
    """A real HTTP/1.1 server on 127.0.0.1 for tests; see the module docstring for what each path does.

    Use ``start()``/``stop()`` or ``with UpstreamServer(name="a") as up: ...``. Thread-safe to inspect from tests:
    ``connections_accepted``, ``requests``, ``wait_for_requests(n)``; ``healthy`` may be set from any thread.
    """

    refusing_port = staticmethod(refusing_port)

    def __init__(self, name: str | None = None, ssl: ssl_module.SSLContext | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._name = name
        self._host = host  # another loopback address (127.0.0.2, ...) lets servers share a port, as DNS A records do
        self._bind_port = port
        self._ssl = ssl  # serve TLS with this context (https:// URLs); the peer certificates are kept
        self._peer_certs: list[dict[str, Any] | None] = []
        self.healthy = True
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._accepted = 0
        self._errors: list[str] = []
        self._conns: dict[int, _Conn] = {}
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._closing = False
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> UpstreamServer:
        """Bind, start serving in a background thread and return once the port is known."""
        if self._thread is not None:
            raise RuntimeError("already started")
        # Plain asyncio (not uvloop): the upstream shares no code with the proxy it tests.
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run, name=f"upstream-{self._name or 'server'}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("upstream server did not start")
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        try:
            self._call(self._shutdown(), timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self._host, self._bind_port, limit=_HEAD_LIMIT, backlog=1024,
                                     ssl=self._ssl)
            )
            self._port = self._server.sockets[0].getsockname()[1]
        except BaseException as err:  # reported to the starting thread
            self._start_error = err
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            _close_leftover_transports(loop)
        finally:
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._closing = True
        for _ in range(3):  # connections accepted just now start their handlers, which see _closing and abort
            await asyncio.sleep(0)
        await self._drop_all(lambda c: c.writer.transport.abort())
        if self._server is not None:
            await self._server.wait_closed()
        # a connection accepted just now may have a task that has not registered itself yet: end those too,
        # or they are garbage-collected unfinished when the loop closes
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for transport in list(self._transports):
            if not transport.is_closing():
                transport.abort()
        for _ in range(3):  # let the transports' connection_lost callbacks run, closing their sockets
            await asyncio.sleep(0)

    async def _drop_all(self, drop: Callable[[_Conn], None]) -> None:
        with self._lock:
            conns = list(self._conns.values())
        for c in conns:
            drop(c)
        tasks = [c.task for c in conns if c.task is not None and c.task is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- what tests read -------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name if self._name is not None else self.id

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("upstream server not started")
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl is not None else 'http'}://{self._host}:{self.port}"

    @property
    def id(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def peer_certs(self) -> list[dict[str, Any] | None]:
        """For a TLS server: the client certificate of each connection accepted (None: it sent none)."""
        with self._lock:
            return list(self._peer_certs)

    @property
    def connections_accepted(self) -> int:
        with self._lock:
            return self._accepted

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def protocol_errors(self) -> list[str]:
        """Why requests were rejected with 400, and any fault of this server (a malformed request shows up here)."""
        with self._lock:
            return list(self._errors)

    def clear_records(self) -> None:
        """Forget recorded requests and errors (the connection count is kept)."""
        with self._lock:
            self._requests.clear()
            self._errors.clear()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``n`` requests were received; return them. Raises TimeoutError."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= n, timeout):
                raise TimeoutError(f"{self.name}: {len(self._requests)} requests received, waited for {n}")
            return list(self._requests)

    def close_all_connections(self, reset: bool = False) -> None:
        """Drop every open connection now (FIN, or RST with ``reset=True``), e.g. to make pooled ones stale."""
        self._call(self._drop_all(_Conn.reset if reset else _Conn.close))

    # -- connection handling ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._transports.add(writer.transport)
        if self._closing:
            writer.transport.abort()
            return
        with self._lock:
            self._accepted += 1
            if self._ssl is not None:
                self._peer_certs.append(writer.get_extra_info("peercert") or None)
            conn = _Conn(self._accepted, reader, writer, asyncio.current_task())
            self._conns[conn.number] = conn
        try:
            while await self._serve_one(conn):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # dropped by stop() or close_all_connections(); ending quietly keeps asyncio from logging it
        except Exception as err:  # a fault in this server must be visible, not just logged by asyncio
            with self._lock:
                self._errors.append(f"internal error: {err!r}")
        finally:
            with self._lock:
                self._conns.pop(conn.number, None)
            if not writer.transport.is_closing():
                writer.close()

    async def _serve_one(self, conn: _Conn) -> bool:
        """Read and answer one request; True to keep the connection for the next one."""
        try:
            head = await self._read_head(conn.reader)
            if head is None:
                return False
            method, target, version, headers = head
            if target.partition("?")[0] == "/continue" and _expects_continue(headers):
                conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await conn.drain()
            body, trailers = await self._read_body(conn.reader, version, headers)
        except _BadRequest as err:
            with self._lock:
                self._errors.append(str(err))
            msg = f"upstream {self.name}: bad request: {err}\n".encode()
            conn.write(self._head(400, [("Content-Type", "text/plain"), ("Content-Length", str(len(msg)))],
                                  keep=False, version="HTTP/1.1") + msg)
            await conn.drain()
            return False
        req = RecordedRequest(method, target, version, headers, body, conn.number, trailers)
        with self._changed:
            self._requests.append(req)
            self._changed.notify_all()
        return await self._respond(conn, req, _keep_alive(version, headers))

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str, str, list[tuple[str, str]]] | None:
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as err:
                if err.partial.strip(b"\r\n"):
                    raise _BadRequest("connection closed inside a request head") from None
                return None
            except asyncio.LimitOverrunError:
                raise _BadRequest("request head too large") from None
            raw = raw.lstrip(b"\r\n")  # empty lines before a request line are allowed
            if raw:
                break
        line, *header_lines = raw[:-4].split(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise _BadRequest(f"malformed request line {line!r}")
        method, target, version = (p.decode("latin-1") for p in parts)
        if not (version.startswith("HTTP/1.") and len(version) == 8 and version[7].isdigit()):
            raise _BadRequest(f"unsupported version {version!r}")
        if not set(parts[0]) <= _TOKEN:
            raise _BadRequest(f"malformed method {method!r}")
        headers: list[tuple[str, str]] = []
        for hl in header_lines:
            if hl[:1] in (b" ", b"\t"):
                raise _BadRequest("obsolete line folding in request headers")
            name, colon, value = hl.partition(b":")
            if not colon or not name or not set(name) <= _TOKEN:
                raise _BadRequest(f"malformed header line {hl!r}")
            if b"\r" in value or b"\n" in value or b"\x00" in value:
                raise _BadRequest(f"forbidden character in header {name!r}")
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        return method, target, version, headers

    async def _read_body(
        self, reader: asyncio.StreamReader, version: str, headers: list[tuple[str, str]]
    ) -> tuple[bytes, list[tuple[str, str]]]:
        te = [v for k, v in headers if k.lower() == "transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == "content-length"]
        if te:
            if cl:
                raise _BadRequest("both Transfer-Encoding and Content-Length")
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if codings[-1] != "chunked" or version == "HTTP/1.0":
                raise _BadRequest(f"unsupported Transfer-Encoding {', '.join(te)!r}")
            return await _read_chunked(reader)
        if cl:
            values = {v.strip() for v in cl}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise _BadRequest(f"bad Content-Length {cl!r}")
            return await reader.readexactly(int(values.pop())), []
        return b"", []

    def _head(self, status: int, headers: list[tuple[str, str]], keep: bool, version: str) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"X-Upstream-Name: {self.name}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not keep:
            lines.append("Connection: close")
        elif version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send(
        self,
        conn: _Conn,
        req: RecordedRequest,
        keep: bool,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        """Send a whole Content-Length framed response (the head only for HEAD)."""
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
        data = self._head(status, headers, keep, req.version)
        conn.write(data if req.method == "HEAD" else data + body)
        await conn.drain()
        return keep

    async def _send_pattern(self, conn: _Conn, n: int, offset: int = 0) -> None:
        while n > 0:
            piece = pattern_bytes(min(n, PIECE), offset)
            conn.write(piece)
            await conn.drain()
            n -= len(piece)
            offset += len(piece)

    # -- the paths -------------------------------------------------------------------------------------------

    async def _respond(self, conn: _Conn, req: RecordedRequest, keep: bool) -> bool:
        path, _, query_string = req.target.partition("?")
        query = {k: v[-1] for k, v in parse_qs(query_string).items()}
        first, _, rest = path.strip("/").partition("/")
        head_only = req.method == "HEAD"
        number = 0
        if first in _NUMBERED:
            if not rest.isdigit():
                return await self._send(conn, req, keep, 400, f"{path}: expected /{first}/<number>\n".encode())
            number = int(rest)

        if first == "echo":
            doc = {
                "method": req.method,
                "path": req.target,
                "headers": [[k, v] for k, v in req.headers],
                "body_len": len(req.body),
                "body_sha256": hashlib.sha256(req.body).hexdigest(),
                "http_version": req.version,
                "server": self.name,
                "conn": req.conn,
            }
            return await self._send(conn, req, keep, 200, json.dumps(doc).encode(), "application/json")

        if first == "status":
            if not 100 <= number <= 599:
                return await self._send(conn, req, False, 400, f"status out of range: {number}\n".encode())
            if number < 200:
                conn.write(f"HTTP/1.1 {number} {_reason(number)}\r\nX-Upstream-Name: {self.name}\r\n\r\n".encode())
                return await self._send(conn, req, keep, 200, f"ok after {number}\n".encode())
            if number in (204, 304):
                conn.write(self._head(number, [], keep, req.version))
                await conn.drain()
                return keep
            return await self._send(conn, req, keep, number, f"status {number}\n".encode())

        if first == "204":
            conn.write(self._head(204, [], keep, req.version))
            await conn.drain()
            return keep

        if first == "304":
            # Content-Length on a 304 describes the selected representation; the response never has a body.
            conn.write(self._head(304, [("ETag", '"fulcrum-304"'), ("Content-Length", "10")], keep, req.version))
            await conn.drain()
            return keep

        if first == "bytes":
            head = self._head(200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(number))],
                              keep, req.version)
            conn.write(head)
            if not head_only:
                await self._send_pattern(conn, number)
            await conn.drain()
            return keep

        if first == "chunked":
            return await self._chunked(conn, req, keep, number, max(1, int(query.get("chunks", "1"))),
                                       query.get("trailer") == "1")

        if first == "eof":
            conn.write(self._head(200, [("Content-Type", "application/octet-stream")], True, "HTTP/1.1"))
            if not head_only:
                await self._send_pattern(conn, number)
            await conn.drain()
            return False

        if first == "slow-head":
            await asyncio.sleep(number / 1000)
            return await self._send(conn, req, keep, 200, f"ok {self.name}\n".encode())

        if first == "slow-body":
            count, size = int(query.get("n", "1")), int(query.get("size", "1"))
            conn.write(self._head(200, [("Content-Type", "application/octet-stream"),
                                        ("Content-Length", str(count * size))], keep, req.version))
            await conn.drain()
            if not head_only:
                for i in range(count):
                    await asyncio.sleep(number / 1000)
                    await self._send_pattern(conn, size, i * size)
            return keep

        if first == "hang":
            while await conn.reader.read(PIECE):
                pass
            return False

        if first == "reset":
            conn.reset()
            return False

        if first == "close-early":
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
            await conn.drain()
            conn.close()
            return False

        if first == "garbage":
            conn.write(b"\x00\x01\x02\x03 SSH-2.0-nothing like HTTP \xff\xfe\xfd\r\n\r\n")
            await conn.drain()
            conn.close()
            return False

        if first == "bad-cl":
            return await self._lie(conn, b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!")

        if first == "cl-and-te":
            return await self._lie(conn, b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                                   b"5\r\nhello\r\n0\r\n\r\n")

        if first == "obs-fold":
            return await self._lie(conn, b"X-Folded: first part\r\n  second part\r\nContent-Length: 3\r\n", b"ok\n")

        if first == "huge-head":
            fillers = tuple(_filler(i) for i in range(int(query.get("kb", "64"))))
            return await self._send(conn, req, keep, 200, f"ok {self.name}\n".encode(), extra=fillers)

        if first == "extra-bytes":
            body = f"ok {self.name}\n".encode()
            head = self._head(200, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))], keep,
                              req.version)
            conn.write(head + (b"" if head_only else body) + b"JUNK AFTER THE RESPONSE\r\n")
            await conn.drain()
            return keep

        if first == "truncated":
            head = self._head(200, [("Content-Type", "application/octet-stream"), ("Content-Length", "100")],
                              keep, req.version)
            if head_only:
                conn.write(head)
                await conn.drain()
                return keep
            conn.write(head + pattern_bytes(50))
            await conn.drain()
            conn.close()
            return False

        if first == "continue":
            doc = {"body_len": len(req.body), "sent_continue": _expects_continue(req.headers)}
            return await self._send(conn, req, keep, 200, json.dumps(doc).encode(), "application/json")

        if first == "health":
            if self.healthy:
                return await self._send(conn, req, keep, 200, b"ok\n")
            return await self._send(conn, req, keep, 503, b"unhealthy\n")

        return await self._send(conn, req, keep, 200, f"ok {self.name}\n".encode())

    async def _chunked(self, conn: _Conn, req: RecordedRequest, keep: bool, n: int, chunks: int, trailer: bool) -> bool:
        headers = [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")]
        if trailer:
            headers.append(("Trailer", "X-Body-Sha256"))
        conn.write(self._head(200, headers, keep, req.version))
        if req.method == "HEAD":
            await conn.drain()
            return keep
        digest = hashlib.sha256()
        offset = 0
        for i in range(chunks):
            size = n // chunks + (1 if i < n % chunks else 0)
            if size == 0:
                continue  # a zero-size chunk would end the body
            conn.write(b"%x\r\n" % size)
            data = pattern_bytes(size, offset)
            digest.update(data)
            conn.write(data)
            conn.write(b"\r\n")
            await conn.drain()
            offset += size
        conn.write(f"0\r\nX-Body-Sha256: {digest.hexdigest()}\r\n\r\n".encode() if trailer else b"0\r\n\r\n")
        await conn.drain()
        return keep

    async def _lie(self, conn: _Conn, bad_headers: bytes, body: bytes) -> bool:
        """Send a 200 whose head is broken on purpose, then close."""
        conn.write(b"HTTP/1.1 200 OK\r\nX-Upstream-Name: " + self.name.encode() + b"\r\n" + bad_headers + b"\r\n"
                   + body)
        await conn.drain()
        conn.close()
        return False


def _filler(i: int) -> tuple[str, str]:
    """A header whose line (name, ': ', value, CRLF) is exactly 1 KiB."""
    name = f"X-Filler-{i:05d}"
    return name, "x" * (1024 - len(name) - 4)


def _expects_continue(headers: list[tuple[str, str]]) -> bool:
    return any(k.lower() == "expect" and v.lower() == "100-continue" for k, v in headers)


def _keep_alive(version: str, headers: list[tuple[str, str]]) -> bool:
    tokens = {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]]]:
    body = bytearray()
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            size_field = line[:-2].split(b";", 1)[0].strip(b" \t")
            if not size_field or not set(size_field) <= _HEX:
                raise _BadRequest(f"bad chunk size line {line!r}")
            size = int(size_field, 16)
            if size == 0:
                break
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise _BadRequest("chunk data not followed by CRLF")
        trailers: list[tuple[str, str]] = []
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, colon, value = line[:-2].partition(b":")
            if not colon or not name or not set(name) <= _TOKEN:
                raise _BadRequest(f"malformed trailer line {line!r}")
            trailers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    except asyncio.LimitOverrunError:
        raise _BadRequest("chunk line too long") from None
    return bytes(body), trailers
