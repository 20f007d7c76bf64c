"""Upstream side: one keep-alive connection to a server, and the pool of idle ones.

A connection serves one exchange at a time. It goes back to its pool only
after a cleanly framed response with nothing after it; any error, timeout,
``Connection: close`` or stray byte closes it instead (DESIGN 5).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections import deque
from typing import TYPE_CHECKING

import httptools

from fulcrum.http.headers import connection_tokens
from fulcrum.http.status import NO_BODY_STATUSES
from fulcrum.http.upgrade import offered, switch_protocol

if TYPE_CHECKING:
    from fulcrum.proxy.context import ProxyContext
    from fulcrum.proxy.exchange import Exchange
    from fulcrum.state.server import Server

log = logging.getLogger("fulcrum.proxy")

# How a response body is framed.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3

# Why an upstream exchange failed; the exchange turns these into 502/504.
CONNECT_ERROR = "connect_error"
CONNECT_TIMEOUT = "connect_timeout"
RESET = "reset"
READ_TIMEOUT = "timeout"
TOTAL_TIMEOUT = "total_timeout"
INVALID = "invalid_response"


class UpstreamConnection(asyncio.Protocol):
    """The protocol of one connection to an upstream server.

    httptools checks the response's syntax and framing, but is given no
    header callbacks: the head is forwarded from its raw bytes, with
    hop-by-hop lines cut out (see ``response_head_policy``), which costs a
    few C-level scans instead of a Python call per header.
    """

    __slots__ = (
        "_cursor",
        "_data",
        "_head_prefix",
        "_in_head",
        "_interim",
        "_parser_dirty",
        "deadline",
        "done",
        "exchange",
        "got_bytes",
        "parser",
        "pool",
        "reusable",
        "transport",
        "uses",
        "write_paused",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.deadline = 0.0
        self.uses = 0
        self.write_paused = False
        self._parser_dirty = False
        self._data = b""
        self._cursor = 0
        self._reset_response()

    def _reset_response(self) -> None:
        self._head_prefix = b""
        self._in_head = False
        self._interim = False
        self.got_bytes = False
        self.done = False
        self.reusable = True

    # -- lifecycle ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.pool.ctx.timed.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.ctx.timed.discard(self)
        self.pool.forget(self)
        self.transport = None
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.exchange
        if exchange is not None:
            exchange.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.exchange
        if exchange is not None:
            exchange.client.resume_reading_for_upstream()

    def start(self, exchange: Exchange) -> None:
        """Take on an exchange: reset the response state; the caller then writes the request."""
        self.exchange = exchange
        self.uses += 1
        self.deadline = 0.0
        if self._parser_dirty:
            self.parser = httptools.HttpResponseParser(self)
            self._parser_dirty = False
        # _reset_response(), inlined: this runs for every request
        self._head_prefix = b""
        self._in_head = False
        self._interim = False
        self.got_bytes = False
        self.done = False
        self.reusable = True

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        """Drop the connection at once (the exchange it served failed or was abandoned)."""
        self.exchange = None
        transport = self.transport
        if transport is not None:
            transport.abort()

    def on_timeout(self, now: float) -> None:
        exchange = self.exchange
        if exchange is None:  # idle in the pool too long
            self.deadline = 0.0
            self.pool.forget(self)
            self.close()
            return
        self.deadline = 0.0
        self.exchange = None
        self.abort()
        exchange.upstream_failed(READ_TIMEOUT)

    # -- response parsing (httptools callbacks) ------------------------------

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes on an idle connection: it cannot be trusted any more
            self.pool.forget(self)
            self.close()
            return
        if self.deadline:
            self.deadline = self.pool.ctx.now + self.pool.read_timeout
        self.got_bytes = True
        self._data = data
        self._cursor = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as switched:  # after a 101 to an Upgrade request
            if self.exchange is exchange and exchange.status == 101:
                self.exchange = None
                exchange.open_tunnel(self, data[int(switched.args[0]) :])
            else:
                self._fail(exchange)
            return
        except httptools.HttpParserError:
            if self.exchange is not exchange:  # let go mid-parse for a retry elsewhere
                return
            # After a complete response, an error only means stray bytes followed it:
            # the response stands, the connection is not reused.
            if not self.done:
                self._fail(exchange)
                return
            self.reusable = False
            self._parser_dirty = True
        if self.exchange is not exchange:  # the exchange let this connection go (a retry elsewhere)
            return
        if self._in_head:  # the head goes on in the next read
            prefix = self._head_prefix
            self._head_prefix = prefix + data if prefix else data[self._cursor :]
            if len(self._head_prefix) > self.pool.max_header_bytes:
                self._fail(exchange)
                return
        if self.done:
            self._finish(exchange)
        elif exchange.out:
            exchange.flush()

    def _fail(self, exchange: Exchange) -> None:
        self.exchange = None
        self.abort()
        exchange.upstream_failed(INVALID)

    def on_message_begin(self) -> None:
        if self.done:  # bytes after a complete response
            self.reusable = False
            raise _StrayBytes
        self._in_head = True

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        self._in_head = False
        prefix = self._head_prefix
        if prefix:
            self._head_prefix = b""
            raw = prefix + self._data
            end = raw.find(b"\r\n\r\n")
            self._cursor = end + 4 - len(prefix)
            head = raw[:end]
        else:
            raw = self._data
            begin = self._cursor
            end = raw.find(b"\r\n\r\n", begin)
            self._cursor = end + 4
            head = raw[begin:end]
        if len(head) > self.pool.max_header_bytes:
            raise _HeadTooLarge
        parser = self.parser
        status = parser.get_status_code()
        if status == 101:
            asked = exchange.upgrade
            protocol = switch_protocol(head) if asked is not None else None
            if protocol is None or asked is None or not offered(protocol, asked):  # a 101 nobody asked for
                raise _Unexpected101
            head = response_head_policy(head)[0]
            exchange.response_switch(head, protocol)
            return  # the parser stops here with HttpParserUpgrade: data_received opens the tunnel
        head, mode, close = response_head_policy(head)  # mode: the framing, unless there is no body
        if 100 <= status < 200:
            self._interim = True
            exchange.response_interim(status, head)
            return
        if exchange.method_head or status in NO_BODY_STATUSES:
            mode = NO_BODY
        if mode == UNTIL_CLOSE or close or not parser.should_keep_alive():
            self.reusable = False
        exchange.response_head(status, head, mode)
        if self.exchange is not exchange:  # the exchange retries elsewhere: stop parsing this response
            raise _StrayBytes
        if mode == NO_BODY and exchange.method_head:
            # llhttp cannot skip the body of a response to HEAD: it is complete here, and
            # this connection gets a fresh parser before its next use.
            self.done = True
            self._parser_dirty = True

    def on_body(self, body: bytes) -> None:
        if self.done:  # a body after the head of a HEAD response: the connection lies
            self.reusable = False
            return
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._reset_response()
            self.got_bytes = True
            return
        self.done = True

    def _finish(self, exchange: Exchange) -> None:
        self.exchange = None
        self.deadline = 0.0
        exchange.response_complete(self)


# Hop-by-hop header lines of a response head, found in its lower-cased copy (same offsets).
_HOP_LINE = re.compile(
    rb"\r\n(?:connection|keep-alive|transfer-encoding|proxy-connection|te|trailer|upgrade):[^\r]*"
)
_CONNECTION = b"\r\nconnection:"
_TRANSFER_ENCODING = b"\r\ntransfer-encoding:"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_KEEP_ALIVE_LINE = b"\r\nconnection: keep-alive"
_CLOSE_LINE = b"\r\nconnection: close"
_PLAIN_TOKENS = frozenset((b"keep-alive", b"close"))


def response_head_policy(head: bytes) -> tuple[bytes, int, bool]:
    """Cut hop-by-hop lines (and those Connection names) out of a raw response head.

    ``head`` is the status line and header lines without the final blank line,
    already checked by the parser (no bare CR, no space before a colon).
    Returns the head to forward (status line as HTTP/1.1), the framing the
    upstream used (CHUNKED, LENGTH or UNTIL_CLOSE) and whether it asked to close.
    """
    # This runs for every response, and each bytecode counts: one regex pass finds the hop-by-hop
    # lines, and the usual case (none, or a lone "Connection: keep-alive/close") takes a short path.
    low = head.lower()
    lines = _HOP_LINE.findall(low)
    framing = LENGTH if _CONTENT_LENGTH in low else UNTIL_CLOSE
    close = False
    if len(lines) == 1 and (lines[0] == _KEEP_ALIVE_LINE or lines[0] == _CLOSE_LINE):
        line = lines[0]
        start = low.find(line)
        head = head[:start] + head[start + len(line) :]
        close = line == _CLOSE_LINE
    elif lines:
        named: set[bytes] | None = None
        pieces = []
        last = 0
        for line in lines:
            start = low.find(line, last)
            pieces.append(head[last:start])
            last = start + len(line)
            if line.startswith(_CONNECTION):
                value = line[len(_CONNECTION) :].strip()
                if value == b"close":
                    close = True
                elif value != b"keep-alive":
                    tokens = connection_tokens(value)
                    if b"close" in tokens:
                        close = True
                    tokens -= _PLAIN_TOKENS
                    if tokens:
                        named = tokens if named is None else named | tokens
            elif line.startswith(_TRANSFER_ENCODING):
                framing = CHUNKED
        pieces.append(head[last:])
        head = b"".join(pieces)
        if named:
            kept = head.split(b"\r\n")
            head = b"\r\n".join(
                [kept[0]] + [ln for ln in kept[1:] if ln.split(b":", 1)[0].strip().lower() not in named]
            )
    if head[5:9] != b"1.1 ":
        head = b"HTTP/1.1" + head[8:]
    return head, framing, close


class _StrayBytes(Exception):
    """Bytes after a complete response: the connection is closed, the response stands."""


class _HeadTooLarge(Exception):
    pass


class _Unexpected101(Exception):
    pass


class Pool:
    """Idle keep-alive connections to one server (LIFO, so warm ones are reused first)."""

    __slots__ = (
        "connect_timeout",
        "ctx",
        "idle",
        "idle_timeout",
        "max_connections",
        "max_header_bytes",
        "max_idle",
        "opened",
        "queue_size",
        "queue_timeout",
        "read_timeout",
        "server",
        "server_hostname",
        "ssl",
        "tls_error",
        "waiters",
    )

    def __init__(self, ctx: ProxyContext, server: Server) -> None:
        self.ctx = ctx
        self.server = server
        self.idle: list[UpstreamConnection] = []
        self.opened = 0
        self.max_idle = 64
        self.idle_timeout = 60.0
        self.connect_timeout = 2.0
        self.read_timeout = 30.0
        self.max_header_bytes = 32 * 1024
        self.max_connections = 0  # requests in flight to this server at once; 0 = no limit
        self.queue_size = 0
        self.queue_timeout = 10.0
        self.waiters: deque[Exchange] = deque()  # requests waiting for a place under max_connections
        self.ssl: ssl.SSLContext | None = None  # an https server: the group's client context
        self.server_hostname = ""  # the name its certificate is verified for, and sent as SNI
        self.tls_error = ""  # the last TLS failure logged, so that one that persists is logged once

    def configure(self, spec: object, max_header_bytes: int, tls: object = None) -> None:
        """Apply a group's pool, timeout and TLS settings (``tls``: its ClientTLS; on every new snapshot)."""
        if self.server.tls and tls is not None:
            self.ssl = tls.context  # type: ignore[attr-defined]
            self.server_hostname = tls.hostname(self.server.host)  # type: ignore[attr-defined]
        pool = spec.pool  # type: ignore[attr-defined]
        timeouts = spec.timeouts  # type: ignore[attr-defined]
        self.max_idle = pool.max_idle
        self.idle_timeout = pool.idle_timeout
        self.connect_timeout = timeouts.connect
        self.read_timeout = timeouts.read
        self.max_header_bytes = max_header_bytes
        self.max_connections = pool.max_connections
        queue = spec.queue  # type: ignore[attr-defined]
        self.queue_size = queue.size
        self.queue_timeout = queue.timeout
        while len(self.idle) > self.max_idle:
            self.idle.pop(0).close()

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        if len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.deadline = self.ctx.now + self.idle_timeout
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self) -> UpstreamConnection:
        """A new connection, bounded by the connect timeout (raises OSError or TimeoutError)."""
        server = self.server
        loop = self.ctx.loop
        context = self.ssl
        if context is None:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), server.host, server.port),
                self.connect_timeout,
            )
        else:
            try:  # the handshake is part of connecting: the connect timeout bounds both
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: UpstreamConnection(self), server.host, server.port,
                                           ssl=context, server_hostname=self.server_hostname),
                    self.connect_timeout,
                )
            except ssl.SSLError as err:
                reason = str(err)
                if reason != self.tls_error:
                    self.tls_error = reason
                    log.warning("TLS to upstream server %s failed: %s", server.id, reason)
                raise
            self.tls_error = ""
        self.opened += 1
        server.recent.connected(self.ctx.now)
        return conn

    def wake(self) -> None:
        """A place under max_connections came free: the first live waiter takes it."""
        waiters = self.waiters
        while waiters:
            exchange = waiters.popleft()
            if not exchange.finished:
                exchange.leave_queue()
                return

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
