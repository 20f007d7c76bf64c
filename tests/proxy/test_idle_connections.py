"""What an idle keep-alive client connection holds: no exchange and no parser.

The memory per idle connection is measured by ``benchmarks/bench_clients.py``; here the objects it
counts on are checked to be let go of, and the connection to work as before once it reads again.
Parsers are pooled per loop and serve any connection (``ParserRelay``): connections reading heads
at the same time, cut at odd points, must each get their own answers, and a connection that ends
with ``Connection: close`` must leave nothing behind that a later connection could trip on.
"""

from __future__ import annotations

import socket
import time
from typing import BinaryIO

from fulcrum.proxy.downstream import IDLE, ClientConnection
from tests.proxy.harness import RunningProxy, upstream_config
from tests.support.rawhttp import IncompleteResponse, open_conn, read_response
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
            assert proxy.call(lambda: (conn.state, conn.building, conn.parser)) == (IDLE, None, None)
            relay = conn.relay
            assert proxy.call(lambda: len(relay.pool)) == 1, "the parser went back to the pool"
            # the same connection reads on with a pooled parser: two requests in one write, both
            # answered by Fulcrum (429) inside the head's callback
            sock.sendall(REQUEST + REQUEST)
            second = _read_response(reader)
            third = _read_response(reader)
            assert second.startswith(b"HTTP/1.1 429") and third.startswith(b"HTTP/1.1 429")
            assert proxy.call(lambda: (conn.state, conn.building, conn.parser)) == (IDLE, None, None)
            assert proxy.call(lambda: len(relay.pool)) == 1
        assert [r.target for r in upstream_server.requests] == ["/a"]
    finally:
        proxy.stop()


def test_connections_reading_heads_at_once_each_get_their_own_answers(upstream_server: UpstreamServer) -> None:
    with RunningProxy(upstream_config(upstream_server.url)) as proxy:
        socks = [open_conn(proxy.port) for _ in range(12)]
        try:
            for sock in socks:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for round_ in range(3):
                heads = [f"GET /echo?conn={i}&round={round_} HTTP/1.1\r\nHost: x\r\nX-Conn: {i}\r\n\r\n".encode()
                         for i in range(len(socks))]
                cuts = [7 + (i * 5 + round_ * 11) % (len(head) - 8) for i, head in enumerate(heads)]
                for sock, head, cut in zip(socks, heads, cuts, strict=True):  # every head is half read ...
                    sock.sendall(head[:cut])
                time.sleep(0.05)
                for sock, head, cut in reversed(list(zip(socks, heads, cuts, strict=True))):  # ... then the rest
                    sock.sendall(head[cut:])
                for i, sock in enumerate(socks):
                    response = read_response(sock)
                    assert response.status == 200
                    assert f'"path": "/echo?conn={i}&round={round_}"'.encode() in response.body
            clients = _clients(proxy)
            assert len(clients) == len(socks)
            assert all(c.parser is None for c in clients), "idle connections keep no parser"
            assert 1 <= proxy.call(lambda: len(clients[0].relay.pool)) <= len(socks)
        finally:
            for sock in socks:
                sock.close()
    for i in range(12):
        got = [r for r in upstream_server.requests if r.target.startswith(f"/echo?conn={i}&")]
        assert len(got) == 3 and all(r.header("x-conn") == str(i) for r in got)


def test_a_request_that_closes_is_answered_and_what_follows_it_is_not_served(
    upstream_server: UpstreamServer,
) -> None:
    """nginx's way: the request with Connection: close is served, the connection closes after it, and
    a request pipelined behind it never reaches an upstream. The parser it used serves later clients."""
    with RunningProxy(upstream_config(upstream_server.url)) as proxy:
        for close in ("Connection: close\r\n", ""):
            with open_conn(proxy.port) as sock:
                version = "1.1" if close else "1.0"
                sock.sendall(f"GET /echo?closing={version} HTTP/{version}\r\nHost: x\r\n{close}\r\n".encode()
                             + f"GET /echo?behind={version} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                first = read_response(sock)
                assert first.status == 200 and first.header("connection") == "close"
                try:
                    more = sock.recv(1)
                except (ConnectionError, TimeoutError, IncompleteResponse):
                    more = b""
                assert more == b"", "the connection stays closed after the request that closed it"
        for _ in range(5):  # later connections, on the pooled parsers, are served as usual
            with open_conn(proxy.port) as sock:
                sock.sendall(b"GET /echo?later HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
                assert read_response(sock).status == 200 and read_response(sock).status == 200
    targets = [r.target for r in upstream_server.requests]
    assert "/echo?closing=1.1" in targets and "/echo?closing=1.0" in targets
    assert not [t for t in targets if t.startswith("/echo?behind")]
    assert targets.count("/echo?later") == 10
