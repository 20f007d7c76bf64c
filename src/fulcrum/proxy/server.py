"""The proxy of one process: listeners, the snapshot, health checkers, the timer tick, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from fulcrum.config import Config, Listen
from fulcrum.health.active import HealthChecker
from fulcrum.proxy.context import ProxyContext
from fulcrum.proxy.downstream import IDLE, ClientConnection
from fulcrum.proxy.guards import Guards
from fulcrum.proxy.http2 import H2Connection
from fulcrum.state.server import Down
from fulcrum.state.snapshot import ServerRegistry, Snapshot, build_snapshot

log = logging.getLogger("fulcrum")


def _tick_for(config: Config) -> float:
    """How often deadlines are checked: a fifth of the shortest timeout, between 10 ms and 250 ms."""
    shortest = min(
        [config.limits.header_timeout, config.limits.keepalive_timeout]
        + [t for u in config.upstreams.values() for t in (u.timeouts.connect, u.timeouts.read) if t > 0]
    )
    return max(0.01, min(0.25, shortest / 5))


class ProxyServer:
    """Serves one config on its listeners until ``shutdown``."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop | None = None, source: str = "config") -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.source = source  # the config file's name, for errors
        self.config = config
        self.registry = ServerRegistry()
        self.checkers: dict[str, HealthChecker] = {}
        snapshot = self._build(config)
        self._attach_guards(snapshot, None)
        self.ctx = ProxyContext(self.loop, snapshot)
        self.ctx.metrics.use([(r.name, r.upstream or "-") for r in snapshot.routes.routes])
        self.listeners: list[socket.socket] = []
        self._bound: list[Listen] = []  # the listen entries of ``listeners``, in order
        self._accepting: set[asyncio.Task[tuple[asyncio.Transport, ClientConnection]]] = set()
        self._tick = _tick_for(config)
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()

    def _build(self, config: Config) -> Snapshot:
        # the health checker sets a new server's first state (DESIGN 4, "Health at start")
        return build_snapshot(config, self.registry, self.loop.time, self.source)

    def _attach_guards(self, snapshot: Snapshot, previous: Snapshot | None) -> None:
        """Passive checks and breakers per group, taking over the state of the previous snapshot's."""
        for name, group in snapshot.groups.items():
            old = previous.groups.get(name) if previous is not None else None
            guards = Guards(group, old.guards if old is not None else None, self.loop.time)
            group.guards = guards if guards.active else None

    @property
    def snapshot(self) -> Snapshot:
        return self.ctx.snapshot

    @property
    def ports(self) -> list[int]:
        """The ports actually bound (useful with port 0)."""
        return [sock.getsockname()[1] for sock in self.listeners]

    async def start(self) -> None:
        """Check health once, then bind the listeners and start serving."""
        await self._start_checkers(self.config)
        for listen in self.config.listen:
            self.listeners.append(self._listen(listen.host, listen.port))
        self._bound = list(self.config.listen)
        self._timer = self.loop.call_later(self._tick, self._on_tick)
        log.info("listening on %s", ", ".join(f"{lst.host or '0.0.0.0'}:{lst.port}" for lst in self.config.listen))

    def _listen(self, host: str, port: int) -> socket.socket:
        """Bind and listen; connections are accepted by ``_accept``, as many as are waiting each time."""
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, type_, proto, _, address = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(4096)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.loop.add_reader(sock.fileno(), self._accept, sock)
        return sock

    def _accept(self, sock: socket.socket) -> None:
        # Drain the accept queue at once: accepting one connection per loop turn lets a burst of new
        # clients wait behind a busy loop for up to a second (seen at 400 connections on a cold pool).
        loop = self.loop
        for _ in range(1024):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # out of file descriptors, say: try again on the next turn
                log.warning("accept failed: %s", err)
                return
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(lambda: ClientConnection(self.ctx), conn))
            self._accepting.add(task)
            task.add_done_callback(self._accepting.discard)

    async def _start_checkers(self, config: Config) -> None:
        """One checker per group with health checks; a rebuilt checker takes over its predecessor's state."""
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
            checker = HealthChecker(name, group.servers, spec, previous=previous)
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
        Raises ``ConfigError`` (routes that cannot be built) or ``OSError`` (an address that cannot be
        bound) with nothing changed.
        """
        gateway = self.ctx.snapshot.gateway if same_routes else None
        snapshot = build_snapshot(config, self.registry, self.loop.time, self.source, gateway)
        try:
            if self._bound:  # started: listening already
                self._rebind(config)
        except OSError:
            snapshot.close(keep=self.ctx.snapshot.gateway)
            raise
        self._attach_guards(snapshot, self.ctx.snapshot)
        if prepare is not None:
            prepare(snapshot)
        self.config = config
        self.ctx.apply_snapshot(snapshot)
        self._tick = _tick_for(config)
        await self._start_checkers(config)

    def _rebind(self, config: Config) -> None:
        """Listen on ``config``'s addresses: bind the new ones first, then close those it no longer has."""
        current = {(lst.host, lst.port): sock for lst, sock in zip(self._bound, self.listeners, strict=True)}
        wanted = [(lst.host, lst.port) for lst in config.listen]
        opened: dict[tuple[str, int], socket.socket] = {}
        try:
            for address in wanted:
                if address not in current and address not in opened:
                    opened[address] = self._listen(*address)
        except OSError:
            for sock in opened.values():
                self.loop.remove_reader(sock.fileno())
                sock.close()
            raise
        for address, sock in current.items():
            if address not in wanted:
                self.loop.remove_reader(sock.fileno())
                sock.close()
        self.listeners = [current.get(a) or opened[a] for a in wanted]
        self._bound = list(config.listen)
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
        for sock in self.listeners:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        for accepting in list(self._accepting):
            accepting.cancel()
        for client in list(ctx.clients):
            if isinstance(client, ClientConnection) and client.state == IDLE:
                client.close()
            elif isinstance(client, H2Connection):
                client.drain()  # GOAWAY: open streams finish, the connection closes after the last
        deadline = self.loop.time() + grace
        while ctx.clients and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for client in list(ctx.clients):
            if isinstance(client, (ClientConnection, H2Connection)):
                client.abort()
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
