"""Several workers: Fulcrum with workers 1 and 2 beside nginx with worker_processes 1 and 2, in one run.

The same three "hello, world\\n" nginx upstreams as ``benchmarks/run.py`` (``conf/backends.nginx.conf``);
each proxy round-robins over them with pooled keep-alive connections. wrk loads each proxy in turn
(interleaved reps), and for each the report gives requests/s and the proxy's CPU µs per request (all
its processes: Fulcrum's main process and workers, nginx's master and workers), and the
workers-2/workers-1 ratio of each proxy.

Pinning (``--load-cpus``, ``--proxy-cpus``): by default wrk and the upstreams run on CPU 0; a proxy with
N workers may use the last N CPUs of ``--proxy-cpus`` (default 0,1): one worker runs alone on CPU 1,
two workers on CPUs 0 and 1. On a two-CPU machine the second worker thus gets only what wrk and the
upstreams leave of CPU 0, so a workers-2/workers-1 ratio well below 2 is expected there: the ratio says
how much of a shared second core a proxy turns into throughput. With more CPUs, give the proxy cores the
load does not use (``--load-cpus 0,1 --proxy-cpus 2,3``).

    .venv/bin/python benchmarks/bench_workers.py [--duration 5] [--reps 2] [--conns 100] [--threads 2]

Standard library only; needs nginx, wrk and taskset. Compare ratios of one run, never figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from run import cpu_seconds, parse_wrk, process_tree  # noqa: E402  (the harness beside this file)

VENV_BIN = Path(sys.executable).parent
VARIANTS = ("nginx-1", "nginx-2", "fulcrum-1", "fulcrum-2")
BALANCER = """
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {run}/{name}.pid;
error_log {run}/{name}.error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path {run}/tmp-{name};
    proxy_temp_path {run}/tmp-{name};
    upstream pool {{
        server 127.0.0.1:{b1}; server 127.0.0.1:{b2}; server 127.0.0.1:{b3};
        keepalive 32;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until ``port`` answers an HTTP request with 200 (the proxies need their workers up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"exited with {proc.returncode} before serving on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answered on {port} within {timeout:g}s")


def proxy_cpus(cpus: str, workers: int) -> str:
    """The last ``workers`` CPUs of a ``taskset -c`` list (all of it when it has fewer)."""
    listed = [c for c in cpus.split(",") if c]
    return ",".join(listed[-workers:])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if "fulcrum" in str(proc.args) else signal.SIGQUIT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds of each wrk run")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--load-cpus", default="0", help="CPUs of wrk and the upstreams (taskset -c)")
    ap.add_argument("--proxy-cpus", default="0,1", help="CPUs the proxy under test may use (taskset -c)")
    ap.add_argument("--only", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_workers: {tool} is needed (Debian: apt-get install nginx wrk util-linux)")
    variants = [v for v in args.only.split(",") if v]
    run = Path(tempfile.mkdtemp(prefix="fulcrum-bench-workers-"))
    backends = [free_port() for _ in range(3)]
    template = (BENCH_DIR / "conf" / "backends.nginx.conf").read_text()
    values = {"RUN_DIR": run, "BACKEND_1": backends[0], "BACKEND_2": backends[1], "BACKEND_3": backends[2],
              "STATUS_PORT": free_port()}
    for key, value in values.items():
        template = template.replace(f"@{key}@", str(value))
    (run / "tmp").mkdir()
    (run / "backends.conf").write_text(template)
    started: list[subprocess.Popen[bytes]] = []

    def launch(argv: list[str], cpus: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["taskset", "-c", cpus, *argv], stdout=subprocess.DEVNULL,
                                stderr=open(run / "log.txt", "ab"))  # noqa: SIM115
        started.append(proc)
        return proc

    results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    try:
        upstreams = launch(["nginx", "-e", str(run / "backends.error.log"), "-p", str(run), "-c",
                            str(run / "backends.conf")], args.load_cpus)
        wait_port(backends[0], upstreams)
        for rep in range(args.reps):
            for variant in variants:
                kind, workers = variant.split("-")
                port = free_port()
                if kind == "nginx":
                    conf = run / f"{variant}.conf"
                    conf.write_text(BALANCER.format(workers=workers, run=run, name=variant, port=port,
                                                    b1=backends[0], b2=backends[1], b3=backends[2]))
                    argv = ["nginx", "-e", str(run / f"{variant}.error.log"), "-p", str(run), "-c", str(conf)]
                else:
                    conf = run / f"{variant}.json"
                    conf.write_text(json.dumps({
                        "listen": [f"127.0.0.1:{port}"], "workers": int(workers), "admin": {"listen": None},
                        "upstreams": {"app": {"servers": [f"http://127.0.0.1:{p}" for p in backends]}}}))
                    argv = [str(VENV_BIN / "fulcrum"), "run", "-c", str(conf)]
                proc = launch(argv, proxy_cpus(args.proxy_cpus, int(workers)))
                wait_port(port, proc)
                subprocess.run(["taskset", "-c", args.load_cpus, "wrk", "-t", str(args.threads), "-c",
                                str(args.conns), "-d", "1s", f"http://127.0.0.1:{port}/"],
                               capture_output=True, check=True)  # warm the pools
                tree = process_tree(proc.pid)
                cpu_before = cpu_seconds(tree)
                out = subprocess.run(["taskset", "-c", args.load_cpus, "wrk", "-t", str(args.threads), "-c",
                                      str(args.conns), "-d", f"{args.duration}s", f"http://127.0.0.1:{port}/"],
                                     capture_output=True, text=True, check=True).stdout
                cpu = cpu_seconds(tree) - cpu_before
                wrk = parse_wrk(out)
                stop(proc)
                started.remove(proc)
                if wrk.socket_errors or wrk.non_2xx or not wrk.requests:
                    print(f"{variant}: errors in the run:\n{out}", file=sys.stderr)
                us = cpu / wrk.requests * 1e6 if wrk.requests else float("nan")
                results[variant].append((wrk.rps or 0.0, us))
                print(f"rep {rep + 1} {variant}: {wrk.rps:,.0f} req/s, {us:.0f} CPU µs/request", file=sys.stderr)
    finally:
        for proc in reversed(started):
            stop(proc)
        shutil.rmtree(run, ignore_errors=True)
    rows = {v: (statistics.median(r for r, _ in got), statistics.median(u for _, u in got))
            for v, got in results.items() if got}
    print(f"\nworkers: wrk -t{args.threads} -c{args.conns} -d{args.duration}s x {args.reps} reps; "
          f"wrk + upstreams on CPUs {args.load_cpus}; proxy with 1 worker on CPU "
          f"{proxy_cpus(args.proxy_cpus, 1)}, with 2 on CPUs {proxy_cpus(args.proxy_cpus, 2)} ({os.cpu_count()} CPUs)")
    print(f"{'proxy':<10} {'req/s':>10} {'CPU µs/req':>11}")
    for variant, (rps, us) in rows.items():
        print(f"{variant:<10} {rps:>10,.0f} {us:>11.1f}")
    ratios = {}
    for kind in ("nginx", "fulcrum"):
        one, two = rows.get(f"{kind}-1"), rows.get(f"{kind}-2")
        if one and two and one[0]:
            ratios[kind] = two[0] / one[0]
            print(f"{kind}: workers 2 / workers 1 = {ratios[kind]:.2f}x requests/s (target for Fulcrum: 1.6x "
                  "where the cores allow)")
    if "fulcrum-1" in rows and "nginx-1" in rows:
        print(f"fulcrum/nginx, 1 worker: {rows['fulcrum-1'][0] / rows['nginx-1'][0]:.2f}")
    if "fulcrum-2" in rows and "nginx-2" in rows:
        print(f"fulcrum/nginx, 2 workers: {rows['fulcrum-2'][0] / rows['nginx-2'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "args": vars(args) | {"json": None}},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
