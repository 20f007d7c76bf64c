"""Client side: one HTTP/1.1 connection from a client, parsed with httptools.

Requests on a connection are answered in order. While one is being served,
a pipelined next one is parsed and queued, and reading pauses, so at most
one read's worth of input waits in memory.

Rejected before anything goes upstream, with the connection closed
(DESIGN 5): malformed syntax, CL+TE, bad or duplicate Content-Length, a
Transfer-Encoding whose last coding is not chunked, obs-fold, whitespace
before a colon, bare CR, NUL (httptools); Transfer-Encoding on HTTP/1.0,
a missing Host on HTTP/1.1, two Host headers, an HTTP major version other
than 1, and the size and time limits (here).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from fulcrum.http.framing import ChunkedEnd
from fulcrum.http.headers import is_trusted
from fulcrum.http.status import error_response
from fulcrum.http.upgrade import UpgradeRefused, tunnel_protocols
from fulcrum.proxy.exchange import BODY, DONE, HEAD, Exchange
from fulcrum.proxy.rawhead import Reject, scan_head
from fulcrum.proxy.tls import negotiated_protocol

if TYPE_CHECKING:
    from fulcrum.proxy.context import ProxyContext

log: Final = logging.getLogger("fulcrum.proxy")

# Connection states, for timeouts (TUNNEL: upgraded, the connection's bytes belong to a ``Tunnel``).
IDLE: Final = 0
READING_HEAD: Final = 1
BUSY: Final = 2
CLOSED: Final = 3
TUNNEL: Final = 4
HTTP: Final = b"http"
HTTPS: Final = b"https"

#: Parsers kept for reuse by one loop's connections (more are freed: a parser is needed only mid-request).
POOLED_PARSERS: Final = 256


class ParserRelay:
    """The protocol object of one loop's pooled parsers; ``conn`` is the connection whose bytes are being fed.

    httptools binds a parser's callbacks to the object it is made with, so a parser made for a connection
    stays with it. Made for the relay instead, a parser can serve any connection: a connection takes one
    when a request begins and gives it back once idle, and an idle client holds no parser (about 0.9 KiB
    with its C state and bound callbacks). ``feed`` sets ``conn`` around ``feed_data``.
    """

    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: ClientConnection | None = None
        self.pool: list[httptools.HttpRequestParser] = []

    def take(self) -> httptools.HttpRequestParser:
        pool = self.pool
        if pool:
            return pool.pop()
        parser = httptools.HttpRequestParser(self)
        # Versions are checked here instead: 505 for majors other than 1, HTTP/1.x minors as 1.1. Keep-alive
        # too: after a request that ends its connection llhttp would refuse what follows (and stay refusing,
        # which a pooled parser must not); Fulcrum answers that request, closes, and starts nothing read after.
        parser.set_dangerous_leniencies(lenient_version=True, lenient_keep_alive=True)
        return parser

    def give(self, parser: httptools.HttpRequestParser) -> None:
        """Take back a parser between messages (never one that failed or stopped at an Upgrade)."""
        if len(self.pool) < POOLED_PARSERS:
            self.pool.append(parser)

    def feed(self, conn: ClientConnection, parser: httptools.HttpRequestParser, data: bytes) -> None:
        outer = self.conn  # a callback may feed another connection (it is put back after)
        self.conn = conn
        try:
            parser.feed_data(data)
        finally:
            self.conn = outer

    def on_message_begin(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_message_begin()

    def on_url(self, url: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_url(url)

    def on_headers_complete(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_body(body)

    def on_message_complete(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.on_message_complete()


class ClientConnection(asyncio.Protocol):
    """The protocol of one client connection."""

    BLOCK_PIPELINE = 1  # a request is queued behind the one in flight
    BLOCK_BUFFER = 2  # request body waits for an upstream connection
    BLOCK_UPSTREAM = 4  # the upstream's write buffer is full
    BLOCK_UPGRADE = 8  # bytes after an Upgrade request wait for the upstream's answer

    __slots__ = (
        "alpn",
        "building",
        "chunks",
        "client_ip",
        "client_ip_b",
        "ctx",
        "current",
        "cursor",
        "deadline",
        "feed",
        "hparts",
        "hstart",
        "parser",
        "partial",
        "pending",
        "proto",
        "raw_left",
        "read_block",
        "reject_after",
        "relay",
        "state",
        "transport",
        "trusted",
        "upgrade_for",
        "upgrade_rest",
        "write_paused",
    )

    def __init__(self, ctx: ProxyContext, tls: bool = False) -> None:
        self.ctx = ctx
        self.proto = HTTPS if tls else HTTP  # what X-Forwarded-Proto and Forwarded say
        self.alpn = ""  # the protocol a TLS connection negotiated (ALPN)
        self.transport: asyncio.Transport | None = None
        relay = ctx.relay
        if relay is None:
            relay = ctx.relay = ParserRelay()
        self.relay = relay
        #: From the relay's pool while a request is read or served; None while idle (``_give_parser``)
        self.parser: httptools.HttpRequestParser | None = None
        self.state = IDLE
        self.deadline = 0.0
        self.current: Exchange | None = None
        self.building: Exchange | None = None
        self.pending: deque[Exchange] | None = None
        self.read_block = 0
        self.write_paused = False
        self.partial = 0
        self.reject_after: tuple[int, str, bytes] | None = None
        self.client_ip = ""
        self.client_ip_b = b""
        self.trusted = False
        self.raw_left = 0  # body bytes of an Upgrade request still to read (the parser stops at its head)
        self.upgrade_for: Exchange | None = None  # the Upgrade request ``upgrade_rest`` waits behind
        self.upgrade_rest = b""
        # Where request heads lie in the bytes read, to forward them as they came (the parser tells no offsets):
        self.feed = b""  # the read being parsed
        self.cursor = 0  # the offset in ``feed`` the parser has reached, as far as heads and bodies tell
        self.hstart = 0  # the offset in ``feed`` where the head being read began (-1: in an earlier read)
        self.hparts: list[bytes] | None = None  # the head's bytes from earlier reads
        self.chunks: ChunkedEnd | None = None  # the walk through a chunked request body

    def _give_parser(self) -> None:
        """An idle keep-alive connection gives its parser back to the pool; the next read takes one."""
        parser = self.parser
        if parser is not None and self.raw_left == 0 and self.upgrade_for is None:
            self.parser = None
            self.relay.give(parser)

    # -- lifecycle -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        ctx = self.ctx
        if self.proto == HTTPS:
            self.alpn = negotiated_protocol(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0])
            self.client_ip_b = self.client_ip.encode("ascii")
        snap = ctx.snapshot
        if snap.trusted_proxies:
            self.trusted = is_trusted(self.client_ip, snap.trusted_proxies)
        self.deadline = ctx.now + snap.header_timeout
        ctx.timed.add(self)
        ctx.clients.add(self)
        ctx.stats.connections_active += 1
        ctx.stats.connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        ctx = self.ctx
        self.state = CLOSED
        self.transport = None
        ctx.timed.discard(self)
        ctx.clients.discard(self)
        ctx.stats.connections_active -= 1
        current = self.current
        if current is not None:
            current.abandon_upstream()
            current.close_after = True
            current.end()
        self.pending = None

    def on_timeout(self, now: float) -> None:
        self.deadline = 0.0
        if self.state == READING_HEAD:
            self._send_and_close(408, "the request head did not arrive in time")
        elif self.state == IDLE:
            self.close()
        elif self.state == BUSY and self.current is not None and self.current.phase == BODY:
            self.reject(408, "the request body stopped arriving", self.current)

    # -- parsing --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.raw_left:
            self._raw_body(data)
            return
        if self.state == IDLE:
            self.state = READING_HEAD
            self.deadline = self.ctx.now + self.ctx.snapshot.header_timeout
        self.feed = data
        self.cursor = 0
        parser = self.parser
        if parser is None:
            parser = self.parser = self.relay.take()
        try:
            self.relay.feed(self, parser, data)
        except httptools.HttpParserUpgrade as upgrade:
            self.feed = b""
            self._after_upgrade(data, int(upgrade.args[0]))
            return
        except httptools.HttpParserCallbackError as err:
            self.feed = b""
            cause = err.__context__
            if isinstance(cause, Reject):
                self.reject(cause.status, cause.detail, self.building, cause.extra)
            else:
                log.error("error while handling a request", exc_info=cause)
                self.reject(500, "internal error", self.building)
            return
        except httptools.HttpParserError as err:
            self.feed = b""
            if parser.get_method() == b"PRI" and self._to_http2(data):
                return
            self.reject(400, f"malformed request ({err})", self.building)
            return
        self.feed = b""
        building = self.building
        if building is not None and building.phase == HEAD:  # the head goes on in the next read
            start = self.hstart
            if start >= 0:
                self.hparts = [data[start:] if start else data]
                self.hstart = -1
            elif self.hparts is not None:
                self.hparts.append(data)
        elif self.chunks is not None and building is not None:  # a chunked body goes on in the next read
            self.chunks.feed(data, self.cursor)
        elif building is None and self.state == IDLE:  # answered within this read (a 429 from the head's callback)
            self._give_parser()
        if self.state == READING_HEAD:
            self.partial += len(data)
            snap = self.ctx.snapshot
            if self.partial > snap.max_request_line + snap.max_header_bytes:
                head = b"".join(self.hparts or ()).lstrip(b"\r\n")
                if building is None or b"\r\n" not in head:
                    self.reject(414, "request line too long", building)
                else:
                    self.reject(431, "request header block too large", building)

    def _to_http2(self, data: bytes) -> bool:
        """The connection opened with the HTTP/2 preface (llhttp stops there): hand it to the HTTP/2 protocol when
        ``http2.h2c`` is on. False: it is answered as a malformed HTTP/1.1 request."""
        building = self.building
        transport = self.transport
        ctx = self.ctx
        if (
            transport is None
            or building is None
            or building.target != b"*"
            or building.headers
            or self.current is not None
            or self.pending is not None
            or not ctx.snapshot.config.http2.h2c
        ):
            return False
        from fulcrum.proxy.http2 import PREFACE, H2Connection  # here: HTTP/1.1-only processes never load h2

        ctx.timed.discard(self)
        ctx.clients.discard(self)  # counted in connections_active still: the HTTP/2 protocol takes that over
        self.state = CLOSED
        self.transport = None
        self.building = None
        protocol = H2Connection(ctx)
        transport.set_protocol(protocol)
        # llhttp consumed the preface's first line in an earlier read when it came split
        protocol.take_over(transport, PREFACE[: self.partial] + data)
        return True

    # -- Upgrade ------------------------------------------------------------------

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        """The parser stopped after the head of a request with ``Connection: upgrade``.

        What follows is the request's body (read here by its Content-Length: the parser will not),
        then either the tunnel's first bytes or the next request: that waits for the upstream's
        answer when the request is tunnelled, and goes to a fresh parser otherwise.
        """
        self.parser = self.relay.take()  # the one that stopped at the Upgrade is not reused
        ex = self.building
        rest = data[offset:]
        if ex is None or self.state == CLOSED:
            return
        if ex.chunked_in or (ex.cl > ex.body_len and not ex.upgrade_body):
            self.reject(400, "an Upgrade request with a chunked body is not supported", ex)
            return
        if ex.upgrade_body:
            self.raw_left = ex.cl - ex.body_len
            self._raw_body(rest)
            return
        self._upgrade_rest(ex, rest)

    def _raw_body(self, data: bytes) -> None:
        ex = self.building
        assert ex is not None
        n = self.raw_left
        chunk = data[:n] if len(data) > n else data
        self.raw_left = n - len(chunk)
        if self.deadline:
            self.deadline = self.ctx.now + ex.snap.header_timeout
        if chunk:
            ex.request_body(chunk)
            if self.state == CLOSED:
                return
        if self.raw_left:
            return
        ex.upgrade_body = 0
        if ex.phase != DONE:
            ex.request_done()
            if ex is self.current:
                self.deadline = 0.0
        self._upgrade_rest(ex, data[n:] if len(data) > n else b"")

    def _upgrade_rest(self, ex: Exchange, rest: bytes) -> None:
        if ex.upgrade is not None and not ex.finished:
            self.upgrade_for = ex  # until its answer: a 101 makes these the tunnel's first bytes
            self.upgrade_rest = rest
            self.block_read(self.BLOCK_UPGRADE)
            return
        if rest and self.state != CLOSED:
            self.data_received(rest)

    def _check_upgrade(self, ex: Exchange) -> None:
        """An ``Upgrade`` header: may this request become a tunnel (``ex.upgrade``), and is its handshake good?"""
        value = ex.upgrade
        assert value is not None
        ex.upgrade = None
        if ex.conn_tokens is None or b"upgrade" not in ex.conn_tokens:
            return  # an Upgrade not named in Connection is a plain header, dropped as hop-by-hop
        if ex.chunked_in:
            raise Reject(400, "an Upgrade request with a chunked body is not supported")
        if ex.cl > 0:
            ex.upgrade_body = ex.cl  # the parser leaves the body of an Upgrade request to us
        if not ex.version11:
            return  # Upgrade is HTTP/1.1: an HTTP/1.0 request is served as it is
        try:
            ex.upgrade = tunnel_protocols(value, ex.method, ex.ws_key, ex.ws_version)
        except UpgradeRefused as refused:
            raise Reject(refused.status, refused.detail, refused.extra) from None

    def start_tunnel(self, ex: Exchange) -> bytes:
        """The upstream switched protocols for ``ex``: HTTP is over here; returns the bytes that came after it."""
        rest = b""
        if self.upgrade_for is ex:
            rest = self.upgrade_rest
            self.upgrade_for = None
            self.upgrade_rest = b""
        self.current = None
        self.building = None
        self.state = TUNNEL
        self.deadline = 0.0
        self.read_block = 0  # the tunnel resumes reading
        self.ctx.timed.discard(self)
        return rest

    def on_message_begin(self) -> None:
        self.building = Exchange(self, self.ctx.snapshot)
        self.partial = 0
        self.hstart = self.cursor
        self.hparts = None
        if self.current is None:
            self.state = READING_HEAD

    def on_url(self, url: bytes) -> None:
        ex = self.building
        assert ex is not None
        ex.target = ex.target + url if ex.target else url
        if len(ex.target) > ex.snap.max_request_line:
            raise Reject(414, "request line too long")

    def on_headers_complete(self) -> None:
        """The parser has checked a head: find it in what was read (from where the message began, in this read
        or in earlier ones kept in ``hparts``) and read it; ``cursor`` moves past it."""
        ex = self.building
        assert ex is not None
        parts = self.hparts
        if parts is not None:
            self.hparts = None
            before = sum(len(p) for p in parts)
            parts.append(self.feed)
            source = b"".join(parts)
            start = 0
        else:
            before = 0
            source = self.feed
            start = self.hstart
            if start < 0:
                raise Reject(400, "the request head could not be located")
        n = len(source)
        while start < n and (source[start] == 13 or source[start] == 10):
            start += 1  # blank lines before a request line are ignored (RFC 9112 2.2)
        self.cursor = scan_head(ex, source, start) - before
        method = ex.method
        if not method:  # the parser's to tell
            parser = self.parser
            assert parser is not None  # called by it
            version = parser.get_http_version()
            if version[:2] != "1.":
                raise Reject(505, f"HTTP version {version} is not supported")
            ex.version11 = version != "1.0"
            ex.method = method = parser.get_method()
            ex.keep_alive = parser.should_keep_alive()
        ex.method_head = method == b"HEAD"
        if method == b"CONNECT":
            raise Reject(405, "CONNECT is not supported")
        if ex.n_host > 1:
            raise Reject(400, "more than one Host header")
        if ex.host is None and ex.version11:
            raise Reject(400, "missing Host header")
        if ex.te is not None and not ex.version11:
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        limit = ex.snap.max_body_bytes
        if limit and ex.cl > limit:
            raise Reject(413, f"request body larger than {limit} bytes")
        if ex.conn_tokens:
            ex.conn_tokens.discard(b"close")
            ex.conn_tokens.discard(b"keep-alive")
            if ex.conn_tokens:  # headers the client named in Connection are hop-by-hop too
                drop = ex.conn_tokens
                ex.headers = [h for h in ex.header_lines() if h.split(b":", 1)[0].lower() not in drop]
        if ex.upgrade is not None:
            self._check_upgrade(ex)
        if not ex.rid:
            ids = self.ctx.ids
            ex.rid = ids.next()
            ex.rid_own = True
        if ex.chunked_in:
            self.chunks = ChunkedEnd()
        # a request without a body is complete with its head: an answer made now keeps the connection
        ex.phase = BODY if ex.cl > 0 or ex.chunked_in else DONE
        if self.current is None:
            self.current = ex
            self.state = BUSY
            # a request body must keep coming: header_timeout is the longest pause allowed between its reads
            self.deadline = self.ctx.now + ex.snap.header_timeout if ex.cl > 0 or ex.chunked_in else 0.0
            ex.start()
        else:
            if self.pending is None:
                self.pending = deque()
            self.pending.append(ex)
            self.block_read(self.BLOCK_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.building
        assert ex is not None
        if self.deadline:
            self.deadline = self.ctx.now + ex.snap.header_timeout
        if self.chunks is None:
            self.cursor += len(body)
        ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.building
        if ex is None:  # a bodiless request answered within its head's callback: let go of by exchange_done
            return
        chunks = self.chunks
        if chunks is not None:
            self.chunks = None
            self.cursor = chunks.feed(self.feed, self.cursor)
            if self.cursor < 0:
                raise Reject(400, "the end of the chunked request body could not be located")
        if ex.phase != DONE and not (ex.upgrade_body and ex.body_len < ex.cl):  # else: read by _raw_body
            ex.request_done()
            if ex is self.current:
                self.deadline = 0.0

    # -- responses ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def writelines(self, data: tuple[bytes, ...] | list[bytes]) -> None:
        transport = self.transport
        if transport is not None:
            transport.writelines(data)

    def exchange_done(self, ex: Exchange, keep_alive: bool) -> None:
        """The response to ``ex`` is complete (or failed); serve the next request or close."""
        if ex is not self.current:
            return
        self.current = None
        if self.state == CLOSED:
            return
        if not keep_alive:  # includes a response that ended before its request body did
            self.close()
            return
        pending = self.pending
        if pending:
            nxt = pending.popleft()
            self.current = nxt
            self.state = BUSY
            if not pending:  # nothing waits behind it: read on (the rest of its body, or the next request)
                if nxt.phase == BODY:
                    self.deadline = self.ctx.now + nxt.snap.header_timeout
                self.unblock_read(self.BLOCK_PIPELINE)
            nxt.start()
            return
        if self.upgrade_for is ex:  # an Upgrade answered without 101: HTTP goes on with the bytes after it
            rest = self.upgrade_rest
            self.upgrade_for = None
            self.upgrade_rest = b""
            self.state = IDLE
            self.deadline = self.ctx.now + self.ctx.snapshot.keepalive_timeout
            self.unblock_read(self.BLOCK_PIPELINE | self.BLOCK_UPGRADE)
            if rest:
                self.data_received(rest)
            return
        if self.reject_after is not None:
            status, detail, rid = self.reject_after
            self._send_and_close(status, detail, rid)
            return
        self.unblock_read(self.BLOCK_PIPELINE)
        building = self.building
        if building is not None and building.phase == HEAD and building is not ex:
            self.state = READING_HEAD
            self.deadline = self.ctx.now + self.ctx.snapshot.header_timeout
        else:
            self.state = IDLE
            if building is ex and ex.phase == DONE:  # an idle connection keeps no exchange
                self.building = None
            if self.ctx.draining:
                self.close()
                return
            self.deadline = self.ctx.now + self.ctx.snapshot.keepalive_timeout
            if self.building is None and not self.feed:  # within a read, data_received gives it back after
                self._give_parser()

    def reject(self, status: int, detail: str, ex: Exchange | None, extra: bytes = b"") -> None:
        """Answer a request we refuse (or a broken request body) and close the connection."""
        current = self.current
        rid = ex.rid if ex is not None and ex.rid else self.ctx.ids.next()
        if current is not None and ex is not current and not current.finished:
            # a bad request pipelined behind a good one: answer the good one first
            self.reject_after = (status, detail, rid)
            self.pending = deque(e for e in self.pending or () if e is not ex)
            self.block_read(self.BLOCK_PIPELINE)
            return
        if current is not None and not current.finished:
            current.abandon_upstream()
            if current.resp_started:  # part of a response went out already: just close
                current.close_after = True
                current.end()
                self.abort()
                return
            current.close_after = True
        self._send_and_close(status, detail, rid, extra)
        if current is not None and not current.finished:
            current.status = status
            current.end()

    def _send_and_close(self, status: int, detail: str, rid: bytes | None = None, extra: bytes = b"") -> None:
        transport = self.transport
        if transport is None:
            return
        if rid is None:
            rid = self.ctx.ids.next()
        transport.write(error_response(status, detail, rid, close=True, extra=extra))
        self.close()

    def close(self) -> None:
        transport = self.transport
        self.state = CLOSED
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        self.state = CLOSED
        if transport is not None:
            transport.abort()

    # -- flow control ----------------------------------------------------------------------

    def block_read(self, reason: int) -> None:
        if not self.read_block and self.transport is not None:
            self.transport.pause_reading()
        self.read_block |= reason

    def unblock_read(self, reason: int) -> None:
        if self.read_block & reason:
            self.read_block &= ~reason
            if not self.read_block and self.transport is not None:
                self.transport.resume_reading()

    def pause_reading_for_upstream(self) -> None:
        self.block_read(self.BLOCK_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self.unblock_read(self.BLOCK_UPSTREAM)

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.upstream is not None and ex.upstream.transport is not None:
            ex.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.upstream is not None and ex.upstream.transport is not None:
            ex.upstream.transport.resume_reading()
