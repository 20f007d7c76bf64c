"""TCP services: bulk throughput, round trips and new connections through Fulcrum, beside nginx ``stream``.

Three ways to the same two local servers (a source that sends ``--mb`` MiB on each connection, and an
echo server), in the same run, in interleaved reps: ``direct`` (no proxy), ``fulcrum`` (a TCP service
of ``fulcrum run``) and ``nginx`` (its ``stream`` module, one worker, as Fulcrum has one process;
``proxy_buffer_size`` at its default 16k, and at 256k as ``nginx-256k``).
Measured from one client:

- bulk: MiB/s of one connection reading the source to its end, and the proxy's CPU time per GiB;
- round trip: µs per 64-byte ping-pong on one connection (``--trips`` of them);
- connect: new connections per second, each opened, echoing one line and closed (``--conns``).

Prints medians and the Fulcrum/nginx and Fulcrum/direct ratios; compare ratios of one run, never
figures across runs. Standard library only; needs nginx with the stream module (Debian:
``libnginx-mod-stream``, installed with apt-get when missing and ``--no-install`` is not given).

    .venv/bin/python benchmarks/bench_tcp.py [--mb 512] [--trips 20000] [--conns 2000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
CHUNK = 1024 * 1024
#: nginx with its default proxy_buffer_size (16k), and with 256k, about what uvloop reads at once for Fulcrum.
VARIANTS = ("direct", "fulcrum", "nginx", "nginx-256k")
NGINX_CONF = """
load_module {module};
daemon off;
master_process on;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/nginx.error.log warn;
events {{ worker_connections 16384; }}
stream {{
    proxy_buffer_size {buffer};
    server {{ listen 127.0.0.1:{bulk}; proxy_pass 127.0.0.1:{source}; }}
    server {{ listen 127.0.0.1:{echo}; proxy_pass 127.0.0.1:{echo_backend}; }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- the servers (in a child process)


def _serve(port: int, handle: Callable[[socket.socket], None], ready: threading.Event) -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(4096)
        ready.set()
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_guarded, args=(handle, conn), daemon=True).start()


def _guarded(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn:
        try:
            handle(conn)
        except OSError:
            pass


def _source(mb: int) -> Callable[[socket.socket], None]:
    block = os.urandom(CHUNK)

    def handle(conn: socket.socket) -> None:
        for _ in range(mb):
            conn.sendall(block)

    return handle


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def servers_main(source: int, echo: int, mb: int, started: multiprocessing.synchronize.Event) -> None:
    events = [threading.Event(), threading.Event()]
    threading.Thread(target=_serve, args=(source, _source(mb), events[0]), daemon=True).start()
    threading.Thread(target=_serve, args=(echo, _echo, events[1]), daemon=True).start()
    for event in events:
        event.wait(10)
    started.set()
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------- the proxies


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, found)]


@contextmanager
def fulcrum(run: Path, bulk: int, echo: int, source: int, echo_backend: int) -> Iterator[list[int]]:
    conf = run / "fulcrum.json"
    conf.write_text(json.dumps({
        "listen": [f"127.0.0.1:{free_port()}"],
        "admin": {"listen": None},
        "upstreams": {"unused": {"servers": ["http://127.0.0.1:9"]}},
        "tcp_services": {
            "bulk": {"listen": f"127.0.0.1:{bulk}", "servers": [f"127.0.0.1:{source}"]},
            "echo": {"listen": f"127.0.0.1:{echo}", "servers": [f"127.0.0.1:{echo_backend}"]},
        },
    }))
    exe = Path(sys.executable).with_name("fulcrum")
    proc = subprocess.Popen([str(exe), "run", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(run / "fulcrum.log", "w"))  # noqa: SIM115
    try:
        wait_port(bulk)
        wait_port(echo)
        yield [proc.pid]
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def nginx(run: Path, bulk: int, echo: int, source: int, echo_backend: int, buffer: str = "16k") -> Iterator[list[int]]:
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=STREAM_MODULE, run=run, bulk=bulk, echo=echo, source=source,
                                      echo_backend=echo_backend, buffer=buffer))
    proc = subprocess.Popen(["nginx", "-p", f"{run}/", "-e", str(run / "nginx.error.log"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(bulk)
        wait_port(echo)
        yield children(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


# ---------------------------------------------------------------- the client


def bulk_mib_s(port: int, mb: int) -> float:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        while n := sock.recv_into(view):
            got += n
    seconds = time.perf_counter() - started
    if got != mb * CHUNK:
        raise SystemExit(f"bulk: got {got} bytes, expected {mb * CHUNK}")
    return mb / seconds


def round_trip_us(port: int, trips: int) -> float:
    message = b"x" * 63 + b"\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(200):  # warm up
            sock.sendall(message)
            _read_exactly(sock, len(message))
        started = time.perf_counter()
        for _ in range(trips):
            sock.sendall(message)
            _read_exactly(sock, len(message))
        return (time.perf_counter() - started) / trips * 1e6


def _read_exactly(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        data = sock.recv(n - got)
        if not data:
            raise SystemExit("echo: connection closed")
        got += len(data)


def connects_per_s(port: int, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"hi\n")
            _read_exactly(sock, 3)
    return count / (time.perf_counter() - started)


# ---------------------------------------------------------------- the run


def ensure_stream_module(install: bool) -> None:
    if shutil.which("nginx") and STREAM_MODULE.exists():
        return
    if not install:
        raise SystemExit("needs nginx and its stream module: apt-get install nginx libnginx-mod-stream")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx", "libnginx-mod-stream"]):
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="MiB per bulk connection")
    parser.add_argument("--trips", type=int, default=20000, help="round trips per rep")
    parser.add_argument("--conns", type=int, default=2000, help="new connections per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-install", action="store_true")
    opts = parser.parse_args()
    ensure_stream_module(not opts.no_install)
    source, echo_backend = free_port(), free_port()
    started = multiprocessing.Event()
    servers = multiprocessing.Process(target=servers_main, args=(source, echo_backend, opts.mb, started), daemon=True)
    servers.start()
    started.wait(10)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="fulcrum-bench-tcp-") as tmp:
            run = Path(tmp)
            for rep in range(opts.reps):
                for name in VARIANTS:
                    figures = results.setdefault(name, {"mib_s": [], "cpu_s_per_gib": [], "rtt_us": [], "conn_s": []})
                    if name == "direct":
                        measure(figures, source, echo_backend, [], opts)
                        continue
                    bulk, echo = free_port(), free_port()
                    if name == "fulcrum":
                        proxy = fulcrum(run, bulk, echo, source, echo_backend)
                    else:
                        proxy = nginx(run, bulk, echo, source, echo_backend, "256k" if name == "nginx-256k" else "16k")
                    with proxy as pids:
                        measure(figures, bulk, echo, pids, opts)
                print(f"rep {rep + 1}/{opts.reps} done", file=sys.stderr)
    finally:
        servers.kill()
    report(results, opts)


def measure(figures: dict[str, list[float]], bulk: int, echo: int, pids: list[int], opts: argparse.Namespace) -> None:
    before = cpu_seconds(pids) if pids else 0.0
    figures["mib_s"].append(bulk_mib_s(bulk, opts.mb))
    if pids:
        figures["cpu_s_per_gib"].append((cpu_seconds(pids) - before) / (opts.mb / 1024))
    figures["rtt_us"].append(round_trip_us(echo, opts.trips))
    figures["conn_s"].append(connects_per_s(echo, opts.conns))


def report(results: dict[str, dict[str, list[float]]], opts: argparse.Namespace) -> None:
    med = {name: {k: statistics.median(v) for k, v in figs.items() if v} for name, figs in results.items()}
    print(f"TCP services, {opts.reps} reps, medians (bulk {opts.mb} MiB, {opts.trips} round trips, "
          f"{opts.conns} connections)")
    print(f"{'':10} {'bulk MiB/s':>11} {'CPU s/GiB':>10} {'round trip µs':>14} {'connections/s':>14}")
    for name, m in med.items():
        cpu = f"{m['cpu_s_per_gib']:.2f}" if "cpu_s_per_gib" in m else "-"
        print(f"{name:10} {m['mib_s']:11.0f} {cpu:>10} {m['rtt_us']:14.1f} {m['conn_s']:14.0f}")
    f, d = med["fulcrum"], med["direct"]
    for other in ("nginx", "nginx-256k"):
        n = med[other]
        print(f"Fulcrum/{other}: bulk {f['mib_s'] / n['mib_s']:.2f}x,"
              f" CPU per GiB {f['cpu_s_per_gib'] / n['cpu_s_per_gib']:.2f}x,"
              f" round trip {f['rtt_us'] / n['rtt_us']:.2f}x, connections/s {f['conn_s'] / n['conn_s']:.2f}x")
    print(f"Fulcrum/direct: bulk {f['mib_s'] / d['mib_s']:.2f}x, round trip {f['rtt_us'] / d['rtt_us']:.2f}x,"
          f" connections/s {f['conn_s'] / d['conn_s']:.2f}x")


if __name__ == "__main__":
    main()
