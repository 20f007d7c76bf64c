"""Upgrade passthrough: WebSocket (and other protocols) through the proxy, with real clients and servers.

The WebSocket server is the ``websockets`` package; clients are its sync client and raw sockets where the
test needs exact bytes (frames pipelined after the handshake, malformed handshakes, backpressure).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.proxy.harness import RunningProxy, client
from tests.support.rawhttp import read_response
from tests.support.wsupstream import RawUpgradeServer, WsUpstream

KEY = base64.b64encode(b"0123456789abcdef").decode()


@pytest.fixture
def ws_up() -> Iterator[WsUpstream]:
    server = WsUpstream("ws-a").start()
    yield server
    server.stop()


@pytest.fixture
def make_raw() -> Iterator[Callable[..., RawUpgradeServer]]:
    started: list[RawUpgradeServer] = []

    def make(**kwargs: Any) -> RawUpgradeServer:
        server = RawUpgradeServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def ws_config(ws_urls: list[str], http_url: str | None = None, **group: Any) -> dict[str, Any]:
    """Routes: /ws/ to the WebSocket group, everything else to the HTTP group (when given)."""
    upstreams: dict[str, Any] = {"ws": {"servers": ws_urls, **group}}
    routes: list[dict[str, Any]] = [{"match": {"path_prefix": "/ws/"}, "upstream": "ws"}]
    if http_url is not None:
        upstreams["app"] = {"servers": [http_url]}
        routes.append({"match": {"path_prefix": "/"}, "upstream": "app"})
    return {"upstreams": upstreams, "routes": routes}


def ws_connect(proxy: RunningProxy, path: str, **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("max_size", 4 * 1024 * 1024)
    return connect(f"ws://127.0.0.1:{proxy.port}{path}", proxy=None, open_timeout=5, ping_interval=None,
                   compression=None, **kwargs)


def handshake(path: str = "/ws/echo", host: str = "example.test", extra: str = "", key: str | None = KEY,
              version: str | None = "13", method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: Upgrade", "Upgrade: websocket"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked frame from a client (RFC 6455 5.2), for payloads under 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The response head up to the blank line, and whatever came after it in the same reads."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_frame(sock: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """One unmasked server frame (payload under 126 bytes): opcode, payload, the bytes after it."""
    while len(buf) < 2:
        buf += sock.recv(65536)
    length = buf[1] & 0x7F
    assert length < 126
    while len(buf) < 2 + length:
        buf += sock.recv(65536)
    return buf[0] & 0x0F, buf[2 : 2 + length], buf[2 + length :]


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def stats(proxy: RunningProxy) -> tuple[int, int]:
    return proxy.call(lambda: (proxy.server.ctx.stats.tunnels_active, proxy.server.ctx.stats.tunnels_total))


# -- messages both ways ----------------------------------------------------------------------------------


def test_text_and_binary_messages_echo_through_the_tunnel(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with ws_connect(proxy, "/ws/echo") as ws:
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xfe\xff"
        for i in range(50):
            ws.send(f"message {i}")
        assert [ws.recv(timeout=5) for _ in range(50)] == [f"message {i}" for i in range(50)]


def test_a_one_megabyte_message_arrives_whole_both_ways(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    big = os.urandom(1024 * 1024)
    with ws_connect(proxy, "/ws/echo") as ws:
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.send(big.hex()[: 1024 * 1024])
        assert ws.recv(timeout=10) == big.hex()[: 1024 * 1024]


def test_ping_gets_its_pong(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with ws_connect(proxy, "/ws/echo") as ws:
        pong = ws.ping(b"are you there")
        assert pong.wait(5)
        latency = ws.ping()
        assert latency.wait(5)


def test_server_speaking_first_reaches_the_client(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with ws_connect(proxy, "/ws/hello") as ws:
        assert ws.recv(timeout=5) == "hello from ws-a"
        ws.send("and back")
        assert ws.recv(timeout=5) == "and back"


def test_close_codes_pass_both_ways(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with ws_connect(proxy, "/ws/echo") as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        ws.close(4000, "client done")
    assert wait_until(lambda: 4000 in ws_up.close_codes)
    with ws_connect(proxy, "/ws/close") as ws2:
        with pytest.raises(ConnectionClosed) as closed:
            ws2.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


def test_upstream_dropping_the_connection_closes_the_client(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with ws_connect(proxy, "/ws/drop") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is None  # no close frame: the TCP connection went
    assert wait_until(lambda: stats(proxy)[0] == 0)


def test_client_dropping_the_connection_closes_the_upstream(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(handshake("/ws/echo"))
    head, _ = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert wait_until(lambda: ws_up.open == 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset
    assert wait_until(lambda: ws_up.open == 0)
    assert ws_up.close_codes == [1006]  # the upstream saw the connection go without a close frame
    assert wait_until(lambda: stats(proxy) == (0, 1))


def test_http_requests_on_other_connections_go_on_while_a_tunnel_is_open(make_proxy, ws_up, upstream_server) -> None:
    proxy = make_proxy(ws_config([ws_up.url], upstream_server.url))
    with ws_connect(proxy, "/ws/echo") as ws:
        ws.send("first")
        assert ws.recv(timeout=5) == "first"
        with client(proxy) as http:
            for _ in range(5):
                assert http.get("/echo").status_code == 200
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
        assert stats(proxy) == (1, 1)
    assert wait_until(lambda: stats(proxy) == (0, 1))


# -- the handshake -------------------------------------------------------------------------------------------


def test_the_upstream_sees_the_upgrade_headers_and_the_client_gets_the_request_id(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with ws_connect(proxy, "/ws/headers", additional_headers={"X-Custom": "kept"}) as ws:
        sent = {k.lower(): v for k, v in json.loads(ws.recv(timeout=5))}
        assert ws.response is not None
        assert ws.response.headers.get("X-Request-ID")
    assert sent["upgrade"] == "websocket"
    assert sent["connection"].lower() == "upgrade"
    assert sent["sec-websocket-version"] == "13"
    assert sent["x-custom"] == "kept"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-request-id"] == ws.response.headers["X-Request-ID"]


def test_frames_sent_with_the_handshake_are_tunnelled(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(handshake("/ws/echo") + client_frame(b"early bird"))
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nupgrade: websocket" in head.lower()
        opcode, payload, _ = read_frame(sock, rest)
        assert (opcode, payload) == (1, b"early bird")


def test_an_answer_other_than_101_keeps_the_connection_in_http(make_proxy, ws_up, upstream_server) -> None:
    proxy = make_proxy(ws_config([ws_up.url], upstream_server.url))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        # the bytes after the refused handshake are the next HTTP request, never tunnel bytes
        sock.sendall(handshake("/ws/reject") + b"GET /echo HTTP/1.1\r\nHost: example.test\r\n\r\n")
        first = read_response(sock)
        assert first.status == 403
        second = read_response(sock)
        assert second.status == 200
        assert json.loads(second.body)["path"] == "/echo"
    assert stats(proxy) == (0, 0)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (handshake(key=None), 400),
        (handshake(key="too-short"), 400),
        (handshake(extra=f"Sec-WebSocket-Key: {KEY}\r\n"), 400),  # two keys
        (handshake(method="POST", extra="Content-Length: 0\r\n"), 400),
        (handshake(version="8"), 426),
        (handshake(version=None), 426),
        (handshake(extra="X-Big: " + "a" * 40000 + "\r\n"), 431),
    ],
    ids=["no-key", "bad-key", "two-keys", "post", "version-8", "no-version", "oversized"],
)
def test_a_malformed_handshake_is_refused_before_the_upstream(make_proxy, ws_up, request_bytes, status) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request_bytes)
        resp = read_response(sock)
        assert resp.status == status
        if status == 426:
            assert resp.header("Sec-WebSocket-Version") == "13"
        assert sock.recv(100) == b""  # closed
    assert ws_up.handshake_count() == 0


def test_h2c_is_never_asked_of_the_upstream(make_proxy, upstream_server) -> None:
    proxy = make_proxy({"upstreams": {"app": {"servers": [upstream_server.url]}}})
    h2c = ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n")
    body = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"  # a body that looks like a request stays a body
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: example.test\r\n" + h2c.encode()
            + b"Content-Length: %d\r\n\r\n" % len(body) + body
            + b"GET /echo?after HTTP/1.1\r\nHost: example.test\r\n" + h2c.encode() + b"\r\n"
        )
        first = read_response(sock)
        second = read_response(sock)
    assert first.status == 200 and second.status == 200
    assert json.loads(first.body)["body_sha256"] == __import__("hashlib").sha256(body).hexdigest()
    assert [r.target for r in upstream_server.requests] == ["/echo", "/echo?after"]
    for recorded in upstream_server.requests:
        assert recorded.header("Upgrade") is None
        assert recorded.header("HTTP2-Settings") is None
        assert "upgrade" not in (recorded.header("Connection") or "").lower()


def test_an_upgrade_the_client_did_not_ask_for_is_a_502(make_proxy, make_raw) -> None:
    raw = make_raw()
    proxy = make_proxy({"upstreams": {"app": {"servers": [raw.url]}}})
    with client(proxy) as http:
        resp = http.get("/plain")
    assert resp.status_code == 502
    assert stats(proxy) == (0, 0)


def test_a_101_to_another_protocol_than_asked_is_a_502(make_proxy, make_raw) -> None:
    raw = make_raw(answer=b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: something-else\r\n\r\n")
    proxy = make_proxy({"upstreams": {"app": {"servers": [raw.url]}}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(handshake("/ws/x"))
        assert read_response(sock).status == 502
    assert stats(proxy) == (0, 0)


def test_another_upgrade_token_is_tunnelled_too(make_proxy, make_raw) -> None:
    raw = make_raw(answer=b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo/1\r\n\r\n")
    proxy = make_proxy({"upstreams": {"app": {"servers": [raw.url]}}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo/1\r\n\r\n")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        sock.sendall(b"any bytes at all \x00\xff")
        while len(rest) < 19:
            rest += sock.recv(100)
        assert rest == b"any bytes at all \x00\xff"
        sock.shutdown(socket.SHUT_WR)  # a half-close reaches the upstream, which then closes
        assert sock.recv(100) == b""


# -- balancing, accounting, limits -------------------------------------------------------------------------


def test_hashing_sends_a_user_to_the_same_websocket_server(make_proxy) -> None:
    servers = [WsUpstream(f"ws-{i}").start() for i in range(3)]
    try:
        proxy = make_proxy(ws_config([s.url for s in servers], balance="consistent_hash", hash_key="header:X-User"))
        seen: dict[str, set[str]] = {}
        for user in ("ann", "bob", "cyd"):
            for _ in range(4):
                with ws_connect(proxy, "/ws/hello", additional_headers={"X-User": user}) as ws:
                    seen.setdefault(user, set()).add(str(ws.recv(timeout=5)))
        assert all(len(names) == 1 for names in seen.values()), seen
    finally:
        for s in servers:
            s.stop()


def test_an_open_tunnel_counts_as_active_on_its_server(make_proxy) -> None:
    a, b = WsUpstream("ws-a").start(), WsUpstream("ws-b").start()
    try:
        proxy = make_proxy(ws_config([a.url, b.url], balance="least_conn"))
        with ws_connect(proxy, "/ws/hello") as first:
            one = first.recv(timeout=5)
            # least_conn: the second tunnel goes to the other server while the first is open
            with ws_connect(proxy, "/ws/hello") as second:
                assert second.recv(timeout=5) != one
                active = proxy.call(lambda: sorted(s.active for s in proxy.server.snapshot.groups["ws"].servers))
                assert active == [1, 1]
        assert wait_until(lambda: proxy.call(
            lambda: [s.active for s in proxy.server.snapshot.groups["ws"].servers]) == [0, 0])
    finally:
        a.stop()
        b.stop()


def test_tunnels_are_counted_in_metrics(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url]))
    with ws_connect(proxy, "/ws/echo"), ws_connect(proxy, "/ws/echo"):
        assert stats(proxy) == (2, 2)
    assert wait_until(lambda: stats(proxy) == (0, 2))
    codes = proxy.call(lambda: [dict(c.codes) for c in proxy.server.ctx.metrics.by_route.values() if c.codes])
    assert codes == [{101: 2}]


def test_an_idle_tunnel_is_closed_after_the_tunnel_timeout(make_proxy, ws_up) -> None:
    proxy = make_proxy(ws_config([ws_up.url], timeouts={"tunnel": "300ms"}))
    with ws_connect(proxy, "/ws/echo") as ws:
        ws.send("keep")
        assert ws.recv(timeout=5) == "keep"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert time.monotonic() - started < 4
    assert wait_until(lambda: stats(proxy)[0] == 0)


def test_graceful_stop_closes_tunnels_after_the_grace_period(ws_up) -> None:
    proxy = RunningProxy(ws_config([ws_up.url])).start()
    stopper = threading.Thread(target=proxy.stop, kwargs={"grace": 0.5})
    with ws_connect(proxy, "/ws/echo") as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        started = time.monotonic()
        stopper.start()
        time.sleep(0.2)
        ws.send("during the grace period")  # the tunnel still carries messages while the proxy drains
        assert ws.recv(timeout=5) == "during the grace period"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    stopper.join(10)
    assert not stopper.is_alive()
    assert 0.4 < time.monotonic() - started < 5


def _send_until_blocked(sock: socket.socket, total: int, seconds: float) -> int:
    sock.setblocking(False)
    chunk = b"y" * 65536
    sent = 0
    end = time.monotonic() + seconds
    while sent < total and time.monotonic() < end:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    sock.setblocking(True)
    return sent


def test_backpressure_from_a_slow_upstream_bounds_what_is_held(make_proxy, make_raw) -> None:
    raw = make_raw(reading=False)
    proxy = make_proxy({"upstreams": {"app": {"servers": [raw.url]}}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(handshake("/ws/x"))
        head, _ = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        sent = _send_until_blocked(sock, 256 * 1024 * 1024, 3.0)
        # the upstream reads nothing: what the client could send is what the socket buffers hold, not 256 MB
        assert sent < 64 * 1024 * 1024, sent
        buffered = proxy.call(lambda: sum(
            c.transport.get_write_buffer_size() for c in proxy.server.ctx.clients if c.transport is not None))
        assert buffered < 1024 * 1024


def test_backpressure_from_a_slow_client_bounds_what_is_held(make_proxy, make_raw) -> None:
    raw = make_raw(send=256 * 1024 * 1024)
    proxy = make_proxy({"upstreams": {"app": {"servers": [raw.url]}}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(handshake("/ws/x"))
        time.sleep(1.5)  # the client reads nothing for a while: the upstream must be held back
        buffered = proxy.call(lambda: sum(
            c.transport.get_write_buffer_size() for c in proxy.server.ctx.clients if c.transport is not None))
        assert buffered < 1024 * 1024
        assert raw.write_buffered() > 0  # the upstream's own writes are waiting: it was paused, not drained
        got = 0
        sock.settimeout(5)
        while got < 8 * 1024 * 1024:
            data = sock.recv(1024 * 1024)
            assert data
            got += len(data)
