"""HTTP/2 from clients: h2c prior knowledge, streams on the HTTP/1.1 upstream pool, flow control, resets, GOAWAY.

Clients: h2's own client state machine over a raw socket (``tests.support.h2client``, for control of every
frame), curl ``--http2-prior-knowledge``, and httpx with ``http2=True`` over TLS (ALPN ``h2``) against
``H2Connection`` served on a TLS socket the test makes itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import trustme
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from fulcrum.proxy.http2 import PREFACE, H2Connection
from tests.proxy.harness import RunningProxy, upstream_config
from tests.support.h2client import H2Client, StreamResult
from tests.support.rawhttp import send_raw
from tests.support.upstream import RefusingPort, UpstreamServer, pattern_bytes

T = TypeVar("T", bound=Frame)
MakeProxy = Callable[[dict[str, Any]], RunningProxy]
Connect = Callable[..., H2Client]
RawSocket = Callable[[int], socket.socket]
ServeH2 = Callable[[RunningProxy, ssl.SSLContext | None], int]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Open HTTP/2 client connections (``connect(port, window=...)``); all are closed after the test."""
    opened: list[H2Client] = []

    def make(port: int, **options: Any) -> H2Client:
        client = H2Client(port, **options)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def raw_socket() -> Iterator[RawSocket]:
    """Plain TCP connections to 127.0.0.1 (``raw_socket(port)``), closed after the test."""
    opened: list[socket.socket] = []

    def make(port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close()


@pytest.fixture
def serve_h2(make_proxy: MakeProxy) -> Iterator[ServeH2]:
    """Serve a proxy's ``H2Connection`` on another port of its loop, with TLS when given a context, the way a
    TLS listener hands it connections once ALPN chose h2; the listeners close before the proxy stops."""
    listeners: list[tuple[RunningProxy, asyncio.AbstractServer]] = []

    def serve(proxy: RunningProxy, context: ssl.SSLContext | None) -> int:
        server = proxy.server
        assert server is not None

        async def start() -> asyncio.AbstractServer:
            return await proxy.loop.create_server(lambda: H2Connection(server.ctx), "127.0.0.1", 0, ssl=context)

        listener = proxy.run(start())
        listeners.append((proxy, listener))
        port: int = listener.sockets[0].getsockname()[1]
        return port

    yield serve
    for proxy, listener in listeners:

        async def stop(listener: asyncio.AbstractServer = listener) -> None:
            listener.close()
            await listener.wait_closed()

        proxy.run(stop())


def h2c_proxy(make_proxy: MakeProxy, upstream: UpstreamServer, **extra: Any) -> RunningProxy:
    config = upstream_config(upstream.url, timeouts={"connect": "1s", "read": "1s"}) | {"http2": {"h2c": True}}
    return make_proxy(config | extra)


def doc(body: bytes | bytearray) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(bytes(body))
    data["hdrs"] = {k.lower(): v for k, v in data["headers"]}
    return data


def read_frames(sock: socket.socket, timeout: float = 5) -> list[Frame]:
    """Every frame the server sends until it closes the connection (after the preface the client sent)."""
    sock.settimeout(timeout)
    raw = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        raw += chunk
    else:
        raise TimeoutError("the server did not close the connection")
    frames = []
    while len(raw) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
        frame.parse_body(memoryview(raw[9 : 9 + length]))
        frames.append(frame)
        raw = raw[9 + length :]
    return frames


def goaway_of(frames: list[Frame]) -> GoAwayFrame:
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert len(goaways) == 1, frames
    return goaways[0]


class FrameReader:
    """Frames from a socket, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.closed = False

    def _fill(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.buf += chunk

    def next(self, timeout: float = 5) -> Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    frame.parse_body(memoryview(self.buf[9 : 9 + length]))
                    self.buf = self.buf[9 + length :]
                    return frame
            if self.closed:
                return None
            if time.monotonic() > deadline:
                raise TimeoutError("no frame came")
            self._fill(deadline)

    def next_of(self, kind: type[T], timeout: float = 5) -> T:
        while True:
            frame = self.next(timeout)
            if frame is None:
                raise ConnectionError(f"closed before a {kind.__name__}")
            if isinstance(frame, kind):
                return frame

    def until_closed(self, timeout: float = 5) -> list[Frame]:
        frames = []
        while (frame := self.next(timeout)) is not None:
            frames.append(frame)
        return frames


# -- h2c: on when asked, never by Upgrade -------------------------------------------------------------


def test_get_over_h2c_prior_knowledge(make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    sid = client.request("GET", "/echo?x=1", headers=[("x-forwarded-for", "6.6.6.6"), ("cookie", "a=1"),
                                                        ("cookie", "b=2"), ("te", "trailers")])
    res = client.response(sid)
    assert res.status == 200 and res.ended
    got = doc(res.body)
    assert got["path"] == "/echo?x=1"
    assert got["http_version"] == "HTTP/1.1"
    assert got["hdrs"]["host"] == "example.test"  # from :authority
    assert got["hdrs"]["x-forwarded-for"] == "127.0.0.1"  # a client outside trusted_proxies cannot spoof it
    assert got["hdrs"]["cookie"] == "a=1; b=2"  # the crumbs of HTTP/2 joined in one field (RFC 9113 8.2.3)
    assert "te" not in got["hdrs"]
    assert res.header("x-request-id") == got["hdrs"]["x-request-id"]
    assert res.header("connection") is None and res.header("transfer-encoding") is None
    # the connection goes on: a second request on it
    again = client.response(client.request("GET", "/"))
    assert (again.status, bytes(again.body)) == (200, f"ok {upstream.name}\n".encode())


def test_h2c_is_off_by_default(make_proxy: MakeProxy, upstream: UpstreamServer) -> None:
    proxy = make_proxy(upstream_config(upstream.url))
    out = send_raw(proxy.port, PREFACE + SettingsFrame(0).serialize())
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]
    assert upstream.requests == []


def test_upgrade_h2c_is_never_honoured(make_proxy: MakeProxy, upstream: UpstreamServer) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    out = send_raw(proxy.port, b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 "), out[:100]
    assert upstream.requests[0].header("upgrade") is None


def test_preface_split_across_reads_still_switches(
    make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect, raw_socket: RawSocket
) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    sock = raw_socket(proxy.port)
    sock.sendall(PREFACE[:16])
    time.sleep(0.05)  # let the proxy read the first line on its own
    sock.sendall(PREFACE[16:])
    client = connect(proxy.port, sock=sock, preface=False)
    client.conn.initiate_connection()
    client.conn.data_to_send()  # its preface went out already, by hand
    client.send_raw(SettingsFrame(0).serialize())
    assert client.response(client.request("GET", "/")).status == 200


def test_curl_http2_prior_knowledge(make_proxy: MakeProxy, upstream: UpstreamServer, tmp_path: Any) -> None:
    curl = shutil.which("curl")
    if curl is None or "HTTP2" not in subprocess.run([curl, "--version"], capture_output=True, text=True).stdout:
        pytest.skip("curl with HTTP/2 is not installed")
    proxy = h2c_proxy(make_proxy, upstream)
    body = pattern_bytes(1_000_000, 7)
    (tmp_path / "body").write_bytes(body)
    out = subprocess.run(
        [curl, "-sS", "--http2-prior-knowledge", "-w", "\\n%{http_version} %{http_code}", "--data-binary",
         f"@{tmp_path / 'body'}", f"{proxy.url}/echo"],
        capture_output=True, timeout=20, check=True,
    ).stdout
    text, _, tail = out.rpartition(b"\n")
    assert tail == b"2 200"
    assert doc(text)["body_sha256"] == hashlib.sha256(body).hexdigest()


# -- bodies both ways ----------------------------------------------------------------------------------


def test_megabyte_download_and_upload(make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    down = client.response(client.request("GET", "/bytes/1000000"))
    assert down.status == 200 and down.header("content-length") == "1000000"
    assert bytes(down.body) == pattern_bytes(1_000_000)
    chunked = client.response(client.request("GET", "/chunked/300000?chunks=7"))
    assert bytes(chunked.body) == pattern_bytes(300_000) and chunked.ended
    body = pattern_bytes(1_000_000, 3)
    # more than one window: the body keeps coming only as the proxy gives credit back
    up = client.response(client.request("POST", "/echo", headers=[("content-length", str(len(body)))], body=body))
    got = doc(up.body)
    assert got["body_len"] == len(body) and got["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert got["hdrs"]["content-length"] == str(len(body))
    no_length = client.response(client.request("POST", "/echo", body=body))
    got = doc(no_length.body)
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert got["hdrs"]["transfer-encoding"] == "chunked"  # no content-length and more to come: chunked upstream


def test_small_body_with_its_head_goes_with_a_length(
    make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect
) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    got = doc(client.response(client.request("POST", "/echo", body=b"hello")).body)
    assert got["body_len"] == 5
    assert got["hdrs"]["content-length"] == "5" and "transfer-encoding" not in got["hdrs"]


def test_head_204_304_and_100_continue(make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    head = client.response(client.request("HEAD", "/bytes/5000"))
    assert (head.status, head.header("content-length"), bytes(head.body), head.ended) == (200, "5000", b"", True)
    assert client.response(client.request("GET", "/204")).status == 204
    assert client.response(client.request("GET", "/304")).status == 304
    sid = client.request("POST", "/continue", headers=[("expect", "100-continue"), ("content-length", "3")],
                         end=False)
    client.wait(lambda: client.results[sid].interim == [100])
    client.send_body(sid, b"abc")
    res = client.response(sid)
    assert res.status == 200 and json.loads(bytes(res.body)) == {"body_len": 3, "sent_continue": True}


# -- streams: multiplexing and flow control ---------------------------------------------------------


def test_concurrent_streams_are_served_by_the_upstream_pool(
    make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect
) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    for _ in range(2):
        sids = [client.request("GET", "/slow-head/300") for _ in range(20)]
        results = [client.response(sid) for sid in sids]
        assert all(r.status == 200 and bytes(r.body) == f"ok {upstream.name}\n".encode() for r in results)
    # 20 at once need 20 upstream connections; the second round finds them in the pool
    assert upstream.connections_accepted == 20
    assert len(upstream.requests) == 40
    assert client.conn.remote_settings.max_concurrent_streams == 100


def test_max_concurrent_streams_is_advertised(
    make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect
) -> None:
    proxy = h2c_proxy(make_proxy, upstream, http2={"h2c": True, "max_concurrent_streams": 7})
    client = connect(proxy.port)
    client.response(client.request("GET", "/"))
    assert client.conn.remote_settings.max_concurrent_streams == 7


def test_slow_reading_stream_does_not_stall_another(
    make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect
) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port, window=1024)  # every stream's window: 1 KiB
    client.auto_ack = set()
    slow = client.request("GET", "/bytes/1000000")
    client.wait(lambda: len(client.results[slow].body) == 1024)
    fast = client.request("GET", "/bytes/300000")
    client.auto_ack = {fast}
    res = client.response(fast)
    assert bytes(res.body) == pattern_bytes(300_000)
    assert len(client.results[slow].body) == 1024 and not client.results[slow].done
    # the slow stream's upstream was paused, not dropped: credit back, and the rest comes whole
    client.auto_ack = None
    client.ack(slow, 1024)
    assert bytes(client.response(slow).body) == pattern_bytes(1_000_000)


def test_client_reset_mid_response_drops_that_upstream(
    make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect
) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    sid = client.request("GET", "/slow-body/50?n=100&size=1000")
    client.wait(lambda: len(client.results[sid].body) >= 2000)
    client.reset(sid)
    deadline = time.monotonic() + 5
    while upstream.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.open_connections == 0  # the upstream connection of the reset stream was closed
    assert client.response(client.request("GET", "/")).status == 200  # the connection goes on


def test_upstream_errors_are_http2_responses(
    make_proxy: MakeProxy, upstream: UpstreamServer, dead_port: RefusingPort, connect: Connect
) -> None:
    config = {
        "http2": {"h2c": True},
        "upstreams": {
            "dead": {"servers": [dead_port.url]},
            "live": {"servers": [upstream.url], "timeouts": {"read": "300ms"}},
        },
        "routes": [{"match": {"path_prefix": "/dead"}, "upstream": "dead"}, {"match": {"path_prefix": "/"},
                                                                             "upstream": "live"}],
    }
    proxy = make_proxy(config)
    client = connect(proxy.port)
    bad = client.response(client.request("GET", "/dead"))
    assert bad.status == 502 and b"could not connect" in bad.body and bad.ended
    slow = client.response(client.request("GET", "/hang"))
    assert slow.status == 504 and b"read timeout" in slow.body
    truncated = client.response(client.request("GET", "/truncated"))
    # cut short upstream: what came, then a reset, never a made-up end of stream
    assert truncated.status == 200 and len(truncated.body) == 50
    assert truncated.reset == ErrorCodes.INTERNAL_ERROR and not truncated.ended
    assert client.response(client.request("GET", "/")).status == 200


# -- the same policy and limits as HTTP/1.1 ------------------------------------------------------------

MALFORMED = [
    ("connection header", [("connection", "keep-alive")]),
    ("transfer-encoding", [("transfer-encoding", "chunked")]),
    ("upgrade", [("upgrade", "websocket")]),
    ("te other than trailers", [("te", "gzip")]),
    ("upper-case name", [("X-Upper", "1")]),
    ("value with a newline", [("x-a", "a\nb")]),
    ("pseudo-header after a regular one", [("x-a", "1"), (":foo", "bar")]),
    ("host differs from :authority", [("host", "other.test")]),
]


@pytest.mark.parametrize(("name", "headers"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_resets_its_stream_only(
    make_proxy: MakeProxy, upstream: UpstreamServer, name: str, headers: list[tuple[str, str]], connect: Connect
) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    good = client.request("GET", "/slow-head/200")
    bad = client.request("GET", "/echo", headers=headers)
    assert client.response(bad).reset == ErrorCodes.PROTOCOL_ERROR
    assert client.response(good).status == 200
    assert client.response(client.request("GET", "/")).status == 200
    assert [r.path for r in upstream.requests] == ["/slow-head/200", "/"]  # nothing of the bad one upstream
    assert client.goaway is None


def test_missing_path_resets_the_stream(make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    sid = client.conn.get_next_available_stream_id()
    client.results[sid] = StreamResult()
    client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"t")],
                             end_stream=True)
    client.flush()
    assert client.response(sid).reset == ErrorCodes.PROTOCOL_ERROR
    assert upstream.requests == []


def test_limits_answer_on_the_stream(make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect) -> None:
    proxy = h2c_proxy(make_proxy, upstream, limits={"max_body_bytes": "1k", "max_request_line": "1k"})
    client = connect(proxy.port)
    declared = client.response(client.request("POST", "/echo", headers=[("content-length", "5000")],
                                              body=b"x" * 5000))
    assert declared.status == 413 and b"request id: " in declared.body
    streamed = client.request("POST", "/echo", body=b"x" * 800, end=False)
    client.send_body(streamed, b"y" * 800)
    assert client.response(streamed).status == 413
    assert client.response(client.request("GET", "/" + "a" * 2000)).status == 414
    assert client.response(client.request("GET", "/", authority="")).status == 400
    assert client.response(client.request("GET", "/")).status == 200
    assert [r.path for r in upstream.requests][-1] == "/"
    assert all(r.path != "/echo" or r.body == b"" for r in upstream.requests)


def test_stalled_request_body_gets_408(make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect) -> None:
    proxy = h2c_proxy(make_proxy, upstream, limits={"header_timeout": "300ms"})
    client = connect(proxy.port)
    sid = client.request("POST", "/echo", headers=[("content-length", "10")], end=False)
    res = client.response(sid)
    assert res.status == 408
    assert client.response(client.request("GET", "/")).status == 200


def test_idle_connection_gets_goaway(make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect) -> None:
    proxy = h2c_proxy(make_proxy, upstream, limits={"keepalive_timeout": "300ms"})
    client = connect(proxy.port)
    assert client.response(client.request("GET", "/")).status == 200
    client.wait_closed()
    assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR


# -- protocol violations: the protocol's own error, one log line, the connection closed -------------------


def protocol_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fulcrum.proxy"]


def test_bad_preface_gets_goaway_protocol_error(
    make_proxy: MakeProxy, upstream: UpstreamServer, caplog: pytest.LogCaptureFixture, raw_socket: RawSocket
) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum")
    proxy = h2c_proxy(make_proxy, upstream)
    sock = raw_socket(proxy.port)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize())
    assert goaway_of(read_frames(sock)).error_code == ErrorCodes.PROTOCOL_ERROR
    records = protocol_log(caplog)
    assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert upstream.requests == []


def test_garbage_handed_to_the_protocol_gets_goaway(
    make_proxy: MakeProxy, upstream: UpstreamServer, raw_socket: RawSocket, serve_h2: ServeH2
) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    port = serve_h2(proxy, None)
    sock = raw_socket(port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    frames = read_frames(sock)
    assert isinstance(frames[0], SettingsFrame)  # the server's preface comes first
    assert goaway_of(frames).error_code == ErrorCodes.PROTOCOL_ERROR
    assert upstream.requests == []


def test_header_block_over_the_limit_gets_goaway(
    make_proxy: MakeProxy, upstream: UpstreamServer, caplog: pytest.LogCaptureFixture, connect: Connect
) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum")
    proxy = h2c_proxy(make_proxy, upstream, limits={"max_header_bytes": "4k"})
    client = connect(proxy.port)
    client.request("GET", "/echo", headers=[(f"x-h{i}", "v" * 100) for i in range(60)])
    client.wait_closed()
    assert client.goaway is not None and client.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    records = protocol_log(caplog)
    assert len(records) == 1 and records[0].exc_info is None
    assert upstream.requests == []


def test_data_beyond_the_window_gets_goaway_flow_control_error(
    make_proxy: MakeProxy, upstream: UpstreamServer, caplog: pytest.LogCaptureFixture, connect: Connect
) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum")
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"), (b":authority", b"t")]
    head = HeadersFrame(1, client.conn.encoder.encode(fields), flags=["END_HEADERS"])
    frames = [DataFrame(1, b"x" * 16384) for _ in range(5)]  # 80 KiB into a 64 KiB window
    client.send_raw(head.serialize() + b"".join(f.serialize() for f in frames))
    client.wait_closed()
    assert client.goaway is not None and client.goaway.error_code == ErrorCodes.FLOW_CONTROL_ERROR
    records = protocol_log(caplog)
    assert len(records) == 1 and records[0].exc_info is None
    # no request reached the upstream (the body's first bytes may have been read before the overflow, so an
    # upstream connection may have opened; what it got is never a whole request)
    assert upstream.requests == []


def test_more_streams_than_allowed_get_goaway(
    make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect
) -> None:
    proxy = h2c_proxy(make_proxy, upstream, http2={"h2c": True, "max_concurrent_streams": 2})
    client = connect(proxy.port)
    for _ in range(3):  # sent before the client reads the proxy's SETTINGS, which would have stopped it
        client.request("GET", "/slow-head/300")
    client.wait_closed()
    assert client.goaway is not None and client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert len(upstream.requests) <= 2


# -- graceful stop --------------------------------------------------------------------------------------


def test_shutdown_sends_goaway_and_finishes_open_streams(
    make_proxy: MakeProxy, upstream: UpstreamServer, connect: Connect
) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    client = connect(proxy.port)
    client.response(client.request("GET", "/"))
    sid = client.request("GET", "/slow-head/500")
    upstream.wait_for_requests(2)
    stopper = threading.Thread(target=proxy.stop)
    stopper.start()
    try:
        # read as frames: h2's client state machine takes nothing more after a GOAWAY
        reader = FrameReader(client.sock)
        goaway = reader.next_of(GoAwayFrame)
        assert goaway.error_code == ErrorCodes.NO_ERROR and goaway.last_stream_id == sid
        late = HeadersFrame(sid + 2, client.conn.encoder.encode(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"t")]),
            flags=["END_HEADERS", "END_STREAM"])
        client.send_raw(late.serialize())
        frames = reader.until_closed()
    finally:
        stopper.join(15)
    refused = [f for f in frames if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in refused] == [(sid + 2, ErrorCodes.REFUSED_STREAM)]
    heads = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == sid]
    assert len(heads) == 1 and (b":status", b"200") in client.conn.decoder.decode(heads[0].data, raw=True)
    body = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == sid)
    assert body == f"ok {upstream.name}\n".encode()
    assert any("END_STREAM" in f.flags for f in frames if f.stream_id == sid)
    assert isinstance(frames[-1], GoAwayFrame) and frames[-1].error_code == ErrorCodes.NO_ERROR
    assert len(upstream.requests) == 2  # the refused stream went nowhere


# -- over TLS, chosen by ALPN (the protocol served on a TLS socket of the test's own) ------------------------


def test_httpx_over_tls_with_alpn_h2(make_proxy: MakeProxy, upstream: UpstreamServer, serve_h2: ServeH2) -> None:
    proxy = h2c_proxy(make_proxy, upstream)
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    context.set_alpn_protocols(["h2"])
    port = serve_h2(proxy, context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    body = pattern_bytes(200_000)
    with httpx.Client(http2=True, verify=client_context, trust_env=False, timeout=10) as client:
        res = client.get(f"https://localhost:{port}/echo")
        assert res.http_version == "HTTP/2" and res.status_code == 200
        assert doc(res.content)["hdrs"]["host"] == f"localhost:{port}"
        posted = client.post(f"https://localhost:{port}/echo", content=body)
        assert posted.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert client.get(f"https://localhost:{port}/bytes/300000").content == pattern_bytes(300_000)
