"""Listening sockets: the one way Fulcrum binds an address, for HTTP listeners and TCP services alike."""

from __future__ import annotations

import socket

Address = tuple[str, int]


def bind_listener(address: Address) -> socket.socket:
    """A new non-blocking socket listening on ``address`` (``host`` empty: every interface)."""
    host, port = address
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, bound = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(bound)
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
