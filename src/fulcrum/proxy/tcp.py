"""TCP (L4) services: accepted connections joined byte for byte to a server picked by the service's policy.

Each proxied connection is two protocols, ``ClientSide`` (accepted) and ``ServerSide`` (connected),
joined as a pipe:

- What one side receives is written to the other. When a side's write buffer passes its high-water
  mark, the other side stops reading until it drains (``pause_writing`` / ``resume_writing``), so a
  reader slower than its writer holds at most a buffer's worth of bytes in the proxy.
- An end of input on one side is passed on as a half-close (``write_eof``), so a client may shut
  down its writing and still get the whole answer; the pair closes once both sides have ended.
- A side closed cleanly closes the other once its buffer is flushed; a side broken (reset) aborts it.
- The client is not read from until a server is connected. A server that refuses or does not answer
  within the connect timeout is passed over for another eligible one, each tried once; with none
  left the client is closed.
- A pair silent both ways for the idle timeout is aborted, from the proxy's timer tick
  (``ProxyContext.timed``), which costs each chunk only the update of a number.

``TcpServices`` owns the listeners, health checkers and open pairs of every TCP service, and follows
the proxy's lifecycle: ``start``, ``prepare`` + ``commit`` on a reload (new addresses are bound
before anything changes, so a reload that cannot bind changes nothing), ``stop_accepting`` and
``close`` on a graceful stop. Open connections keep the servers they were joined to across a reload.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from fulcrum.config.tcp import TcpService, format_address
from fulcrum.health.tcp import TcpHealthChecker
from fulcrum.proxy.sockets import bind_listener
from fulcrum.state.server import Down
from fulcrum.state.tcp import TcpGroup, TcpRegistry, TcpServer

if TYPE_CHECKING:
    from fulcrum.config import Config
    from fulcrum.proxy.context import ProxyContext

log = logging.getLogger("fulcrum.tcp")

#: A listener's key: ("", host, port), or (service, host, 0) for an ephemeral port, which only its service keeps.
Key = tuple[str, str, int]


def _key(name: str, spec: TcpService) -> Key:
    return ("", spec.listen.host, spec.listen.port) if spec.listen.port else (name, spec.listen.host, 0)


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _Side(asyncio.Protocol):
    """One end of a pipe: flow control and half-close towards its ``peer``."""

    __slots__ = ("eof", "peer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False  # this side's input has ended

    def pause_writing(self) -> None:
        # Our write buffer is full: stop taking bytes from the side that fills it.
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.eof and not peer.transport.is_closing():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.eof and not peer.transport.is_closing():
            peer.transport.resume_reading()
        self.active()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        target = peer.transport if peer is not None else None
        if target is None or target.is_closing():
            return False
        assert peer is not None
        if peer.eof or not target.can_write_eof():
            target.close()  # both ways ended (or no half-close): close once flushed
            return False
        target.write_eof()
        return True  # keep this side open for the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()

    def active(self) -> None:
        """Bytes moved: push the idle deadline on."""


class ServerSide(_Side):
    """The connection to the server of one pair."""

    __slots__ = ("client", "made", "server")

    def __init__(self, client: ClientSide, server: TcpServer) -> None:
        super().__init__()
        self.client = client
        self.server = server
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        own: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.transport = own
        self.server.connections += 1
        _nodelay(transport)
        client = self.client
        if client.transport is None or client.transport.is_closing():
            own.close()  # the client left while we connected
            return
        self.peer = client
        client.peer = self
        client.server = self.server
        for data in client.early:
            self.server.bytes_to_server += len(data)
            own.write(data)
        client.early = []
        if client.eof:
            own.write_eof()
        else:
            client.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        client = self.client
        self.server.bytes_to_client += len(data)
        if client.idle:
            client.deadline = client.services.ctx.now + client.idle
        if client.transport is not None:
            client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.active -= 1
        super().connection_lost(exc)

    def active(self) -> None:
        self.client.active()


class ClientSide(_Side):
    """An accepted connection of one TCP service; it owns the pair (its idle deadline, its connect task)."""

    __slots__ = ("client_ip", "connecting", "deadline", "early", "group", "idle", "server", "services")

    def __init__(self, services: TcpServices, group: TcpGroup) -> None:
        super().__init__()
        self.services = services
        self.group = group
        self.server: TcpServer | None = None
        self.client_ip = ""
        self.idle = group.spec.timeouts.idle
        self.deadline = 0.0
        self.connecting: asyncio.Task[None] | None = None
        self.early: list[bytes] = []  # what arrived before the server was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Nothing is read before a server is connected (uvloop may deliver a first read all the same: kept).
        transport.pause_reading()  # type: ignore[attr-defined]
        _nodelay(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0])
        services = self.services
        counters = self.group.counters
        counters.active += 1
        counters.total += 1
        services.connections.add(self)
        if self.idle:
            self.deadline = services.ctx.now + self.idle
            services.ctx.timed.add(self)
        self.connecting = services.loop.create_task(self._connect())

    async def _connect(self) -> None:
        group = self.group
        tried: set[str] = set()
        while self.transport is not None:
            server = group.pick(self.client_ip, frozenset(tried))
            if server is None:
                break
            failure = await self._join(server, group.spec.timeouts.connect)
            if not failure:
                self.connecting = None
                return
            server.connect_failures += 1
            tried.add(server.id)
            log.debug("tcp service %s: connect to %s failed (%s)", group.name, server.id, failure)
        self.connecting = None
        if self.transport is not None:
            group.counters.unserved += 1
            log.warning("tcp service %s: no server took the connection from %s (%s)", group.name, self.client_ip,
                        f"tried {', '.join(sorted(tried))}" if tried else "no eligible server")
            self.transport.abort()

    async def _join(self, server: TcpServer, timeout: float) -> str:
        """Connect to ``server`` and join it to this client: "" when done, else why it failed."""
        side = ServerSide(self, server)
        server.active += 1  # a connect in progress counts for least_conn; the side's connection_lost takes it back
        try:
            async with asyncio.timeout(timeout):
                await self.services.loop.create_connection(lambda: side, server.host, server.port)
            return ""
        except TimeoutError:
            failure = f"timeout after {timeout:g}s"
        except OSError as err:
            failure = err.strerror or str(err)
        except asyncio.CancelledError:
            if not side.made:
                server.active -= 1
            raise
        if not side.made:
            server.active -= 1
        return failure

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if self.idle:
            self.deadline = self.services.ctx.now + self.idle
        if peer is not None and peer.transport is not None:
            server = self.server
            if server is not None:
                server.bytes_to_server += len(data)
            peer.transport.write(data)
        elif self.transport is not None and not self.transport.is_closing():
            self.early.append(data)  # before a server is connected: kept for it (reading is paused again)
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.peer is None:
            self.eof = True  # before a server is connected: passed on once it is
            return True
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        services = self.services
        services.connections.discard(self)
        services.ctx.timed.discard(self)
        self.group.counters.active -= 1
        self.deadline = 0.0
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        super().connection_lost(exc)

    def active(self) -> None:
        if self.idle:
            self.deadline = self.services.ctx.now + self.idle

    def on_timeout(self, now: float) -> None:
        self.deadline = 0.0
        log.debug("tcp service %s: connection from %s idle for %gs, closed", self.group.name, self.client_ip,
                  self.idle)
        self.abort()

    def abort(self) -> None:
        """Close both sides now, whatever they still hold."""
        if self.connecting is not None:
            self.connecting.cancel()
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.abort()
        if self.transport is not None:
            self.transport.abort()


class Pending:
    """A reload's TCP side, bound and not yet in force: ``commit`` it, or ``cancel`` it to close what it bound."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bound: dict[Key, socket.socket] = {}

    def cancel(self) -> None:
        for sock in self.bound.values():
            sock.close()
        self.bound.clear()


