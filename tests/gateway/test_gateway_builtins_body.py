"""Built-in middleware that shape bodies and response heads: compress, max_body and headers, through the proxy."""

from __future__ import annotations

import gzip
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
from tests.proxy.harness import RunningProxy, client
from tests.support.rawhttp import IncompleteResponse, read_response
from tests.support.upstream import UpstreamServer, pattern_bytes

MakeProxy = Callable[[dict[str, Any]], RunningProxy]


def raw_get(c: httpx.Client, url: str, accept: str | None, method: str = "GET") -> tuple[httpx.Response, bytes]:
    """The response and its body bytes as sent (not decoded); ``accept`` None sends no Accept-Encoding."""
    req = c.build_request(method, url)
    if accept is None:
        del req.headers["Accept-Encoding"]
    else:
        req.headers["Accept-Encoding"] = accept
    resp = c.send(req, stream=True)
    try:
        body = b"".join(resp.iter_raw())
    finally:
        resp.close()
    return resp, body


# ------------------------------------------------------------------------------------------ compress


@pytest.fixture
def compressing(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> RunningProxy:
    # The test upstream sends its generated bodies as application/octet-stream, which is not compressed by
    # default: /z/ names that type, /default/ keeps the built-in list of text-like types.
    return make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            {"match": {"path_prefix": "/z/"}, "upstream": "app", "strip_prefix": "/z",
             "middleware": [{"compress": {"types": ["application/octet-stream"], "min_bytes": 1024}}]},
            {"match": {"path_prefix": "/default/"}, "upstream": "app", "strip_prefix": "/default",
             "middleware": [{"compress": {}}]},
        ],
    })


def test_gzip_of_a_content_length_body(compressing: RunningProxy) -> None:
    with client(compressing) as c:
        resp, body = raw_get(c, "/z/bytes/50000", "gzip")
    assert resp.status_code == 200
    assert resp.headers["content-encoding"] == "gzip"
    assert "content-length" not in resp.headers
    assert resp.headers["transfer-encoding"] == "chunked"
    assert resp.headers["vary"] == "Accept-Encoding"
    assert len(body) < 50000
    assert gzip.decompress(body) == pattern_bytes(50000)


def test_br_of_a_chunked_body(compressing: RunningProxy) -> None:
    with client(compressing) as c:
        resp, body = raw_get(c, "/z/chunked/200000?chunks=9", "gzip;q=0.5, br")
        decoded = c.get("/z/chunked/3000?chunks=2", headers={"Accept-Encoding": "br"})
    assert resp.headers["content-encoding"] == "br"
    assert "content-length" not in resp.headers
    assert "accept-encoding" in resp.headers["vary"].lower()
    assert brotli.decompress(body) == pattern_bytes(200000)
    assert decoded.content == pattern_bytes(3000)  # httpx decodes it as a browser would


def test_no_compression_below_min_bytes_without_accept_encoding_for_head_or_other_types(
    compressing: RunningProxy,
) -> None:
    with client(compressing) as c:
        small, small_body = raw_get(c, "/z/bytes/1000", "gzip")
        plain, plain_body = raw_get(c, "/z/bytes/5000", None)
        identity, _ = raw_get(c, "/z/bytes/5000", "identity")
        head, head_body = raw_get(c, "/z/bytes/5000", "gzip", method="HEAD")
        other_type, other_body = raw_get(c, "/default/bytes/5000", "gzip, br")
    assert "content-encoding" not in small.headers and small.headers["content-length"] == "1000"
    assert small_body == pattern_bytes(1000)
    assert "content-encoding" not in plain.headers and plain_body == pattern_bytes(5000)
    assert "content-encoding" not in identity.headers
    assert head.status_code == 200 and head_body == b""
    assert "content-encoding" not in head.headers and head.headers["content-length"] == "5000"
    assert "content-encoding" not in other_type.headers and other_body == pattern_bytes(5000)


def test_compress_with_curl(compressing: RunningProxy, curl: str, tmp_path: Path) -> None:
    raw = tmp_path / "raw.br"
    out = subprocess.run(
        [curl, "-s", "-D", "-", "-o", str(raw), "-H", "Accept-Encoding: br", f"{compressing.url}/z/bytes/40000"],
        capture_output=True, timeout=10, check=True, text=True,
    )
    head = out.stdout.lower()
    assert "content-encoding: br" in head and "content-length" not in head
    assert brotli.decompress(raw.read_bytes()) == pattern_bytes(40000)
    decoded = subprocess.run([curl, "-s", "--compressed", f"{compressing.url}/z/chunked/40000?chunks=4"],
                             capture_output=True, timeout=10, check=True)
    assert decoded.stdout == pattern_bytes(40000)
    plain = subprocess.run([curl, "-s", "-D", "-", f"{compressing.url}/z/bytes/4000"],  # curl asks for no coding
                           capture_output=True, timeout=10, check=True)
    assert b"content-encoding" not in plain.stdout.lower()
    assert plain.stdout.endswith(pattern_bytes(4000))


