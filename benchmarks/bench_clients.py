#!/usr/bin/env python3
"""Many clients: memory per idle and per mid-request connection, and latency under slowloris, Fulcrum beside nginx.

With run.py's machinery (its upstreams, proxies, pinning and process handling), Fulcrum (``fulcrum
proxy``) and nginx (one worker, ``keepalive 1024``) are measured from outside, in turn:

- ``idle``: RSS of the proxy's processes before and after a client process opens ``--idle``
  (10,000) keep-alive connections, each of which makes one request, reads the answer and stays
  open: RSS per idle client connection.
- ``partial``: the same for ``--mid`` (1,000) connections that sent a partial request head.
- ``slow``: the same for ``--mid`` connections whose whole head was sent, to a proxy in front of an
  upstream that reads requests and never answers (each connection then holds an upstream
  connection too, as it does while a slow application thinks).
- ``slowloris``: the p99 of one normal client (``wrk -t1 -c1``) without and with ``--slowloris``
  (300) connections dribbling header bytes (one every ``--dribble`` seconds each, reconnecting when
  the proxy closes them), every rep, both proxies.

Each memory test runs on a freshly started proxy; the count of the proxy's open descriptors (from
/proc) tells when it has accepted every connection (and, for ``slow``, connected upstream for each),
so RSS is read only then. The clients (and the silent upstream) are processes of ``clientload.py``
on the load CPU, with non-blocking sockets; RLIMIT_NOFILE is raised to its hard limit.

    benchmarks/bench_clients.py                          # all four: 10,000 idle, 1,000 mid-request, 300 slowloris
    benchmarks/bench_clients.py --tests idle --idle 2000
    benchmarks/bench_clients.py --tests slowloris --reps 1 --seconds 3

Results go to benchmarks/results/clients-<stamp>.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

PROXIES = ("nginx-ka1k", run.SUBJECT)
TESTS = ("idle", "partial", "slow", "slowloris")
DEFAULT_BASE_PORT = 19680  # run.py's + 300; the silent upstream and the proxies in front of it at +50
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-clients\r\nAccept: */*\r\n\r\n"
PARTIAL = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-clients\r\n"  # no end of head
WAIT_S = 60.0  # what any step may take before the run gives up on it
CLIENTLOAD = Path(__file__).resolve().parent / "clientload.py"


# -- measuring from outside ------------------------------------------------------------------------------


def rss_kib(pids: Sequence[int]) -> int:
    """Resident memory of the processes (VmRSS), KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def open_fds(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout, or a SystemExit naming what it printed instead."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise SystemExit(f"a client process said nothing in {timeout:g} s")
    line = proc.stdout.readline().decode(errors="replace").strip()
    if not line:
        raise SystemExit(f"a client process exited ({proc.wait()}) before it was ready")
    return line


def child(procs: run.Processes, opts: run.Options, *args: object) -> subprocess.Popen[bytes]:
    """A process of clientload.py on the load CPU, its output on a pipe."""
    return procs.start("clients", [sys.executable, str(CLIENTLOAD), *map(str, args)], None, opts.load_cpu)


@dataclass
class Memory:
    """One memory test of one proxy."""

    test: str
    proxy: str
    connections: int
    held: int
    rss_before_kib: int
    rss_after_kib: int

    @property
    def kib_per_conn(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.held if self.held else float("nan")


def memory_test(procs: run.Processes, opts: run.Options, test: str, px: run.Proxy, count: int) -> Memory:
    """RSS of a fresh proxy before and after ``count`` connections in the state ``test`` names."""
    tree = run.process_tree(px.pid)
    time.sleep(0.5)  # whatever the sanity check left to free, freed
    fds0, rss0 = open_fds(tree), rss_kib(tree)
    what, answer = {"idle": (REQUEST, True), "partial": (PARTIAL, False), "slow": (REQUEST, False)}[test]
    clients = child(procs, opts, "hold", px.port, count, what.hex(), *(["--answer"] if answer else []))
    try:
        held = json.loads(read_line(clients, WAIT_S + 10))["held"]
        # every connection accepted by the proxy (and, for slow, its upstream connection opened)
        want = fds0 + held * (2 if test == "slow" else 1)
        deadline = time.monotonic() + WAIT_S
        while open_fds(run.process_tree(px.pid)) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        fds = open_fds(run.process_tree(px.pid))
        if fds < want:
            run.log(f"  {px.name} {test}: {fds - fds0} of {want - fds0} descriptors expected after {WAIT_S:g} s")
        rss1 = rss_kib(run.process_tree(px.pid))
    finally:
        procs.stop(clients)
    result = Memory(test, px.name, count, held, rss0, rss1)
    run.log(f"  {test:<8} {px.name:<11} {held:>6} held  RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB  "
            f"{result.kib_per_conn:.2f} KiB per connection")
    return result


def start_unchecked(procs: run.Processes, px: run.Proxy, log_path: Path, cpu: str | None) -> None:
    """Start a proxy whose upstream never answers: ready when its port accepts connections."""
    proc = procs.start(px.name, px.argv, log_path, cpu)
    px.pid = proc.pid
    deadline = time.monotonic() + 30
    while not run.port_in_use(px.port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{px.name} in front of the silent upstream did not start; see {log_path.name}")
        time.sleep(0.1)


def stop_proxy(procs: run.Processes, px: run.Proxy) -> None:
    for started in list(procs.items):
        if started.proc.pid == px.pid:
            procs.stop(started.proc)


def memory_tests(procs: run.Processes, opts: run.Options, ns: argparse.Namespace, run_dir: Path) -> list[Memory]:
    results = []
    for test in (t for t in ("idle", "partial", "slow") if t in ns.tests):
        count = ns.idle if test == "idle" else ns.mid
        if test == "slow":
            silent_opts = replace(opts, ports=run.Ports(opts.ports.base + 50))
            silent_dir = run_dir / "silent"
            (silent_dir / "tmp").mkdir(parents=True, exist_ok=True)
            upstream = child(procs, opts, "silent", ",".join(map(str, silent_opts.ports.backends)))
            for port in silent_opts.ports.backends:
                while not run.port_in_use(port):
                    if upstream.poll() is not None:
                        raise SystemExit("the silent upstream did not start")
                    time.sleep(0.05)
            for px in run.build_proxies(silent_opts, silent_dir):
                start_unchecked(procs, px, silent_dir / f"{px.name}.log", opts.proxy_cpu)
                results.append(memory_test(procs, opts, test, px, count))
                stop_proxy(procs, px)
            procs.stop(upstream)
            continue
        for px in run.build_proxies(opts, run_dir):
            if not run.start_proxies(procs, opts, run_dir, [px]):
                raise SystemExit(f"{px.name} did not start")
            results.append(memory_test(procs, opts, test, px, count))
            stop_proxy(procs, px)
    return results


@dataclass
class Loris:
    """One rep of the slowloris test against one proxy."""

    proxy: str
    rep: int
    p99_quiet_ms: float | None
    p99_loris_ms: float | None
    rps_quiet: float
    rps_loris: float
    errors_loris: int
    loris: dict[str, Any]


def slowloris_tests(procs: run.Processes, opts: run.Options, ns: argparse.Namespace, run_dir: Path) -> list[Loris]:
    one = replace(opts, threads=1)
    proxies = run.start_proxies(procs, opts, run_dir, run.build_proxies(opts, run_dir))
    if len(proxies) != len(PROXIES):
        raise SystemExit("both proxies must start for the slowloris test")
    out = []
    for rep in range(1, ns.reps + 1):
        for px in proxies:
            run.wait_for_quiet(opts)  # as run.py does; not again below, where the slowloris client itself runs
            quiet = run.run_wrk(procs, one, px.port, 1, ns.seconds)
            loris = child(procs, opts, "slowloris", px.port, ns.slowloris, ns.dribble)
            try:
                if read_line(loris, WAIT_S) != "ready":
                    raise SystemExit("the slowloris client did not get its connections open")
                busy = run.run_wrk(procs, one, px.port, 1, ns.seconds)
                loris.send_signal(signal.SIGTERM)
                tail, _ = loris.communicate(timeout=WAIT_S)
            finally:
                procs.stop(loris)
            stats = json.loads(tail.decode().strip().splitlines()[-1])
            result = Loris(px.name, rep, quiet.p99_ms, busy.p99_ms, quiet.rps, busy.rps,
                           busy.socket_errors + busy.non_2xx, stats)
            run.log(f"  slowloris rep {rep} {px.name:<11} p99 {quiet.p99_ms} -> {busy.p99_ms} ms  "
                    f"rps {quiet.rps:,.0f} -> {busy.rps:,.0f}  errors {result.errors_loris}  {stats}")
            out.append(result)
    for px in proxies:
        stop_proxy(procs, px)
    return out


# -- report -----------------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(memory: list[Memory], loris: list[Loris], ns: argparse.Namespace, opts: run.Options, stamp: str) -> str:
    pinning = f"clients + upstreams on CPU {opts.load_cpu}, proxy on CPU {opts.proxy_cpu}" if opts.load_cpu else "none"
    lines = [f"# Fulcrum many-clients benchmark {stamp}", "", f"Pinning: {pinning}. nginx: one worker, keepalive 1024.",
             ""]
    if memory:
        lines += ["| test | connections held (Fulcrum, nginx) | Fulcrum KiB/conn | nginx KiB/conn | Fulcrum/nginx |",
                  "|---|---:|---:|---:|---:|"]
        for test in dict.fromkeys(m.test for m in memory):
            mine = next((m for m in memory if m.test == test and m.proxy == run.SUBJECT), None)
            base = next((m for m in memory if m.test == test and m.proxy == PROXIES[0]), None)
            ratio = mine.kib_per_conn / base.kib_per_conn if mine and base and base.kib_per_conn > 0 else None
            lines.append(f"| {test} | {mine.held if mine else '-'}, {base.held if base else '-'} "
                         f"| {_fmt(mine.kib_per_conn if mine else None, '.2f')} "
                         f"| {_fmt(base.kib_per_conn if base else None, '.2f')} | {_fmt(ratio, '.2f')} |")
        lines.append("")
    if loris:
        lines += [f"One client (wrk -t1 -c1, {ns.seconds} s) without and with {ns.slowloris} slowloris connections "
                  f"(a header byte every {ns.dribble:g} s each), {ns.reps} rep(s), medians:", "",
                  "| proxy | p99 ms quiet | p99 ms under slowloris | requests/s quiet | requests/s under slowloris "
                  "| errors | slowloris connections closed by the proxy |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name in PROXIES:
            runs = [r for r in loris if r.proxy == name]
            lines.append(
                f"| {name} | {_fmt(_median([r.p99_quiet_ms for r in runs]), '.3f')} "
                f"| {_fmt(_median([r.p99_loris_ms for r in runs]), '.3f')} "
                f"| {_fmt(_median([r.rps_quiet for r in runs]), ',.0f')} "
                f"| {_fmt(_median([r.rps_loris for r in runs]), ',.0f')} | {sum(r.errors_loris for r in runs)} "
                f"| {sum(r.loris['closed_by_proxy'] for r in runs)} |")
        per_rep = []
        for rep in range(1, ns.reps + 1):
            a = next((r.p99_loris_ms for r in loris if r.rep == rep and r.proxy == run.SUBJECT), None)
            b = next((r.p99_loris_ms for r in loris if r.rep == rep and r.proxy == PROXIES[0]), None)
            if a is not None and b:
                per_rep.append(a / b)
        reps = ", ".join(f"{v:.2f}" for v in per_rep)
        lines += ["", f"p99 under slowloris, Fulcrum/nginx: {_fmt(_median(per_rep), '.2f')} [{reps}]"]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/bench_clients.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tests", default=",".join(TESTS), help=f"comma list from {', '.join(TESTS)}")
    ap.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections (default 10000)")
    ap.add_argument("--mid", type=int, default=1000, help="mid-request connections (default 1000)")
    ap.add_argument("--slowloris", type=int, default=300, help="slowloris connections (default 300)")
    ap.add_argument("--dribble", type=float, default=0.5, help="seconds between two bytes of one slowloris "
                    "connection (default 0.5)")
    ap.add_argument("--seconds", type=int, default=5, help="seconds of each normal-client wrk run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="slowloris repetitions (default 3)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    ap.add_argument("--quiet-wait", type=float, default=10.0, metavar="S", help="before each slowloris rep wait up to "
                    "S seconds for other processes to use less than 25%% of a CPU, as run.py does (default 10)")
    ns = ap.parse_args(argv)
    ns.tests = [t.strip() for t in ns.tests.split(",") if t.strip()]
    if not ns.tests or any(t not in TESTS for t in ns.tests):
        ap.error(f"--tests: choose from {', '.join(TESTS)}")
    return ns


def run_options(ns: argparse.Namespace) -> run.Options:
    """run.py's options for this run: the two proxies, the ports, pinning as run.py decides it."""
    argv = ["--only", ",".join(PROXIES), "--base-port", str(ns.base_port)]
    argv += ["--no-pin"] if ns.no_pin else []
    argv += ["--no-install"] if ns.no_install else []
    argv += ["--quiet-wait", str(ns.quiet_wait)]
    return run.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    opts = run_options(ns)

    run.ensure_tools(["nginx", "wrk", *(["taskset"] if opts.load_cpu else [])], opts.install)
    run.raise_fd_limit()
    run.check_ports(opts)
    run.check_ports(replace(opts, ports=run.Ports(opts.ports.base + 50)))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = run.RUN_ROOT / f"clients-{stamp}"
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    run.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    procs = run.Processes()
    signal.signal(signal.SIGINT, run.on_signal)
    signal.signal(signal.SIGTERM, run.on_signal)
    memory: list[Memory] = []
    loris: list[Loris] = []
    try:
        run.start_backends(procs, opts, run_dir)
        memory = memory_tests(procs, opts, ns, run_dir)
        if "slowloris" in ns.tests:
            loris = slowloris_tests(procs, opts, ns, run_dir)
    except run.Interrupted as exc:
        run.log(f"interrupted ({exc}); stopping everything started")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()

    text = report(memory, loris, ns, opts, stamp)
    base = run.RESULTS_DIR / f"clients-{stamp}"
    Path(f"{base}.md").write_text(run.relative(text))
    document = {"memory": [{**vars(m), "kib_per_conn": m.kib_per_conn} for m in memory],
                "slowloris": [vars(r) for r in loris], "environment": run.environment()}
    Path(f"{base}.json").write_text(run.relative(json.dumps(document, indent=1)) + "\n")
    print(run.relative(text))
    print(f"results: {run.relative(str(base))}.md, .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
