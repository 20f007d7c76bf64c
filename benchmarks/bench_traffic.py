#!/usr/bin/env python3
"""Real traffic through Fulcrum beside nginx: browser heads, 1 MiB bodies both ways, at c50 and c400.

``run.py`` measures wrk's bare ``GET /`` with one header. This runs, with run.py's machinery (the
same three nginx upstreams, pinning, interleaved reps, CPU from /proc and accepted connections from
the upstreams' stub_status), four workloads in turn, each at every connection count:

- ``bare``: ``GET /``, as run.py;
- ``browser``: ``GET /`` with the 14 headers of a desktop browser's page load (``browser.py``);
- ``resp1m``: ``GET /1m``, a 1 MiB response;
- ``body1m``: ``POST /upload`` with a 1 MiB body, which the upstream reads whole before answering.

The baseline is nginx with ``keepalive 1024`` to the upstreams (``nginx-ka1k``, its best-tuned
setting: no upstream connection is opened per request at c400), streaming request bodies
(``proxy_request_buffering off``) as Fulcrum does. Reported per workload and connection count:
requests/s (MiB/s for the bodies), p99, errors, CPU µs per request (per MiB for the bodies) and new
upstream connections per 1,000 requests, each with the ratio Fulcrum/nginx (the median of the
per-rep ratios).

    benchmarks/bench_traffic.py                          # 3 reps x 5 s, c50 and c400, all four workloads
    benchmarks/bench_traffic.py --workloads browser,body1m --reps 1 --conns 50
    benchmarks/bench_traffic.py --quiet-wait 0 --retries 0   # never wait for a quiet machine

Every other option is run.py's (``--reps``, ``--duration``, ``--conns``, ``--no-pin``, ``--base-port``,
``--noisy``, ...). Results go to benchmarks/results/traffic-<stamp>.{md,json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
from browser import wrk_header_args

BASELINE = "nginx-ka1k"
SUBJECT = run.SUBJECT
DEFAULT_BASE_PORT = 19580  # run.py's ports + 200, so the two never clash
BODY_WRK_TIMEOUT_S = 10  # wrk --timeout for the 1 MiB workloads
#: wrk's request for ``body1m``: a 1 MiB POST body (wrk sets Content-Length).
POST_SCRIPT = f"""wrk.method = "POST"
wrk.body = string.rep("x", {run.MIB})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


@dataclass(frozen=True)
class Workload:
    """What every wrk request of one part of the run is."""

    name: str
    what: str
    path: str = "/"
    headers: tuple[str, ...] = ()
    script: str | None = None
    per_mib: bool = False  # each request moves 1 MiB: report MiB/s and CPU per MiB


WORKLOADS = {
    w.name: w
    for w in (
        Workload("bare", "GET /, wrk's request (Host only)"),
        Workload("browser", "GET / with a desktop browser's 14 headers", headers=wrk_header_args()),
        Workload("resp1m", "GET /1m, a 1 MiB response", path="/1m", per_mib=True),
        Workload("body1m", "POST /upload with a 1 MiB body", path="/upload", script=POST_SCRIPT, per_mib=True),
    )
}


