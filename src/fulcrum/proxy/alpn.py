"""The protocol of a TLS connection, chosen once its handshake is over: HTTP/2 when ALPN agreed on ``h2``.

A protocol object must exist before the handshake (it is what the accepting call is given), but which
one a connection needs is only known after it, from ALPN. ``AlpnSwitch`` stands in until then: its
``connection_made`` runs once the handshake is done and before any application byte is read, and hands the
transport to ``H2Connection`` (``h2``) or ``ClientConnection`` (``http/1.1``, or a client that sent no
ALPN). It never sees a byte, so it costs one object per TLS connection and nothing per request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fulcrum.proxy.downstream import ClientConnection
from fulcrum.proxy.http2 import H2Connection
from fulcrum.proxy.tls import negotiated_protocol

if TYPE_CHECKING:
    from fulcrum.proxy.context import ProxyContext


class AlpnSwitch(asyncio.Protocol):
    """Hands a TLS connection, at the end of its handshake, to the protocol ALPN chose."""

    __slots__ = ("ctx",)

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol: asyncio.Protocol
        if negotiated_protocol(transport) == "h2":
            protocol = H2Connection(self.ctx)
        else:
            protocol = ClientConnection(self.ctx, True)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
