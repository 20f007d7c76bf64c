"""Upstream side: one keep-alive connection to a server, and the pool of idle ones.

A connection serves one exchange at a time. It goes back to its pool only
after a cleanly framed response with nothing after it; any error, timeout,
``Connection: close`` or stray byte closes it instead (DESIGN 5).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from fulcrum.http import status as _status
from fulcrum.http.headers import connection_tokens
from fulcrum.http.upgrade import offered, switch_protocol
from fulcrum.proxy.rawhead import RESPONSE, configure_names, index_head

if TYPE_CHECKING:
    from fulcrum.proxy.context import ProxyContext
    from fulcrum.proxy.exchange import Exchange
    from fulcrum.state.server import Server

log: Final = logging.getLogger("fulcrum.proxy")
NO_BODY_STATUSES: Final = _status.NO_BODY_STATUSES  # a C static of this module, not a globals look-up

#: A Content-Length body at least this long bypasses the parser (its bytes are forwarded as they are read);
#: a shorter one is not worth stopping the parser for. RAW_BODY_DIGITS: the digits of RAW_BODY_MIN.
RAW_BODY_MIN: Final = 65536
RAW_BODY_DIGITS: Final = len(str(RAW_BODY_MIN))
# How a response body is framed.
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3

# Why an upstream exchange failed; the exchange turns these into 502/504.
CONNECT_ERROR: Final = "connect_error"
CONNECT_TIMEOUT: Final = "connect_timeout"
RESET: Final = "reset"
READ_TIMEOUT: Final = "timeout"
TOTAL_TIMEOUT: Final = "total_timeout"
INVALID: Final = "invalid_response"


class UpstreamConnection(asyncio.Protocol):
    """The protocol of one connection to an upstream server.

    httptools checks the response's syntax and framing, but is given no
    header callbacks: the head is forwarded from its raw bytes, with
    hop-by-hop lines cut out (see ``response_head_policy``), which costs a
    few C-level scans instead of a Python call per header.
    """

    __slots__ = (
        "_body_left",
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
        self._body_left = 0
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
        self._body_left = 0
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
        if self._body_left:  # a long Content-Length body: its bytes go out as they came
            self._raw_body(exchange, data, 0)
            return
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
            if self._body_left:  # on_headers_complete stopped the parser: the rest of this read is body
                self._raw_body(exchange, data, self._cursor)
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

    def _raw_body(self, exchange: Exchange, data: bytes, start: int) -> None:
        """Forward body bytes of a Content-Length response without the parser: no scan, no copy of a read
        that is all body. Bytes past the body's end mean the upstream lied about its length: the response
        stands as framed, the connection is not reused."""
        left = self._body_left
        size = len(data) - start
        if size > left:  # more than the upstream announced
            self.reusable = False
            size = left
        chunk = data if start == 0 and size == len(data) else data[start : start + size]
        self._body_left = left - size
        if chunk:
            exchange.response_body(chunk)
        if self._body_left:
            if exchange.out:
                exchange.flush()
            return
        self.done = True
        self._finish(exchange)

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
            begin = 0
        else:
            raw = self._data
            begin = self._cursor
        # mode: the framing, unless there is no body
        head, mode, close, after, length_at, length_end = response_head_policy(raw, begin)
        self._cursor = after - len(prefix)
        if after - 4 - begin > self.pool.max_header_bytes:
            raise _HeadTooLarge
        parser = self.parser
        status = parser.get_status_code()
        if status == 101:
            asked = exchange.upgrade
            protocol = switch_protocol(raw[begin : after - 4]) if asked is not None else None
            if protocol is None or asked is None or not offered(protocol, asked):  # a 101 nobody asked for
                raise _Unexpected101
            exchange.response_switch(head, protocol)
            return  # the parser stops here with HttpParserUpgrade: data_received opens the tunnel
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
        if mode == LENGTH and length_end - length_at >= RAW_BODY_DIGITS:
            length = int(raw[length_at:length_end])
            if length >= RAW_BODY_MIN:
                # The parser stops here (raising is how a callback stops llhttp) and gets replaced before the
                # connection's next use; data_received forwards the body's bytes as they come.
                self._body_left = length
                self._parser_dirty = True
                raise _RawBody
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


# Response header names handled by name (index_head's RESPONSE table); every other line is forwarded as it came.
_R_LENGTH: Final = 0  # content-length: kept, tells the framing
_R_CHUNKED: Final = 1  # transfer-encoding: cut, the body is chunked
_R_CONN: Final = 2  # connection: cut, may ask to close or name more lines to cut
_R_DROP: Final = 3  # the other hop-by-hop names: cut
configure_names(
    RESPONSE,
    {
        b"content-length": _R_LENGTH,
        b"transfer-encoding": _R_CHUNKED,
        b"connection": _R_CONN,
        b"keep-alive": _R_DROP,
        b"proxy-connection": _R_DROP,
        b"te": _R_DROP,
        b"trailer": _R_DROP,
        b"upgrade": _R_DROP,
    },
)
_KEEP_ALIVE: Final = b"keep-alive"
_CLOSE: Final = b"close"
_PLAIN_TOKENS: Final = frozenset((_KEEP_ALIVE, _CLOSE))


def response_head_policy(raw: bytes, begin: int) -> tuple[bytes, int, bool, int, int, int]:
    """Cut hop-by-hop lines (and those Connection names) out of the raw response head at ``begin`` in ``raw``.

    The head (status line, header lines, blank line) has been checked by the parser: lines end with CRLF,
    names are tokens. Returns the head to forward (status line as HTTP/1.1, without the last line's CRLF),
    the framing the upstream used (CHUNKED, LENGTH or UNTIL_CLOSE), whether it asked to close, the
    offset just past the blank line, and where the Content-Length value begins and ends in ``raw`` (0, 0
    without one).
    """
    # This runs for every response: one C pass (index_head) finds the head's end and the handled lines;
    # a head with none to cut is one slice.
    found = index_head(raw, begin, RESPONSE)
    if found is None:
        raise _NoBlankLine
    end = found[0] - 2  # the CRLF that ends the last header line
    close = False
    chunked = False
    length_at = length_end = 0
    named: set[bytes] | None = None
    pieces: list[bytes] | None = None
    last = begin
    for i in range(2, len(found), 5):
        kind = found[i]
        if kind == _R_LENGTH:
            length_at = found[i + 2]
            length_end = found[i + 3]
            continue
        if kind == _R_CHUNKED:
            chunked = True
        elif kind == _R_CONN:
            value = raw[found[i + 2] : found[i + 3]].lower()
            if value == _CLOSE:
                close = True
            elif value != _KEEP_ALIVE:
                tokens = connection_tokens(value)
                if _CLOSE in tokens:
                    close = True
                tokens -= _PLAIN_TOKENS
                if tokens:
                    named = tokens if named is None else named | tokens
        if pieces is None:
            pieces = []
        pieces.append(raw[last : found[i + 1] - 2])  # up to the CRLF before the line
        last = found[i + 4] - 2  # from the CRLF that ends it
    if pieces is None:
        head = raw[begin:end]
    else:
        pieces.append(raw[last:end])
        head = b"".join(pieces)
    framing = CHUNKED if chunked else LENGTH if length_end else UNTIL_CLOSE  # a value ends after the status line
    if named:
        kept = head.split(b"\r\n")
        head = b"\r\n".join(
            [kept[0]] + [ln for ln in kept[1:] if ln.split(b":", 1)[0].strip().lower() not in named]
        )
    if head[5:9] != b"1.1 ":
        head = b"HTTP/1.1" + head[8:]
    return head, framing, close, end + 4, length_at, length_end


class _NoBlankLine(Exception):
    """The parser said a head was complete, but no blank line ends it: the response is not trusted."""


class _RawBody(Exception):
    """Raised in on_headers_complete to stop the parser: the body is forwarded without it."""


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
