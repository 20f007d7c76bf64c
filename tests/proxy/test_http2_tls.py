"""HTTP/2 over TLS through the real HTTPS listener: ALPN offers h2 then http/1.1, a connection that chose h2 is
served by the HTTP/2 protocol with ``X-Forwarded-Proto: https``, an HTTP/1.1 client on the same port stays on
HTTP/1.1, ``http2: false`` turns h2 off for one listener, and the access log names the protocol version.

Clients: httpx (``http2=True``, sync and async), curl ``--http2`` with ``--resolve`` and ``--cacert``, and raw
TLS sockets for what ALPN negotiated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame

from fulcrum.config import ConfigError, describe, parse_config
from tests.proxy.harness import RunningProxy, echo, header_values
from tests.support.certs import Issued, Pki, tls_request
from tests.support.h2client import H2Client
from tests.support.upstream import UpstreamServer, pattern_bytes

Make = Callable[[dict[str, Any]], RunningProxy]
REQUEST = b"GET /echo HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"
MB = 1024 * 1024


def https_config(upstream: UpstreamServer, site: Issued, **listen: Any) -> dict[str, Any]:
    return {
        "listen": [{"address": "127.0.0.1:0", "tls": site.pair, **listen}],
        "forwarding": {"style": "both"},
        "upstreams": {"app": {"servers": [upstream.url]}},
    }


def h2_client(pki: Pki, http2: bool = True) -> httpx.Client:
    return httpx.Client(http2=http2, verify=pki.client_context(), trust_env=False, timeout=15)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_for_line(path: Path, needle: str, timeout: float = 10.0) -> str:
    """The first line of ``path`` holding ``needle``, polling until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            for line in path.read_text().splitlines():
                if needle in line:
                    return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {needle!r} in {path}")
        time.sleep(0.02)


# -- ALPN ----------------------------------------------------------------------------------------------------


