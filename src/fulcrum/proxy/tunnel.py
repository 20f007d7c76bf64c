"""A tunnel: after a ``101 Switching Protocols``, the client and upstream connections pass bytes both ways.

Once the upstream has agreed to an ``Upgrade`` (WebSocket, or any other
protocol the client asked for), HTTP is over on both connections. Each
transport is handed a ``TunnelEnd`` as its protocol; what one end reads is
written to the other, as it comes, with nothing parsed or held:

- backpressure both ways: when one side's write buffer is full, the other
  side's reading is paused until it drains;
- a half-close is passed on (the peer's writing side is shut), and the tunnel
  closes once both directions are shut; a close or reset on either side
  closes the other;
- an idle timeout (``timeouts.tunnel`` of the group) closes a tunnel that
  carried no byte either way for that long; graceful stop closes tunnels
  after the grace period (the client connection stays counted until then).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fulcrum.proxy.context import ProxyContext
    from fulcrum.proxy.downstream import ClientConnection
    from fulcrum.state.server import Server


class TunnelEnd(asyncio.Protocol):
    """One side's protocol: bytes read here go to ``peer``."""

    __slots__ = ("eof", "peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = transport
        self.peer: TunnelEnd | None = None
        self.eof = False  # this side will send nothing more

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        tunnel = self.tunnel
        if tunnel.timeout:
            tunnel.deadline = tunnel.ctx.now + tunnel.timeout
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.eof:
            self.tunnel.close()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # keep this transport open: the other direction may still carry bytes
        self.tunnel.close()
        return False

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.tunnel.lost(self, exc)


class Tunnel:
    """The two ends of one upgraded connection, its idle deadline, and its accounting."""

    __slots__ = ("client", "closed", "ctx", "deadline", "downstream", "server", "timeout", "upstream")

    def __init__(
        self,
        ctx: ProxyContext,
        client: ClientConnection,
        client_transport: asyncio.Transport,
        upstream_transport: asyncio.Transport,
        server: Server | None,
        timeout: float,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.server = server
        self.timeout = timeout
        self.deadline = ctx.now + timeout if timeout else 0.0
        self.closed = False
        down = self.downstream = TunnelEnd(self, client_transport)
        up = self.upstream = TunnelEnd(self, upstream_transport)
        down.peer = up
        up.peer = down

    def open(self, to_upstream: bytes, to_client: bytes) -> None:
        """Take over both transports; ``to_upstream`` and ``to_client`` are bytes that came with the handshake."""
        ctx = self.ctx
        ctx.stats.tunnels_active += 1
        ctx.stats.tunnels_total += 1
        server = self.server
        if server is not None:  # an open tunnel counts as a request in flight (least_conn, max_connections)
            server.active += 1
        if self.deadline:
            ctx.timed.add(self)
        down, up = self.downstream, self.upstream
        for end in (down, up):
            transport = end.transport
            assert transport is not None
            transport.set_protocol(end)
        if to_upstream and up.transport is not None:
            up.transport.write(to_upstream)
        if to_client and down.transport is not None:
            down.transport.write(to_client)
        for end in (down, up):
            if end.transport is not None:
                end.transport.resume_reading()

    def on_timeout(self, now: float) -> None:
        self.deadline = 0.0
        self.close()

    def lost(self, end: TunnelEnd, exc: Exception | None) -> None:
        """One side's connection is gone: the other goes too (aborted after a reset, closed after a close)."""
        peer = end.peer
        if peer is not None and peer.transport is not None:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        if end is self.downstream:
            self.client.connection_lost(exc)  # the client connection's own accounting
        self._finish()

    def close(self) -> None:
        """Close both sides (what is buffered is still sent)."""
        for end in (self.downstream, self.upstream):
            if end.transport is not None:
                end.transport.close()

    def abort(self) -> None:
        for end in (self.downstream, self.upstream):
            if end.transport is not None:
                end.transport.abort()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        ctx.stats.tunnels_active -= 1
        if self.deadline:
            self.deadline = 0.0
        ctx.timed.discard(self)
        server = self.server
        if server is not None:
            server.active -= 1
