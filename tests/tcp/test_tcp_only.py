"""A config of ``tcp_services`` alone: no upstreams, no routes, no HTTP listener. ``fulcrum check`` accepts it (and
refuses HTTP addresses it would have nothing to serve on), a whole instance runs it with its admin listener, and a
reload can add an HTTP side to it or take it away."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fulcrum.config import ConfigError, parse_config
from tests.admin.harness import TOKEN, RunningInstance
from tests.support.tcpserver import TcpServer
from tests.support.upstream import UpstreamServer
from tests.tcp.conftest import connect, read_line

FULCRUM = Path(sys.executable).with_name("fulcrum")
MakeServer = Callable[..., TcpServer]
ADMIN = {"listen": "127.0.0.1:0", "token": TOKEN}


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FULCRUM), "check", "-c", str(path)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def instances() -> Iterator[list[RunningInstance]]:
    started: list[RunningInstance] = []
    yield started
    for inst in started:
        inst.stop()


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))  # as given: no listen filled in
    return path


def test_check_accepts_tcp_services_alone(tmp_path: Path) -> None:
    path = tmp_path / "fulcrum.yaml"
    path.write_text(yaml.safe_dump({"tcp_services": {"db": {"listen": ":5433", "servers": ["10.0.0.5:5432"]},
                                                     "web": {"listen": ":8080", "servers": ["10.0.0.6:80"]}}}))
    out = check(path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "listen: none (TCP services only)" in lines
    assert "routes: none" in lines and "upstreams: none" in lines
    assert "  db: listen 0.0.0.0:5433, round_robin, 1 server, connect timeout 2s, idle timeout 10m" in lines
    # :8080 is free for a service: with no HTTP side there is no HTTP listener on it
    assert "  web: listen 0.0.0.0:8080, round_robin, 1 server, connect timeout 2s, idle timeout 10m" in lines
    config = parse_config(yaml.safe_load(path.read_text()))
    assert (config.listen, config.routes, config.upstreams) == ((), (), {})


def test_check_refuses_http_addresses_with_nothing_to_serve_and_an_empty_config(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", {"listen": [":8080"],
                                         "tcp_services": {"db": {"listen": ":5433", "servers": ["10.0.0.5:5432"]}}})
    out = check(path)
    assert out.returncode == 1
    assert f"{path}: listen: a config of tcp_services alone has nothing to serve over HTTP" in out.stderr
    for config, key, words in [
        ({}, "upstreams", "missing (required): define at least one upstream (or tcp_services alone"),
        ({"upstreams": {}}, "upstreams", "define at least one upstream"),
        ({"tcp_services": {}}, "upstreams", "define at least one upstream"),
        ({"upstreams": {"app": {"servers": ["http://h:1"]}}, "listen": []}, "listen", "list at least one address"),
        ({"tcp_services": {"db": {"listen": ":5433", "servers": ["h:1"]}}, "routes": [{"upstream": "app"}]},
         "routes[0].upstream", "unknown upstream 'app' (defined: none)"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config(config, source="t")
        found = {issue.path: issue.message for issue in caught.value.errors}
        assert words in found.get(key, ""), (config, found)


def test_a_tcp_only_instance_runs_with_its_admin_listener(
        tmp_path: Path, make_tcp_server: MakeServer, instances: list[RunningInstance]) -> None:
    echo = make_tcp_server("echo")
    path = write(tmp_path / "fulcrum.json", {
        "admin": ADMIN, "tcp_services": {"db": {"listen": "127.0.0.1:0", "servers": [echo.address]}}})
    inst = RunningInstance(path).start()
    instances.append(inst)
    assert inst.instance is not None
    server = inst.instance.server
    assert server.ports == []  # no HTTP listener
    port = inst.call(lambda: server.tcp.ports["db"])
    with connect(port) as sock:
        sock.sendall(b"ping\n")
        assert read_line(sock) == b"ping\n"
    status = inst.api.get("/api/v1/status").json()
    assert status["upstreams"] == [] and [s["name"] for s in status["tcp_services"]] == ["db"]
    assert inst.api.get("/healthz").status_code == 200
    assert inst.api.get("/metrics").status_code == 200


def test_a_reload_adds_an_http_side_to_a_tcp_only_instance_and_takes_it_away(
        tmp_path: Path, make_tcp_server: MakeServer, upstream_server: UpstreamServer,
        instances: list[RunningInstance]) -> None:
    echo = make_tcp_server("echo")
    tcp_only = {"admin": ADMIN, "tcp_services": {"db": {"listen": "127.0.0.1:0", "servers": [echo.address]}}}
    path = write(tmp_path / "fulcrum.json", tcp_only)
    inst = RunningInstance(path).start()
    instances.append(inst)
    assert inst.instance is not None
    server = inst.instance.server
    write(path, {**tcp_only, "listen": ["127.0.0.1:0"], "upstreams": {"app": {"servers": [upstream_server.url]}}})
    assert inst.api.post("/api/v1/reload").json() == {"status": "reloaded"}
    [http_port] = inst.call(lambda: server.ports)
    assert httpx.get(f"http://127.0.0.1:{http_port}/", trust_env=False, timeout=10).status_code == 200
    write(path, tcp_only)
    assert inst.api.post("/api/v1/reload").json() == {"status": "reloaded"}
    assert inst.call(lambda: server.ports) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{http_port}/", trust_env=False, timeout=10)
    with connect(inst.call(lambda: server.tcp.ports["db"])) as sock:  # the service went on through both reloads
        sock.sendall(b"still\n")
        assert read_line(sock) == b"still\n"


def test_fulcrum_run_serves_a_tcp_only_config_and_stops_on_sigterm(tmp_path: Path, make_tcp_server: MakeServer) -> None:
    echo = make_tcp_server("echo")
    with socket.socket() as probe:  # a port for the service (the process reports none of its own)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "tcp-only.yaml"
    service = {"listen": f"127.0.0.1:{port}", "servers": [echo.address]}
    path.write_text(yaml.safe_dump({"admin": {"listen": None}, "tcp_services": {"db": service}}))
    proc = subprocess.Popen([sys.executable, "-m", "fulcrum.cli", "run", "-c", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            try:
                sock = connect(port, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the TCP service never accepted"
                time.sleep(0.05)
        with sock:
            sock.sendall(b"through fulcrum run\n")
            assert read_line(sock) == b"through fulcrum run\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert f"tcp services: db on 127.0.0.1:{port}" in out
        assert "listening on" not in out  # no HTTP listener was opened
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
