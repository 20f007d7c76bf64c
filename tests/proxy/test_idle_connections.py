"""What an idle keep-alive client connection holds: no exchange, and (after the sweeper's walk) no parser.

The memory per idle connection is measured by ``benchmarks/bench_clients.py``; here the objects it
counts on are checked to be let go of, and the connection to work as before once it reads again.
"""

from __future__ import annotations

import socket
import time
from typing import BinaryIO

from fulcrum.proxy.downstream import IDLE, ClientConnection
from fulcrum.proxy.server import PARK_EVERY
from tests.proxy.harness import RunningProxy
from tests.support.upstream import UpstreamServer

REQUEST = b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: idle-test\r\n\r\n"


def _read_response(reader: BinaryIO) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        assert line, "the proxy closed the connection"
        head += line
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + reader.read(length)


def _clients(proxy: RunningProxy) -> list[ClientConnection]:
    return proxy.call(lambda: [c for c in proxy.server.ctx.clients if isinstance(c, ClientConnection)])


def test_an_idle_connection_lets_go_of_its_exchange_and_parser(upstream_server: UpstreamServer) -> None:
    proxy = RunningProxy({"upstreams": {"app": {"servers": [upstream_server.url]}},
                          "routes": [{"match": {"path_prefix": "/"}, "upstream": "app",
                                      "middleware": [{"rate_limit": {"rate": "1/min", "burst": 1}}]}]}).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock, sock.makefile("rb") as reader:
            sock.sendall(REQUEST)
            first = _read_response(reader)
            assert first.startswith(b"HTTP/1.1 200")
            [conn] = _clients(proxy)
            assert proxy.call(lambda: (conn.state, conn.building)) == (IDLE, None)
            deadline = time.monotonic() + PARK_EVERY * 3 + 2
            while proxy.call(lambda: conn.parser) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert proxy.call(lambda: conn.parser) is None, "the idle connection kept its parser"
            # the same connection reads on with a new parser: two requests in one write, the second
            # answered by Fulcrum (429) inside the head's callback
            sock.sendall(REQUEST + REQUEST)
            second = _read_response(reader)
            third = _read_response(reader)
            assert second.startswith(b"HTTP/1.1 429") and third.startswith(b"HTTP/1.1 429")
            assert proxy.call(lambda: (conn.state, conn.building, conn.parser is not None)) == (IDLE, None, True)
        assert [r.target for r in upstream_server.requests] == ["/a"]
    finally:
        proxy.stop()
