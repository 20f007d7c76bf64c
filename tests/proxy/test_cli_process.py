"""The `fulcrum` command as a user runs it: check, run, proxy, demo, signals, access log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fulcrum import __version__
from tests.support.upstream import UpstreamServer

FULCRUM = [sys.executable, "-m", "fulcrum.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else b""
            raise AssertionError(f"fulcrum exited with {proc.returncode}: {out.decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"port {port} not open")


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()


def start(spawn: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*FULCRUM, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    spawn.append(proc)
    return proc


def test_version() -> None:
    out = subprocess.run([*FULCRUM, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert __version__ in out.stdout


def test_check_valid_and_invalid(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("listen: [':8080']\nupstreams:\n  app:\n    servers: ['http://127.0.0.1:5001']\n")
    out = subprocess.run([*FULCRUM, "check", "-c", str(good)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "127.0.0.1:5001" in out.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "listen: [':8080']\nupstreams:\n  app:\n    servers: [{url: 'http://127.0.0.1:5001', weight: 0}]\n"
        "    timeouts: {read: soon}\nroutes:\n  - match: {path_prefix: /}\n    upstream: nope\n"
    )
    out = subprocess.run([*FULCRUM, "check", "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    for key in ("upstreams.app.servers[0].weight", "upstreams.app.timeouts.read", "routes[0].upstream"):
        assert key in out.stderr, out.stderr
    assert "bad.yaml" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_refuses_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [':8080']\nupstreams: {}\nbogus: 1\n")
    out = subprocess.run([*FULCRUM, "run", "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "bogus" in out.stderr


def test_run_serves_logs_and_drains_on_sigterm(tmp_path: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    with UpstreamServer(name="a") as up:
        cfg = tmp_path / "f.json"
        cfg.write_text(
            json.dumps(
                {"listen": [f"127.0.0.1:{port}"], "access_log": True, "admin": {"listen": None},
                 "upstreams": {"app": {"servers": [up.url]}}}
            )
        )
        proc = start(spawn, "run", "-c", str(cfg))
        wait_port(port, proc)
        r = httpx.get(f"http://127.0.0.1:{port}/hello", headers={"X-Request-ID": "rid-42"}, trust_env=False)
        assert r.status_code == 200
        # a slow request in flight when SIGTERM arrives still completes
        result: dict[str, int] = {}

        def slow() -> None:
            result["status"] = httpx.get(
                f"http://127.0.0.1:{port}/slow-head/700", trust_env=False, timeout=10
            ).status_code

        t = threading.Thread(target=slow)
        t.start()
        up.wait_for_requests(2, timeout=5)
        proc.send_signal(signal.SIGTERM)
        t.join(10)
        assert result.get("status") == 200
        assert proc.wait(10) == 0
        out = proc.stdout.read().decode() if proc.stdout else ""
    line = [ln for ln in out.splitlines() if "rid-42" in ln]
    assert line, out
    assert '"GET /hello"' in line[0] and " 200 " in line[0] and up.id in line[0]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_proxy_quick_start_round_robins(spawn: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    with UpstreamServer(name="a") as a, UpstreamServer(name="b") as b:
        proc = start(spawn, "proxy", "--listen", f"127.0.0.1:{port}", "--to", a.url, "--to", b.url)
        wait_port(port, proc)
        with httpx.Client(trust_env=False) as c:
            bodies = [c.get(f"http://127.0.0.1:{port}/").text for _ in range(4)]
        assert sorted(bodies[:2]) == ["ok a\n", "ok b\n"]  # the rotation may start at either
        assert bodies == bodies[:2] * 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_demo_runs_and_answers(spawn: list[subprocess.Popen[bytes]]) -> None:
    port, admin = free_port(), free_port()
    proc = start(spawn, "demo", "--port", str(port), "--admin-port", str(admin))
    wait_port(port, proc)
    wait_port(admin, proc)
    with httpx.Client(trust_env=False) as c:
        servers = {c.get(f"http://127.0.0.1:{port}/").headers["x-upstream-server"] for _ in range(3)}
        status = c.get(f"http://127.0.0.1:{admin}/api/v1/status").json()  # loopback: no token needed
    assert len(servers) == 3
    assert status["requests_total"] == 3
    assert {s["id"] for s in status["upstreams"][0]["servers"]} == servers
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert f"http://127.0.0.1:{port}/" in out


def test_config_from_environment_variable(tmp_path: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    with UpstreamServer(name="a") as up:
        cfg = tmp_path / "f.yaml"
        cfg.write_text(f"listen: ['127.0.0.1:{port}']\nadmin: {{listen: null}}\n"
                       "upstreams:\n  app:\n    servers: ['${UPSTREAM}']\n")
        env = dict(os.environ, FULCRUM_CONFIG=str(cfg), UPSTREAM=up.url)
        proc = subprocess.Popen([*FULCRUM, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        spawn.append(proc)
        wait_port(port, proc)
        assert httpx.get(f"http://127.0.0.1:{port}/", trust_env=False).text == "ok a\n"


def test_simulate_prints_spread_and_key_movement(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(
        "upstreams:\n  app:\n    balance: consistent_hash\n    hash_key: header:X-User\n"
        "    servers: ['http://10.0.0.1:80', {url: 'http://10.0.0.2:80', weight: 2}, 'http://10.0.0.3:80']\n"
    )
    out = subprocess.run([*FULCRUM, "simulate", "-c", str(cfg), "--requests", "2000", "--keys", "1000"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {ln.split()[0]: ln.split() for ln in out.stdout.splitlines() if ln.strip().startswith("10.0.0.")}
    assert set(rows) == {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
    assert "removing each server" in out.stdout
    # the weight-2 server gets about half of the requests
    share = next(float(r[3].rstrip("%")) for r in (ln.split() for ln in out.stdout.splitlines())
             if r and r[0] == "10.0.0.2:80" and len(r) == 5)
    assert 40 <= share <= 60


def test_run_refuses_a_public_admin_listener_without_a_token_before_binding(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "f.yaml"
    cfg.write_text(f"listen: ['127.0.0.1:{port}']\nadmin: {{listen: '0.0.0.0:{admin}'}}\n"
                   "upstreams:\n  app:\n    servers: ['http://127.0.0.1:9']\n")
    proc = subprocess.Popen([*FULCRUM, "run", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Watch the ports while it starts: neither may ever accept a connection.
    bound = []
    while proc.poll() is None:
        for p in (port, admin):
            try:
                with socket.create_connection(("127.0.0.1", p), timeout=0.05):
                    bound.append(p)
            except OSError:
                pass
        time.sleep(0.01)
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.stdout is not None:
        proc.stdout.close()
    assert proc.returncode == 1, out
    assert "admin.token" in out and "loopback" in out, out
    assert bound == []
    # With a token it starts and serves both.
    cfg.write_text(cfg.read_text().replace("'}", "', token: s3cret-token}"))
    proc = subprocess.Popen([*FULCRUM, "run", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(admin, proc)
        assert httpx.get(f"http://127.0.0.1:{admin}/api/v1/status", trust_env=False).status_code == 401
        ok = httpx.get(f"http://127.0.0.1:{admin}/api/v1/status", trust_env=False,
                       headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
