"""The proxy of one process: listeners, the snapshot, health checkers, the timer tick, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from functools import partial

from fulcrum.config import Config, ConfigError
from fulcrum.config.errors import ConfigIssue
from fulcrum.config.tls import RedirectToHttps
from fulcrum.gateway import build_gateway
from fulcrum.health.active import HealthChecker
from fulcrum.middleware.policy.ratelimit import BucketsFactory
from fulcrum.middleware.shared import store_buckets
from fulcrum.proxy.alpn import AlpnSwitch
from fulcrum.proxy.context import ProxyContext
from fulcrum.proxy.downstream import IDLE, ClientConnection
from fulcrum.proxy.guards import Guards
from fulcrum.proxy.http2 import H2Connection
from fulcrum.proxy.redirect import RedirectConnection
from fulcrum.proxy.sockets import bind_listener
from fulcrum.proxy.tcp import Pending, TcpServices
from fulcrum.proxy.tls import ALPN_HTTP11, ALPN_PROTOCOLS, ListenerTLS, client_tls
from fulcrum.state.redis import RedisBuckets, redis_buckets
from fulcrum.state.server import Down
from fulcrum.state.snapshot import ServerRegistry, Snapshot, build_snapshot

log = logging.getLogger("fulcrum")
tls_log = logging.getLogger("fulcrum.tls")

Address = tuple[str, int]


class Endpoint:
    """One listening socket and what it serves: plain HTTP, HTTPS with ``tls``, or a ``redirect`` to HTTPS.

    A reload that keeps the address keeps the socket and changes these in place, between two
    accepts: the next connection gets the new certificates, established ones keep theirs.
    """

    __slots__ = ("address", "redirect", "sock", "tls")

    def __init__(self, sock: socket.socket, address: Address) -> None:
        self.sock = sock
        self.address = address
        self.tls: ListenerTLS | None = None
        self.redirect: RedirectToHttps | None = None


def listener_tls(config: Config, source: str) -> list[ListenerTLS | None]:
    """The TLS contexts of each listen entry (None for plain ones); raises ``ConfigError``."""
    return [ListenerTLS(lst.tls, f"listen[{i}]", source, ALPN_PROTOCOLS if lst.offers_h2 else ALPN_HTTP11)
            if lst.tls is not None else None for i, lst in enumerate(config.listen)]


def _tick_for(config: Config) -> float:
    """How often deadlines are checked: a fifth of the shortest timeout, between 10 ms and 250 ms."""
    shortest = min(
        [config.limits.header_timeout, config.limits.keepalive_timeout]
        + [t for u in config.upstreams.values() for t in (u.timeouts.connect, u.timeouts.read) if t > 0]
        + [s.timeouts.idle for s in config.tcp_services.values() if s.timeouts.idle > 0]
    )
    return max(0.01, min(0.25, shortest / 5))


class ProxyServer:
    """Serves one config on its listeners until ``shutdown``.

    ``bind`` makes the listening socket of an address (by default a new one; a worker process is given
    sockets its main process holds). With ``checks`` off no health checks run here: whoever builds the
    snapshots sets the servers' ``ACTIVE_CHECK`` flags (a worker's main process does).
    """

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop | None = None,
        source: str = "config",
        *,
        bind: Callable[[Address], socket.socket] = bind_listener,
        checks: bool = True,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.source = source  # the config file's name, for errors
        self.config = config
        self.bind = bind
        self.checks = checks
        self.registry = ServerRegistry()
        self.checkers: dict[str, HealthChecker] = {}
        # rate_limit with shared: true counts in the state backend (state: redis), read at start only
        self.buckets: RedisBuckets | None = redis_buckets(config.state)
        self._shared_buckets: BucketsFactory | None = store_buckets(self.buckets) if self.buckets else None
        self._tls = listener_tls(config, source)
        snapshot = self._build(config)
        self._attach_guards(snapshot, None)
        self._attach_tls(snapshot)
        self.ctx = ProxyContext(self.loop, snapshot)
        self.ctx.metrics.use([(r.name, r.upstream or "-") for r in snapshot.routes.routes])
        self.tcp = TcpServices(self.ctx, config)  # tcp_services: fulcrum.proxy.tcp
        self.endpoints: list[Endpoint] = []  # in the order of config.listen, once started
        self._accepting: set[asyncio.Task[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]] = set()
        self._tick = _tick_for(config)
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self.started = False  # listening (on none, for a config of TCP services only)

    def _build(self, config: Config) -> Snapshot:
        # the health checker sets a new server's first state (DESIGN 4, "Health at start")
        gateway = build_gateway(config, self.source, self._shared_buckets)
        return build_snapshot(config, self.registry, self.loop.time, self.source, gateway)

    def _attach_guards(self, snapshot: Snapshot, previous: Snapshot | None) -> None:
        """Passive checks and breakers per group, taking over the state of the previous snapshot's."""
        for name, group in snapshot.groups.items():
            old = previous.groups.get(name) if previous is not None else None
            guards = Guards(group, old.guards if old is not None else None, self.loop.time)
            group.guards = guards if guards.active else None

    def _attach_tls(self, snapshot: Snapshot) -> None:
        """The client TLS of each group with https servers (or a ``tls`` block), built once for this snapshot."""
        for name, group in snapshot.groups.items():
            spec = group.spec.tls
            if spec is not None or any(server.tls for server in group.servers):
                group.tls = client_tls(spec, f"upstreams.{name}", self.source)

    @property
    def snapshot(self) -> Snapshot:
        return self.ctx.snapshot

    @property
    def listeners(self) -> list[socket.socket]:
        return [endpoint.sock for endpoint in self.endpoints]

    @property
    def ports(self) -> list[int]:
        """The ports actually bound (useful with port 0), in the order of ``listen``."""
        return [endpoint.sock.getsockname()[1] for endpoint in self.endpoints]

    async def start(self) -> None:
        """Check health once, then bind the listeners and start serving."""
        await self._start_checkers(self.config)
        try:
            for listen in self.config.listen:
                self.endpoints.append(self._listen((listen.host, listen.port)))
        except OSError:
            self._unlisten(self.endpoints)
            self.endpoints = []
            raise
        self._serve(self.config, self._tls)
        self.started = True
        await self.tcp.start()
        self._timer = self.loop.call_later(self._tick, self._on_tick)
        if self.config.listen:  # none for a config of TCP services only
            log.info("listening on %s", ", ".join(lst.describe() for lst in self.config.listen))

    def _listen(self, address: Address) -> Endpoint:
        """Bind and listen; connections are accepted by ``_accept``, as many as are waiting each time."""
        sock = self.bind(address)
        endpoint = Endpoint(sock, address)
        self.loop.add_reader(sock.fileno(), self._accept, endpoint)
        return endpoint

    def _unlisten(self, endpoints: list[Endpoint]) -> None:
        for endpoint in endpoints:
            self.loop.remove_reader(endpoint.sock.fileno())
            endpoint.sock.close()

    def _serve(self, config: Config, tls: list[ListenerTLS | None]) -> None:
        """Point each endpoint (in the order of ``config.listen``) at what its entry now serves."""
        for endpoint, listen, contexts in zip(self.endpoints, config.listen, tls, strict=True):
            endpoint.tls = contexts
            endpoint.redirect = listen.redirect_to_https

    def _accept(self, endpoint: Endpoint) -> None:
        # Drain the accept queue at once: accepting one connection per loop turn lets a burst of new
        # clients wait behind a busy loop for up to a second (seen at 400 connections on a cold pool).
        loop = self.loop
        sock = endpoint.sock
        tls = endpoint.tls
        factory: Callable[[], asyncio.Protocol]
        if tls is not None:
            factory = lambda: AlpnSwitch(self.ctx)  # noqa: E731  # HTTP/1.1 or HTTP/2, once the handshake is over
        elif endpoint.redirect is not None:
            redirect = endpoint.redirect
            factory = lambda: RedirectConnection(self.ctx, redirect)  # noqa: E731
        else:
            factory = lambda: ClientConnection(self.ctx)  # noqa: E731
        for _ in range(1024):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # out of file descriptors, say: try again on the next turn
                log.warning("accept failed: %s", err)
                return
            conn.setblocking(False)
            if conn.family != socket.AF_UNIX:
                try:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            if tls is None:
                task = loop.create_task(loop.connect_accepted_socket(factory, conn))
                task.add_done_callback(self._accepting.discard)
            else:
                # a handshake gets as long as a request head; one that fails or stalls ends the connection
                task = loop.create_task(loop.connect_accepted_socket(
                    factory, conn, ssl=tls.context, ssl_handshake_timeout=self.ctx.snapshot.header_timeout))
                task.add_done_callback(partial(self._handshake_done, peer))
            self._accepting.add(task)

    def _handshake_done(self, peer: object,
                        task: asyncio.Task[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]) -> None:
        self._accepting.discard(task)
        if task.cancelled():
            return
        err = task.exception()  # retrieved, so asyncio logs no "exception was never retrieved" traceback
        if err is not None:  # garbage, a stalled or refused handshake: one line, for debugging clients
            client = peer[0] if isinstance(peer, tuple) and peer else peer
            tls_log.debug("TLS handshake with %s failed: %s", client, err)

    async def _start_checkers(self, config: Config) -> None:
        """One checker per group with health checks; a rebuilt checker takes over its predecessor's state."""
        if not self.checks:
            return
        snapshot = self.ctx.snapshot
        old, self.checkers = self.checkers, {}
        first_rounds = []
        for name, group in snapshot.groups.items():
            spec = config.upstreams[name].health_check
            previous = old.pop(name, None)
            if previous is not None:
                await previous.stop()
            if spec is None:
                for server in group.servers:
                    server.set_down(Down.ACTIVE_CHECK, False)
                continue
            checker = HealthChecker(name, group.servers, spec, previous=previous, tls=group.tls)
            if previous is None:
                first_rounds.append(checker.check_all_once())
            self.checkers[name] = checker
        for leftover in old.values():
            await leftover.stop()
        if first_rounds:  # traffic never goes to a server already known dead
            await asyncio.gather(*first_rounds)
        for checker in self.checkers.values():
            checker.start()

    async def apply(
        self,
        config: Config,
        *,
        same_routes: bool = False,
        prepare: Callable[[Snapshot], None] | None = None,
    ) -> None:
        """Swap in a new config; in-flight requests finish on the old snapshot.

        New listen addresses are bound before the ones no longer listed are closed; an address kept
        keeps its socket, so no connection is refused during the swap. ``same_routes`` keeps the
        compiled routes (and their middleware state) of the running snapshot, for a change of servers
        only. ``prepare`` sees the new snapshot before it is swapped in (to set operators' flags).
        Raises ``ConfigError`` (routes that cannot be built, a change of ``workers``) or ``OSError`` (an
        address that cannot be bound) with nothing changed.
        """
        if config.workers != self.config.workers:
            raise ConfigError([ConfigIssue(self.source, "workers", f"changed from {self.config.workers} to "
                                           f"{config.workers}: a new number of workers takes a restart")])
        tls = listener_tls(config, self.source)
        if config.state != self.config.state:
            log.warning("state: a change of the state backend takes effect at the next start; %s stays in use",
                        self.config.state.describe())
        gateway = self.ctx.snapshot.gateway if same_routes else \
            build_gateway(config, self.source, self._shared_buckets)
        snapshot = build_snapshot(config, self.registry, self.loop.time, self.source, gateway)
        tcp: Pending | None = None
        try:
            tcp = self.tcp.prepare(config)  # the TCP services' new addresses, bound first
            self._attach_tls(snapshot)
            if self.started:  # listening already
                self._rebind(config)
        except (OSError, ConfigError):
            if tcp is not None:
                tcp.cancel()
            snapshot.close(keep=self.ctx.snapshot.gateway)
            raise
        self._attach_guards(snapshot, self.ctx.snapshot)
        if prepare is not None:
            prepare(snapshot)
        self.config = config
        self._tls = tls
        if self.started:
            self._serve(config, tls)
        self.ctx.apply_snapshot(snapshot)
        self._tick = _tick_for(config)
        await self._start_checkers(config)
        await self.tcp.commit(tcp)

    def _rebind(self, config: Config) -> None:
        """Listen on ``config``'s addresses: bind the new ones first, then close those it no longer has."""
        current: dict[Address, list[Endpoint]] = {}
        for endpoint in self.endpoints:
            current.setdefault(endpoint.address, []).append(endpoint)
        wanted: list[Address] = [(lst.host, lst.port) for lst in config.listen]
        opened: list[Endpoint] = []
        endpoints: list[Endpoint] = []
        try:
            for address in wanted:
                kept = current.get(address)
                if kept:
                    endpoints.append(kept.pop(0))
                else:
                    endpoint = self._listen(address)
                    opened.append(endpoint)
                    endpoints.append(endpoint)
        except OSError:
            self._unlisten(opened)
            raise
        self._unlisten([e for left in current.values() for e in left])
        self.endpoints = endpoints
        if opened:
            log.info("now listening on %s", ", ".join(str(lst) for lst in config.listen))

    def _on_tick(self) -> None:
        try:
            self.ctx.sweep()
            now = self.ctx.now
            for group in self.ctx.snapshot.groups.values():
                if group.guards is not None:
                    group.guards.tick(now)
        except Exception:  # the tick must survive anything a deadline handler does
            log.exception("error in the timer tick")
        self._timer = self.loop.call_later(self._tick, self._on_tick)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, then close everything."""
        if grace is None:
            grace = self.config.shutdown_grace
        ctx = self.ctx
        ctx.draining = True
        self._unlisten(self.endpoints)
        for accepting in list(self._accepting):
            accepting.cancel()
        self.tcp.stop_accepting()
        idle: list[ClientConnection | RedirectConnection] = [
            c for c in ctx.clients if isinstance(c, ClientConnection) and c.state == IDLE]
        idle += [c for c in ctx.clients if isinstance(c, RedirectConnection)]  # one answer and closed anyway
        for client in idle:
            client.close()
        for h2 in [c for c in ctx.clients if isinstance(c, H2Connection)]:
            h2.drain()  # GOAWAY: open streams finish, the connection closes after the last
        deadline = self.loop.time() + grace
        while (ctx.clients or self.tcp.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for left in list(ctx.clients):
            if isinstance(left, ClientConnection | RedirectConnection | H2Connection):
                left.abort()
        await self.tcp.close()
        for checker in self.checkers.values():
            await checker.stop()
        for task in list(ctx.connect_tasks):
            task.cancel()
        for pool in ctx.pools.values():
            pool.close()
        if self._timer is not None:
            self._timer.cancel()
        ctx.access_log.flush()
        ctx.snapshot.gateway.close()  # access-log writers write what they hold and stop
        if self.buckets is not None:
            await self.buckets.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def install_uvloop() -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop factory: uvloop when it imports, else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
