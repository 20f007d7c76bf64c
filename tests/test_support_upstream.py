"""The test upstream server, the raw HTTP helpers and the demo backend behave as documented."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from fulcrum.demo_backend import serve_demo_backend
from tests.support.rawhttp import (
    BadResponse,
    IncompleteResponse,
    open_conn,
    parse_responses,
    read_response,
    send_raw,
)
from tests.support.upstream import PATTERN, RefusingPort, UpstreamServer, pattern_bytes, refusing_port

H = b"Host: t\r\n"


@pytest.fixture
def up(upstream_server: UpstreamServer) -> UpstreamServer:
    return upstream_server


@pytest.fixture
def client(up: UpstreamServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.url, trust_env=False, timeout=5) as c:
        yield c


def request(sock: socket.socket, line: str, *headers: str, body: bytes = b"") -> None:
    head = "".join(f"{h}\r\n" for h in ("Host: t", *headers))
    sock.sendall(f"{line}\r\n{head}\r\n".encode() + body)


# -- basics, keep-alive, records -------------------------------------------------------------------------------


def test_default_answer_names_the_server(up: UpstreamServer, client: httpx.Client) -> None:
    r = client.get("/anything/else")
    assert r.status_code == 200
    assert r.text == "ok up\n"
    assert r.headers["x-upstream-name"] == "up"
    assert up.url == f"http://127.0.0.1:{up.port}" and up.id == f"127.0.0.1:{up.port}"


def test_name_defaults_to_id() -> None:
    with UpstreamServer() as server:
        out = send_raw(server.port, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        assert parse_responses(out)[0].body == f"ok {server.id}\n".encode()


def test_keep_alive_and_records(up: UpstreamServer, client: httpx.Client) -> None:
    for i in range(3):
        assert client.get(f"/echo?i={i}").json()["conn"] == 1
    assert up.connections_accepted == 1
    reqs = up.wait_for_requests(3)
    assert [(r.method, r.target, r.version, r.conn) for r in reqs] == [
        ("GET", f"/echo?i={i}", "HTTP/1.1", 1) for i in range(3)
    ]
    assert reqs[0].path == "/echo"
    assert reqs[0].header("HOST") == f"127.0.0.1:{up.port}"


def test_connection_close_and_http10(up: UpstreamServer) -> None:
    with open_conn(up.port) as sock:
        request(sock, "GET / HTTP/1.1", "Connection: close")
        assert read_response(sock).header("connection") == "close"
        assert sock.recv(10) == b""
    with open_conn(up.port) as sock:
        request(sock, "GET / HTTP/1.0", "Connection: keep-alive")
        assert ("Connection", "keep-alive") in read_response(sock).headers
        request(sock, "GET / HTTP/1.0")
        assert read_response(sock).status == 200
        assert sock.recv(10) == b""
    assert [r.conn for r in up.requests] == [1, 2, 2]
    assert up.requests[1].version == "HTTP/1.0"


def test_request_bodies_in_both_framings(up: UpstreamServer) -> None:
    body = b"hello world, " * 1000
    digest = hashlib.sha256(body).hexdigest()
    with open_conn(up.port) as sock:
        request(sock, "POST /echo HTTP/1.1", f"Content-Length: {len(body)}", body=body)
        fixed = json.loads(read_response(sock).body)
        chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + 4000]), body[i : i + 4000])
                           for i in range(0, len(body), 4000))
        request(sock, "POST /echo HTTP/1.1", "Transfer-Encoding: chunked",
                body=chunked + b"0\r\nX-Check: yes\r\n\r\n")
        dechunked = json.loads(read_response(sock).body)
    for e in (fixed, dechunked):
        assert (e["body_len"], e["body_sha256"], e["conn"], e["server"]) == (len(body), digest, 1, "up")
    assert dechunked["headers"] == [["Host", "t"], ["Transfer-Encoding", "chunked"]]
    assert [r.body for r in up.requests] == [body, body]
    assert up.requests[1].trailers == [("X-Check", "yes")]


def test_pipelined_requests_answered_in_order(up: UpstreamServer) -> None:
    raw = b"".join(b"GET /echo?n=%d HTTP/1.1\r\n%s\r\n" % (i, H) for i in range(4))
    raw += b"POST /echo?n=4 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabcGET /echo?n=5 HTTP/1.1\r\n" + H + b"\r\n"
    with open_conn(up.port) as sock:
        sock.sendall(raw)
        paths = [json.loads(read_response(sock).body)["path"] for _ in range(6)]
    assert paths == [f"/echo?n={i}" for i in range(6)]
    assert up.connections_accepted == 1


def test_wait_for_requests_waits_on_another_thread(up: UpstreamServer) -> None:
    with pytest.raises(TimeoutError):
        up.wait_for_requests(1, timeout=0.05)
    t = threading.Thread(target=send_raw, args=(up.port, b"GET /late HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"))
    t.start()
    assert up.wait_for_requests(1, timeout=5)[0].target == "/late"
    t.join(5)
    up.clear_records()
    assert up.requests == []


def test_malformed_request_gets_400_and_is_noted(up: UpstreamServer) -> None:
    out = send_raw(up.port, b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert up.requests == []
    assert "folding" in up.protocol_errors[0]


# -- responses by path ------------------------------------------------------------------------------------------


def test_status_and_no_body_responses(up: UpstreamServer) -> None:
    with open_conn(up.port) as sock:
        request(sock, "GET /status/418 HTTP/1.1")
        r = read_response(sock)
        assert (r.status, r.reason, r.body) == (418, "I'm a Teapot", b"status 418\n")
        for path, status in (("/status/204", 204), ("/204", 204), ("/status/304", 304)):
            request(sock, f"GET {path} HTTP/1.1")
            r = read_response(sock)
            assert (r.status, r.header("content-length"), r.body) == (status, None, b"")
        request(sock, "GET /304 HTTP/1.1")
        r = read_response(sock)
        assert (r.status, r.header("content-length"), r.body) == (304, "10", b"")
        assert r.header("etag")
        request(sock, "GET /status/103 HTTP/1.1")
        assert read_response(sock).status == 103
        assert read_response(sock).body == b"ok after 103\n"
        request(sock, "GET /bytes/3 HTTP/1.1")  # the connection is still in step: nothing stray was sent
        assert read_response(sock).body == b"012"
    assert up.connections_accepted == 1


def test_head_gets_the_get_head_without_body(up: UpstreamServer) -> None:
    with open_conn(up.port) as sock:
        for path in ("/bytes/500", "/", "/status/404", "/chunked/100", "/slow-body/1?n=3"):
            request(sock, f"GET {path} HTTP/1.1")
            get = read_response(sock)
            request(sock, f"HEAD {path} HTTP/1.1")
            head = read_response(sock, method="HEAD")
            assert head.status == get.status and head.body == b"", path
            assert head.header("content-length") == get.header("content-length"), path
            assert head.header("x-upstream-name") == "up"
        request(sock, "HEAD /truncated HTTP/1.1")  # a GET would lie about its length; a HEAD cannot
        assert read_response(sock, method="HEAD").header("content-length") == "100"
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # no body bytes were sent after any HEAD head
    assert up.connections_accepted == 1


def test_generated_bodies_in_every_framing(up: UpstreamServer, client: httpx.Client) -> None:
    n = 300_000
    expected = pattern_bytes(n)
    assert expected[: len(PATTERN) + 1] == PATTERN + PATTERN[:1]
    assert pattern_bytes(10, offset=n - 10) == expected[-10:]
    r = client.get(f"/bytes/{n}")
    assert r.content == expected and r.headers["content-length"] == str(n)
    with open_conn(up.port) as sock:
        request(sock, f"GET /chunked/{n}?chunks=7&trailer=1 HTTP/1.1")
        resp = read_response(sock)
    assert resp.body == expected
    assert resp.header("transfer-encoding") == "chunked" and resp.header("content-length") is None
    assert resp.raw.count(b"\r\n%x\r\n" % (n // 7)) == 6  # seven chunks, the first right after the head
    assert resp.trailers == [("X-Body-Sha256", hashlib.sha256(expected).hexdigest())]
    out = send_raw(up.port, f"GET /eof/{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    eof = parse_responses(out)[0]
    assert eof.body == expected
    assert eof.header("content-length") is None and eof.header("transfer-encoding") is None


def test_chunked_with_more_chunks_than_bytes(up: UpstreamServer, client: httpx.Client) -> None:
    assert client.get("/chunked/3?chunks=5").content == b"012"
    assert client.get("/chunked/0?chunks=2").content == b""


def test_slow_head_and_slow_body(up: UpstreamServer) -> None:
    with open_conn(up.port) as sock:
        t0 = time.monotonic()
        request(sock, "GET /slow-head/100 HTTP/1.1")
        assert read_response(sock).status == 200
        assert time.monotonic() - t0 >= 0.1
        t0 = time.monotonic()
        request(sock, "GET /slow-body/40?n=3&size=2 HTTP/1.1")
        sock.settimeout(5)
        head = sock.recv(4096)  # the head comes at once, before any body byte
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        assert b"Content-Length: 6\r\n" in head
        body = b""
        while len(body) < 6:
            body += sock.recv(10)
        assert body == b"012345"
        assert time.monotonic() - t0 >= 0.12


def test_hang_never_answers_and_stop_does_not_wait_for_it(up: UpstreamServer) -> None:
    with open_conn(up.port) as sock:
        request(sock, "GET /hang HTTP/1.1")
        with pytest.raises(TimeoutError):
            read_response(sock, timeout=0.2)
        assert up.wait_for_requests(1)[0].target == "/hang"
        t0 = time.monotonic()
        up.stop()
        assert time.monotonic() - t0 < 2
        sock.settimeout(5)
        assert sock.recv(10) == b""  # dropped by the stop


def test_reset_sends_rst(up: UpstreamServer) -> None:
    with open_conn(up.port) as sock:
        request(sock, "GET /reset HTTP/1.1")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


@pytest.mark.parametrize(
    ("path", "error"),
    [("/close-early", IncompleteResponse), ("/garbage", BadResponse), ("/bad-cl", BadResponse),
     ("/obs-fold", BadResponse), ("/truncated", IncompleteResponse)],
)
def test_lying_responses(up: UpstreamServer, path: str, error: type[Exception]) -> None:
    with open_conn(up.port) as sock:
        request(sock, f"GET {path} HTTP/1.1")
        with pytest.raises(error) as info:
            read_response(sock)
        if path == "/truncated":
            assert isinstance(info.value, IncompleteResponse) and len(info.value.partial) == 50
        sock.settimeout(5)
        while sock.recv(4096):  # whatever follows the error, then the server's close
            pass


def test_lying_heads_byte_exact(up: UpstreamServer) -> None:
    def get(path: str) -> bytes:
        return send_raw(up.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())

    assert get("/close-early") == b"HTTP/1.1 200 OK\r\nContent-Ty"
    assert not get("/garbage").startswith(b"HTTP/")
    assert b"Content-Length: 5\r\nContent-Length: 6\r\n" in get("/bad-cl")
    cl_te = get("/cl-and-te")
    assert b"Content-Length: 5\r\n" in cl_te and b"Transfer-Encoding: chunked\r\n" in cl_te
    assert b"\r\n  second part\r\n" in get("/obs-fold")


def test_huge_head_extra_bytes_and_continue(up: UpstreamServer) -> None:
    with open_conn(up.port) as sock:
        request(sock, "GET /huge-head?kb=16 HTTP/1.1")
        resp = read_response(sock)
        assert 16 * 1024 < resp.raw.index(b"\r\n\r\n") < 17 * 1024
        assert resp.body == b"ok up\n"
        request(sock, "GET /extra-bytes HTTP/1.1")
        assert read_response(sock).body == b"ok up\n"
        assert sock.recv(100) == b"JUNK AFTER THE RESPONSE\r\n"
    with open_conn(up.port) as sock:
        request(sock, "POST /continue HTTP/1.1", "Content-Length: 5", "Expect: 100-continue")
        interim = read_response(sock)
        assert (interim.status, interim.raw) == (100, b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        final = read_response(sock)
    assert json.loads(final.body) == {"body_len": 5, "sent_continue": True}


def test_health_follows_the_flag(up: UpstreamServer, client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    up.healthy = False
    assert client.get("/health").status_code == 503
    up.healthy = True
    assert client.get("/health").text == "ok\n"


def test_numbered_paths_need_a_number(client: httpx.Client) -> None:
    assert client.get("/bytes/x").status_code == 400
    assert client.get("/status/99").status_code == 400


# -- dropping connections, refusing ports ------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True])
def test_close_all_connections(up: UpstreamServer, reset: bool) -> None:
    with open_conn(up.port) as sock:
        request(sock, "GET / HTTP/1.1")
        assert read_response(sock).status == 200
        assert up.open_connections == 1
        up.close_all_connections(reset=reset)
        assert up.open_connections == 0
        if reset:
            with pytest.raises(ConnectionResetError):
                sock.recv(10)
        else:
            assert sock.recv(10) == b""


@pytest.mark.parametrize("make", [refusing_port, UpstreamServer.refusing_port])
def test_refusing_port_refuses(make: Callable[[], RefusingPort]) -> None:
    with make() as dead:
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", dead.port), timeout=2)
        assert dead.url == f"http://127.0.0.1:{dead.port}"


def test_dead_port_fixture(dead_port: RefusingPort) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(dead_port.url, trust_env=False, timeout=2)


def test_make_upstream_fixture(make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    assert a.port != b.port
    assert httpx.get(b.url, trust_env=False).text == "ok b\n"


# -- raw helpers ----------------------------------------------------------------------------------------------


def test_read_response_takes_exactly_one_response(up: UpstreamServer) -> None:
    with open_conn(up.port) as sock:
        request(sock, "GET /bytes/5 HTTP/1.1")
        request(sock, "GET /chunked/5?chunks=2 HTTP/1.1")
        request(sock, "GET /bytes/4 HTTP/1.1", "Connection: close")
        assert read_response(sock).body == b"01234"
        assert read_response(sock).body == b"01234"
        rest = b""
        while chunk := sock.recv(4096):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"\r\n\r\n0123")


def test_parse_responses_splits_send_raw_output(up: UpstreamServer) -> None:
    raw = b"HEAD /bytes/9 HTTP/1.1\r\n" + H + b"\r\nGET /bytes/2 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    first, second = parse_responses(send_raw(up.port, raw), methods=["HEAD", "GET"])
    assert (first.header("content-length"), first.body) == ("9", b"")
    assert second.body == b"01"


def test_send_raw_returns_at_timeout_when_peer_stays_open(up: UpstreamServer) -> None:
    t0 = time.monotonic()
    out = send_raw(up.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n", timeout=0.3)
    assert out.endswith(b"ok up\n")
    assert 0.3 <= time.monotonic() - t0 < 2


# -- demo backend ---------------------------------------------------------------------------------------------


async def test_demo_backend_answers() -> None:
    server = await serve_demo_backend("127.0.0.1", 0, "demo-1")
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as c:
            doc = (await c.get("/")).json()
            assert doc["server"] == "demo-1" and doc["path"] == "/" and doc["time"]
            assert (await c.get("/health")).status_code == 200
            t0 = time.monotonic()
            slow = await c.get("/slow?ms=50")
            assert slow.status_code == 200 and time.monotonic() - t0 >= 0.05
            assert (await c.get("/status/418")).status_code == 418
            assert (await c.get("/status/204")).content == b""
            assert (await c.get("/status/abc")).status_code == 400
            async def chunks() -> AsyncIterator[bytes]:
                yield b"abc"
                yield b"def"

            assert (await c.post("/", content=chunks())).status_code == 200  # chunked body skipped
            assert (await c.post("/", content=b"x" * 1000)).status_code == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)  # both answers on one connection, then the close
        writer.close()
        await writer.wait_closed()
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert b'"path": "/a"' in data and b'"path": "/b"' in data
    finally:
        server.close()
        await server.wait_closed()
