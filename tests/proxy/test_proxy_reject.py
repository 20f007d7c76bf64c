"""Malformed and over-limit requests: the right status, the connection closed, nothing sent upstream (DESIGN 5)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.proxy.harness import RunningProxy
from tests.support.rawhttp import read_response, send_raw
from tests.support.upstream import UpstreamServer

H = b"Host: test\r\n"

BAD_REQUESTS = [
    (
        "cl and te",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    ("two different cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("two equal cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("malformed cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3x\r\n\r\nabc", 400),
    ("negative cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("te not ending in chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("te on http/1.0", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    ("bad chunk size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : a\r\n\r\n", 400),
    ("bare cr", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("nul in header", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("missing host on 1.1", b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("http/2.0 line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("http/3.1 line", b"GET / HTTP/3.1\r\n" + H + b"\r\n", 505),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
]


@pytest.mark.parametrize(("name", "raw", "status"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_rejected_and_not_forwarded(
    proxy: RunningProxy, upstream: UpstreamServer, name: str, raw: bytes, status: int
) -> None:
    out = send_raw(proxy.port, raw)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
    assert b"Connection: close" in out
    assert b"X-Request-ID: " in out
    # send_raw returned, so the proxy closed the connection; and the upstream saw nothing
    assert upstream.requests == []


def test_http_1_2_is_served_as_1_1(proxy: RunningProxy, upstream: UpstreamServer) -> None:
    out = send_raw(proxy.port, b"GET /echo HTTP/1.2\r\n" + H + b"Connection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert len(upstream.requests) == 1


def test_request_line_too_long_is_414(make_proxy, upstream: UpstreamServer) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy({"upstreams": {"app": {"servers": [upstream.url]}}, "limits": {"max_request_line": "1k"}})
    out = send_raw(proxy.port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + H + b"\r\n")
    assert out.startswith(b"HTTP/1.1 414 ")
    assert upstream.requests == []
    ok = send_raw(proxy.port, b"GET /" + b"a" * 900 + b" HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")


def test_request_line_without_end_is_414_not_unbounded(make_proxy, upstream: UpstreamServer) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy({"upstreams": {"app": {"servers": [upstream.url]}}, "limits": {"max_request_line": "1k"}})
    out = send_raw(proxy.port, b"GET /" + b"a" * 200_000)
    assert out.startswith(b"HTTP/1.1 414 "), out[:100]
    assert upstream.requests == []


def test_header_block_too_large_is_431(make_proxy, upstream: UpstreamServer) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy({"upstreams": {"app": {"servers": [upstream.url]}}, "limits": {"max_header_bytes": "4k"}})
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(60))
    out = send_raw(proxy.port, b"GET / HTTP/1.1\r\n" + H + many + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")
    one_huge = b"X-Big: " + b"v" * 100_000  # never ends: must still be cut off
    out = send_raw(proxy.port, b"GET / HTTP/1.1\r\n" + H + one_huge)
    assert out.startswith(b"HTTP/1.1 431 ")
    assert upstream.requests == []


def test_body_over_limit_is_413_before_anything_goes_upstream(make_proxy, upstream: UpstreamServer) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy({"upstreams": {"app": {"servers": [upstream.url]}}, "limits": {"max_body_bytes": "1k"}})
    out = send_raw(proxy.port, b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2000\r\n\r\n" + b"x" * 2000)
    assert out.startswith(b"HTTP/1.1 413 ")
    assert upstream.requests == []
    ok = send_raw(
        proxy.port, b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1000\r\nConnection: close\r\n\r\n" + b"x" * 1000
    )
    assert ok.startswith(b"HTTP/1.1 200 ")


def test_chunked_body_over_limit_is_413(make_proxy, upstream: UpstreamServer) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy({"upstreams": {"app": {"servers": [upstream.url]}}, "limits": {"max_body_bytes": "1k"}})
    chunks = b"".join(b"200\r\n" + b"x" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    out = send_raw(proxy.port, b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]


def test_slow_head_gets_408(proxy: RunningProxy, upstream: UpstreamServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: te")
        t0 = time.monotonic()
        resp = read_response(sock)
        waited = time.monotonic() - t0
    assert resp.status == 408
    assert 0.5 < waited < 4  # header_timeout is 1s in this fixture
    assert upstream.requests == []


def test_idle_keepalive_connection_is_closed(proxy: RunningProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=6) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert read_response(sock).status == 200
        t0 = time.monotonic()
        assert sock.recv(100) == b""  # closed by the proxy, no bytes
        assert 1.0 < time.monotonic() - t0 < 5  # keepalive_timeout is 2s in this fixture


def test_bad_request_pipelined_after_good_one_answers_the_good_one_first(
    proxy: RunningProxy, upstream: UpstreamServer
) -> None:
    raw = b"GET /echo HTTP/1.1\r\n" + H + b"\r\n" + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    out = send_raw(proxy.port, raw)
    first = out.find(b"HTTP/1.1 200 ")
    second = out.find(b"HTTP/1.1 400 ")
    assert 0 == first < second, out
    assert len(upstream.requests) == 1


def test_stalled_request_body_gets_408_and_upstream_is_let_go(proxy: RunningProxy, upstream: UpstreamServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=6) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
        t0 = time.monotonic()
        resp = read_response(sock)
        assert resp.status == 408
        assert 0.5 < time.monotonic() - t0 < 4  # header_timeout is 1s in this fixture
        assert sock.recv(10) == b""
    deadline = time.monotonic() + 5
    while upstream.open_connections:  # the half-sent request's upstream connection was dropped, not pooled
        assert time.monotonic() < deadline
        time.sleep(0.01)
