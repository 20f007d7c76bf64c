"""Request heads forwarded from their raw bytes, checked against the parsed-header path on random requests.

The client side no longer parses each header: it finds each head in the bytes read, cuts out the lines
Fulcrum handles itself (framing, hop-by-hop, forwarding headers, the request id, what Connection names) and
forwards the rest as it came. These tests send random requests through the real proxy, several pipelined on
one connection and cut at random points into reads (so heads and chunked bodies span reads and follow each
other within one), and compare what the upstream received with what the parsed-header path says it must
receive: the same head parsed header by header with httptools, with the header policy applied per header.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.proxy.harness import RunningProxy, upstream_config
from tests.support.rawhttp import open_conn, read_response
from tests.support.upstream import UpstreamServer

# The names Fulcrum handles and does not pass on: it writes its own (or none) for these.
CUT = frozenset((
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-request-id",
))  # fmt: skip

REGULAR = ["Accept", "accept-language", "User-Agent", "X-A", "x-b", "X-Long-Name-Of-A-Header", "Sec-Fetch-Site",
           "sec-ch-ua", "Cache-Control", "Referer", "Cookie", "COOKIE", "Hostname", "X-Forwarded-Port", "Tee",
           "Contents", "Content-Type", "Connectionless", "Upgrade-Insecure-Requests", "e", "K"]
HANDLED = ["X-Forwarded-For", "x-forwarded-proto", "X-FORWARDED-HOST", "Forwarded", "X-Request-ID",
           "Keep-Alive", "TE", "Trailer", "Proxy-Connection", "Upgrade"]

_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24)
_ows = st.sampled_from(["", " ", "  ", "\t", " \t"])


@dataclass
class Sent:
    """One request as sent, and what the parsed-header path says the upstream gets."""

    raw: bytes
    target: str
    body: bytes
    expected: list[tuple[str, str]] = field(default_factory=list)


@st.composite
def requests(draw: st.DrawFn, case: int, index: int) -> Sent:
    lines: list[tuple[str, str, str, str]] = []  # name, leading and trailing whitespace, value
    for _ in range(draw(st.integers(0, 14))):
        name = draw(st.sampled_from(REGULAR + HANDLED))
        lines.append((name, draw(_ows), draw(_ows), draw(_value)))
    host = ("Host" if draw(st.booleans()) else "host", " ", "", "shop.example")
    lines.insert(draw(st.integers(0, len(lines))), host)
    if draw(st.booleans()):  # a Connection header naming some of the others (never close: more requests follow)
        named = draw(st.lists(st.sampled_from(["X-A", "x-b", "Accept", "keep-alive", "Sec-Fetch-Site"]), max_size=3))
        lines.insert(draw(st.integers(0, len(lines))), ("Connection", " ", "", ", ".join(named) or "keep-alive"))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(st.binary(max_size=300)) if framing != "none" else b""
    framed = b""
    if framing == "length":
        lines.insert(draw(st.integers(0, len(lines))), ("Content-Length", " ", "", str(len(body))))
        framed = body
    elif framing == "chunked":
        lines.insert(draw(st.integers(0, len(lines))), ("Transfer-Encoding", " ", "", "chunked"))
        rest = body
        while rest:
            size = draw(st.integers(1, max(1, len(rest))))
            ext = draw(st.sampled_from(["", ";a=b", ";x"]))
            framed += b"%x%s\r\n%s\r\n" % (size, ext.encode(), rest[:size])
            rest = rest[size:]
        framed += b"0\r\n" + (b"X-Trailer: t\r\n" if draw(st.booleans()) else b"") + b"\r\n"
    target = f"/echo?case={case}&i={index}"
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{n}:{a}{v}{b}\r\n" for n, a, b, v in lines) + "\r\n"
    sent = Sent(head.encode("latin-1") + framed, target, body)
    sent.expected = parsed_path(head.encode("latin-1"))
    return sent


def parsed_path(head: bytes) -> list[tuple[str, str]]:
    """The header lines the upstream must get, by the per-header path: httptools hands each header over, and
    each is kept or cut by name, then the lines that Connection names are cut too."""

    class Collect:
        def __init__(self) -> None:
            self.pairs: list[tuple[bytes, bytes]] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.pairs.append((name, value))

    proto = Collect()
    httptools.HttpRequestParser(proto).feed_data(head)
    named: set[str] = set()
    for name, value in proto.pairs:
        if name.lower() == b"connection":
            named |= {t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()}
    named -= {"close", "keep-alive"}
    return [(n.decode("latin-1"), v.decode("latin-1").strip()) for n, v in proto.pairs
            if n.decode("latin-1").lower() not in CUT | named]


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(name="raw") as server:
        yield server


@pytest.fixture(scope="module")
def raw_proxy(echo_upstream: UpstreamServer) -> Iterator[RunningProxy]:
    with RunningProxy(upstream_config(echo_upstream.url)) as proxy:
        yield proxy


_case = iter(range(1, 1_000_000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_pipelined_heads_reach_the_upstream_as_the_parsed_path_says(
    data: st.DataObject, raw_proxy: RunningProxy, echo_upstream: UpstreamServer
) -> None:
    case = next(_case)
    sent = [data.draw(requests(case, i)) for i in range(data.draw(st.integers(1, 3)))]
    stream = b"".join(s.raw for s in sent)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=5))))
    with open_conn(raw_proxy.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        last = 0
        for cut in [*cuts, len(stream)]:
            sock.sendall(stream[last:cut])
            last = cut
        for _ in sent:
            assert read_response(sock).status == 200
    got = {r.target: r for r in echo_upstream.requests if f"case={case}&" in r.target}
    assert len(got) == len(sent)
    for s in sent:
        r = got[s.target]
        assert r.body == s.body
        passed = [(n, v.strip()) for n, v in r.headers if n.lower() not in CUT]
        assert passed == s.expected, (s.raw, r.headers)
        assert r.header("x-forwarded-for") == "127.0.0.1"
        assert len(r.header_values("x-request-id")) == 1


def test_a_head_dribbled_a_byte_at_a_time_is_forwarded_whole(
    raw_proxy: RunningProxy, echo_upstream: UpstreamServer
) -> None:
    head = b"GET /echo?dribble=1 HTTP/1.1\r\nHost: a\r\nX-One:  1 \r\nConnection: x-one\r\nX-Two: 2\r\n\r\n"
    with open_conn(raw_proxy.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(head)):
            sock.sendall(head[i : i + 1])
        assert read_response(sock).status == 200
    r = next(r for r in echo_upstream.requests if r.target == "/echo?dribble=1")
    assert [(n, v) for n, v in r.headers if n.lower() not in CUT] == [("Host", "a"), ("X-Two", "2")]


def test_a_request_after_a_chunked_body_in_the_same_read_is_found(
    raw_proxy: RunningProxy, echo_upstream: UpstreamServer
) -> None:
    # the chunk data looks like a request head: only the framing says where the next request starts
    fake = b"GET /echo?smuggled=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    first = (b"POST /echo?chunked=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
             + b"%x;ext=1\r\n" % len(fake) + fake + b"\r\n0\r\nX-T: 1\r\n\r\n")
    second = b"GET /echo?after=1 HTTP/1.1\r\nHost: a\r\nX-After: yes\r\n\r\n"
    with open_conn(raw_proxy.port) as sock:
        sock.sendall(first + second)
        assert read_response(sock).status == 200
        assert read_response(sock).status == 200
    targets = [r.target for r in echo_upstream.requests]
    assert "/echo?smuggled=1" not in targets
    chunked = next(r for r in echo_upstream.requests if r.target == "/echo?chunked=1")
    assert chunked.body == fake
    after = next(r for r in echo_upstream.requests if r.target == "/echo?after=1")
    assert after.header("x-after") == "yes"


def test_blank_lines_before_a_request_line_are_skipped(
    raw_proxy: RunningProxy, echo_upstream: UpstreamServer
) -> None:
    with open_conn(raw_proxy.port) as sock:
        sock.sendall(b"GET /echo?one=1 HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"\r\nGET /echo?two=1 HTTP/1.1\r\nHost: a\r\nX-Two: 2\r\n\r\n")
        assert read_response(sock).status == 200
        assert read_response(sock).status == 200
    two = next(r for r in echo_upstream.requests if r.target == "/echo?two=1")
    assert two.header("x-two") == "2"


def test_header_routes_and_middleware_see_the_lines_of_a_raw_head(
    make_proxy: Callable[..., RunningProxy], echo_upstream: UpstreamServer
) -> None:
    proxy = make_proxy(upstream_config(echo_upstream.url) | {"routes": [
        {"match": {"headers": {"X-Canary": "1"}}, "upstream": "app",
         "request_headers": {"set": {"X-Route": "canary"}, "remove": ["X-Drop"]}},
        {"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [{"request_id": {}}]},
    ]})
    with open_conn(proxy.port) as sock:
        sock.sendall(b"GET /echo?canary=1 HTTP/1.1\r\nHost: a\r\nX-Drop: x\r\nx-canary:  1\r\nX-Keep: k\r\n\r\n"
                     b"GET /echo?plain=1 HTTP/1.1\r\nHost: a\r\nX-Drop: x\r\n\r\n")
        assert read_response(sock).status == 200
        assert read_response(sock).status == 200
    canary = next(r for r in echo_upstream.requests if r.target == "/echo?canary=1")
    assert canary.header("x-route") == "canary" and canary.header("x-drop") is None
    assert canary.header("x-keep") == "k" and canary.header("x-canary") == "1"
    plain = next(r for r in echo_upstream.requests if r.target == "/echo?plain=1")
    assert plain.header("x-route") is None and plain.header("x-drop") == "x"
