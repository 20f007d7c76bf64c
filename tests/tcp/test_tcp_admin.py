"""TCP services as the control plane shows them: Prometheus metrics, ``/api/v1/status``, and a reload by the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.admin.harness import RunningInstance, write_config
from tests.support.tcpserver import TcpServer
from tests.support.upstream import RefusingPort
from tests.tcp.conftest import HTTP_SIDE, connect, read_line

MakeInstance = Callable[..., RunningInstance]
MakeServer = Callable[..., TcpServer]


def samples(inst: RunningInstance) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the fulcrum_tcp_* families, by name and sorted labels."""
    resp = inst.api.get("/metrics")
    assert resp.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) if family.name.startswith("fulcrum_tcp_")
            for s in family.samples}


def tcp_port(inst: RunningInstance, service: str) -> int:
    assert inst.instance is not None
    tcp = inst.instance.server.tcp
    return inst.call(lambda: tcp.ports[service])


def status_of(inst: RunningInstance) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in inst.api.get("/api/v1/status").json()["tcp_services"]}


def test_metrics_and_status_count_connections(make_instance: MakeInstance, make_tcp_server: MakeServer,
                                              dead_port: RefusingPort) -> None:
    echo = make_tcp_server("echo")
    inst = make_instance({**HTTP_SIDE, "tcp_services": {
        "db": {"listen": "127.0.0.1:0", "servers": [echo.address, dead_port.id], "balance": "least_conn"}}})
    port = tcp_port(inst, "db")
    with connect(port) as first, connect(port) as second:
        for sock in (first, second):
            sock.sendall(b"ping\n")
            assert read_line(sock) == b"ping\n"
        echo.wait_open(2)
        got = samples(inst)
        live = (("server", echo.address), ("service", "db"))
        dead = (("server", dead_port.id), ("service", "db"))
        assert got[("fulcrum_tcp_connections_active", live)] == 2
        assert got[("fulcrum_tcp_connections_total", live)] == 2
        assert got[("fulcrum_tcp_connections_active", dead)] == 0
        assert got[("fulcrum_tcp_connect_failures_total", dead)] >= 1  # least_conn tried it, then failed over
        assert got[("fulcrum_tcp_bytes_total", (("direction", "to_server"), *live))] == 10
        assert got[("fulcrum_tcp_bytes_total", (("direction", "to_client"), *live))] == 10
        assert got[("fulcrum_tcp_server_up", live)] == 1
        assert got[("fulcrum_tcp_service_connections_active", (("service", "db"),))] == 2
        assert got[("fulcrum_tcp_service_connections_total", (("service", "db"),))] == 2
        db = status_of(inst)["db"]
        assert (db["listen"], db["balance"], db["connections_active"], db["unserved"]) == \
            (f"127.0.0.1:{port}", "least_conn", 2, 0)
        servers = {s["id"]: s for s in db["servers"]}
        assert servers[echo.address] | {"bytes_to_server": 10} == {
            "id": echo.address, "weight": 1, "healthy": True, "eligible": True, "down": [], "active": 2,
            "connections": 2, "connect_failures": 0, "bytes_to_server": 10, "bytes_to_client": 10}
    echo.wait_open(0)
    assert samples(inst)[("fulcrum_tcp_connections_active", live)] == 0


def test_reload_by_the_api_adds_a_service(make_instance: MakeInstance, make_tcp_server: MakeServer) -> None:
    a, b = make_tcp_server("a", mode="greet"), make_tcp_server("b", mode="greet")
    first = {**HTTP_SIDE, "tcp_services": {"one": {"listen": "127.0.0.1:0", "servers": [a.address]}}}
    inst = make_instance(first)
    assert list(status_of(inst)) == ["one"]
    write_config(inst.path, {**first, "tcp_services": {**first["tcp_services"],
                                                       "two": {"listen": "127.0.0.1:0", "servers": [b.address]}}})
    assert inst.api.post("/api/v1/reload").json() == {"status": "reloaded"}
    assert list(status_of(inst)) == ["one", "two"]
    with connect(tcp_port(inst, "two")) as sock:
        assert read_line(sock) == b"b\n"
    # a refused file changes nothing
    write_config(inst.path, {**first, "tcp_services": {"one": {"listen": "127.0.0.1:0", "servers": ["nope"]}}})
    resp = inst.api.post("/api/v1/reload")
    assert resp.status_code == 400
    assert any("tcp_services.one.servers[0]" in e for e in resp.json()["errors"])
    assert list(status_of(inst)) == ["one", "two"]
