"""One request and its response: from a parsed head, through a pooled upstream connection, back to the client.

The client connection feeds an exchange with the request (head, body
chunks, end); the upstream connection feeds it with the response. Bodies
stream both ways; nothing is held whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from fulcrum.balancing import base, hash_key_value, observe_latency, sticky_lookup, sticky_set_cookie, sticky_token
from fulcrum.balancing.base import PickContext
from fulcrum.health.budget import retryable
from fulcrum.http import status as _status
from fulcrum.http.headers import forwarded_node, is_trusted, split_host
from fulcrum.http.status import error_body, error_response
from fulcrum.middleware.answers import answer_response
from fulcrum.middleware.api import Request, Response
from fulcrum.middleware.chain import Chain
from fulcrum.middleware.policy.accesslog import LogRecord
from fulcrum.proxy.guards import FAILURE_OUTCOME, status_outcome
from fulcrum.proxy.tunnel import Tunnel
from fulcrum.proxy.upstream import (
    CHUNKED,
    CONNECT_ERROR,
    CONNECT_TIMEOUT,
    INVALID,
    READ_TIMEOUT,
    RESET,
    TOTAL_TIMEOUT,
    UNTIL_CLOSE,
    Pool,
    UpstreamConnection,
)
from fulcrum.routing import target_path
from fulcrum.routing.rewrite import edit_lines, rewrite_target, split_target
from fulcrum.routing.route import Route

if TYPE_CHECKING:
    from fulcrum.proxy.downstream import ClientConnection
    from fulcrum.state.group import Group
    from fulcrum.state.server import Server
    from fulcrum.state.snapshot import Snapshot

log: Final = logging.getLogger("fulcrum.proxy")
# Names from modules that are not compiled, read per request: as Final they are C statics of this module,
# not look-ups in its globals dict.
perf_counter: Final = time.perf_counter
EMPTY_CONTEXT: Final = base.EMPTY_CONTEXT
NO_BODY_STATUSES: Final = _status.NO_BODY_STATUSES

# Request phases.
HEAD: Final = 0
BODY: Final = 1
DONE: Final = 2

IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
NONE_TRIED: Final[frozenset[str]] = frozenset()  # shared: an empty frozenset is 216 bytes each
#: Request body bytes held while no upstream connection is ready, before the client is paused.
BODY_BUFFER_LIMIT: Final = 64 * 1024
#: How many forwarding blocks (the X-Forwarded-* / Forwarded lines of a client address, scheme, host and
#: style) the proxy keeps made; past that the store starts again empty.
FORWARD_BLOCKS: Final = 1024
#: A piece of body at least this long is written on its own after the head instead of joined to it (a copy).
SEPARATE_WRITE: Final = 16 * 1024
LAST_CHUNK: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"


class Exchange:
    """State of one request from its head to the end of its response."""

    __slots__ = (
        "attempts",
        "body_buf",
        "body_buffered",
        "body_filter",
        "body_len",
        "body_limit",
        "bytes_out",
        "chunk_out",
        "chunked_in",
        "cl",
        "client",
        "close_after",
        "conn_tokens",
        "cookie",
        "deadline",
        "error",
        "expect",
        "finished",
        "fwd",
        "group",
        "head",
        "header_bytes",
        "headers",
        "held",
        "held_body",
        "held_complete",
        "held_lost",
        "host",
        "host_replaced",
        "keep_alive",
        "method",
        "method_head",
        "n_host",
        "out",
        "outcome",
        "phase",
        "pool",
        "queued",
        "raw",
        "replay",
        "req",
        "resp",
        "resp_mode",
        "resp_started",
        "rid",
        "rid_own",
        "route",
        "sent_at",
        "server",
        "set_cookie",
        "snap",
        "status",
        "t0",
        "t_total",
        "target",
        "task",
        "te",
        "tried",
        "upgrade",
        "upgrade_body",
        "upstream",
        "upstream_got_bytes",
        "version11",
        "waiter",
        "ws_key",
        "ws_version",
        "xff",
        "xfh",
        "xfp",
    )

    def __init__(self, client: ClientConnection, snap: Snapshot) -> None:
        self.client = client
        self.snap = snap
        self.target = b""
        # The header lines to forward: as one block of the client's bytes (``raw``, when the client side kept
        # them so), or as a list of lines (``headers``) once something reads them one by one (header_lines).
        self.raw: bytes | None = None
        self.headers: list[bytes] = []
        self.host: bytes | None = None
        self.n_host = 0
        self.cl = -1
        self.te: bytes | None = None
        self.chunked_in = False
        self.conn_tokens: set[bytes] | None = None
        self.xff: bytes | None = None
        self.xfp: bytes | None = None
        self.xfh: bytes | None = None
        self.fwd: bytes | None = None
        self.rid: bytes = b""
        self.rid_own = False  # the id was made here: 32 lowercase hex digits
        self.cookie: bytes | None = None
        self.expect = False
        self.upgrade: bytes | None = None  # the protocols to ask the upstream for (an Upgrade request)
        self.upgrade_body = 0  # an Upgrade request's body, read by the client connection itself
        self.ws_key: bytes | None = None
        self.ws_version: bytes | None = None
        self.phase = HEAD
        self.method = b""
        self.method_head = False
        self.keep_alive = True
        self.version11 = True
        self.upstream: UpstreamConnection | None = None
        self.upstream_got_bytes = False
        self.pool: Pool | None = None
        self.server: Server | None = None
        self.group: Group | None = None
        self.head = b""
        self.body_buf: list[bytes] | None = None
        self.body_buffered = 0
        self.body_len = 0
        self.resp_started = False
        self.out: list[bytes] = []
        self.error = ""  # why the upstream failed (connect_error, timeout, ...), for the access log
        self.outcome: str | None = None  # for passive health and breakers: status class or failure kind
        self.resp_mode = 0
        self.chunk_out = False
        self.close_after = False
        self.set_cookie: bytes | None = None
        self.status = 0
        self.t0 = 0.0
        self.sent_at = 0.0
        self.deadline = 0.0
        self.t_total = 0.0
        self.queued = False
        self.finished = False
        self.tried: frozenset[str] = NONE_TRIED
        self.attempts = 1
        self.replay: list[bytes] | None = None  # request body kept for a retry (None: no retry possible)
        # gateway: the route, and for routes with middleware the request/response views and the async onion
        self.route: Route | None = None
        self.req: Request | None = None
        self.resp: Response | None = None
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.held = False  # the upstream's head waits for the async middleware to return
        self.held_body: list[bytes] | None = None
        self.held_complete: UpstreamConnection | None = None
        self.held_lost = False
        self.host_replaced = False
        self.body_filter: Any = None  # a compress encoder for the response body
        self.body_limit = 0  # max_body of the route (0: only limits.max_body_bytes)
        self.bytes_out = 0

    # -- request side --------------------------------------------------------

    def start(self) -> None:
        """Route the request, pick a server and send the head upstream (the head is complete)."""
        client = self.client
        ctx = client.ctx
        snap = self.snap
        self.t0 = perf_counter()  # loop.time() moves in whole milliseconds under uvloop
        routes = snap.routes
        route = routes.catch_all
        if route is None:
            host = split_host(self.host) if self.host is not None and routes.uses_host else b""
            path, query = split_target(self.target)
            route = routes.match(host, path, self.method,
                                 self.header_lines() if routes.uses_headers else self.headers, query)
        if route is None:
            self.respond_error(404, "no route matches this request")
            return
        self.route = route
        chain: Chain | None = route.chain
        if chain is not None:
            req = self.req = Request(self.method.decode("latin-1"), self.target, self.header_lines(), client.client_ip,
                                     route.name, self.rid.decode("latin-1"))
            req.content_length = self.cl
            if self.rid_own:
                req.own_id = self.rid
            if self.xff is not None:
                req.forwarded_for = self.xff.decode("latin-1")
            if not chain.sync:
                self.task = ctx.loop.create_task(self._run_chain(chain, req))
                return
            answer = chain.on_request(req)
            if answer is not None:
                self.send_own(answer, False)
                return
        self.proceed(route)

    def proceed(self, route: Route) -> None:
        """After the middleware's request side: the route's own rewrites, then its answer or its upstream."""
        req = self.req
        if req is not None:
            if req.target_changed:
                self.target = req.target
            if req.headers_changed:
                try:
                    self.headers = req.header_lines()
                except ValueError as err:
                    self.respond_error(500, f"middleware set a bad header: {err}")
                    return
            limit = req.body_limit
            if limit:
                self.body_limit = limit
                if self.body_len > limit:
                    self.client.reject(413, f"request body larger than {limit} bytes", self)
                    return
        if route.rewrite is not None:
            self.target = rewrite_target(self.target, route.rewrite)
        if route.request_headers is not None:
            self.headers = edit_lines(self.header_lines(), route.request_headers)
        if route.upstream_host is not None:
            self.headers = [h for h in self.header_lines() if h[:5].lower() != b"host:"]
            self.headers.append(b"Host: " + route.upstream_host + CRLF)
            self.host_replaced = True
        answer = route.answer
        if answer is not None:
            self.send_own(answer_response(answer, self.host or b"", self.target), True)
            return
        self.choose(route)

    def choose(self, route: Route) -> None:
        """Pick a server of the route's group and forward to it."""
        client = self.client
        ctx = client.ctx
        snap = self.snap
        group = self.group = snap.groups[route.upstream or ""]
        pick_ctx = EMPTY_CONTEXT
        sticky = group.sticky
        server: Server | None = None
        if sticky is not None:
            token = self._cookie_value(sticky.cookie)
            if token is not None:
                server = sticky_lookup(token, group.eligible)
        if server is None:
            if group.needs_key:
                pick_ctx = self._pick_context(group)
            server = group.balancer.pick(pick_ctx, group.eligible)
            if server is None:
                self.respond_error(503, f"no healthy server in upstream '{group.name}'")
                return
            if sticky is not None:
                self.set_cookie = sticky_set_cookie(sticky.cookie, sticky_token(server.id), sticky.ttl).encode()
        guards = group.guards
        if guards is not None:
            if not guards.allow(server, ctx.now):
                server = self._pick_past_breakers(group, server)
                if server is None:
                    self.respond_error(503, f"every server of upstream '{group.name}' has its circuit breaker open")
                    return
            if guards.budget is not None:
                guards.budget.record_request(ctx.now)
                self.replay = []  # the body is kept while it is small enough to send again
        total = group.total_timeout
        if total:
            self.deadline = self.t_total = ctx.now + total
            ctx.timed.add(self)
        self.forward(group, server)

    def _pick_past_breakers(self, group: Group, refused: Server) -> Server | None:
        """Another server when the breaker of the one picked holds the request back."""
        tried = set(self.tried) | {refused.id}
        now = self.client.ctx.now
        while True:
            server = group.balancer.pick(PickContext(exclude=frozenset(tried)), group.eligible)
            if server is None or group.guards.allow(server, now):
                return server
            tried.add(server.id)

    def forward(self, group: Group, server: Server) -> None:
        ctx = self.client.ctx
        pool = self.pool = ctx.pools.get(server) or ctx.new_pool(group, server)
        limit = pool.max_connections
        if limit and server.active >= limit:
            self._wait_for(pool, server, limit)
            return
        self.server = server
        server.active += 1
        server.requests += 1
        self.head = self._upstream_head(server)
        conn = pool.acquire()
        if conn is not None:
            self._attach(conn)
            return
        task = ctx.loop.create_task(self._connect(pool))
        ctx.connect_tasks.add(task)
        task.add_done_callback(ctx.connect_tasks.discard)

    def _wait_for(self, pool: Pool, server: Server, limit: int) -> None:
        """The server is at max_connections: wait in its queue, or 503 when the queue is full."""
        waiters = pool.waiters
        while waiters and waiters[0].finished:
            waiters.popleft()
        if len(waiters) >= pool.queue_size:
            self.respond_error(503, f"upstream server {server.id} has {limit} requests in flight (max_connections) "
                                    f"and {len(waiters)} waiting (queue full)")
            return
        waiters.append(self)
        self.queued = True
        ctx = self.client.ctx
        until = ctx.now + pool.queue_timeout
        if not self.deadline or until < self.deadline:
            self.deadline = until
        ctx.timed.add(self)

    def leave_queue(self) -> None:
        """Called by the pool when a place came free: go on to the server waited for."""
        self.queued = False
        pool = self.pool
        group = self.group
        assert pool is not None and group is not None
        total = group.total_timeout
        ctx = self.client.ctx
        if total:
            self.deadline = self.t_total
        else:
            self.deadline = 0.0
            ctx.timed.discard(self)
        self.forward(group, pool.server)

    async def _connect(self, pool: Pool) -> None:
        try:
            conn = await pool.connect()
        except TimeoutError:
            if not self.finished:
                self.upstream_failed(CONNECT_TIMEOUT)
            return
        except OSError:
            if not self.finished:
                self.upstream_failed(CONNECT_ERROR)
            return
        if self.finished:  # the client went away meanwhile: keep the fresh connection for later
            pool.release(conn)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.start(self)
        group = self.group
        if group is not None and group.track_latency:  # response time from here: connecting is not the server's
            self.sent_at = self.client.ctx.loop.time()
        transport = conn.transport
        assert transport is not None
        buf = self.body_buf
        if buf:
            self.body_buf = None
            self.body_buffered = 0
            transport.writelines([self.head, *buf])
            self.client.unblock_read(self.client.BLOCK_BUFFER)
        else:
            transport.write(self.head)
        if self.phase == DONE:
            if self.chunked_in:
                transport.write(LAST_CHUNK)
            conn.deadline = self.client.ctx.now + conn.pool.read_timeout

    def request_body(self, chunk: bytes) -> None:
        self.body_len += len(chunk)
        limit = self.body_limit or self.snap.max_body_bytes
        if limit and self.body_len > limit:
            self.abandon_upstream()
            self.client.reject(413, f"request body larger than {limit} bytes", self)
            return
        if self.chunked_in:
            framed: list[bytes] = [b"%x\r\n" % len(chunk), chunk, CRLF]
        else:
            framed = [chunk]
        replay = self.replay
        if replay is not None:
            if self.body_len > self.group.guards.retries.max_body:  # type: ignore[union-attr]
                self.replay = None  # too big to send again: this request is not retried
            else:
                replay += framed
        conn = self.upstream
        if conn is not None and conn.transport is not None:
            conn.transport.writelines(framed)
            return
        if self.finished:  # answered already (e.g. 503): the rest of the body is read and dropped
            return
        if self.body_buf is None:
            self.body_buf = framed
        else:
            self.body_buf.extend(framed)
        self.body_buffered += len(chunk)
        if self.body_buffered > BODY_BUFFER_LIMIT:
            self.client.block_read(self.client.BLOCK_BUFFER)

    def request_done(self) -> None:
        self.phase = DONE
        conn = self.upstream
        if conn is not None and conn.transport is not None:
            if self.chunked_in:
                conn.transport.write(LAST_CHUNK)
            conn.deadline = self.client.ctx.now + conn.pool.read_timeout

    # -- response side ---------------------------------------------------------

    def response_interim(self, status: int, head: bytes) -> None:
        """A 1xx from upstream: relayed to HTTP/1.1 clients (100 only when they asked for it)."""
        if not self.version11 or (status == 100 and not self.expect):
            return
        self.client.write(head + b"\r\n\r\n")

    def response_head(self, status: int, head: bytes, mode: int) -> None:
        """The upstream's head, hop-by-hop lines already cut: add ours and queue it for the client."""
        self.status = status
        self.resp_mode = mode
        self.resp_started = True
        group = self.group
        if (
            group is not None
            and (group.guards is not None or group.track_latency)
            and self._response_hooks(group, status)
        ):
            return  # retried on another server (which counted the error)
        if status >= 500:  # the server answered with an error: counted with its failed attempts
            server = self.server
            if server is not None:
                server.errors += 1
        route = self.route
        if route is not None and (route.chain is not None or route.response_headers is not None):
            resp = Response.upstream(status, head)
            edits = route.response_headers
            if edits is not None:
                resp.edit_raw(edits.pattern, edits.raw_append, edits.keys)
            chain: Chain | None = route.chain
            if chain is not None:
                if not chain.sync:
                    waiter = self.waiter
                    if waiter is not None and not waiter.done():
                        self.held = True
                        self.resp = resp
                        self.held_body = []
                        conn = self.upstream
                        if conn is not None and conn.transport is not None:
                            conn.transport.pause_reading()
                        waiter.set_result(resp)
                        return
                elif self.req is not None:
                    chain.on_response(self.req, resp)
            if not self._send_upstream_response(resp, mode):
                self.respond_error(502, "middleware set a bad response header")
            return
        self._send_head(head, mode)

    def response_switch(self, head: bytes, protocol: bytes) -> None:
        """A ``101 Switching Protocols`` to ``protocol``: queued for the client, the tunnel opens after it."""
        self.status = 101
        self.resp_started = True
        self.outcome = "success"
        head += b"\r\nConnection: upgrade\r\nUpgrade: " + protocol
        snap = self.snap
        route = self.route
        expose = snap.expose_upstream if route is None or route.expose_upstream is None else route.expose_upstream
        if expose and self.server is not None:
            head += b"\r\nX-Upstream-Server: " + self.server.id.encode()
        if self.set_cookie is not None:  # sticky WebSocket sessions
            head += b"\r\nSet-Cookie: " + self.set_cookie
        self.out.append(head + b"\r\nX-Request-ID: " + self.rid + b"\r\n\r\n")

    def open_tunnel(self, conn: UpstreamConnection, to_client: bytes) -> None:
        """After the 101: the exchange ends and both connections become one tunnel."""
        self.flush()
        client = self.client
        ctx = client.ctx
        transport = conn.transport
        down = client.transport
        self.upstream = None
        conn.exchange = None
        conn.deadline = 0.0
        ctx.timed.discard(conn)
        if self.pool is not None:
            self.pool.forget(conn)
        if transport is None or down is None:  # one side went away meanwhile
            if transport is not None:
                transport.close()
            self.close_after = True
            self.end()
            return
        to_upstream = client.start_tunnel(self)
        group = self.group
        timeout = group.spec.timeouts.tunnel if group is not None else 0.0
        tunnel = Tunnel(ctx, client, down, transport, self.server, timeout)
        self.end()
        tunnel.open(to_upstream, to_client)

    def _send_upstream_response(self, resp: Response, mode: int) -> bool:
        """Send the upstream's head as the route and its middleware left it; False (nothing sent, the upstream
        dropped) when a middleware set a header that cannot be written."""
        try:
            head = resp.head_bytes()
        except ValueError as err:
            log.error("route %s: middleware set a bad response header: %s", self.route.name if self.route else "?", err)
            self.abandon_upstream()
            self.resp_started = False
            return False
        self.status = resp.status
        self.body_filter = resp.body_filter
        if self.body_filter is not None and mode != UNTIL_CLOSE:
            mode = CHUNKED  # compressed: the length is no longer known
        self._send_head(head, mode)
        return True

    def _send_head(self, head: bytes, mode: int) -> None:
        """Queue the response head for the client, with our framing and headers added."""
        close = not self.keep_alive or self.client.ctx.draining
        if mode in (CHUNKED, UNTIL_CLOSE):  # sent on chunked to HTTP/1.1 clients
            if self.version11:
                self.chunk_out = True
                head += b"\r\nTransfer-Encoding: chunked"
            else:
                close = True
        snap = self.snap
        route = self.route
        expose = snap.expose_upstream if route is None or route.expose_upstream is None else route.expose_upstream
        if expose and self.server is not None:
            head += b"\r\nX-Upstream-Server: " + self.server.id.encode()
        if self.set_cookie is not None:
            head += b"\r\nSet-Cookie: " + self.set_cookie
        self.close_after = close
        if close:
            end = b"\r\nConnection: close\r\n\r\n"
        elif self.version11:
            end = b"\r\n\r\n"
        else:
            end = b"\r\nConnection: keep-alive\r\n\r\n"
        self.out.append(head + b"\r\nX-Request-ID: " + self.rid + end)

    def _response_hooks(self, group: Group, status: int) -> bool:
        """Passive health, retries on a bad status and latency tracking; True when the request was retried."""
        if group.guards is not None:
            self.outcome = status_outcome(status)
            if self.replay is not None and self.retry(self.outcome, status, True):
                return True
        if group.track_latency and self.server is not None:
            now = self.client.ctx.loop.time()
            observe_latency(self.server, (now - self.sent_at) * 1000.0, now)
        return False

    def response_body(self, data: bytes) -> None:
        if self.held:
            self.held_body.append(data)  # type: ignore[union-attr]
            return
        encoder = self.body_filter
        if encoder is not None:
            data = encoder.compress(data)
            if not data:
                return
        self.bytes_out += len(data)
        if self.chunk_out:
            self.out += (b"%x\r\n" % len(data), data, CRLF)
        else:
            self.out.append(data)

    def flush(self) -> None:
        """Write what the last upstream read produced, in one go (head and body in one send)."""
        out = self.out
        if out and not self.held:
            count = len(out)
            if count == 1:
                self.client.write(out[0])
            elif count == 2 and len(out[1]) >= SEPARATE_WRITE:  # a head and a long piece of body: two sends
                self.client.write(out[0])  # cost less than copying the body behind the head
                self.client.write(out[1])
            else:  # one write: uvloop sends each buffer of writelines on its own when the socket is writable
                self.client.write(b"".join(out))
            out.clear()

    def _finish_body_filter(self) -> None:
        """The body ended: the encoder's last bytes go out before the framing's end."""
        encoder = self.body_filter
        self.body_filter = None
        tail = encoder.finish()
        if tail:
            self.response_body(tail)

    def response_complete(self, conn: UpstreamConnection) -> None:
        if self.held:
            self.held_complete = conn
            return
        if self.body_filter is not None:
            self._finish_body_filter()
        if self.chunk_out:
            self.out.append(LAST_CHUNK)
        self.flush()
        self.upstream = None
        pool = self.pool
        # a request still being sent upstream leaves that connection out of step
        if conn.reusable and self.phase == DONE and pool is not None:
            pool.release(conn)
        else:
            conn.close()
        self.end()

    # -- failures ----------------------------------------------------------------

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        """The upstream connection closed while this exchange used it."""
        self.upstream = None
        if self.finished:
            return
        if self.held:
            self.held_lost = True
            return
        if self.resp_started:
            self._lost_after_head()
            return
        if (
            conn.uses > 1
            and not conn.got_bytes
            and self.method in IDEMPOTENT
            and self.cl <= 0
            and not self.chunked_in
            and self.pool is not None
        ):
            # A pooled connection the server had already closed: try once more on a new one.
            task = self.client.ctx.loop.create_task(self._connect(self.pool))
            self.client.ctx.connect_tasks.add(task)
            task.add_done_callback(self.client.ctx.connect_tasks.discard)
            return
        self.upstream_got_bytes = conn.got_bytes
        self.upstream_failed(RESET)

    def _lost_after_head(self) -> None:
        """The upstream closed after its head: the end of a close-delimited body, else a truncation."""
        if self.resp_mode == UNTIL_CLOSE:  # the close is the end of this body
            if self.body_filter is not None:
                self._finish_body_filter()
            if self.chunk_out:
                self.out.append(LAST_CHUNK)
            self.flush()
            self.end()
        else:  # truncated: the client gets what came, then the close; never a made-up ending
            self.flush()
            self.close_after = True
            self.end()

    def upstream_failed(self, kind: str) -> None:
        if self.finished:
            return
        if self.replay is not None and not self.resp_started:
            outcome = FAILURE_OUTCOME.get(kind, "reset")
            if self.retry(outcome, 0, kind not in (CONNECT_ERROR, CONNECT_TIMEOUT)):
                return
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()
        self.outcome = FAILURE_OUTCOME.get(kind)
        self.error = kind
        server = self.server
        if server is not None:
            server.errors += 1
        if self.resp_started:  # part of the response went out: the client sees it cut short
            self.flush()
            self.close_after = True
            self.end()
            return
        status, detail = self._failure_text(kind)
        self.respond_error(status, detail)

    def retry(self, outcome: str, status: int, sent_any_byte: bool) -> bool:
        """Send the request again to another server, if the group's retry rules allow; False if not."""
        group = self.group
        server = self.server
        assert group is not None and server is not None
        guards = group.guards
        spec = guards.retries
        ctx = self.client.ctx
        now = ctx.now
        if (
            self.attempts > spec.max
            or not retryable(self.method, outcome, status, guards.when, sent_any_byte)
            or self.replay is None
        ):
            return False
        tried = self.tried | {server.id}
        nxt = group.balancer.pick(PickContext(exclude=tried), group.eligible)
        while nxt is not None and not guards.allow(nxt, now):
            tried |= {nxt.id}
            nxt = group.balancer.pick(PickContext(exclude=tried), group.eligible)
        if nxt is None or not guards.budget.can_retry(now):
            return False
        # this try is over: its connection goes, its server hears how it went
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.exchange = None
            conn.abort()
        server.active -= 1
        server.errors += 1
        guards.finish(server, outcome, now)
        old_pool = self.pool
        if old_pool is not None and old_pool.waiters:
            old_pool.wake()
        self.tried = tried
        self.attempts += 1
        self.outcome = None
        self.resp_mode = 0
        self.resp_started = False
        self.status = 0
        ctx.stats.retries_total += 1
        retries = ctx.metrics.retries
        retries[group.name] = retries.get(group.name, 0) + 1
        self.body_buf = list(self.replay) if self.replay else None
        self.body_buffered = 0
        self.forward(group, nxt)
        return True

    def _failure_text(self, kind: str) -> tuple[int, str]:
        server = self.server
        sid = server.id if server is not None else "?"
        pool = self.pool
        if kind == CONNECT_ERROR:
            return 502, f"could not connect to upstream server {sid}"
        if kind == CONNECT_TIMEOUT:
            secs = pool.connect_timeout if pool is not None else 0
            return 504, f"connecting to upstream server {sid} timed out after {secs:g}s (connect timeout)"
        if kind == READ_TIMEOUT:
            secs = pool.read_timeout if pool is not None else 0
            return 504, f"upstream server {sid} sent nothing for {secs:g}s (read timeout)"
        if kind == TOTAL_TIMEOUT:
            total = self.group.total_timeout if self.group is not None else 0
            return 504, f"upstream server {sid} did not finish within {total:g}s (total timeout)"
        if kind == INVALID:
            return 502, f"upstream server {sid} sent an invalid response"
        if self.upstream_got_bytes:
            return 502, f"upstream server {sid} closed the connection in the middle of its response head"
        return 502, f"upstream server {sid} closed the connection before responding"

    def on_timeout(self, now: float) -> None:
        """The total timeout passed, or the wait in a server's queue did."""
        self.deadline = 0.0
        if self.queued:
            self.queued = False
            pool = self.pool
            if pool is not None and self in pool.waiters:
                pool.waiters.remove(self)
            secs = pool.queue_timeout if pool is not None else 0
            sid = pool.server.id if pool is not None else "?"
            self.respond_error(503, f"waited {secs:g}s for upstream server {sid} (max_connections reached)")
            return
        self.upstream_failed(TOTAL_TIMEOUT)

    def abandon_upstream(self) -> None:
        """Drop the upstream side (the client failed or left)."""
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()

    def respond_error(self, status: int, detail: str) -> None:
        """Answer with an error of our own; the connection stays open only if the request was read whole."""
        route = self.route
        if route is not None and (route.chain is not None or route.response_headers is not None):
            # middleware sees Fulcrum's own errors too (CORS headers on a 502, the access log of a 503)
            resp = Response(status, error_body(status, detail, self.rid),
                            [("Content-Type", "text/plain; charset=utf-8")])
            self.send_own(resp, True)
            return
        close = not self.keep_alive or self.phase != DONE or self.client.ctx.draining
        self.status = status
        self.close_after = close
        self.resp_started = True
        self.client.write(error_response(status, detail, self.rid, close=close))
        self.end()

    # -- gateway: answers of our own and the async middleware onion ---------------

    def send_own(self, resp: Response, hooks: bool) -> None:
        """Answer with a response Fulcrum or a middleware made; ``hooks``: still to pass the route's middleware."""
        route = self.route
        if hooks and route is not None:
            waiter = self.waiter
            if waiter is not None:
                if not waiter.done():  # async middleware waits for this in call_next: it has the last word
                    self.resp = None
                    waiter.set_result(resp)
                return
            chain: Chain | None = route.chain
            if chain is not None and chain.sync and self.req is not None:
                chain.on_response(self.req, resp)
        if route is not None and route.response_headers is not None and hooks:
            edits = route.response_headers
            resp.edit_raw(edits.pattern, edits.raw_append, edits.keys)
        try:
            head = resp.head_bytes()
        except ValueError as err:
            log.error("middleware set a bad response header: %s", err)
            resp = Response(500, "500 Internal Server Error: bad response header from middleware\n")
            head = resp.head_bytes()
        status = resp.status
        close = not self.keep_alive or self.phase != DONE or self.client.ctx.draining
        self.status = status
        self.close_after = close
        self.resp_started = True
        body = resp.body
        parts = [head]
        if status not in NO_BODY_STATUSES:
            parts.append(b"\r\nContent-Length: %d" % len(body))
        parts.append(b"\r\nX-Request-ID: " + self.rid)
        if close:
            parts.append(b"\r\nConnection: close\r\n\r\n")
        elif self.version11:
            parts.append(b"\r\n\r\n")
        else:
            parts.append(b"\r\nConnection: keep-alive\r\n\r\n")
        if body and not self.method_head and status not in NO_BODY_STATUSES:
            parts.append(body)
            self.bytes_out = len(body)
        self.client.write(b"".join(parts))
        self.end()

    async def _run_chain(self, chain: Chain, req: Request) -> None:
        try:
            resp = await chain.run(req, self._call_next)
        except asyncio.CancelledError:
            raise
        except Exception:
            name = self.route.name if self.route is not None else "?"
            log.exception("middleware of route %s failed", name)
            resp = Response(500, f"500 Internal Server Error: middleware failed\nrequest id: {req.request_id}\n",
                            [("Content-Type", "text/plain; charset=utf-8")])
        self.task = None
        if not self.finished:
            self._chain_done(resp)

    def _call_next(self, req: Request) -> asyncio.Future[Response]:
        """The innermost ``call_next``: the route's own rewrites, then upstream (or the route's answer)."""
        if self.waiter is not None:
            raise RuntimeError("call_next was called twice for one request")
        waiter = self.waiter = self.client.ctx.loop.create_future()
        route = self.route
        assert route is not None
        if not self.finished:
            self.proceed(route)
        return waiter

    def _chain_done(self, resp: Response) -> None:
        """The async onion returned ``resp``: send the upstream's held head and body, or the answer it made."""
        if resp is self.resp and self.held:
            self.held = False
            self.resp = None
            if not self._send_upstream_response(resp, self.resp_mode):
                self.send_own(Response(502, "502 Bad Gateway: middleware set a bad response header\n"), False)
                return
            held = self.held_body or []
            self.held_body = None
            for chunk in held:
                self.response_body(chunk)
            self.flush()
            complete = self.held_complete
            conn = complete if complete is not None else self.upstream
            if conn is not None and conn.transport is not None:  # paused while the head was held
                conn.transport.resume_reading()
            if complete is not None:
                self.held_complete = None
                self.response_complete(complete)
                return
            if self.held_lost:
                self._lost_after_head()
            return
        # an answer of the middleware's own: whatever the upstream sent is dropped
        self.held = False
        self.held_body = None
        self.held_complete = None
        self.abandon_upstream()
        self.resp_started = False
        self.send_own(resp, False)

    def _log_record(self) -> LogRecord:
        ctx = self.client.ctx
        now = ctx.loop.time()
        req = self.req
        referer, agent = req.header_pair("referer", "user-agent") if req is not None else (None, None)
        route = self.route
        return LogRecord(
            self.client.client_ip,
            time.time(),
            req.method if req is not None else self.method.decode("latin-1"),
            req.target.decode("latin-1") if req is not None else self.target.decode("latin-1"),
            "2.0" if self.client.alpn == "h2" else "1.1" if self.version11 else "1.0",  # nginx logs h2 as 2.0
            self.status,
            self.bytes_out,
            referer,
            agent,
            self.server.id if self.server is not None else None,
            (perf_counter() - self.t0) * 1000.0 if self.t0 else 0.0,
            (now - self.sent_at) * 1000.0 if self.sent_at else None,
            req.request_id if req is not None else self.rid.decode("latin-1"),
            route.name if route is not None else "-",
            self.error or None,
            self.attempts,
        )

    def end(self) -> None:
        """The exchange is over: counters, access log, and the client connection moves on."""
        if self.finished:
            return
        self.finished = True
        client = self.client
        ctx = client.ctx
        task = self.task
        if task is not None:  # the client went away while middleware ran
            self.task = None
            task.cancel()
        route = self.route
        logged: Chain | None = route.chain if route is not None else None
        if logged is not None and logged.loggers:
            try:
                logged.log(self._log_record())
            except Exception:
                log.exception("access log of route %s failed", route.name if route is not None else "?")
        if self.deadline:
            self.deadline = 0.0
            ctx.timed.discard(self)
        status = self.status
        t0 = self.t0
        seconds = perf_counter() - t0 if t0 else 0.0
        ctx.metrics.by_route[route.name if route is not None else "-"].record(status, seconds)
        server = self.server
        if server is not None:
            server.active -= 1
            codes = server.codes
            codes[status] = codes.get(status, 0) + 1
            server.recent.record(ctx.now, seconds * 1000.0, self.bytes_out)
            group = self.group
            if group is not None and group.guards is not None:
                group.guards.finish(server, self.outcome, ctx.now)
            pool = self.pool
            if pool is not None and pool.waiters:
                pool.wake()
        ctx.stats.requests_total += 1
        if status >= 500:
            ctx.stats.responses_5xx += 1
        if self.snap.access_log:
            self._log()
        client.exchange_done(self, not self.close_after and self.phase == DONE)

    def _log(self) -> None:
        ctx = self.client.ctx
        dur_ms = (perf_counter() - self.t0) * 1000.0 if self.t0 else 0.0
        server = self.server.id if self.server is not None else "-"
        ctx.access_log.write(
            f'{self.client.client_ip} "{self.method.decode("latin-1")} {self.target.decode("latin-1")}" '
            f"{self.status} upstream={server} duration_ms={dur_ms:.2f} request_id={self.rid.decode('latin-1')}"
            + (f" error={self.error}" if self.error else "")
            + (f" attempts={self.attempts}" if self.attempts > 1 else "")
        )

    # -- helpers -------------------------------------------------------------------

    def _upstream_head(self, server: Server) -> bytes:
        client = self.client
        trusted = client.trusted
        raw = self.raw
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n", raw] if raw is not None \
            else [self.method, b" ", self.target, b" HTTP/1.1\r\n", *self.headers]
        host = self.host
        if host is None:  # an HTTP/1.0 request without Host
            host = server.id.encode()
            if not self.host_replaced:
                parts += (b"Host: ", host, CRLF)
        route = self.route
        style = self.snap.forward_style
        if route is not None:
            if route.forward_style is not None:
                style = route.forward_style
            if route.trusted_proxies is not None:
                trusted = is_trusted(client.client_ip, route.trusted_proxies)
        if trusted and (self.xff or self.xfp or self.xfh or self.fwd):  # the client's values are extended
            parts.append(self._forwarding(style, host, True))
        else:  # the lines depend on the client's address, the listener's scheme, the host and the style only
            key = (style, client.client_ip_b, client.proto, host)
            blocks = client.ctx.forward_blocks
            block = blocks.get(key)
            if block is None:
                if len(blocks) >= FORWARD_BLOCKS:
                    blocks.clear()
                block = blocks[key] = self._forwarding(style, host, False)
            parts.append(block)
        parts += (b"X-Request-ID: ", self.rid, CRLF)
        upgrade = self.upgrade
        if upgrade is not None:
            parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, CRLF)
        if self.chunked_in:
            parts += (b"Transfer-Encoding: ", self.te or b"chunked", CRLF)
        elif self.cl >= 0:
            parts += (b"Content-Length: %d\r\n" % self.cl,)
        parts.append(CRLF)
        return b"".join(parts)

    def _forwarding(self, style: str, host: bytes, trusted: bool) -> bytes:
        """The forwarding header lines for the upstream: the client's own values extended when ``trusted``."""
        client = self.client
        ip = client.client_ip_b
        parts: list[bytes] = []
        if style != "rfc7239":
            xff = self.xff
            parts += (b"X-Forwarded-For: ", xff + b", " + ip if xff and trusted else ip, CRLF)
            parts += (b"X-Forwarded-Proto: ", self.xfp if self.xfp and trusted else client.proto, CRLF)
            parts += (b"X-Forwarded-Host: ", self.xfh if self.xfh and trusted else host, CRLF)
        if style != "x-forwarded":
            node = b"for=" + forwarded_node(client.client_ip) + b";host=\"" + host + b"\";proto=" + client.proto
            fwd = self.fwd
            parts += (b"Forwarded: ", fwd + b", " + node if fwd and trusted else node, CRLF)
        return b"".join(parts)

    def header_lines(self) -> list[bytes]:
        """The header lines to forward, one ``b"Name: value\\r\\n"`` each (the form routes and middleware read
        and change); built from the client's block the first time something asks."""
        raw = self.raw
        if raw is not None:
            self.raw = None
            lines = raw.split(CRLF)
            lines.pop()  # the block ends with a CRLF
            self.headers = [line + CRLF for line in lines]
        return self.headers

    def _header_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.header_lines():
            name, _, value = line.partition(b":")
            out[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        if self.host is not None:
            out["host"] = self.host.decode("latin-1")
        return out

    def _cookies(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.cookie:
            for part in self.cookie.decode("latin-1").split(";"):
                name, eq, value = part.strip().partition("=")
                if eq:
                    out.setdefault(name, value)
        return out

    def _cookie_value(self, name: str) -> str | None:
        if not self.cookie:
            return None
        return self._cookies().get(name)

    def _pick_context(self, group: Group) -> PickContext:
        client_ip = self.client.client_ip
        path = target_path(self.target).decode("latin-1")
        headers = self._header_map()
        key = hash_key_value(group.hash_key, client_ip, path, headers, self._cookies())
        return PickContext(client_ip=client_ip, path=path, headers=headers, hash_key=key, exclude=self.tried)
