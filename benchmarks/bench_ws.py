#!/usr/bin/env python3
"""WebSocket echo through Fulcrum, beside the same echo direct and through nginx, in one run.

An echo upstream completes a real WebSocket handshake (it checks the key and answers with its
Sec-WebSocket-Accept), then sends every byte back as it came. The client opens ``--conns``
connections, each with a real handshake, and on each sends one masked text frame of ``--size``
bytes at a time and waits for the same bytes back, for ``--seconds``. A proxy's tunnel never parses
frames, so its work per message is what a frame-parsing echo would give it; the upstream and
client stay cheap so that they, not the proxy, are not what is measured.

Three targets, every repetition, in turn: direct (the upstream itself), nginx (``proxy_pass`` with
the Upgrade and Connection headers set, one worker) and Fulcrum (``fulcrum run``, default
features). Reported: messages (round trips) per second, p99 round trip, and CPU µs per message of
the proxy's processes, with the ratios Fulcrum/direct (messages/s) and Fulcrum/nginx (CPU per
message). Pinning when two CPUs are usable: client and upstream on the first, the proxy on the
second.

    .venv/bin/python benchmarks/bench_ws.py                 # 3 reps x 5 s, 50 connections, 64-byte messages
    .venv/bin/python benchmarks/bench_ws.py --conns 10 --size 4096 --reps 1
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import REPO, RUN_ROOT, VENV_BIN, Processes, cpu_seconds, ensure_tools, log, process_tree

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BASE_PORT = 19480

NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {run}/nginx.pid;
error_log {run}/nginx.error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {run}/tmp-body;
    proxy_temp_path {run}/tmp-proxy;
    fastcgi_temp_path {run}/tmp-fastcgi;
    uwsgi_temp_path {run}/tmp-uwsgi;
    scgi_temp_path {run}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""

FULCRUM_CONF = """listen: ["127.0.0.1:{port}"]
admin: {{listen: null}}
upstreams:
  echo:
    servers: ["http://127.0.0.1:{upstream}"]