def parse_args(argv: Sequence[str] | None) -> tuple[list[Workload], run.Options]:
    ap = argparse.ArgumentParser(
        prog="benchmarks/bench_traffic.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list from {', '.join(WORKLOADS)}")
    ns, rest = ap.parse_known_args(argv)
    names = [w.strip() for w in ns.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown or not names:
        ap.error(f"--workloads: unknown {unknown}; choose from {', '.join(WORKLOADS)}")
    # run.py's options, with this bench's defaults first so that the command line wins
    defaults = ["--duration", "5", "--warmup", "2", "--only", f"{BASELINE},{SUBJECT}", "--base-port",
                str(DEFAULT_BASE_PORT)]
    opts = run.parse_args([*defaults, *rest])
    return [WORKLOADS[n] for n in names], opts


def body_check(port: int) -> list[str]:
    """Twice on one keep-alive connection: GET /1m gives 1 MiB, POST /upload of 1 MiB answers 200 hello."""
    problems = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(2):
            conn.request("GET", "/1m")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or len(body) != run.MIB:
                problems.append(f"GET /1m answered {resp.status} with {len(body)} bytes")
            conn.request("POST", "/upload", body=b"x" * run.MIB)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or body != run.EXPECTED_BODY:
                problems.append(f"POST /upload answered {resp.status} {body[:40]!r}")
    except (OSError, http.client.HTTPException) as exc:
        problems.append(f"bodies on a keep-alive connection failed: {type(exc).__name__}: {exc}")
    finally:
        conn.close()
    return problems


def upstream_waits_for_body(port: int) -> bool:
    """The upstream's POST /upload says nothing while half of the body is still to come, then answers 200."""
    body = b"x" * run.MIB
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.sendall(body[: len(body) // 2])
        sock.settimeout(0.5)
        try:
            early = sock.recv(100)
        except TimeoutError:
            early = b""
        if early:
            return False
        sock.settimeout(5)
        sock.sendall(body[len(body) // 2 :])
        return sock.recv(100).startswith(b"HTTP/1.1 200 ")


def wrk_options(opts: run.Options, w: Workload, run_dir: Path) -> run.Options:
    args = list(w.headers)
    if w.script is not None:
        script = run_dir / f"{w.name}.lua"
        script.write_text(w.script)
        args += ["-s", str(script)]
    # at c400 a 1 MiB exchange waits behind 399 others: wrk's 2 s timeout would cut the tail and count it as errors
    timeout = max(opts.wrk_timeout, BODY_WRK_TIMEOUT_S) if w.per_mib else opts.wrk_timeout
    return replace(opts, wrk_args=tuple(args), path=w.path, wrk_timeout=timeout)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio_cell(rs: list[run.Ratio], metric: str, conns: int) -> str:
    r = next((x for x in rs if x.metric == metric and x.conns == conns), None)
    if r is None or not r.per_rep:
        return "-"
    return f"{r.median:.2f} [{', '.join(f'{v:.2f}' for v in r.per_rep)}]"


def report(workloads: list[Workload], results: dict[str, list[run.Run]], opts: run.Options, stamp: str) -> str:
    pinning = f"wrk + upstreams on CPU {opts.load_cpu}, proxy on CPU {opts.proxy_cpu}" if opts.load_cpu else "none"
    lines = [
        f"# Fulcrum traffic benchmark {stamp}",
        "",
        f"wrk -t{opts.threads} -d{opts.duration}s --latency --timeout {opts.wrk_timeout}s "
        f"({BODY_WRK_TIMEOUT_S}s for 1 MiB workloads), {opts.reps} rep(s), proxies interleaved; pinning: "
        f"{pinning}. Medians over the reps; ratios {SUBJECT}/{BASELINE} are medians of the per-rep ratios "
        "(per-rep values in brackets). For 1 MiB workloads rate is MiB/s and CPU is µs per MiB.",
        "",
        *(f"- {w.name}: {w.what}" for w in workloads),
        "",
        "| workload | conns | proxy | rate | p99 ms | errors (sock/non-2xx) | CPU µs/req or /MiB | proxy CPU% "
        "| new upstream conns /1k req | other CPU% |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = [BASELINE, SUBJECT]
    for w in workloads:
        for row in run.summarize(results.get(w.name, []), names, opts.conns):
            lines.append(
                f"| {w.name} | {row.conns} | {row.proxy} | {_fmt(row.rps, ',.0f')} | {_fmt(row.p99_ms, '.2f')} "
                f"| {row.socket_errors}/{row.non_2xx} | {_fmt(row.cpu_us_per_req, '.1f')} "
                f"| {_fmt(row.proxy_cpu_pct, '.0f')} | {_fmt(row.new_conns_per_1k, '.2f')} "
                f"| {_fmt(row.other_cpu_pct, '.0f')} |"
            )
    lines += [
        "",
        f"Ratios {SUBJECT}/{BASELINE}:",
        "",
        "| workload | conns | CPU per req or MiB | p99 | rate | errors (Fulcrum, nginx) "
        "| new upstream conns /1k (Fulcrum, nginx) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for w in workloads:
        runs = results.get(w.name, [])
        rs = run.ratios(runs, opts.conns, subject=SUBJECT, base=BASELINE)
        rows = {(r.proxy, r.conns): r for r in run.summarize(runs, names, opts.conns)}
        for c in opts.conns:
            mine, base = rows.get((SUBJECT, c)), rows.get((BASELINE, c))
            errors = f"{mine.socket_errors + mine.non_2xx if mine else '-'}, " + (
                f"{base.socket_errors + base.non_2xx}" if base else "-"
            )
            new_conns = (f"{_fmt(mine.new_conns_per_1k if mine else None, '.2f')}, "
                         f"{_fmt(base.new_conns_per_1k if base else None, '.2f')}")
            lines.append(
                f"| {w.name} | {c} | {_ratio_cell(rs, 'cpu_us_per_req', c)} | {_ratio_cell(rs, 'p99', c)} "
                f"| {_ratio_cell(rs, 'rps', c)} | {errors} | {new_conns} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    workloads, opts = parse_args(argv)
    run.ensure_tools(["nginx", "wrk", *(["taskset"] if opts.load_cpu else [])], opts.install)
    run.raise_fd_limit()
    run.check_ports(opts)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = run.RUN_ROOT / f"traffic-{stamp}"
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    run.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    proxies = run.build_proxies(opts, run_dir)
    procs = run.Processes()
    signal.signal(signal.SIGINT, run.on_signal)
    signal.signal(signal.SIGTERM, run.on_signal)
    results: dict[str, list[run.Run]] = {}
    discarded: dict[str, list[run.Run]] = {}
    try:
        backend = run.start_backends(procs, opts, run_dir)
        if not upstream_waits_for_body(opts.ports.backends[0]):
            raise SystemExit("the upstream answered POST /upload before the end of the body (conf/backends.nginx.conf)")
        ready = run.start_proxies(procs, opts, run_dir, proxies)
        for px in list(ready):
            if problems := body_check(px.port):
                run.log(f"  {px.name} FAILED the body check: {'; '.join(problems)}")
                procs.stop(next(s.proc for s in procs.items if s.proc.pid == px.pid))
                ready.remove(px)
        if {p.name for p in ready} != {BASELINE, SUBJECT}:
            raise SystemExit(f"{BASELINE} and {SUBJECT} must both pass their checks; nothing to compare")
        for w in workloads:
            run.log(f"workload {w.name}: {w.what}")
            results[w.name], discarded[w.name] = run.measure_all(procs, wrk_options(opts, w, run_dir), ready,
                                                                 backend.pid)
    except run.Interrupted as exc:
        run.log(f"interrupted ({exc}); stopping everything started")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()

    text = report(workloads, results, opts, stamp)
    text += f"\nEnvironment: {json.dumps(run.environment())}\n"
    base = run.RESULTS_DIR / f"traffic-{stamp}"
    Path(f"{base}.md").write_text(run.relative(text))
    document: dict[str, Any] = {
        "workloads": [asdict(w) for w in workloads],
        "ratios": {name: [asdict(r) for r in run.ratios(runs, opts.conns, subject=SUBJECT, base=BASELINE)]
                   for name, runs in results.items()},
        "runs": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        "discarded_noisy_runs": {name: [asdict(r) for r in runs] for name, runs in discarded.items()},
        "environment": run.environment(),
    }
    Path(f"{base}.json").write_text(run.relative(json.dumps(document, indent=1, ensure_ascii=False)) + "\n")
    print(run.relative(text))
    print(f"results: {run.relative(str(base))}.md, .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
