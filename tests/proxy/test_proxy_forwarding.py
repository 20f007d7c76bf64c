"""Requests and responses through the proxy: framing, bodies, headers, pipelining, keep-alive."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.proxy.harness import RunningProxy, client, echo, upstream_config
from tests.support.rawhttp import read_response, send_raw
from tests.support.upstream import UpstreamServer

H = b"Host: test\r\n"


def test_get_is_forwarded_with_forwarding_headers(proxy: RunningProxy) -> None:
    with client(proxy) as c:
        r = c.get("/echo?x=1", headers={"Host": "shop.example:8080"})
    e = echo(r)
    assert e["path"] == "/echo?x=1"
    assert e["hdrs"]["host"] == "shop.example:8080"
    assert e["hdrs"]["x-forwarded-for"] == "127.0.0.1"
    assert e["hdrs"]["x-forwarded-proto"] == "http"
    assert e["hdrs"]["x-forwarded-host"] == "shop.example:8080"
    rid = r.headers["x-request-id"]
    assert rid and e["hdrs"]["x-request-id"] == rid
    assert "x-upstream-server" not in r.headers


def test_request_id_kept_when_valid_and_replaced_when_not(proxy: RunningProxy) -> None:
    with client(proxy) as c:
        kept = c.get("/echo", headers={"X-Request-ID": "abc-123"})
        bad = c.get("/echo", headers={"X-Request-ID": "has space"})
        long = c.get("/echo", headers={"X-Request-ID": "a" * 201})
    assert kept.headers["x-request-id"] == "abc-123" == echo(kept)["hdrs"]["x-request-id"]
    for r in (bad, long):
        rid = r.headers["x-request-id"]
        assert rid not in ("has space", "a" * 201)
        assert echo(r)["hdrs"]["x-request-id"] == rid
    assert bad.headers["x-request-id"] != long.headers["x-request-id"]


def test_spoofed_forwarded_for_from_untrusted_client_is_replaced(proxy: RunningProxy) -> None:
    with client(proxy) as c:
        e = echo(
            c.get(
                "/echo",
                headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6"},
            )
        )
    assert e["hdrs"]["x-forwarded-for"] == "127.0.0.1"
    assert e["hdrs"]["x-forwarded-proto"] == "http"
    assert "forwarded" not in e["hdrs"]


def test_forwarded_for_from_trusted_proxy_is_extended(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    proxy = make_proxy(
        upstream_config(upstream.url) | {"forwarding": {"trusted_proxies": ["127.0.0.0/8"], "style": "both"}}
    )
    with client(proxy) as c:
        e = echo(c.get("/echo", headers={"X-Forwarded-For": "10.1.2.3", "Forwarded": "for=10.1.2.3"}))
    assert e["hdrs"]["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert e["hdrs"]["forwarded"] == 'for=10.1.2.3, for=127.0.0.1;host="test";proto=http'.replace(
        '"test"', '"' + e["hdrs"]["host"] + '"'
    )


def test_hop_by_hop_headers_are_removed_both_ways(proxy: RunningProxy, upstream: UpstreamServer) -> None:
    raw = (
        b"GET /echo HTTP/1.1\r\n" + H + b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"
        b"TE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Kept: yes\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(raw)
        resp = read_response(sock)
    names = {k.lower() for k, _ in json.loads(resp.body)["headers"]}
    assert "x-kept" in names
    for gone in ("connection", "x-secret", "keep-alive", "te", "upgrade", "proxy-connection"):
        assert gone not in names
    resp_names = {k.lower() for k, _ in resp.headers}
    assert "keep-alive" not in resp_names


def test_expose_upstream_adds_server_id(make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer) -> None:
    proxy = make_proxy(upstream_config(upstream.url) | {"expose_upstream": True})
    with client(proxy) as c:
        r = c.get("/")
    assert r.headers["x-upstream-server"] == upstream.id


def test_post_bodies_stream_in_both_framings(proxy: RunningProxy) -> None:
    body = bytes(range(256)) * 4096 * 5  # 5 MiB
    digest = hashlib.sha256(body).hexdigest()
    with client(proxy) as c:
        fixed = echo(c.post("/echo", content=body))

        def gen() -> Any:
            for i in range(0, len(body), 100_000):
                yield body[i : i + 100_000]

        chunked = echo(c.post("/echo", content=gen()))
    for e in (fixed, chunked):
        assert e["body_len"] == len(body)
        assert e["body_sha256"] == digest


def test_chunked_request_with_gzip_coding_is_forwarded(proxy: RunningProxy) -> None:
    raw = (
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    out = send_raw(proxy.port, raw)
    assert out.startswith(b"HTTP/1.1 200 ")
    e = (
        json.loads(out.split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0])
        if b"chunked" in (out.split(b"\r\n\r\n")[0].lower())
        else json.loads(out.split(b"\r\n\r\n", 1)[1])
    )
    te = {k.lower(): v for k, v in e["headers"]}["transfer-encoding"]
    assert te == "gzip, chunked"
    assert e["body_len"] == 3


def test_large_responses_in_every_framing(proxy: RunningProxy) -> None:
    n = 3 * 1024 * 1024
    with client(proxy) as c:
        for path in (f"/bytes/{n}", f"/chunked/{n}?chunks=50", f"/eof/{n}"):
            r = c.get(path)
            assert r.status_code == 200, path
            assert len(r.content) == n, path
        assert c.get(f"/bytes/{n}").content == c.get(f"/chunked/{n}?chunks=7").content


def test_eof_framed_response_to_http10_client_closes(proxy: RunningProxy) -> None:
    out = send_raw(proxy.port, b"GET /eof/1000 HTTP/1.0\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"chunked" not in head.lower()
    assert len(body) == 1000


def test_chunked_response_trailers_are_dropped_and_body_intact(proxy: RunningProxy) -> None:
    with client(proxy) as c:
        r = c.get("/chunked/1000?chunks=3&trailer=1")
    assert r.status_code == 200 and len(r.content) == 1000


def test_head_204_304_have_no_body_and_connection_stays_usable(proxy: RunningProxy, upstream: UpstreamServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        for method, path, status in (
            ("HEAD", "/bytes/500", 200),
            ("GET", "/204", 204),
            ("GET", "/304", 304),
            ("HEAD", "/chunked/100", 200),
            ("GET", "/bytes/10", 200),
        ):
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            resp = read_response(sock, method=method)
            assert resp.status == status, path
            if path == "/bytes/10":
                assert len(resp.body) == 10
            else:
                assert resp.body == b""
    # the pooled upstream connection was reused across all of them
    assert upstream.connections_accepted == 1


def test_pipelined_requests_are_answered_in_order(proxy: RunningProxy) -> None:
    raw = b"".join(b"GET /echo?n=%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(5))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(raw + b"POST /echo?n=5 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc")
        paths = [json.loads(read_response(sock).body)["path"] for _ in range(6)]
    assert paths == [f"/echo?n={i}" for i in range(6)]


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_a_pipelined_request_whose_body_comes_later_is_read_on_once_it_is_served(
    proxy: RunningProxy, framing: str
) -> None:
    # The second request is queued behind the first with only part of its body read; once the first is
    # answered, reading must go on for the rest of that body (it used to wait for it forever).
    body = b"0123456789" * 20
    if framing == "chunked":
        head = b"POST /echo?n=2 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        framed = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    else:
        head = b"POST /echo?n=2 HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body)
        framed = body
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /slow-head/100 HTTP/1.1\r\n" + H + b"\r\n" + head + framed[:50])
        assert read_response(sock).status == 200
        sock.sendall(framed[50:] + b"GET /echo?n=3 HTTP/1.1\r\n" + H + b"\r\n")
        second = json.loads(read_response(sock).body)
        third = json.loads(read_response(sock).body)
    assert second["path"] == "/echo?n=2" and second["body_len"] == len(body)
    assert third["path"] == "/echo?n=3"


def test_expect_100_continue_is_relayed(proxy: RunningProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /continue HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = read_response(sock)
        assert interim.status == 100
        sock.sendall(b"hello")
        final = read_response(sock)
    assert final.status == 200
    assert b"5" in final.body


def test_http10_client_keep_alive(proxy: RunningProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /bytes/5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = read_response(sock)
        assert first.status == 200
        assert ("Connection", "keep-alive") in first.headers
        sock.sendall(b"GET /bytes/5 HTTP/1.0\r\n\r\n")
        assert read_response(sock).status == 200
        assert sock.recv(10) == b""  # HTTP/1.0 without keep-alive: closed after the response


def test_ten_thousand_sequential_requests_reuse_upstream_connections(
    proxy: RunningProxy, upstream: UpstreamServer
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        req = b"GET / HTTP/1.1\r\n" + H + b"\r\n"
        for _ in range(100):
            sock.sendall(req * 100)  # pipelined in batches: fast, and exercises the queue
            for _ in range(100):
                assert read_response(sock).status == 200
    assert upstream.connections_accepted <= 2


def test_stale_pooled_connection_is_retried_transparently(proxy: RunningProxy, upstream: UpstreamServer) -> None:
    with client(proxy) as c:
        assert c.get("/").status_code == 200
        upstream.close_all_connections()
        assert c.get("/").status_code == 200
    assert upstream.connections_accepted == 2


def test_forwarding_lines_made_once_fit_every_later_request(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    """The forwarding lines of a client address, scheme, host and style are made once and reused: each request
    must still get the lines of its own host and address, and a trusted client's own values are extended."""
    proxy = make_proxy(
        upstream_config(upstream.url) | {"forwarding": {"trusted_proxies": ["127.0.0.2/32"], "style": "both"}}
    )
    seen = []
    with client(proxy) as near, client(proxy, source="127.0.0.2") as trusted:
        for _ in range(2):  # the second round is served from what the first made
            for c, host, extra in [
                (near, "a.example", {}),
                (near, "b.example", {}),
                (near, "a.example", {"X-Forwarded-For": "6.6.6.6"}),  # untrusted: replaced
                (trusted, "a.example", {}),
                (trusted, "a.example", {"X-Forwarded-For": "10.0.0.9", "Forwarded": "for=10.0.0.9"}),
            ]:
                e = echo(c.get("/echo", headers={"Host": host, **extra}))
                seen.append(
                    (e["hdrs"]["x-forwarded-for"], e["hdrs"]["x-forwarded-host"], e["hdrs"]["forwarded"])
                )
    expected = [
        ("127.0.0.1", "a.example", 'for=127.0.0.1;host="a.example";proto=http'),
        ("127.0.0.1", "b.example", 'for=127.0.0.1;host="b.example";proto=http'),
        ("127.0.0.1", "a.example", 'for=127.0.0.1;host="a.example";proto=http'),
        ("127.0.0.2", "a.example", 'for=127.0.0.2;host="a.example";proto=http'),
        ("10.0.0.9, 127.0.0.2", "a.example", 'for=10.0.0.9, for=127.0.0.2;host="a.example";proto=http'),
    ]
    assert seen == expected * 2