class TcpServices:
    """Every TCP service of one proxy process: listeners, open pairs, health checkers."""

    def __init__(self, ctx: ProxyContext, config: Config) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.config = config
        self.registry = TcpRegistry()
        self.groups: dict[str, TcpGroup] = self.registry.build(config.tcp_services, self.loop.time)
        self.checkers: dict[str, TcpHealthChecker] = {}
        self.connections: set[ClientSide] = set()
        self._at: dict[Key, TcpGroup] = {}  # which service each listener serves
        self._listeners: dict[Key, asyncio.AbstractServer] = {}
        self._ports: dict[Key, int] = {}
        self._started = False

    async def start(self) -> None:
        """Check health once (a server known dead takes no connection), then bind and serve every service."""
        await self._start_checkers()
        pending = self.prepare(self.config, force=True)
        await self._serve(pending)
        self._started = True
        if self.groups:
            log.info("tcp services: %s", ", ".join(f"{n} on {g.spec.listen}" for n, g in self.groups.items()))

    def prepare(self, config: Config, force: bool = False) -> Pending:
        """Bind the addresses ``config`` adds (raises OSError, having closed what it bound, when one cannot be)."""
        pending = Pending(config)
        if not (self._started or force):
            return pending  # not serving yet: start() binds
        for name, spec in config.tcp_services.items():
            key = _key(name, spec)
            if key in self._listeners or key in pending.bound:
                continue
            try:
                pending.bound[key] = bind_listener((spec.listen.host, spec.listen.port))
            except OSError as err:
                pending.cancel()
                raise OSError(err.errno, f"tcp_services.{name}.listen {spec.listen}: {err.strerror or err}") from err
        return pending

    async def commit(self, pending: Pending) -> None:
        """Put a prepared config in force: new groups (servers keep their state), listeners, health checkers."""
        config = pending.config
        if config.tcp_services == self.config.tcp_services and not pending.bound:
            self.config = config
            return
        old = self.groups
        self.groups = self.registry.build(config.tcp_services, self.loop.time)
        self.config = config
        await self._start_checkers()  # a new service's first round, before it accepts
        if self._started:
            await self._serve(pending)
        for group in old.values():
            group.close()

    async def _serve(self, pending: Pending) -> None:
        """Point each listener at its service's new group, close those no longer wanted, serve the new ones."""
        wanted = {_key(name, group.spec): group for name, group in self.groups.items()}
        self._at = wanted
        for key in [k for k in self._listeners if k not in wanted]:
            self._listeners.pop(key).close()
        for key, sock in pending.bound.items():
            self._ports[key] = sock.getsockname()[1]
            self._listeners[key] = await self.loop.create_server(self._factory(key), sock=sock, backlog=4096)
        pending.bound.clear()
        for key in [k for k in self._ports if k not in self._listeners]:
            del self._ports[key]
        for key, group in wanted.items():
            group.listen = format_address(group.spec.listen.host, self._ports.get(key, group.spec.listen.port))

    @property
    def ports(self) -> dict[str, int]:
        """Each service's bound port (useful with port 0)."""
        return {name: self._ports.get(_key(name, g.spec), 0) for name, g in self.groups.items()}

    def _factory(self, key: Key) -> Callable[[], ClientSide]:
        return lambda: ClientSide(self, self._at[key])

    async def _start_checkers(self) -> None:
        """One checker per service with health checks, taking over the records of the one it replaces."""
        old, self.checkers = self.checkers, {}
        first_rounds = []
        for name, group in self.groups.items():
            previous = old.pop(name, None)
            if previous is not None:
                await previous.stop()
            spec = group.spec.health_check
            if spec is None:
                for server in group.servers:
                    server.set_down(Down.ACTIVE_CHECK, False)
                continue
            checker = TcpHealthChecker(name, group.servers, spec, previous=previous)
            if previous is None:
                first_rounds.append(checker.check_all_once())
            self.checkers[name] = checker
        for leftover in old.values():
            await leftover.stop()
        if first_rounds:
            await asyncio.gather(*first_rounds)
        for checker in self.checkers.values():
            checker.start()

    def stop_accepting(self) -> None:
        """Close every listener; open connections go on."""
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()

    async def close(self) -> None:
        """Abort every open connection and stop the health checks (the end of a graceful stop)."""
        self.stop_accepting()
        for client in list(self.connections):
            client.abort()
        for checker in self.checkers.values():
            await checker.stop()
        self.checkers = {}
