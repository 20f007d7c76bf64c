"""The pass over a request head's bytes, and what the request line is read for.

``index_head`` (C) and ``_index_head_py`` (the same in Python, used where the C module is not built) must
agree byte for byte on any input: random heads with handled and unhandled names in any case, names that
differ from a handled one by a byte, blanks around values, bytes before the head (earlier pipelined
requests) and after it (bodies with CRLFs of their own), and inputs with no blank line at all.

The method, version and keep-alive decision are now read from the request line instead of asked of the
parser: random requests go through the real proxy, and what it does (the method the upstream gets,
whether the connection stays open, 505 for another major version) must match what httptools says of
the same bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fulcrum.proxy import rawhead
from tests.proxy.harness import RunningProxy, upstream_config
from tests.support.rawhttp import IncompleteResponse, open_conn, read_response
from tests.support.upstream import UpstreamServer

_NAMES = [
    "Host", "host", "HOST", "Content-Length", "transfer-encoding", "Connection", "X-Forwarded-For",
    "x-forwarded-proto", "X-Forwarded-Host", "Forwarded", "X-Request-ID", "Expect", "Cookie", "Upgrade",
    "Sec-WebSocket-Key", "sec-websocket-version", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
    # near misses: one byte off, longer, shorter, a digit or symbol where a letter would be
    "Hostx", "Hos", "0ost", "Host-", "Cookies", "TEE", "T", "Xonnection", "Connectio", "Proxy_Connection",
    "0roxy-connection", "x-forwarded-fo", "Accept", "User-Agent", "sec-fetch-mode", "A", "e",
]  # fmt: skip
_value = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_blank = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t "])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    lines = [draw(st.sampled_from([b"GET / HTTP/1.1", b"POST /x?y HTTP/1.0", b"M /"]))]
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(_NAMES)).encode()
        if draw(st.booleans()):
            name = bytes(c ^ 0x20 if chr(c).isalpha() and draw(st.booleans()) else c for c in name)  # any case
        lines.append(name + b":" + draw(_blank) + draw(_value) + draw(_blank))
    if draw(st.booleans()):
        lines.append(draw(_value))  # a line without a colon (llhttp would refuse it; the two must still agree)
    head = b"\r\n".join(lines) + b"\r\n"
    return head + draw(st.sampled_from([b"\r\n", b"", b"\r", b"\n\r\n"]))


@pytest.mark.skipif(rawhead.index_head is rawhead._index_head_py, reason="the C module is not built here")
@settings(max_examples=400, deadline=None)
@given(before=st.binary(max_size=12), head=heads(), after=st.binary(max_size=40))
def test_the_c_pass_and_the_python_pass_agree(before: bytes, head: bytes, after: bytes) -> None:
    source = before + head + after
    for start in {0, len(before)}:
        for slot in (rawhead.REQUEST, rawhead.RESPONSE):
            assert rawhead.index_head(source, start, slot) == rawhead._index_head_py(source, start, slot)


def test_what_the_pass_reports() -> None:
    head = b"GET / HTTP/1.1\r\nHost:  a.example \r\nUser-Agent: x\r\nx-forwarded-for:1\r\nHostx: no\r\n\r\nBODY"
    for index in (rawhead.index_head, rawhead._index_head_py):
        found = index(head, 0, rawhead.REQUEST)
        assert found is not None
        blank, first = found[0], found[1]
        assert head[blank : blank + 2] == b"\r\n" and head[blank + 2 :] == b"BODY"
        assert head[first:].startswith(b"Host:")
        entries = [found[i : i + 5] for i in range(2, len(found), 5)]
        assert [head[vs:ve] for _, _, vs, ve, _ in entries] == [b"a.example", b"1"]
        assert [head[at:nxt] for _, at, _, _, nxt in entries] == [b"Host:  a.example \r\n", b"x-forwarded-for:1\r\n"]
        assert index(b"GET / HTTP/1.1\r\nHost: a\r\n", 0, rawhead.REQUEST) is None
        assert index(b"GET / HTTP/1.1", 0, rawhead.REQUEST) is None


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(name="line") as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: UpstreamServer) -> Iterator[RunningProxy]:
    with RunningProxy(upstream_config(upstream.url)) as running:
        yield running


def _parser_says(raw: bytes) -> tuple[bytes, str, bool]:
    """What httptools says of a request once its head is complete (after the message it has reset)."""
    said: list[tuple[bytes, str, bool]] = []

    class Sink:
        def on_headers_complete(self) -> None:
            said.append((parser.get_method(), parser.get_http_version(), parser.should_keep_alive()))

    parser = httptools.HttpRequestParser(Sink())
    parser.feed_data(raw)
    return said[0]


_case = iter(range(1, 1_000_000))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND"]),
    minor=st.sampled_from(["0", "1"]),
    connection=st.lists(st.sampled_from(["close", "Close", "keep-alive", "Keep-Alive", "x-a", " close ", ""]),
                        max_size=3),
    proxy_connection=st.sampled_from([None, "close", "keep-alive"]),
)
def test_the_request_line_is_read_as_the_parser_reads_it(
    method: str, minor: str, connection: list[str], proxy_connection: str | None,
    proxy: RunningProxy, upstream: UpstreamServer,
) -> None:
    case = next(_case)
    head = f"{method} /echo?line={case} HTTP/1.{minor}\r\nHost: a\r\n"
    for value in connection:
        head += f"Connection:{value}\r\n"
    if proxy_connection is not None:
        head += f"Proxy-Connection: {proxy_connection}\r\n"
    raw = (head + "\r\n").encode()
    want_method, _, want_keep_alive = _parser_says(raw)
    with open_conn(proxy.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(raw)
        response = read_response(sock, method=method)
        assert response.status == 200
        stays_open = True
        sock.sendall(f"GET /echo?after={case} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        try:
            stays_open = read_response(sock, timeout=2.0).status == 200
        except (IncompleteResponse, ConnectionError):
            stays_open = False
    assert stays_open == want_keep_alive
    got = next(r for r in upstream.requests if r.target == f"/echo?line={case}")
    assert got.method == want_method.decode()


@pytest.mark.parametrize(("version", "status"), [("2.0", 505), ("0.9", 505), ("3.1", 505), ("1.2", 200)])
def test_other_major_versions_are_refused(
    proxy: RunningProxy, upstream: UpstreamServer, version: str, status: int
) -> None:
    """Any major version but 1 gets 505 and never reaches the upstream; a later 1.x minor is served as 1.1."""
    with open_conn(proxy.port) as sock:
        sock.sendall(f"GET /echo?version={version} HTTP/{version}\r\nHost: a\r\n\r\n".encode())
        assert read_response(sock).status == status
    reached = [r for r in upstream.requests if r.target == f"/echo?version={version}"]
    assert len(reached) == (1 if status == 200 else 0)
    assert all(r.version == "HTTP/1.1" for r in reached)
