"""TCP services through a real proxy, with real clients and servers: what a user of HAProxy ``mode tcp`` or
nginx ``stream`` expects of them."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fulcrum.config import parse_config
from fulcrum.state.tcp import TcpServer as ServerState
from tests.proxy.harness import RunningProxy
from tests.support.tcpserver import TcpServer
from tests.support.upstream import RefusingPort, UpstreamServer, pattern_bytes
from tests.tcp.conftest import closed_by_peer, connect, read_all, read_line, tcp_config, tcp_port

MakeProxy = Callable[[dict[str, Any]], RunningProxy]
MakeServer = Callable[..., TcpServer]


def state(proxy: RunningProxy, service: str) -> dict[str, ServerState]:
    """The proxy's runtime state of each server of ``service``, by address (read on the proxy's loop)."""
    assert proxy.server is not None
    tcp = proxy.server.tcp
    return proxy.call(lambda: {s.id: s for s in tcp.groups[service].servers})


def counters(proxy: RunningProxy, service: str) -> tuple[int, int, int]:
    """(open, accepted, unserved) client connections of ``service``."""
    assert proxy.server is not None
    tcp = proxy.server.tcp
    return proxy.call(lambda: (lambda c: (c.active, c.total, c.unserved))(tcp.groups[service].counters))


def wait_for(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def greeting(port: int, source: str | None = None) -> tuple[socket.socket, str]:
    """A connection to a service of greeting servers, and the name of the server it reached."""
    sock = connect(port, source)
    return sock, read_line(sock).decode().strip()


def served_by(port: int, source: str | None = None) -> str:
    """The name of the greeting server a new connection reaches (the connection is closed again)."""
    sock, name = greeting(port, source)
    sock.close()
    return name


def refused(port: int) -> bool:
    """Whether nothing listens on ``port`` (a connect caught in the backlog of a listener closing is reset)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


# ---------------------------------------------------------------- the byte pipe


