"""Upstream faults: refused, reset, garbage, hanging, lying, truncated, none healthy — never a hang or a traceback."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import pytest

from tests.proxy.harness import RunningProxy, upstream_config
from tests.support.upstream import UpstreamServer, refusing_port

FAST = {"timeouts": {"connect": "1s", "read": "500ms"}}


def get(proxy: RunningProxy, path: str) -> httpx.Response:
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        return c.get(path)


def test_refused_connection_is_502_with_request_id(make_proxy: Callable[..., RunningProxy]) -> None:
    dead = refusing_port()
    proxy = make_proxy(upstream_config(f"http://127.0.0.1:{dead.port}", **FAST))
    r = get(proxy, "/")
    assert r.status_code == 502
    rid = r.headers["x-request-id"]
    assert rid in r.text
    assert "could not connect" in r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/reset", 502, "closed the connection"),
        ("/close-early", 502, "closed the connection"),
        ("/garbage", 502, "invalid response"),
        ("/bad-cl", 502, "invalid response"),
        ("/cl-and-te", 502, "invalid response"),
        ("/obs-fold", 502, "invalid response"),
        ("/huge-head?kb=64", 502, "invalid response"),
        ("/hang", 504, "read timeout"),
    ],
)
def test_broken_upstream_answers(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer, path: str, status: int, words: str
) -> None:
    proxy = make_proxy(upstream_config(upstream.url, **FAST))
    t0 = time.monotonic()
    r = get(proxy, path)
    assert r.status_code == status, r.text
    assert words in r.text
    assert r.headers["x-request-id"] in r.text
    assert time.monotonic() - t0 < 5
    # the proxy is fine afterwards and does not reuse the broken connection
    assert get(proxy, "/").status_code == 200


def test_truncated_response_closes_client_connection(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    proxy = make_proxy(upstream_config(upstream.url, **FAST))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /truncated HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 100" in head
    assert len(body) == 50  # what came, and then the close: never a made-up ending


def test_bytes_after_response_mean_connection_not_reused(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    proxy = make_proxy(upstream_config(upstream.url, **FAST))
    assert get(proxy, "/extra-bytes").status_code == 200
    assert get(proxy, "/").status_code == 200
    assert upstream.connections_accepted == 2


def test_slow_but_steady_body_is_not_a_timeout(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    proxy = make_proxy(upstream_config(upstream.url, **FAST))
    r = get(proxy, "/slow-body/200?n=5")  # 1 s in all, 200 ms between bytes: read timeout is per gap
    assert r.status_code == 200


def test_stalled_body_after_head_closes_client(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    proxy = make_proxy(upstream_config(upstream.url, **FAST))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /slow-body/2000?n=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        t0 = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - t0 < 4


def test_total_timeout(make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer) -> None:
    proxy = make_proxy(upstream_config(upstream.url, timeouts={"read": "5s", "total": "500ms"}))
    r = get(proxy, "/slow-head/3000")
    assert r.status_code == 504
    assert "total timeout" in r.text


def test_no_healthy_server_is_503_fast(make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer) -> None:
    upstream.healthy = False
    proxy = make_proxy(
        upstream_config(upstream.url, health_check={"path": "/health", "interval": "1s", "timeout": "500ms"})
    )
    t0 = time.monotonic()
    r = get(proxy, "/")
    assert time.monotonic() - t0 < 1
    assert r.status_code == 503
    assert "no healthy server" in r.text
    assert r.headers["x-request-id"] in r.text


def test_unhealthy_server_leaves_rotation_and_returns(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    a, b, _ = upstreams
    proxy = make_proxy(
        upstream_config(
            a.url, b.url, health_check={"path": "/health", "interval": "50ms", "timeout": "40ms", "rise": 1, "fall": 1}
        )
    )
    b.healthy = False
    wait_until(lambda: not proxy.call(lambda: proxy.server.snapshot.groups["app"].by_id[b.id].healthy))
    before = len(b.requests)
    names = {get(proxy, "/").text for _ in range(6)}
    assert names == {"ok u1\n"}
    assert len([r for r in b.requests if r.target != "/health"]) == len(
        [r for r in b.requests[:before] if r.target != "/health"]
    )
    b.healthy = True
    wait_until(lambda: proxy.call(lambda: proxy.server.snapshot.groups["app"].by_id[b.id].healthy))
    names = {get(proxy, "/").text for _ in range(6)}
    assert names == {"ok u1\n", "ok u2\n"}


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_client_gone_mid_response_leaves_proxy_healthy(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    proxy = make_proxy(upstream_config(upstream.url, **FAST))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /bytes/20000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.recv(1000)
    assert get(proxy, "/").status_code == 200
    wait_until(lambda: proxy.call(lambda: proxy.server.snapshot.groups["app"].by_id[upstream.id].active) == 0)


def test_slow_reader_pauses_upstream(make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer) -> None:
    """Backpressure: a client that stops reading stops the proxy reading from the upstream."""
    proxy = make_proxy(upstream_config(upstream.url, timeouts={"read": "10s"}))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /bytes/200000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.recv(1000)

        def upstream_paused() -> bool:
            def check() -> bool:
                assert proxy.server is not None
                for pool in proxy.server.ctx.pools.values():
                    for conn in list(proxy.server.ctx.timed):
                        if getattr(conn, "pool", None) is pool and conn.transport is not None:
                            return not conn.transport.is_reading()
                return False

            return proxy.call(check)

        wait_until(upstream_paused)

        def buffered() -> int:
            assert proxy.server is not None
            (conn,) = [c for c in proxy.server.ctx.clients if c.transport is not None]  # type: ignore[attr-defined]
            size: int = conn.transport.get_write_buffer_size()  # type: ignore[attr-defined]
            return size

        # what waits in the proxy for this client stays bounded, far below the 200 MB body
        assert buffered() < 4 * 1024 * 1024
