#!/usr/bin/env python3
"""What a shared rate limit (``shared: true`` over ``state: redis``) costs per request, beside a local one.

One Fulcrum and one redis-server (no persistence, a free port). Three answer routes (``respond``, so no
upstream takes part): no middleware, ``rate_limit`` in memory, ``rate_limit`` shared through Redis, each
with a limit far above the load so every request passes. For each route, in turn and for every
repetition, h2load sends a fixed number of HTTP/1.1 requests on a few connections; the CPU time the
Fulcrum and Redis processes used for them (from /proc) is the figure, per 1,000 requests: it holds on a
busy machine better than requests per second do. The report gives medians and the shared/local ratio.

    benchmarks/bench_shared_limit.py                  # 3 reps x 20,000 requests, 20 connections
    benchmarks/bench_shared_limit.py --reps 1 --requests 5000

Standard library only; needs redis-server and h2load (Debian's redis-server and nghttp2-client), installed
with apt-get when missing. Everything it starts is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
TOOLS = {"redis-server": "redis-server", "h2load": "nghttp2-client"}
ROUTES = ("none", "local", "shared")
TICK = os.sysconf("SC_CLK_TCK")


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def config(port: int, redis_port: int) -> dict[str, object]:
    limit = {"rate": "1000000/s", "burst": 1000000}
    answer = {"status": 200, "body": "ok\n"}
    return {
        "listen": [f"127.0.0.1:{port}"], "admin": {"listen": None},
        "upstreams": {"unused": {"servers": ["http://127.0.0.1:9"]}},
        "state": {"backend": "redis", "url": f"redis://127.0.0.1:{redis_port}/0", "prefix": "bench"},
        "routes": [
            {"name": "none", "match": {"path": "/none"}, "respond": answer},
            {"name": "local", "match": {"path": "/local"}, "respond": answer,
             "middleware": [{"rate_limit": limit}]},
            {"name": "shared", "match": {"path": "/shared"}, "respond": answer,
             "middleware": [{"rate_limit": {**limit, "shared": True}}]},
        ],
    }


def run_load(url: str, requests: int, conns: int) -> None:
    done = subprocess.run(["h2load", "--h1", "-n", str(requests), "-c", str(conns), "-m", "1", url],
                          capture_output=True, text=True, check=True)
    if f"{requests} succeeded" not in done.stdout or f"status codes: {requests} 2xx" not in done.stdout:
        raise RuntimeError(f"not every request of {url} passed:\n{done.stdout}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--conns", type=int, default=20)
    args = parser.parse_args()
    ensure_tools()
    run = Path(tempfile.mkdtemp(prefix="fulcrum-bench-shared-"))
    port, redis_port = free_port(), free_port()
    (run / "fulcrum.json").write_text(json.dumps(config(port, redis_port)))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(run), "--loglevel", "warning"],
                                 stdout=subprocess.DEVNULL)
        procs.append(redis)
        wait_port(redis_port)
        with open(run / "fulcrum.log", "wb") as log:
            fulcrum = subprocess.Popen([str(VENV_BIN / "fulcrum"), "run", "-c", str(run / "fulcrum.json")],
                                       stdout=log, stderr=subprocess.STDOUT)
        procs.append(fulcrum)
        wait_port(port)
        per_1k: dict[str, list[tuple[float, float]]] = {route: [] for route in ROUTES}
        for route in ROUTES:  # warm up: connections to Redis, the script loaded
            run_load(f"http://127.0.0.1:{port}/{route}", 1000, args.conns)
        for _ in range(args.reps):
            for route in ROUTES:
                f0, r0 = cpu_seconds(fulcrum.pid), cpu_seconds(redis.pid)
                run_load(f"http://127.0.0.1:{port}/{route}", args.requests, args.conns)
                f1, r1 = cpu_seconds(fulcrum.pid), cpu_seconds(redis.pid)
                scale = 1000 * 1000 / args.requests  # ms per 1,000 requests
                per_1k[route].append(((f1 - f0) * scale, (r1 - r0) * scale))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(run, ignore_errors=True)
    print(f"CPU ms per 1,000 requests (median of {args.reps} x {args.requests} requests, {args.conns} connections)")
    medians = {}
    for route in ROUTES:
        fulcrum_ms = statistics.median(f for f, _ in per_1k[route])
        redis_ms = statistics.median(r for _, r in per_1k[route])
        medians[route] = fulcrum_ms
        print(f"  {route:<7} fulcrum {fulcrum_ms:7.1f}   redis-server {redis_ms:6.1f}")
    print(f"  shared/local (fulcrum): {medians['shared'] / medians['local']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