"""


# -- the echo upstream and the client (run as child processes of this script) -----------------------------


class EchoUpstream(asyncio.Protocol):
    """Handshake, then every byte back."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self.open:
            transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, _, rest = self.head.partition(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if len(base64.b64decode(key)) != 16:
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.close()
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.open = True
        if rest:
            transport.write(rest)


def serve(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoUpstream, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    uvloop.run(main())


def frame(size: int) -> bytes:
    """One masked text frame of ``size`` payload bytes (RFC 6455 5.2)."""
    payload = b"m" * size
    mask = os.urandom(4)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 65536:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def one_client(port: int, message: bytes, until: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET /echo HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:60]!r}")
    expected = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if b"sec-websocket-accept: " + expected.lower() not in head.lower():
        raise RuntimeError("wrong Sec-WebSocket-Accept")
    n = len(message)
    count = 0
    clock = time.perf_counter
    while True:
        t0 = clock()
        if t0 >= until:
            break
        writer.write(message)
        await reader.readexactly(n)
        latencies.append(clock() - t0)
        count += 1
    writer.close()
    return count


def client(port: int, conns: int, seconds: float, size: int) -> None:
    import uvloop

    async def main() -> dict[str, Any]:
        message = frame(size)
        latencies: list[float] = []
        until = time.perf_counter() + seconds
        results = await asyncio.gather(*(one_client(port, message, until, latencies) for _ in range(conns)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None
        return {"messages": sum(r for r in results if isinstance(r, int)), "errors": len(errors),
                "error": repr(errors[0]) if errors else None, "p99_ms": p99}

    print(json.dumps(uvloop.run(main())))


# -- the harness -------------------------------------------------------------------------------------------


def wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout:g}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64, help="payload bytes per message (default 64)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if args.client:
        client(args.client, args.conns, args.seconds, args.size)
        return 0

    pin = len(os.sched_getaffinity(0)) >= 2
    ensure_tools(["nginx", "taskset"], allow_install=True)
    load_cpu, proxy_cpu = ("0", "1") if pin else (None, None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RUN_ROOT / f"ws-{stamp}"
    run_dir.mkdir(parents=True)
    upstream, nginx_port, fulcrum_port = BASE_PORT, BASE_PORT + 1, BASE_PORT + 2
    (run_dir / "nginx.conf").write_text(NGINX_CONF.format(run=run_dir, port=nginx_port, upstream=upstream))
    (run_dir / "fulcrum.yaml").write_text(FULCRUM_CONF.format(port=fulcrum_port, upstream=upstream))
    fulcrum = VENV_BIN / "fulcrum"
    exe = str(fulcrum) if fulcrum.exists() else (shutil.which("fulcrum") or str(fulcrum))
    procs = Processes()
    try:
        procs.start("upstream", [sys.executable, __file__, "--serve", str(upstream)], run_dir / "upstream.log",
                    load_cpu)
        nginx = procs.start("nginx", ["nginx", "-p", f"{run_dir}/", "-e", str(run_dir / "nginx.error.log"), "-c",
                                      str(run_dir / "nginx.conf")], run_dir / "nginx.log", proxy_cpu)
        fulc = procs.start("fulcrum", [exe, "run", "-c", str(run_dir / "fulcrum.yaml")], run_dir / "fulcrum.log",
                           proxy_cpu)
        for port in (upstream, nginx_port, fulcrum_port):
            wait_port(port)
        targets = {"direct": (upstream, None), "nginx": (nginx_port, nginx.pid), "fulcrum": (fulcrum_port, fulc.pid)}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for rep in range(args.reps):
            for name, (port, pid) in targets.items():
                pids = process_tree(pid) if pid else []
                cpu0 = cpu_seconds(pids)
                cmd = [sys.executable, __file__, "--client", str(port), "--conns", str(args.conns), "--seconds",
                       str(args.seconds), "--size", str(args.size)]
                if load_cpu is not None:
                    cmd = ["taskset", "-c", load_cpu, *cmd]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
                if done.returncode != 0:
                    raise SystemExit(f"client failed against {name}:\n{done.stderr[-2000:]}")
                result = json.loads(done.stdout)
                result["cpu_s"] = cpu_seconds(pids) - cpu0 if pids else None
                result["rate"] = result["messages"] / args.seconds
                runs[name].append(result)
                cpu = f"{result['cpu_s'] / result['messages'] * 1e6:.1f} µs/msg" if result["cpu_s"] else "-"
                log(f"rep {rep + 1} {name:8} {result['rate']:9.0f} msg/s  p99 {result['p99_ms']:.2f} ms  {cpu}"
                    f"  errors {result['errors']}")
    finally:
        procs.stop_all()

    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if r.get(key) is not None]
        return statistics.median(values) if values else None

    def cpu_per_msg(name: str) -> float | None:
        values = [r["cpu_s"] / r["messages"] * 1e6 for r in runs[name] if r.get("cpu_s") and r["messages"]]
        return statistics.median(values) if values else None

    print(f"\nWebSocket echo, {args.conns} connections, {args.size}-byte messages, {args.reps} reps x "
          f"{args.seconds:g} s, pinned: {'client+upstream cpu0, proxy cpu1' if pin else 'no'}\n")
    print("| target | messages/s | p99 ms | proxy CPU µs/msg | errors |")
    print("|---|---|---|---|---|")
    for name in runs:
        rate, p99, cpu = med(name, "rate"), med(name, "p99_ms"), cpu_per_msg(name)
        errors = sum(r["errors"] for r in runs[name])
        print(f"| {name} | {rate:.0f} | {p99:.2f} | {'-' if cpu is None else f'{cpu:.1f}'} | {errors} |")
    f_rate, d_rate = med("fulcrum", "rate"), med("direct", "rate")
    f_cpu, n_cpu = cpu_per_msg("fulcrum"), cpu_per_msg("nginx")
    if f_rate and d_rate:
        print(f"\nfulcrum/direct messages/s: {f_rate / d_rate:.2f}")
    if f_cpu and n_cpu:
        print(f"fulcrum/nginx CPU per message: {f_cpu / n_cpu:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
