#!/usr/bin/env python3
"""HTTP/2 from clients: Fulcrum (h2c prior knowledge) beside nginx (``listen ... http2``), by ratio, in one run.

The same three "hello, world\\n" nginx upstreams as ``benchmarks/run.py`` (``conf/backends.nginx.conf``);
nginx and Fulcrum each take cleartext HTTP/2 from h2load and forward over pooled HTTP/1.1 keep-alive
connections, round robin. Every repetition runs h2load against each proxy in turn; the report gives the
median requests per second of each and Fulcrum/nginx. Pinning when two CPUs are usable: h2load and the
upstreams on the first, the proxy under test on the second.

    benchmarks/bench_h2.py                       # 3 reps x 5 s, 10 connections x 10 streams each
    benchmarks/bench_h2.py --reps 1 --seconds 3 --conns 4 --streams 25

Standard library only; needs nginx and h2load (Debian's nghttp2-client), installed with apt-get when
missing. Everything it starts is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
TOOLS = {"nginx": "nginx", "h2load": "nghttp2-client", "taskset": "util-linux"}

NGINX_H2 = """daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {run}/nginx-h2.pid;
error_log {run}/nginx-h2.error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    http2_max_concurrent_streams 100;
    client_body_temp_path {run}/tmp-body;
    proxy_temp_path {run}/tmp-proxy;
    fastcgi_temp_path {run}/tmp-fastcgi;
    uwsgi_temp_path {run}/tmp-uwsgi;
    scgi_temp_path {run}/tmp-scgi;
    upstream pool {{
        {servers}
        keepalive 32;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2;  # cleartext HTTP/2, prior knowledge (nginx 1.22 spelling)
        location / {{
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        log(f"installing {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def h2load(port: int, seconds: float, conns: int, streams: int, cpu: str | None) -> float:
    """Requests per second h2load reached (every answer a 2xx, or it fails)."""
    argv = ["h2load", "-D", str(seconds), "--warm-up-time", "1", "-c", str(conns), "-m", str(streams), "-t", "1",
            f"http://127.0.0.1:{port}/"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if rate is None or codes is None or done is None:
        raise RuntimeError(f"h2load said:\n{out}")
    if int(codes.group(1)) == 0 or any(int(codes.group(i)) for i in (2, 3, 4)) or done.group(1) != done.group(2):
        raise RuntimeError(f"not every request succeeded:\n{out}")
    return float(rate.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per connection (h2load -m)")
    ap.add_argument("--no-pin", action="store_true")
    opts = ap.parse_args()
    ensure_tools()
    pin = not opts.no_pin and len(os.sched_getaffinity(0)) >= 2
    cpus = sorted(os.sched_getaffinity(0))
    load_cpu, proxy_cpu = (str(cpus[0]), str(cpus[1])) if pin else (None, None)
    run = Path(tempfile.mkdtemp(prefix="fulcrum-bench-h2-"))
    backends = [free_port() for _ in range(3)]
    template = (BENCH_DIR / "conf" / "backends.nginx.conf").read_text()
    marks = {"@RUN_DIR@": str(run), "@STATUS_PORT@": str(free_port())}
    marks.update({f"@BACKEND_{i + 1}@": str(p) for i, p in enumerate(backends)})
    for mark, value in marks.items():
        template = template.replace(mark, value)
    (run / "tmp").mkdir()
    (run / "backends.conf").write_text(template)
    nginx_port, fulcrum_port = free_port(), free_port()
    servers = "\n        ".join(f"server 127.0.0.1:{p};" for p in backends)
    (run / "nginx-h2.conf").write_text(NGINX_H2.format(run=run, servers=servers, port=nginx_port))
    config = {
        "listen": [f"127.0.0.1:{fulcrum_port}"],
        "admin": {"listen": None},
        "http2": {"h2c": True},
        "upstreams": {"app": {"servers": [f"http://127.0.0.1:{p}" for p in backends]}},
    }
    (run / "fulcrum.json").write_text(json.dumps(config))
    fulcrum = VENV_BIN / "fulcrum"
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], cpu: str | None, name: str) -> None:
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]
        with open(run / f"{name}.log", "ab") as out:
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    try:
        start(["nginx", "-c", str(run / "backends.conf"), "-p", str(run)], load_cpu, "backends")
        start(["nginx", "-c", str(run / "nginx-h2.conf"), "-p", str(run)], proxy_cpu, "nginx-h2")
        start([str(fulcrum), "run", "-c", str(run / "fulcrum.json")], proxy_cpu, "fulcrum")
        for port in (*backends, nginx_port, fulcrum_port):
            wait_port(port)
        rates: dict[str, list[float]] = {"nginx": [], "fulcrum": []}
        for rep in range(opts.reps):
            for name, port in (("nginx", nginx_port), ("fulcrum", fulcrum_port)):
                rate = h2load(port, opts.seconds, opts.conns, opts.streams, load_cpu)
                rates[name].append(rate)
                log(f"rep {rep + 1}/{opts.reps} {name}: {rate:,.0f} req/s")
        med = {name: statistics.median(values) for name, values in rates.items()}
        print(f"HTTP/2 (h2c) from h2load, {opts.conns} connections x {opts.streams} streams, "
              f"{opts.reps} reps x {opts.seconds:g} s, {'pinned' if pin else 'not pinned'}")
        for name in ("nginx", "fulcrum"):
            values = ", ".join(f"{v:,.0f}" for v in rates[name])
            print(f"  {name:8} median {med[name]:>9,.0f} req/s   ({values})")
        print(f"  fulcrum/nginx: {med['fulcrum'] / med['nginx']:.2f}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
