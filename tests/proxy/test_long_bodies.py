"""Long Content-Length response bodies, which bypass the response parser (``RAW_BODY_MIN`` and longer).

Their bytes are forwarded as they are read, so what the parser did for them must still hold: every byte of the
body and not one more reaches the client, the upstream connection is reused after a clean response and not
after one that sent more than it announced, a body cut short by the upstream ends the client's response
without a hang, and the next request on the same client connection is served.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from fulcrum.proxy.upstream import RAW_BODY_MIN
from tests.proxy.harness import RunningProxy, upstream_config
from tests.support.upstream import UpstreamServer, pattern_bytes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [RAW_BODY_MIN - 1, RAW_BODY_MIN, 1024 * 1024 + 7, 5 * 1024 * 1024])
def test_every_byte_arrives_and_the_upstream_connection_is_reused(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer, size: int
) -> None:
    proxy = make_proxy(upstream_config(upstream.url))
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        assert c.get("/").status_code == 200  # the upstream connection exists before counting
        before = upstream.connections_accepted
        for _ in range(3):
            r = c.get(f"/bytes/{size}")
            assert r.status_code == 200
            assert r.headers["content-length"] == str(size)
            assert len(r.content) == size and _sha(r.content) == _sha(pattern_bytes(size))
            assert c.get("/").text.startswith("ok")  # the next request on the same connections
        assert upstream.connections_accepted == before  # one upstream connection served all of them


def test_a_body_in_many_reads_with_pauses(make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer) -> None:
    proxy = make_proxy(upstream_config(upstream.url))
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        r = c.get("/slow-body/20?n=6&size=30000")  # 180,000 bytes announced, sent in 6 pieces
        assert r.status_code == 200
        assert r.content == pattern_bytes(180000)
        assert c.get("/").text.startswith("ok")


def test_head_request_of_a_long_body_gets_no_body(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    proxy = make_proxy(upstream_config(upstream.url))
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        r = c.head(f"/bytes/{2 * RAW_BODY_MIN}")
        assert r.status_code == 200 and r.headers["content-length"] == str(2 * RAW_BODY_MIN)
        assert r.content == b""
        assert c.get("/").text.startswith("ok")


class ScriptedUpstream:
    """Answers every request on a connection with ``respond(n)`` (n: the request's number on the server), written
    in one send; closes the connection after it when ``close_after`` says so."""

    def __init__(self, respond: Callable[[int], bytes], close_after: Callable[[int], bool]) -> None:
        self.respond = respond
        self.close_after = close_after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                pending = pending[pending.index(b"\r\n\r\n") + 4 :]  # GETs only: no body
                self.requests += 1
                n = self.requests
                conn.sendall(self.respond(n))
                if self.close_after(n):
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedUpstream]]:
    made: list[ScriptedUpstream] = []

    def make(respond: Callable[[int], bytes], close_after: Callable[[int], bool] = lambda n: False) -> ScriptedUpstream:
        server = ScriptedUpstream(respond, close_after)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def _response(body: bytes, announced: int | None = None) -> bytes:
    length = len(body) if announced is None else announced
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Kind: scripted\r\n\r\n" % length + body


def test_bytes_past_the_announced_length_never_reach_the_client_and_the_connection_is_dropped(
    make_proxy: Callable[..., RunningProxy], scripted: Callable[..., ScriptedUpstream]
) -> None:
    body = pattern_bytes(100_000)
    server = scripted(lambda n: _response(body) + (b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n\r\n" if n == 1 else b""))
    proxy = make_proxy(upstream_config(f"http://127.0.0.1:{server.port}"))
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        first = c.get("/a")
        assert first.status_code == 200 and first.content == body
        assert "x-smuggled" not in first.headers
        second = c.get("/b")
        assert second.status_code == 200 and second.content == body and "x-smuggled" not in second.headers
    assert server.connections == 2  # the connection that lied was not reused


def test_a_body_cut_short_ends_the_response_without_a_hang(
    make_proxy: Callable[..., RunningProxy], scripted: Callable[..., ScriptedUpstream]
) -> None:
    server = scripted(
        lambda n: _response(pattern_bytes(100_000), announced=300_000) if n == 1 else _response(b"fine"),
        close_after=lambda n: n == 1,
    )
    proxy = make_proxy(upstream_config(f"http://127.0.0.1:{server.port}", timeouts={"read": "2s"}))
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        with pytest.raises(httpx.RemoteProtocolError):  # the client sees the body end early, not a hang
            c.get("/cut")
        r = c.get("/next")
        assert r.status_code == 200 and r.content == b"fine"