def test_a_tls_listener_offers_h2_first_and_http11_and_serves_each_on_the_same_port(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("site.test", "127.0.0.1")
    proxy = make_proxy(https_config(upstream, site))
    port = proxy.port
    both = tls_request(port, pki.client_context(), "site.test", alpn=["http/1.1", "h2"])
    assert both.alpn == "h2"  # the server's order wins
    assert tls_request(port, pki.client_context(), "site.test", alpn=["h2"]).alpn == "h2"
    old = tls_request(port, pki.client_context(), "site.test", REQUEST, alpn=["http/1.1"])
    assert old.alpn == "http/1.1" and old.response.startswith(b"HTTP/1.1 200 ")
    silent = tls_request(port, pki.client_context(), "site.test", REQUEST)  # no ALPN at all: HTTP/1.1
    assert silent.alpn is None and silent.response.startswith(b"HTTP/1.1 200 ")
    with h2_client(pki, http2=False) as client:
        res = client.get(f"https://127.0.0.1:{port}/echo")
    assert res.http_version == "HTTP/1.1" and res.status_code == 200
    assert header_values(echo(res), "X-Forwarded-Proto") == ["https"]


def test_http2_false_on_a_listener_offers_http11_only(make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    proxy = make_proxy(https_config(upstream, site, http2=False))
    reply = tls_request(proxy.port, pki.client_context(), "127.0.0.1", REQUEST, alpn=["h2", "http/1.1"])
    assert reply.alpn == "http/1.1" and reply.status == 200
    with h2_client(pki) as client:
        res = client.get(f"https://127.0.0.1:{proxy.port}/echo")
    assert res.http_version == "HTTP/1.1" and res.status_code == 200


def test_a_reload_that_turns_http2_off_keeps_the_socket_and_the_next_connection_gets_http11(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    config = https_config(upstream, site)
    proxy = make_proxy(config)
    port = proxy.port
    context = pki.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as before:
        assert before.selected_alpn_protocol() == "h2"
        config["listen"] = [{"address": "127.0.0.1:0", "tls": site.pair, "http2": False}]  # the same entry
        server = proxy.server
        assert server is not None
        proxy.run(server.apply(parse_config(config, source="test")))
        assert tls_request(port, pki.client_context(), "127.0.0.1", alpn=["h2", "http/1.1"]).alpn == "http/1.1"
        # the connection that chose h2 before the reload goes on with it
        before.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert before.recv(9)[3] == 0x04  # the server's SETTINGS frame


def test_check_says_which_tls_listeners_offer_h2(pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    config = parse_config({"listen": [{"address": ":8443", "tls": site.pair},
                                      {"address": ":8444", "tls": site.pair, "http2": False}],
                           "upstreams": {"app": {"servers": ["http://127.0.0.1:1"]}}}, source="test")
    assert describe(config).splitlines()[0] == \
        "listen: 0.0.0.0:8443 (https, h2, 1 certificate), 0.0.0.0:8444 (https, 1 certificate)"


def test_http2_on_a_plain_listener_is_a_config_error_naming_the_entry() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"listen": [":8080", {"address": ":8081", "http2": False}],
                      "upstreams": {"app": {"servers": ["http://127.0.0.1:1"]}}}, source="test")
    text = str(caught.value)
    assert "listen[1].http2" in text and "TLS listeners only" in text


# -- HTTP/2 over TLS ---------------------------------------------------------------------------------------


def test_httpx_http2_over_the_tls_listener_forwards_proto_https_and_bodies_of_1mb_both_ways(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    proxy = make_proxy(https_config(upstream, site))
    base = f"https://127.0.0.1:{proxy.port}"
    body = pattern_bytes(MB)
    with h2_client(pki) as client:
        res = client.get(f"{base}/echo", headers={"X-Forwarded-Proto": "http"})  # an untrusted client's is replaced
        posted = client.post(f"{base}/echo", content=body)
        down = client.get(f"{base}/bytes/{MB}")
    assert res.http_version == "HTTP/2" and res.status_code == 200
    doc = echo(res)
    assert header_values(doc, "X-Forwarded-Proto") == ["https"]
    assert header_values(doc, "Forwarded") == [f'for=127.0.0.1;host="127.0.0.1:{proxy.port}";proto=https']
    assert posted.http_version == "HTTP/2" and posted.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert down.http_version == "HTTP/2" and down.content == pattern_bytes(MB)
    # every request reached the upstream as HTTP/1.1 with the client's proto
    assert [r.header("X-Forwarded-Proto") for r in upstream.requests] == ["https"] * 3


def test_many_concurrent_streams_on_one_tls_connection(make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    proxy = make_proxy(https_config(upstream, site))
    base = f"https://127.0.0.1:{proxy.port}"
    count = 60

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(http2=True, verify=pki.client_context(), trust_env=False, timeout=30) as client:
            first = await client.get(f"{base}/")  # the connection exists before the streams open on it
            rest = await asyncio.gather(*[client.get(f"{base}/echo?n={i}") for i in range(count)])
            return [first, *rest]

    responses = asyncio.run(run())
    assert all(r.http_version == "HTTP/2" and r.status_code == 200 for r in responses)
    assert sorted(echo(r)["path"] for r in responses[1:]) == sorted(f"/echo?n={i}" for i in range(count))
    assert all(header_values(echo(r), "X-Forwarded-Proto") == ["https"] for r in responses[1:])
    assert proxy.call(lambda: proxy.server.ctx.stats.connections_total) == 1  # type: ignore[union-attr]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_http2_with_resolve_and_cacert(make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("site.test")
    proxy = make_proxy(https_config(upstream, site))
    port = proxy.port
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--resolve", f"site.test:{port}:127.0.0.1", "--cacert", str(pki.ca_file),
         "-o", "-", "-w", "\n%{http_version}", f"https://site.test:{port}/echo"],
        capture_output=True, text=True, timeout=30, check=True)
    body, _, version = out.stdout.rpartition("\n")
    assert version == "2"
    doc = json.loads(body)
    headers = {k.lower(): v for k, v in doc["headers"]}
    assert headers["x-forwarded-proto"] == "https" and headers["host"] == f"site.test:{port}"


def test_the_h2_connection_is_counted_and_served_by_the_http2_protocol(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    proxy = make_proxy(https_config(upstream, site))
    context = pki.client_context()
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as held:
        assert held.selected_alpn_protocol() == "h2"
        assert wait_for(lambda: bool(proxy.call(lambda: len(proxy.server.ctx.clients))))  # type: ignore[union-attr]
        seen = proxy.call(lambda: [(type(c).__name__, c.proto)  # type: ignore[attr-defined]
                                   for c in proxy.server.ctx.clients])  # type: ignore[union-attr]
        assert seen == [("H2Connection", b"https")]
        assert proxy.call(lambda: proxy.server.ctx.stats.connections_active) == 1  # type: ignore[union-attr]
    assert wait_for(lambda: proxy.call(lambda: proxy.server.ctx.stats.connections_active) == 0)  # type: ignore[union-attr]


def test_graceful_stop_sends_goaway_over_tls_and_lets_the_open_stream_finish(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    proxy = make_proxy(https_config(upstream, site))
    context = pki.client_context()
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    client = H2Client(proxy.port, sock=context.wrap_socket(raw, server_hostname="127.0.0.1"))
    try:
        assert client.response(client.request("GET", "/")).status == 200
        sid = client.request("GET", "/slow-head/500")
        upstream.wait_for_requests(2, timeout=10)  # the slow request is in flight
        stopper = threading.Thread(target=proxy.stop, kwargs={"grace": 10})
        stopper.start()
        # read as frames: h2's client state machine takes nothing more after a GOAWAY; the stream takes 0.5 s
        # more, longer than the short timeout the client's last read left on the socket
        client.sock.settimeout(10)
        data = b""
        while chunk := client.sock.recv(65536):
            data += chunk
        client.close()  # TLS: the server's close waits for this end to go (or for the grace period)
        stopper.join(15)
        assert not stopper.is_alive()
    finally:
        client.close()
    frames: list[Frame] = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    # the drain's GOAWAY, and the closing one once the last stream is done: both name the open stream
    assert goaways and {(f.error_code, f.last_stream_id) for f in goaways} == {(ErrorCodes.NO_ERROR, sid)}
    heads = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == sid]
    assert len(heads) == 1 and (b":status", b"200") in client.conn.decoder.decode(heads[0].data, raw=True)
    body = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == sid)
    assert body == f"ok {upstream.name}\n".encode()


# -- the access log's protocol version --------------------------------------------------------------------


def test_the_access_log_says_http_2_0_for_h2_and_http_1_1_for_http11(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki, tmp_path: Path) -> None:
    site = pki.issue("127.0.0.1")
    combined, as_json = tmp_path / "access.log", tmp_path / "access.json"
    config = https_config(upstream, site)
    config["routes"] = [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [
        {"access_log": {"format": "combined", "path": str(combined)}},
        {"access_log": {"format": "json", "path": str(as_json)}}]}]
    proxy = make_proxy(config)
    base = f"https://127.0.0.1:{proxy.port}"
    with h2_client(pki) as client:
        assert client.get(f"{base}/bytes/10", headers={"X-Request-ID": "rid-h2"}).http_version == "HTTP/2"
    with h2_client(pki, http2=False) as client:
        assert client.get(f"{base}/bytes/10", headers={"X-Request-ID": "rid-h1"}).http_version == "HTTP/1.1"
    assert re.search(r'"GET /bytes/10 HTTP/2\.0" 200 10 ', wait_for_line(combined, "rid-h2"))
    assert re.search(r'"GET /bytes/10 HTTP/1\.1" 200 10 ', wait_for_line(combined, "rid-h1"))
    assert json.loads(wait_for_line(as_json, "rid-h2"))["version"] == "2.0"
    assert json.loads(wait_for_line(as_json, "rid-h1"))["version"] == "1.1"
