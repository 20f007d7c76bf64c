"""WebSocket over TLS: the ``websockets`` client through an HTTPS listener (wss) to a plain ws upstream and to a
wss (``https://``) upstream verified against the test's CA, and a plain client to a wss upstream: text and binary
messages, a 1 MB message both ways, close codes both ways, and what the upstream saw of the handshake.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.proxy.harness import RunningProxy
from tests.support.certs import Pki
from tests.support.wsupstream import WsUpstream

Make = Callable[[dict[str, Any]], RunningProxy]


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture
def ws_plain() -> Iterator[WsUpstream]:
    server = WsUpstream("ws-plain").start()
    yield server
    server.stop()


@pytest.fixture
def ws_tls(pki: Pki) -> Iterator[WsUpstream]:
    server = WsUpstream("ws-tls", ssl=pki.issue("127.0.0.1").server_context()).start()
    yield server
    server.stop()


def proxy_to(make_proxy: Make, pki: Pki, up: WsUpstream, listener_tls: bool = True) -> RunningProxy:
    group: dict[str, Any] = {"servers": [up.url]}
    if up.ssl is not None:
        group["tls"] = {"ca": str(pki.ca_file)}
    listen: Any = "127.0.0.1:0"
    if listener_tls:
        listen = {"address": "127.0.0.1:0", "tls": pki.issue("127.0.0.1").pair}
    return make_proxy({"listen": [listen], "upstreams": {"ws": group}})


def wss(proxy: RunningProxy, pki: Pki, path: str) -> ClientConnection:
    return connect(f"wss://127.0.0.1:{proxy.port}{path}", ssl=pki.client_context(), proxy=None, open_timeout=10,
                   ping_interval=None, compression=None, max_size=4 * 1024 * 1024)


@pytest.fixture(params=["ws-upstream", "wss-upstream"])
def through_tls(request: pytest.FixtureRequest, make_proxy: Make, pki: Pki) -> tuple[RunningProxy, WsUpstream]:
    """A TLS listener in front of a plain ws upstream, then of a wss one."""
    up: WsUpstream = request.getfixturevalue("ws_plain" if request.param == "ws-upstream" else "ws_tls")
    return proxy_to(make_proxy, pki, up), up


def test_wss_text_binary_and_a_1mb_message_both_ways(through_tls: tuple[RunningProxy, WsUpstream], pki: Pki) -> None:
    proxy, _ = through_tls
    big = os.urandom(1024 * 1024)
    with wss(proxy, pki, "/ws/echo") as ws:
        ws.send("héllo")
        assert ws.recv(timeout=10) == "héllo"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=10) == b"\x00\x01\xfe\xff"
        for i in range(30):
            ws.send(f"message {i}")
        assert [ws.recv(timeout=10) for _ in range(30)] == [f"message {i}" for i in range(30)]
        ws.send(big)
        assert ws.recv(timeout=20) == big


def test_wss_close_codes_pass_both_ways(through_tls: tuple[RunningProxy, WsUpstream], pki: Pki) -> None:
    proxy, up = through_tls
    with wss(proxy, pki, "/ws/echo") as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "x"
        ws.close(4000, "client done")
    assert wait_until(lambda: 4000 in up.close_codes)
    with wss(proxy, pki, "/ws/close") as ws2:
        with pytest.raises(ConnectionClosed) as closed:
            ws2.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")
    assert wait_until(lambda: proxy.call(lambda: proxy.server.ctx.stats.tunnels_active) == 0)  # type: ignore[union-attr]


def test_wss_handshake_reaches_the_upstream_with_proto_https(
        through_tls: tuple[RunningProxy, WsUpstream], pki: Pki) -> None:
    proxy, up = through_tls
    with wss(proxy, pki, "/ws/headers") as ws:
        headers = {k.lower(): v for k, v in json.loads(ws.recv(timeout=10))}
        ws.send("still open")
        assert ws.recv(timeout=10) == "still open"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["upgrade"].lower() == "websocket" and headers["host"] == f"127.0.0.1:{proxy.port}"
    assert up.handshake_count() == 1


def test_a_plain_ws_client_to_a_wss_upstream(make_proxy: Make, pki: Pki, ws_tls: WsUpstream) -> None:
    proxy = proxy_to(make_proxy, pki, ws_tls, listener_tls=False)
    with connect(f"ws://127.0.0.1:{proxy.port}/ws/hello", proxy=None, open_timeout=10, ping_interval=None,
                 compression=None) as ws:
        assert ws.recv(timeout=10) == "hello from ws-tls"
        ws.send(b"\xff" * 70_000)
        assert ws.recv(timeout=10) == b"\xff" * 70_000
    assert ws_tls.handshake_count() == 1


def test_a_wss_upstream_with_a_certificate_of_another_ca_is_a_502(make_proxy: Make, pki: Pki, tmp_path: Path) -> None:
    other = Pki(tmp_path, "other")
    up = WsUpstream("ws-other", ssl=other.issue("127.0.0.1").server_context()).start()
    try:
        proxy = make_proxy({"listen": [{"address": "127.0.0.1:0", "tls": pki.issue("127.0.0.1").pair}],
                            "upstreams": {"ws": {"servers": [up.url], "tls": {"ca": str(pki.ca_file)}}}})
        with pytest.raises(InvalidStatus) as refused:
            wss(proxy, pki, "/ws/echo")
        assert refused.value.response.status_code == 502
        assert up.handshake_count() == 0
    finally:
        up.stop()