# ------------------------------------------------------------------------------------------ max_body


@pytest.fixture
def bounded(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> RunningProxy:
    return make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            {"match": {"path_prefix": "/mb/"}, "upstream": "app", "strip_prefix": "/mb",
             "middleware": [{"max_body": {"max_bytes": 1000}}]},
            {"match": {"path_prefix": "/"}, "upstream": "app"},
        ],
    })


def test_max_body_refuses_a_content_length_over_the_limit_before_going_upstream(
    bounded: RunningProxy, upstream_server: UpstreamServer
) -> None:
    with client(bounded) as c:
        over = c.post("/mb/echo", content=b"x" * 1001)
    assert over.status_code == 413
    assert "1000" in over.text
    assert upstream_server.connections_accepted == 0 and upstream_server.requests == []
    with client(bounded) as c:
        fits = c.post("/mb/echo", content=b"y" * 1000)
        elsewhere = c.post("/echo", content=b"z" * 5000)  # another route: no limit
    assert fits.status_code == 200 and fits.json()["body_len"] == 1000
    assert elsewhere.status_code == 200 and elsewhere.json()["body_len"] == 5000


def chunked_post(port: int, chunks: list[bytes]) -> int | None:
    """POST a chunked body on a raw socket; the status, or None when the proxy closed without a response."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /mb/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # refused while sending: what it answered is still read
        try:
            return read_response(sock).status
        except (IncompleteResponse, ConnectionError):
            return None


def test_max_body_cuts_a_chunked_body_over_the_limit(bounded: RunningProxy, upstream_server: UpstreamServer) -> None:
    status = chunked_post(bounded.port, [b"a" * 600, b"b" * 600, b"c" * 600])
    assert status in (413, None)
    fits = chunked_post(bounded.port, [b"a" * 500, b"b" * 500])
    assert fits == 200
    # the body that fits arrived whole; the one over the limit never made a complete request upstream
    requests = upstream_server.wait_for_requests(1)
    assert [(r.target, len(r.body)) for r in requests] == [("/echo", 1000)]


def test_max_body_behind_an_async_plugin(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, plugin_module: Callable[[str, str], str]
) -> None:
    plugin_module("gw_body_plugin", "import asyncio\n\n\ndef factory(options):\n    async def mw(req, call_next):\n"
                                    "        await asyncio.sleep(0.01)\n        return await call_next(req)\n"
                                    "    return mw\n")
    proxy = make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [{"match": {"path_prefix": "/mb/"}, "upstream": "app", "strip_prefix": "/mb",
                    "middleware": [{"plugin": "gw_body_plugin:factory"}, {"max_body": {"max_bytes": 1000}}]}],
    })
    # the chunked body arrives while the plugin still waits: the limit applies once the chain reaches max_body
    assert chunked_post(proxy.port, [b"a" * 600, b"b" * 600]) in (413, None)
    with client(proxy) as c:
        assert c.post("/mb/echo", content=b"x" * 1001).status_code == 413
        fits = c.post("/mb/echo", content=b"x" * 1000)
    assert fits.status_code == 200 and fits.json()["body_len"] == 1000
    assert [len(r.body) for r in upstream_server.requests] == [1000]


# ------------------------------------------------------------------------------------------ headers


def test_headers_preset_secure(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> None:
    proxy = make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            # response_headers act as the upstream's own: the preset adds only what is absent
            {"match": {"path_prefix": "/own/"}, "upstream": "app",
             "response_headers": {"set": {"X-Frame-Options": "DENY", "X-Powered-By": "PHP/5"}},
             "middleware": [{"headers": {"preset": "secure"}}]},
            {"match": {"path_prefix": "/edit/"}, "upstream": "app",
             "middleware": [{"headers": {"set": {"X-Served-By": "fulcrum"}, "remove": ["X-Upstream-Name"]}}]},
            {"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [{"headers": {"preset": "secure"}}]},
        ],
    })
    with client(proxy) as c:
        plain = c.get("/x")
        own = c.get("/own/x")
        edited = c.get("/edit/x")
    expected = {
        "x-content-type-options": "nosniff",
        "x-frame-options": "SAMEORIGIN",
        "referrer-policy": "strict-origin-when-cross-origin",
        "strict-transport-security": "max-age=31536000; includeSubDomains",
        "cross-origin-opener-policy": "same-origin",
        "x-xss-protection": "0",
    }
    for name, value in expected.items():
        assert plain.headers.get_list(name) == [value], name
    assert own.headers.get_list("x-frame-options") == ["DENY"]
    assert own.headers["x-content-type-options"] == "nosniff"
    assert "x-powered-by" not in own.headers
    assert plain.text == "ok up\n" and own.text == "ok up\n"
    assert edited.headers["x-served-by"] == "fulcrum" and "x-upstream-name" not in edited.headers
    assert "x-content-type-options" not in edited.headers