def test_echo_through_a_tcp_service(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    echo = make_tcp_server("echo")
    proxy = make_proxy(tcp_config({"db": {"servers": [echo.address]}}))
    port = tcp_port(proxy, "db")
    message = pattern_bytes(300_000)
    lines = (b"hello\n", b"\x00\xff binary \r\n", message)
    with connect(port) as sock:
        for line in lines:
            sock.sendall(line)
            got = b""
            while len(got) < len(line):
                got += sock.recv(65536)
            assert got == line
    echo.wait_open(0)  # the client's close reached the server
    wait_for(lambda: counters(proxy, "db")[0] == 0, what="the client connection to end")
    server = state(proxy, "db")[echo.address]
    assert (server.connections, server.active) == (1, 0)
    assert server.bytes_to_server == server.bytes_to_client == sum(map(len, lines))


def test_server_speaks_first(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    """A server that sends first (a database banner) reaches a client that has sent nothing."""
    banner = make_tcp_server("banner", mode="greet")
    proxy = make_proxy(tcp_config({"db": {"servers": [banner.address]}}))
    sock, name = greeting(tcp_port(proxy, "db"))
    with sock:
        assert name == "banner"


def test_http_client_through_a_tcp_service(make_proxy: MakeProxy, make_upstream: Callable[..., UpstreamServer]) -> None:
    """L4 carries any protocol: a keep-alive HTTP client through a TCP service talks to the server unchanged."""
    web = make_upstream(name="web")
    proxy = make_proxy(tcp_config({"web4": {"servers": [web.url.removeprefix("http://")]}}))
    with httpx.Client(base_url=f"http://127.0.0.1:{tcp_port(proxy, 'web4')}", trust_env=False, timeout=5) as c:
        first = c.get("/echo", headers={"X-Forwarded-For": "kept as sent"}).json()
        second = c.get("/echo").json()
    assert first["conn"] == second["conn"]  # one client connection, one server connection
    assert ["X-Forwarded-For", "kept as sent"] in first["headers"]  # bytes are not rewritten


def test_a_dead_server_closes_the_client(make_proxy: MakeProxy, dead_port: RefusingPort) -> None:
    proxy = make_proxy(tcp_config({"db": {"servers": [dead_port.id]}}))
    with connect(tcp_port(proxy, "db")) as sock:
        assert closed_by_peer(sock)
    wait_for(lambda: counters(proxy, "db") == (0, 1, 1), what="the connection to be counted unserved")
    assert state(proxy, "db")[dead_port.id].connect_failures == 1


def test_half_close_gets_the_answer(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    """The client shuts down writing; the server sees the end of input and its answer still comes back."""
    counter = make_tcp_server("count", mode="count")
    proxy = make_proxy(tcp_config({"db": {"servers": [counter.address]}}))
    body = pattern_bytes(1_000_000)
    with connect(tcp_port(proxy, "db")) as sock:
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock)
    assert answer == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()


def test_backpressure_bounds_what_the_proxy_holds(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    """A client that does not read: the proxy stops reading the server (which then stops sending) instead of
    buffering what it sends; reading again resumes the flow, bytes intact."""
    total = 256 * 1024 * 1024
    flood = make_tcp_server("flood", mode="flood", flood_bytes=total)
    proxy = make_proxy(tcp_config({"bulk": {"servers": [flood.address]}}))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", tcp_port(proxy, "bulk")))
    with sock:
        stalled = _stalled(flood)
        assert stalled < total // 4, f"the server sent {stalled} bytes to a client reading none"
        assert proxy.server is not None
        tcp = proxy.server.tcp

        def held() -> list[tuple[int, bool]]:
            return [(c.transport.get_write_buffer_size(), c.peer.transport.is_reading())  # type: ignore[union-attr]
                    for c in tcp.connections]

        [(buffered, reading)] = proxy.call(held)
        assert buffered <= 1024 * 1024  # about the write buffer's high-water mark plus one read
        assert not reading  # the server side is paused
        got = bytearray()
        want = stalled + 8 * 1024 * 1024
        while len(got) < want:
            got += sock.recv(1024 * 1024)
        assert got == pattern_bytes(len(got))
        assert flood.flood_sent > stalled  # reading resumed the server


def _stalled(flood: TcpServer) -> int:
    """What the flooding server has sent once it has stopped making progress (unchanged for half a second)."""
    last, same_since = -1, time.monotonic()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = flood.flood_sent
        if now != last:
            last, same_since = now, time.monotonic()
        elif now and time.monotonic() - same_since > 0.5:
            return now
        time.sleep(0.05)
    raise AssertionError(f"the server never stopped sending ({last} bytes)")


def test_idle_timeout_closes_a_silent_connection(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    echo = make_tcp_server("echo")
    proxy = make_proxy(tcp_config({"db": {"servers": [echo.address], "timeouts": {"idle": "300ms"}}}))
    port = tcp_port(proxy, "db")
    with connect(port) as silent, connect(port) as chatty:
        silent.sendall(b"once\n")
        assert read_line(silent) == b"once\n"
        for i in range(10):  # 1 s of traffic every 100 ms: never idle for 300 ms
            chatty.sendall(b"%d\n" % i)
            assert read_line(chatty) == b"%d\n" % i
            time.sleep(0.1)
        assert closed_by_peer(silent)
        chatty.sendall(b"still here\n")
        assert read_line(chatty) == b"still here\n"
    echo.wait_open(0)


# ---------------------------------------------------------------- balancing


def test_round_robin_across_servers(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    servers = [make_tcp_server(name, mode="greet") for name in ("a", "b", "c")]
    proxy = make_proxy(tcp_config({"db": {"servers": [s.address for s in servers]}}))
    port = tcp_port(proxy, "db")
    seen: Counter[str] = Counter()
    for _ in range(9):
        seen[served_by(port)] += 1
    assert seen == {"a": 3, "b": 3, "c": 3}


def test_least_conn_with_long_lived_connections(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    a, b = make_tcp_server("a", mode="greet"), make_tcp_server("b", mode="greet")
    proxy = make_proxy(tcp_config({"db": {"servers": [a.address, b.address], "balance": "least_conn"}}))
    port = tcp_port(proxy, "db")
    first = [greeting(port) for _ in range(4)]
    assert Counter(name for _, name in first) == {"a": 2, "b": 2}
    for sock, name in first:
        if name == "a":
            sock.close()
    wait_for(lambda: state(proxy, "db")[a.address].active == 0, what="a's connections to end")
    second = [greeting(port) for _ in range(2)]
    assert [name for _, name in second] == ["a", "a"]  # b still holds two: both new ones go to a
    for sock, _ in first + second:
        sock.close()


def test_ip_hash_keeps_each_client_on_one_server(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    servers = [make_tcp_server(name, mode="greet") for name in ("a", "b", "c")]
    proxy = make_proxy(tcp_config({"db": {"servers": [s.address for s in servers], "balance": "ip_hash"}}))
    port = tcp_port(proxy, "db")
    chosen: dict[str, set[str]] = {}
    for n in range(2, 14):
        source = f"127.0.0.{n}"
        for _ in range(3):
            chosen.setdefault(source, set()).add(served_by(port, source))
    assert all(len(names) == 1 for names in chosen.values()), chosen
    assert len(set().union(*chosen.values())) >= 2  # and the clients are spread


# ---------------------------------------------------------------- health and failover


def test_health_check_takes_a_dead_server_out(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    a, b = make_tcp_server("a", mode="greet"), make_tcp_server("b", mode="greet")
    check = {"interval": "100ms", "timeout": "100ms", "rise": 1, "fall": 1}
    proxy = make_proxy(tcp_config({"db": {"servers": [a.address, b.address], "health_check": check}}))
    port = tcp_port(proxy, "db")
    before = Counter(served_by(port) for _ in range(4))
    assert before == {"a": 2, "b": 2}
    b.stop()
    wait_for(lambda: not state(proxy, "db")[b.address].healthy, what="the check to mark b down")
    failures = state(proxy, "db")[b.address].connect_failures
    after = []
    for _ in range(6):
        after.append(served_by(port))
    assert after == ["a"] * 6
    assert state(proxy, "db")[b.address].connect_failures == failures  # skipped, not tried and failed over


def test_a_server_dead_at_start_takes_no_connection(make_proxy: MakeProxy, make_tcp_server: MakeServer,
                                                      dead_port: RefusingPort) -> None:
    """The first round of checks runs before the service accepts, so no client is sent to a server known dead."""
    a = make_tcp_server("a", mode="greet")
    check = {"interval": "10s", "timeout": "500ms"}
    proxy = make_proxy(tcp_config({"db": {"servers": [dead_port.id, a.address], "health_check": check}}))
    port = tcp_port(proxy, "db")
    for _ in range(4):
        assert served_by(port) == "a"
    assert state(proxy, "db")[dead_port.id].connect_failures == 0


def test_refused_connect_fails_over_to_another_server(make_proxy: MakeProxy, make_tcp_server: MakeServer,
                                                      dead_port: RefusingPort) -> None:
    a = make_tcp_server("a", mode="greet")
    proxy = make_proxy(tcp_config({"db": {"servers": [dead_port.id, a.address]}}))
    port = tcp_port(proxy, "db")
    for _ in range(4):
        assert served_by(port) == "a"
    assert state(proxy, "db")[dead_port.id].connect_failures >= 1
    assert counters(proxy, "db")[2] == 0  # no client went unserved


def test_connect_timeout_fails_over(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    """A server that never answers the connect (its accept queue is full, so SYNs are dropped) is given up on
    after the connect timeout, and the client is served by another."""
    a = make_tcp_server("a", mode="greet")
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(0)
    fillers = []
    address = black_hole.getsockname()
    for _ in range(4):  # fill the accept queue (never accepted)
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    try:
        hole = f"127.0.0.1:{address[1]}"
        proxy = make_proxy(tcp_config({"db": {"servers": [hole, a.address], "timeouts": {"connect": "200ms"}}}))
        for _ in range(2):
            assert served_by(tcp_port(proxy, "db")) == "a"
        assert state(proxy, "db")[hole].connect_failures >= 1
    finally:
        for filler in fillers:
            filler.close()
        black_hole.close()


# ---------------------------------------------------------------- lifecycle


def test_graceful_stop_gives_open_connections_the_grace_period(make_proxy: MakeProxy,
                                                                make_tcp_server: MakeServer) -> None:
    echo = make_tcp_server("echo")
    proxy = make_proxy(tcp_config({"db": {"servers": [echo.address]}}))
    port = tcp_port(proxy, "db")
    with connect(port) as sock:
        sock.sendall(b"before\n")
        assert read_line(sock) == b"before\n"
        stopper = threading.Thread(target=proxy.stop, kwargs={"grace": 1.0})
        stopper.start()
        wait_for(lambda: refused(port), what="the listener to close")
        sock.sendall(b"during the grace period\n")  # the open connection still works
        assert read_line(sock) == b"during the grace period\n"
        stopper.join(15)
        assert not stopper.is_alive()
        assert closed_by_peer(sock)  # then it is closed
    echo.wait_open(0)


def test_graceful_stop_ends_when_the_connections_do(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    echo = make_tcp_server("echo")
    proxy = make_proxy(tcp_config({"db": {"servers": [echo.address]}}))
    port = tcp_port(proxy, "db")
    sock = connect(port)
    sock.sendall(b"x\n")
    assert read_line(sock) == b"x\n"
    stopper = threading.Thread(target=proxy.stop, kwargs={"grace": 60.0})
    stopper.start()
    wait_for(lambda: refused(port), what="the listener to close")
    assert stopper.is_alive()  # waiting for the open connection
    sock.close()
    stopper.join(15)
    assert not stopper.is_alive()  # long before the 60 s of grace


def test_reload_adds_removes_and_changes_tcp_services(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    a, b, c = (make_tcp_server(name, mode="greet") for name in ("a", "b", "c"))
    proxy = make_proxy(tcp_config({"one": {"servers": [a.address]}}))
    assert proxy.server is not None
    server = proxy.server

    def apply(services: dict[str, dict[str, Any]]) -> None:
        config = parse_config(tcp_config(services, listen=["127.0.0.1:0"]), source="test")
        proxy.run(server.apply(config))

    one = tcp_port(proxy, "one")
    kept, name = greeting(one)
    assert name == "a"
    apply({"one": {"servers": [b.address]}, "two": {"servers": [c.address]}})
    assert tcp_port(proxy, "one") == one  # same listener
    assert served_by(one) == "b"  # new connections go to the new servers
    kept.sendall(b"still on a\n")
    assert read_line(kept) == b"still on a\n"  # an open connection keeps its server
    two = tcp_port(proxy, "two")
    assert served_by(two) == "c"
    apply({"one": {"servers": [b.address]}})
    assert refused(two)
    assert served_by(one) == "b"
    kept.close()


def test_a_service_added_by_reload_is_checked_before_it_accepts(make_proxy: MakeProxy, make_tcp_server: MakeServer,
                                                                dead_port: RefusingPort) -> None:
    a = make_tcp_server("a", mode="greet")
    proxy = make_proxy(tcp_config({"one": {"servers": [a.address]}}))
    assert proxy.server is not None
    check = {"interval": "10s", "timeout": "500ms"}
    config = tcp_config({"one": {"servers": [a.address]},
                         "two": {"servers": [dead_port.id, a.address], "health_check": check}}, listen=["127.0.0.1:0"])
    proxy.run(proxy.server.apply(parse_config(config, source="test")))
    two = tcp_port(proxy, "two")
    assert [served_by(two) for _ in range(4)] == ["a"] * 4
    assert state(proxy, "two")[dead_port.id].connect_failures == 0  # known down before the first client


def test_reload_that_cannot_bind_changes_nothing(make_proxy: MakeProxy, make_tcp_server: MakeServer) -> None:
    a = make_tcp_server("a", mode="greet")
    proxy = make_proxy(tcp_config({"one": {"servers": [a.address]}}))
    assert proxy.server is not None
    server = proxy.server
    busy = tcp_config({"one": {"servers": [a.address]}, "two": {"listen": a.address, "servers": [a.address]}},
                      listen=["127.0.0.1:0"])
    with pytest.raises(OSError, match=r"tcp_services\.two\.listen"):
        proxy.run(server.apply(parse_config(busy, source="test")))
    assert proxy.call(lambda: sorted(server.tcp.groups)) == ["one"]
    assert served_by(tcp_port(proxy, "one")) == "a"
