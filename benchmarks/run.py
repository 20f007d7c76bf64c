#!/usr/bin/env python3
"""Fulcrum beside nginx: one run, same upstreams, same load, compared by ratio.

Starts one nginx serving three "hello, world\\n" upstreams, nginx as the baseline
load balancer in front of them and Fulcrum in front of the same three, checks
that every proxy answers and round-robins, then runs wrk against each proxy in
turn (for every repetition, for every connection count, every proxy) and
prints medians, the Fulcrum/nginx ratios and the project's targets with
PASS/MISS. Results go to benchmarks/results/<stamp>.{md,json}; configs, logs,
pid files and temp dirs of the run to benchmarks/run/<stamp>/.

Pinning (default when two CPUs are usable): wrk and the upstreams on the first
CPU, the proxy under test on the second, each proxy with one worker.

    benchmarks/run.py                      # 3 reps x 10 s x (50, 400) connections
    benchmarks/run.py --quick              # 1 rep x 5 s
    benchmarks/run.py --only fulcrum,nginx,nginx-ka1k
    benchmarks/run.py --fulcrum-cmd 'exec .venv/bin/fulcrum proxy --listen 127.0.0.1:{port} --access-log {to_args}'
    benchmarks/run.py --fulcrum-config fulcrum.yaml --fulcrum-port 8080
    benchmarks/run.py --quick --profile    # plus one py-spy profiled Fulcrum run
    benchmarks/run.py --https --conns 50   # clients over TLS: nginx and Fulcrum with the same certificate

Standard library only (``--https`` makes its certificate with the openssl
command). Installs nginx, wrk and taskset with apt-get when missing.
Everything it starts is stopped by PID at the end, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CONF_DIR = BENCH_DIR / "conf"
RESULTS_DIR = BENCH_DIR / "results"
RUN_ROOT = BENCH_DIR / "run"
VENV_BIN = Path(sys.executable).parent  # the venv's bin/ when run as `.venv/bin/python benchmarks/run.py`

EXPECTED_BODY = b"hello, world\n"
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_BASE_PORT = 19380  # below the usual ephemeral range, so wrk's own sockets never take it
ALL_PROXIES = ("nginx", "nginx-ka1k", "fulcrum", "fulcrum-mw5", "fulcrum-1k", "fulcrum-admin")
DEFAULT_PROXIES = ("nginx", "fulcrum")
#: ``--gateway``: the bare route beside a route with five built-in middlewares, a 1,000-route table, and the
#: bare route with the admin listener on and a client reading its status every second.
GATEWAY_PROXIES = ("nginx", "fulcrum", "fulcrum-mw5", "fulcrum-1k", "fulcrum-admin")
#: What the gateway variants are compared with (the bare route, same Fulcrum build, same run).
GATEWAY_TARGETS = {"fulcrum-mw5": 1.5, "fulcrum-1k": None, "fulcrum-admin": 1.05}
#: How often the status poller reads ``/api/v1/status`` of fulcrum-admin (what a dashboard does).
ADMIN_POLL_S = 1.0
BASELINE = "nginx"
SUBJECT = "fulcrum"
APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the final report."""
    print(message, file=sys.stderr, flush=True)


class Interrupted(Exception):
    """Raised from the SIGINT/SIGTERM handler so that cleanup runs in `finally`."""


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class Ports:
    """Every port of one run, derived from one base so they can be moved together."""

    base: int

    @property
    def status(self) -> int:
        return self.base

    @property
    def backends(self) -> tuple[int, int, int]:
        return (self.base + 1, self.base + 2, self.base + 3)

    def proxy(self, name: str) -> int:
        return self.base + 10 + ALL_PROXIES.index(name)

    @property
    def admin(self) -> int:
        """fulcrum-admin's admin listener."""
        return self.base + 30


@dataclass
class Options:
    """The parsed command line, after --quick and pinning have been resolved."""

    reps: int
    duration: int
    warmup: int
    conns: list[int]
    threads: int
    wrk_timeout: int
    proxies: list[str]
    load_cpu: str | None
    proxy_cpu: str | None
    ports: Ports
    fulcrum_cmd: str | None
    fulcrum_config: Path | None
    fulcrum_port: int | None
    profile: bool
    profile_native: bool
    fail_on_miss: bool
    install: bool
    noisy_pct: float
    retries: int
    quiet_wait: float
    https: bool = False
    #: What each wrk request is, beyond the bare ``GET /``: extra wrk arguments (``-H``, ``-s script``) and the path.
    wrk_args: tuple[str, ...] = ()
    path: str = "/"


def parse_args(argv: Sequence[str] | None) -> Options:
    ap = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 10; 5 with --quick)")
    ap.add_argument("--warmup", type=int, help="seconds of wrk warm-up per proxy (default 3; 2 with --quick)")
    ap.add_argument("--conns", default="50,400", help="comma list of wrk -c values (default 50,400)")
    ap.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    ap.add_argument("--wrk-timeout", type=int, default=2, help="wrk --timeout in seconds (default 2)")
    ap.add_argument(
        "--only",
        help=f"comma list of proxies to run, from {', '.join(ALL_PROXIES)} (default: {', '.join(DEFAULT_PROXIES)})",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument(
        "--gateway",
        action="store_true",
        help="also run Fulcrum with five built-in middlewares on its route (fulcrum-mw5) and behind a 1,000-route "
        "table (fulcrum-1k), compared with the bare route",
    )
    ap.add_argument(
        "--https",
        action="store_true",
        help="clients connect over TLS: nginx and Fulcrum serve the same self-signed certificate (upstreams stay "
        "plain HTTP)",
    )
    ap.add_argument("--quick", action="store_true", help="1 rep, 5 s runs, 2 s warm-up (explicit options still win)")
    ap.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help=f"status port; upstreams are +1..+3, proxies +10.. (default {DEFAULT_BASE_PORT})",
    )
    ap.add_argument(
        "--fulcrum-cmd",
        help="shell command that starts the proxy under test instead of `fulcrum proxy`; placeholders: "
        "{port} {to_args} (--to URL ...) {upstreams} (host:port,...) {python} {repo}",
    )
    ap.add_argument("--fulcrum-config", type=Path, help="run `fulcrum run -c FILE` instead of `fulcrum proxy`")
    ap.add_argument("--fulcrum-port", type=int, help="the port Fulcrum listens on (required with --fulcrum-config)")
    ap.add_argument("--profile", action="store_true", help="one extra Fulcrum c50 run recorded with py-spy")
    ap.add_argument("--profile-native", action="store_true", help="with --profile: include native (C) frames")
    ap.add_argument(
        "--noisy",
        type=float,
        default=25.0,
        metavar="PCT",
        help="a run during which processes not started here used >= PCT%% of a CPU is noisy (default 25)",
    )
    ap.add_argument(
        "--retries", type=int, default=1, help="measure a noisy run again up to N times, keep the quietest (default 1)"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        metavar="S",
        help="before each run wait up to S seconds for other processes to drop below --noisy (default 10)",
    )
    ap.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get; fail if a tool is missing")
    ns = ap.parse_args(argv)

    if ns.fulcrum_cmd and ns.fulcrum_config:
        ap.error("--fulcrum-cmd and --fulcrum-config exclude each other")
    if ns.https and (ns.gateway or ns.fulcrum_cmd or ns.fulcrum_config):
        ap.error("--https runs nginx and Fulcrum's own TLS listener: not with --gateway, --fulcrum-cmd or "
                 "--fulcrum-config")
    if ns.fulcrum_config and ns.fulcrum_port is None:
        ap.error("--fulcrum-config needs --fulcrum-port (the port its listen: names)")
    default = GATEWAY_PROXIES if ns.gateway else DEFAULT_PROXIES
    proxies = [p.strip() for p in ns.only.split(",") if p.strip()] if ns.only else list(default)
    unknown = [p for p in proxies if p not in ALL_PROXIES]
    if unknown or not proxies:
        ap.error(f"--only: unknown proxy {unknown}; choose from {', '.join(ALL_PROXIES)}")
    try:
        conns = [int(c) for c in ns.conns.split(",") if c.strip()]
    except ValueError:
        ap.error(f"--conns: not a comma list of integers: {ns.conns!r}")
    if not conns or min(conns) < 1:
        ap.error("--conns: give at least one positive connection count")
    quick = {"reps": 1, "duration": 5, "warmup": 2} if ns.quick else {"reps": 3, "duration": 10, "warmup": 3}
    reps, duration, warmup = (quick[k] if getattr(ns, k) is None else getattr(ns, k) for k in quick)
    if reps < 1 or duration < 1 or warmup < 0:
        ap.error("--reps and --duration must be >= 1, --warmup >= 0")

    load_cpu = proxy_cpu = None
    if not ns.no_pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            load_cpu, proxy_cpu = str(cpus[0]), str(cpus[1])
        else:
            log("only one usable CPU: running without pinning")
    return Options(
        reps=reps,
        duration=duration,
        warmup=warmup,
        conns=conns,
        threads=ns.threads,
        wrk_timeout=ns.wrk_timeout,
        proxies=[p for p in ALL_PROXIES if p in proxies],
        load_cpu=load_cpu,
        proxy_cpu=proxy_cpu,
        ports=Ports(ns.base_port),
        fulcrum_cmd=ns.fulcrum_cmd,
        fulcrum_config=ns.fulcrum_config,
        fulcrum_port=ns.fulcrum_port,
        profile=ns.profile or ns.profile_native,
        profile_native=ns.profile_native,
        fail_on_miss=ns.fail_on_miss,
        install=not ns.no_install,
        noisy_pct=ns.noisy,
        retries=max(0, ns.retries),
        quiet_wait=max(0.0, ns.quiet_wait),
        https=ns.https,
    )


# ---------------------------------------------------------------- tools


def ensure_tools(tools: Sequence[str], allow_install: bool) -> None:
    """Install missing tools from the Debian archive (one `apt-get update`, one install)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    packages = sorted({APT_PACKAGES[t] for t in missing})
    if not allow_install:
        raise SystemExit(f"missing {', '.join(missing)}; install: apt-get install {' '.join(packages)}")
    if shutil.which("apt-get") is None:
        raise SystemExit(f"missing {', '.join(missing)} and no apt-get here; install {' '.join(packages)}")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise SystemExit(f"missing {', '.join(missing)}; as root: apt-get install {' '.join(packages)}")
        prefix = ["sudo", "-n"]
    log(f"installing {' '.join(packages)} with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(
            [*prefix, *argv], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    if "nginx" in missing:
        quiet_packaged_nginx(prefix)
    still = [t for t in tools if shutil.which(t) is None]
    if still:
        raise SystemExit(f"still missing after apt-get install: {', '.join(still)}")


def quiet_packaged_nginx(prefix: list[str]) -> None:
    """Debian may start the packaged nginx service on install: stop it and keep it from starting at boot.

    Only called right after this harness installed the package, so no nginx someone else runs is touched.
    Our own instances use their own config, pid files and temp dirs and never this service.
    """
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        steps = [["systemctl", "disable", "--now", "nginx"]]
    else:
        steps = [["service", "nginx", "stop"], ["update-rc.d", "nginx", "disable"]]
    for argv in steps:
        if shutil.which(argv[0]):
            subprocess.run([*prefix, *argv], stdin=subprocess.DEVNULL, capture_output=True, check=False)


def ensure_py_spy() -> Path | None:
    """The py-spy binary next to this python, installed into the venv when missing."""
    found = VENV_BIN / "py-spy"
    if found.exists():
        return found
    on_path = shutil.which("py-spy")
    if on_path:
        return Path(on_path)
    log("installing py-spy into the venv for --profile ...")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=False)
    if done.returncode != 0 or not found.exists():
        log("could not install py-spy; skipping the profiled run")
        return None
    return found


# ---------------------------------------------------------------- /proc readings


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "Z"


def process_tree(root: int) -> list[int]:
    """root and all of its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the given processes (utime + stime)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent in processes (user, nice, system) since boot.

    irq and softirq time is left out: loopback traffic of the benchmark itself lands there and belongs to no process.
    """
    with open("/proc/stat") as f:
        user, nice, system = (int(v) for v in f.readline().split()[1:4])
    return (user + nice + system) / CLK_TCK


def own_and_waited_seconds() -> float:
    """CPU seconds of this harness plus its finished (waited-for) children such as wrk."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def raise_fd_limit() -> None:
    """wrk at 400 connections and the proxies need more than a default soft limit of 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# ---------------------------------------------------------------- processes


@dataclass
class Started:
    """One process this harness started, with the log its output goes to."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None


class Processes:
    """Everything the harness starts; each is stopped by its PID, then by its own process group."""

    def __init__(self) -> None:
        self.items: list[Started] = []

    def start(
        self, name: str, argv: list[str], log_path: Path | None, cpu: str | None, cwd: Path = REPO
    ) -> subprocess.Popen[bytes]:
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]
        out: int | TextIO = subprocess.PIPE
        if log_path is not None:
            out = open(log_path, "a")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so leftovers can be found and stopped
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.items.append(Started(name, proc, log_path))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the PID; SIGKILL to it and to what is left of its process group if it lingers."""
        # note the descendants first: once the leader is gone they are re-parented and harder to find
        members = process_tree(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                log(f"  pid {proc.pid} ignored SIGTERM for 8 s; SIGKILL")
                proc.kill()
                proc.wait(timeout=5)
        # what a wrapper (sh -c) leaves behind: SIGTERM first, SIGKILL after a grace period
        left = self._signal_members(members[1:], proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid in left if _stat_fields(pid) is not None and not _is_zombie(pid)]
        self._signal_members(left, proc.pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
        self.items = [s for s in self.items if s.proc is not proc]

    @staticmethod
    def _signal_members(pids: Sequence[int], group: int, sig: signal.Signals) -> list[int]:
        """Send sig to those of pids still in the process group we started; returns the ones signalled."""
        hit = []
        for pid in pids:
            try:
                if os.getpgid(pid) == group:
                    os.kill(pid, sig)
                    hit.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        return hit

    def stop_all(self) -> None:
        for started in reversed(list(self.items)):
            self.stop(started.proc)

    def exited(self) -> list[Started]:
        return [s for s in self.items if s.proc.poll() is not None]


# ---------------------------------------------------------------- network helpers


def port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:port or holds it so that a listener could not bind."""
    with socket.socket() as probe:
        probe.settimeout(0.3)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no clash
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _connection(port: int, tls: bool, timeout: float) -> http.client.HTTPConnection:
    if not tls:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    context = ssl.create_default_context()
    context.check_hostname = False  # the run's own self-signed certificate: encryption is what is measured
    context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)


def http_get(
    port: int, method: str = "GET", timeout: float = 5.0, tls: bool = False
) -> tuple[int, bytes, dict[str, str]]:
    """One request on a fresh connection: (status, body, headers with lower-case names)."""
    conn = _connection(port, tls, timeout)
    try:
        conn.request(method, "/")
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0, tls: bool = False) -> str | None:
    """Poll until GET / answers 200 with the expected body; returns an error text or None."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        try:
            status, body, _ = http_get(port, timeout=2.0, tls=tls)
            if status == 200 and body == EXPECTED_BODY:
                return None
            last = f"answered {status} {body[:40]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    return f"not ready after {timeout:.0f} s ({last})"


def accepted_connections(status_port: int) -> int:
    """The upstream nginx's total accepted connections (stub_status), this query's own connection included."""
    _, body, _ = http_get(status_port)
    # "Active connections: N \nserver accepts handled requests\n A H R \nReading: ..."
    return int(body.decode().splitlines()[2].split()[0])


@dataclass
class Sanity:
    """What the pre-flight check saw of one proxy."""

    ok: bool
    backends: dict[str, int]
    problems: list[str] = field(default_factory=list)


def sanity_check(port: int, backend_ports: Sequence[int], requests: int = 30, tls: bool = False) -> Sanity:
    """GET / on one keep-alive connection: 200 and the 13-byte body each time, spread over all three
    upstreams (X-Backend); then HEAD / must answer 200 without a body and without hanging."""
    counts: dict[str, int] = {}
    problems: list[str] = []
    conn = _connection(port, tls, 5)
    try:
        for _ in range(requests):
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or body != EXPECTED_BODY:
                problems.append(f"GET / answered {resp.status} {body[:40]!r}")
            backend = resp.getheader("X-Backend", "none")
            counts[backend] = counts.get(backend, 0) + 1
    except (OSError, http.client.HTTPException) as exc:
        problems.append(f"GET / on a keep-alive connection failed: {type(exc).__name__}: {exc}")
    finally:
        conn.close()
    seen = {str(p) for p in backend_ports}
    if set(counts) != seen:
        problems.append(f"expected round robin over {sorted(seen)}, X-Backend counts {counts}")
    elif max(counts.values()) - min(counts.values()) > 2:
        problems.append(f"uneven spread for round robin: {counts}")
    try:
        status, body, _ = http_get(port, "HEAD", tls=tls)
        if status != 200 or body:
            problems.append(f"HEAD / answered {status} with {len(body)} body bytes")
    except (OSError, http.client.HTTPException) as exc:
        problems.append(f"HEAD / failed: {type(exc).__name__}: {exc}")
    return Sanity(ok=not problems, backends=dict(sorted(counts.items())), problems=problems)


# ---------------------------------------------------------------- configs and proxies


def render(template: str, out: Path, values: dict[str, object]) -> Path:
    """Fill @NAME@ markers of a template in conf/ and write the result to out."""
    text = (CONF_DIR / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = sorted(set(re.findall(r"@[A-Z0-9_]+@", text)))
    if left:
        raise SystemExit(f"{template}: markers left unfilled: {left}")
    out.write_text(text)
    return out


def nginx_argv(run_dir: Path, conf: Path, name: str) -> list[str]:
    # -p keeps every relative path inside the run dir; -e keeps even startup errors out of /var/log/nginx
    return ["nginx", "-p", f"{run_dir}/", "-e", str(run_dir / f"{name}.error.log"), "-c", str(conf)]


@dataclass
class Proxy:
    """One proxy under test: how to start it and where it listens."""

    name: str
    port: int
    argv: list[str]
    note: str
    pid: int = 0
    sanity: Sanity | None = None


def fulcrum_proxy(opts: Options, port: int) -> Proxy:
    backends = opts.ports.backends
    urls = [f"http://127.0.0.1:{p}" for p in backends]
    to_args = " ".join(f"--to {u}" for u in urls)
    fulcrum = VENV_BIN / "fulcrum"
    exe = str(fulcrum) if fulcrum.exists() else (shutil.which("fulcrum") or str(fulcrum))
    if opts.fulcrum_cmd:
        cmd = opts.fulcrum_cmd.format(
            port=port,
            to_args=to_args,
            upstreams=",".join(f"127.0.0.1:{p}" for p in backends),
            python=shlex.quote(sys.executable),
            repo=shlex.quote(str(REPO)),
        )
        return Proxy(SUBJECT, port, ["/bin/sh", "-c", cmd], f"--fulcrum-cmd: {cmd}")
    if opts.fulcrum_config:
        argv = [exe, "run", "-c", str(opts.fulcrum_config.resolve())]
        return Proxy(SUBJECT, port, argv, f"fulcrum run -c {opts.fulcrum_config}")
    argv = [exe, "proxy", "--listen", f"127.0.0.1:{port}"]
    for url in urls:
        argv += ["--to", url]
    return Proxy(SUBJECT, port, argv, "fulcrum proxy, default features")


def gateway_config(name: str, port: int, ports: Ports, run_dir: Path) -> dict[str, Any]:
    """The config of a gateway variant: same upstreams and defaults as ``fulcrum proxy``, another route table
    (or the admin listener on)."""
    group = {"balance": "round_robin", "servers": [f"http://127.0.0.1:{p}" for p in ports.backends]}
    admin: dict[str, Any] = {"listen": None}
    if name == "fulcrum-admin":
        routes: list[dict[str, Any]] = [{"match": {"path_prefix": "/"}, "upstream": "app"}]
        admin = {"listen": f"127.0.0.1:{ports.admin}"}
    elif name == "fulcrum-mw5":
        middleware = [
            {"request_id": {}},
            {"access_log": {"format": "combined", "path": str(run_dir / "fulcrum-mw5.access.log")}},
            {"rate_limit": {"rate": "10000000/s", "burst": 10000000}},
            {"cors": {"allow_origins": ["https://app.example"]}},
            {"headers": {"preset": "secure"}},
        ]
        routes = [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": middleware}]
    else:  # fulcrum-1k: 999 routes that do not match (a host and prefix each), then the one that does
        routes = [
            {"match": {"host": f"h{i}.example.com", "path_prefix": f"/p{i}/"}, "upstream": "app"} for i in range(999)
        ]
        routes.append({"match": {"path_prefix": "/"}, "upstream": "app"})
    return {"listen": [f"127.0.0.1:{port}"], "upstreams": {"app": group}, "routes": routes, "admin": admin}


def make_certificate(run_dir: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1, valid two days, made with the openssl command."""
    cert, key = run_dir / "bench.pem", run_dir / "bench.key"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"openssl could not make the run's certificate:\n{done.stderr[-2000:]}")
    return cert, key


def fulcrum_https(opts: Options, port: int, run_dir: Path, cert: Path, key: Path) -> Proxy:
    """``fulcrum proxy``'s defaults (round robin, no admin listener), listening with TLS."""
    config = {"listen": [{"address": f"127.0.0.1:{port}", "tls": {"cert": str(cert), "key": str(key)}}],
              "admin": {"listen": None},
              "upstreams": {"app": {"servers": [f"http://127.0.0.1:{p}" for p in opts.ports.backends]}}}
    conf_path = run_dir / "fulcrum-https.json"
    conf_path.write_text(json.dumps(config, indent=1))
    fulcrum = VENV_BIN / "fulcrum"
    exe = str(fulcrum) if fulcrum.exists() else (shutil.which("fulcrum") or str(fulcrum))
    return Proxy(SUBJECT, port, [exe, "run", "-c", str(conf_path)], "fulcrum run, TLS listener (same certificate)")


def build_proxies(opts: Options, run_dir: Path) -> list[Proxy]:
    b1, b2, b3 = opts.ports.backends
    cert, key = make_certificate(run_dir) if opts.https else (None, None)
    proxies = []
    for name in opts.proxies:
        port = proxy_port(opts, name)
        if name == SUBJECT:
            if cert is not None and key is not None:
                proxies.append(fulcrum_https(opts, port, run_dir, cert, key))
            else:
                proxies.append(fulcrum_proxy(opts, port))
            continue
        if name in GATEWAY_TARGETS:
            conf_path = run_dir / f"{name}.json"
            conf_path.write_text(json.dumps(gateway_config(name, port, opts.ports, run_dir), indent=1))
            fulcrum = VENV_BIN / "fulcrum"
            exe = str(fulcrum) if fulcrum.exists() else (shutil.which("fulcrum") or str(fulcrum))
            note = {
                "fulcrum-mw5": "five middlewares: request_id, access_log to a file, rate_limit (high), cors, "
                               "headers secure",
                "fulcrum-1k": "1,000 routes (host + prefix), the request matches the last",
                "fulcrum-admin": f"the bare route with the admin listener on, GET /api/v1/status every "
                                 f"{ADMIN_POLL_S:g} s during the whole run",
            }[name]
            proxies.append(Proxy(name, port, [exe, "run", "-c", str(conf_path)], note))
            continue
        keepalive = 1024 if name == "nginx-ka1k" else 32
        values: dict[str, object] = dict(
            RUN_DIR=run_dir, NAME=name, PORT=port, KEEPALIVE=keepalive, BACKEND_1=b1, BACKEND_2=b2, BACKEND_3=b3,
            SSL="", TLS_SETTINGS="",
        )
        note = f"1 worker, upstream keepalive {keepalive}"
        if cert is not None:
            values["SSL"] = " ssl"
            values["TLS_SETTINGS"] = (f"ssl_certificate {cert}; ssl_certificate_key {key}; "
                                      "ssl_protocols TLSv1.2 TLSv1.3;")
            note += ", TLS listener (same certificate)"
        conf = render("balancer.nginx.conf", run_dir / f"{name}.conf", values)
        proxies.append(Proxy(name, port, nginx_argv(run_dir, conf, name), note))
    return proxies


# ---------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    """What one wrk run reported."""

    requests: int = 0
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    socket_errors: int = 0
    socket_error_kinds: str = ""
    non_2xx: int = 0
    output: str = ""


_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _latency_ms(text: str) -> float | None:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _TIME_UNITS_MS[m.group(2)] if m else None


def parse_wrk(output: str) -> WrkResult:
    """Pick requests, requests/s, p50/p99 (from --latency), socket errors and non-2xx/3xx out of wrk's text."""
    r = WrkResult(output=output)
    if m := re.search(r"^\s*(\d+) requests in ", output, re.M):
        r.requests = int(m.group(1))
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M):
        r.rps = float(m.group(1))
    if m := re.search(r"^\s+50(?:\.0+)?%\s+(\S+)", output, re.M):
        r.p50_ms = _latency_ms(m.group(1))
    if m := re.search(r"^\s+99(?:\.0+)?%\s+(\S+)", output, re.M):
        r.p99_ms = _latency_ms(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        r.socket_errors = sum(int(g) for g in m.groups())
        r.socket_error_kinds = m.group(0).removeprefix("Socket errors: ")
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        r.non_2xx = int(m.group(1))
    return r


def run_wrk(procs: Processes, opts: Options, port: int, conns: int, duration: int) -> WrkResult:
    """One wrk run, pinned to the load CPU, killed by PID if it overruns its duration by 20 s."""
    argv = [
        "wrk",
        f"-t{min(opts.threads, conns)}",
        f"-c{conns}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        f"{opts.wrk_timeout}s",
        *opts.wrk_args,
        f"{'https' if opts.https else 'http'}://127.0.0.1:{port}{opts.path}",
    ]
    proc = procs.start("wrk", argv, None, opts.load_cpu)
    try:
        out, _ = proc.communicate(timeout=duration + 20)
    except subprocess.TimeoutExpired:
        log(f"  wrk overran {duration} s by 20 s; stopping it")
        procs.stop(proc)
        return WrkResult(output="wrk overran and was stopped")
    procs.items = [s for s in procs.items if s.proc is not proc]
    return parse_wrk(out.decode(errors="replace"))


# ---------------------------------------------------------------- measuring


@dataclass
class Run:
    """One measured wrk run against one proxy."""

    proxy: str
    conns: int
    rep: int
    requests: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    socket_errors: int
    socket_error_kinds: str
    non_2xx: int
    wall_s: float
    proxy_cpu_s: float
    cpu_us_per_req: float | None
    proxy_cpu_pct: float
    new_upstream_conns: int
    new_conns_per_1k: float | None
    other_cpu_pct: float
    attempts: int = 1
    wrk_tail: str | None = None

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


def measure(procs: Processes, opts: Options, proxy: Proxy, backend_pid: int, conns: int, rep: int) -> Run:
    """wrk against one proxy with its process tree's CPU and the upstreams' accepts read before and after."""
    tree = process_tree(proxy.pid)
    backend_tree = process_tree(backend_pid)
    accepts0 = accepted_connections(opts.ports.status)
    cpu0, backend0 = cpu_seconds(tree), cpu_seconds(backend_tree)
    busy0, ours0 = machine_busy_seconds(), own_and_waited_seconds()
    t0 = time.monotonic()
    wrk = run_wrk(procs, opts, proxy.port, conns, opts.duration)
    wall = time.monotonic() - t0
    # descendants may have been born during the run (workers): read the tree again
    cpu1, backend1 = cpu_seconds(process_tree(proxy.pid)), cpu_seconds(backend_tree)
    busy1, ours1 = machine_busy_seconds(), own_and_waited_seconds()
    accepts1 = accepted_connections(opts.ports.status)

    proxy_cpu = cpu1 - cpu0
    # everything busy on the machine that was neither the proxy, the upstreams, wrk nor this harness
    other = (busy1 - busy0) - proxy_cpu - (backend1 - backend0) - (ours1 - ours0)
    new_conns = max(0, accepts1 - accepts0 - 1)  # minus the second stub_status query's own connection
    return Run(
        proxy=proxy.name,
        conns=conns,
        rep=rep,
        requests=wrk.requests,
        rps=wrk.rps,
        p50_ms=wrk.p50_ms,
        p99_ms=wrk.p99_ms,
        socket_errors=wrk.socket_errors,
        socket_error_kinds=wrk.socket_error_kinds,
        non_2xx=wrk.non_2xx,
        wall_s=round(wall, 3),
        proxy_cpu_s=round(proxy_cpu, 3),
        cpu_us_per_req=round(1e6 * proxy_cpu / wrk.requests, 2) if wrk.requests else None,
        proxy_cpu_pct=round(100 * proxy_cpu / wall, 1),
        new_upstream_conns=new_conns,
        new_conns_per_1k=round(1000 * new_conns / wrk.requests, 3) if wrk.requests else None,
        other_cpu_pct=round(max(0.0, 100 * other / wall), 1),
        wrk_tail=None if wrk.requests else wrk.output[-1500:],
    )


# ---------------------------------------------------------------- summary


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Row:
    """Medians over the repetitions of one proxy at one connection count."""

    proxy: str
    conns: int
    reps: int
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    socket_errors: int
    non_2xx: int
    cpu_us_per_req: float | None
    proxy_cpu_pct: float | None
    new_conns_per_1k: float | None
    other_cpu_pct: float | None


def summarize(runs: list[Run], proxies: list[str], conns_list: list[int]) -> list[Row]:
    rows = []
    for conns in conns_list:
        for name in proxies:
            mine = [r for r in runs if r.proxy == name and r.conns == conns]
            if not mine:
                continue
            requests = sum(r.requests for r in mine)
            rows.append(
                Row(
                    proxy=name,
                    conns=conns,
                    reps=len(mine),
                    rps=median([r.rps for r in mine]),
                    p50_ms=median([r.p50_ms for r in mine]),
                    p99_ms=median([r.p99_ms for r in mine]),
                    socket_errors=sum(r.socket_errors for r in mine),
                    non_2xx=sum(r.non_2xx for r in mine),
                    cpu_us_per_req=median([r.cpu_us_per_req for r in mine]),
                    proxy_cpu_pct=median([r.proxy_cpu_pct for r in mine]),
                    # pooled over the reps: a rare reconnect is not lost in a median of zeros
                    new_conns_per_1k=1000 * sum(r.new_upstream_conns for r in mine) / requests if requests else None,
                    other_cpu_pct=median([r.other_cpu_pct for r in mine]),
                )
            )
    return rows


@dataclass
class Ratio:
    """Median of the per-repetition ratios subject/baseline of one metric at one connection count."""

    metric: str
    conns: int
    per_rep: list[float]
    median: float | None


RATIO_METRICS: dict[str, Callable[[Run], float | None]] = {
    "rps": lambda r: r.rps or None,
    "p50": lambda r: r.p50_ms,
    "p99": lambda r: r.p99_ms,
    "cpu_us_per_req": lambda r: r.cpu_us_per_req,
}


def ratios(runs: list[Run], conns_list: list[int], subject: str = SUBJECT, base: str = BASELINE) -> list[Ratio]:
    out = []
    for conns in conns_list:
        subj = {r.rep: r for r in runs if r.proxy == subject and r.conns == conns}
        ref = {r.rep: r for r in runs if r.proxy == base and r.conns == conns}
        for metric, get in RATIO_METRICS.items():
            per_rep = []
            for rep in sorted(subj.keys() & ref.keys()):
                a, b = get(subj[rep]), get(ref[rep])
                if a is not None and b:
                    per_rep.append(round(a / b, 3))
            out.append(Ratio(metric, conns, per_rep, median(per_rep)))
    return out


@dataclass
class Verdict:
    """One target of the project and how this run measured against it."""

    target: str
    conns: str
    measured: str
    limit: str
    result: str  # PASS, MISS or n/a


def _ratio_value(rs: list[Ratio], metric: str, conns: int) -> float | None:
    return next((r.median for r in rs if r.metric == metric and r.conns == conns), None)


def verdicts(runs: list[Run], conns_list: list[int]) -> list[Verdict]:
    """The targets: CPU/request <= 1.5x nginx, rps >= 0.8x nginx at 50 connections, p99 <= 2x nginx at 400,
    zero errors, <= 1 new upstream connection per 1,000 requests (all for Fulcrum)."""
    rs = ratios(runs, conns_list)
    out = []

    def judge(
        target: str, conns: str, value: float | None, limit: str, ok: Callable[[float], bool], spec: str = ".2f"
    ) -> None:
        if value is None:
            out.append(Verdict(target, conns, "not measured", limit, "n/a"))
        else:
            out.append(Verdict(target, conns, format(value, spec), limit, "PASS" if ok(value) else "MISS"))

    for c in conns_list:
        cpu = _ratio_value(rs, "cpu_us_per_req", c)
        judge("CPU µs/request, Fulcrum/nginx", str(c), cpu, "≤ 1.5", lambda v: v <= 1.5)
    judge("requests/s, Fulcrum/nginx", "50", _ratio_value(rs, "rps", 50), "≥ 0.8", lambda v: v >= 0.8)
    judge("p99 latency, Fulcrum/nginx", "400", _ratio_value(rs, "p99", 400), "≤ 2", lambda v: v <= 2.0)
    mine = [r for r in runs if r.proxy == SUBJECT]
    judge(
        "errors (socket + non-2xx), Fulcrum",
        "all",
        float(sum(r.errors for r in mine)) if mine else None,
        "= 0",
        lambda v: v == 0,
        ".0f",
    )
    for c in conns_list:
        at = [r for r in mine if r.conns == c]
        requests = sum(r.requests for r in at)
        value = 1000 * sum(r.new_upstream_conns for r in at) / requests if requests else None
        judge("new upstream conns per 1k requests, Fulcrum", str(c), value, "≤ 1", lambda v: v <= 1.0)
    return out


def gateway_ratios(runs: list[Run], conns_list: list[int], names: list[str]) -> dict[str, dict[int, dict[str, str]]]:
    """For each gateway variant that ran beside the bare route: CPU and requests/s ratios per connection count."""
    out: dict[str, dict[int, dict[str, str]]] = {}
    if SUBJECT not in names:
        return out
    for name in GATEWAY_TARGETS:
        if name not in names:
            continue
        rs = ratios(runs, conns_list, subject=name, base=SUBJECT)
        cells: dict[int, dict[str, str]] = {}
        for c in conns_list:
            cell = {}
            for metric, key in (("cpu_us_per_req", "cpu"), ("rps", "rps")):
                r = next(x for x in rs if x.metric == metric and x.conns == c)
                reps = ", ".join(f"{v:.2f}" for v in r.per_rep)
                cell[key] = f"{_fmt(r.median, '.2f')} [{reps}]" if r.per_rep else "-"
            cells[c] = cell
        out[name] = cells
    return out


def gateway_verdicts(runs: list[Run], conns_list: list[int], names: list[str]) -> list[Verdict]:
    """The gateway target: five built-in middlewares cost at most 1.5x the bare route's CPU per request."""
    out = []
    for name, limit in GATEWAY_TARGETS.items():
        if limit is None or name not in names or SUBJECT not in names:
            continue
        rs = ratios(runs, conns_list, subject=name, base=SUBJECT)
        for c in conns_list:
            value = _ratio_value(rs, "cpu_us_per_req", c)
            target = f"CPU µs/request, {name}/{SUBJECT}"
            if value is None:
                out.append(Verdict(target, str(c), "not measured", f"≤ {limit}", "n/a"))
            else:
                out.append(Verdict(target, str(c), f"{value:.2f}", f"≤ {limit}", "PASS" if value <= limit else "MISS"))
        errs = sum(r.errors for r in runs if r.proxy == name)
        result = "PASS" if errs == 0 else "MISS"
        out.append(Verdict(f"errors (socket + non-2xx), {name}", "all", str(errs), "= 0", result))
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_report(meta: dict[str, Any], rows: list[Row], rs: list[Ratio], vs: list[Verdict]) -> str:
    lines = [
        f"# Fulcrum benchmark {meta['stamp']}",
        "",
        f"wrk -t{meta['wrk_threads']} -c{{{','.join(map(str, meta['conns']))}}} -d{meta['duration_s']}s "
        f"--latency --timeout {meta['wrk_timeout_s']}s, {meta['reps']} rep(s), proxies interleaved; "
        f"pinning: {meta['pinning']}. Medians over the reps."
        + (" Clients over TLS (wrk https://), the same certificate on both proxies." if meta.get("https") else ""),
        "",
        *(f"- {name} (port {info['port']}): {info['note']}" for name, info in meta["proxies"].items()),
        *(f"- {name}: FAILED to start or to pass the sanity check" for name in meta["failed_to_start"]),
        "",
        "| proxy | conns | requests/s | p50 ms | p99 ms | errors (sock/non-2xx) | CPU µs/req | proxy CPU% "
        "| new upstream conns /1k req | other CPU% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.proxy} | {r.conns} | {_fmt(r.rps, ',.0f')} | {_fmt(r.p50_ms, '.2f')} | {_fmt(r.p99_ms, '.2f')} "
            f"| {r.socket_errors}/{r.non_2xx} | {_fmt(r.cpu_us_per_req, '.1f')} | {_fmt(r.proxy_cpu_pct, '.0f')} "
            f"| {_fmt(r.new_conns_per_1k, '.2f')} | {_fmt(r.other_cpu_pct, '.0f')} |"
        )
    if any(r.per_rep for r in rs):
        lines += [
            "",
            f"Ratios {SUBJECT}/{BASELINE} (median of per-rep ratios; per-rep values in brackets):",
            "",
            "| conns | requests/s | p50 | p99 | CPU µs/req |",
            "|---:|---:|---:|---:|---:|",
        ]
        for c in sorted({r.conns for r in rs}):
            cells = []
            for metric in RATIO_METRICS:
                ratio = next(r for r in rs if r.metric == metric and r.conns == c)
                reps = ", ".join(f"{v:.2f}" for v in ratio.per_rep)
                cells.append(f"{_fmt(ratio.median, '.2f')} [{reps}]" if ratio.per_rep else "-")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    gateway = meta.get("gateway_ratios") or {}
    if gateway:
        lines += [
            "",
            f"Gateway variants / the bare route ({SUBJECT}), CPU µs per request (median of per-rep ratios):",
            "",
            "| variant | conns | CPU µs/req ratio | requests/s ratio |",
            "|---|---:|---:|---:|",
        ]
        for name, by_conns in gateway.items():
            for c, cell in by_conns.items():
                lines.append(f"| {name} | {c} | {cell['cpu']} | {cell['rps']} |")
    if vs:
        lines += ["", "Targets:", "", "| target | conns | measured | target | result |", "|---|---:|---:|---:|---|"]
        lines += [f"| {v.target} | {v.conns} | {v.measured} | {v.limit} | {v.result} |" for v in vs]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- context of a run


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def environment() -> dict[str, Any]:
    """Versions and machine facts worth keeping beside the numbers."""
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sysctl = {}
    for key in ("net/ipv4/ip_local_port_range", "net/core/somaxconn", "net/ipv4/tcp_tw_reuse"):
        with contextlib.suppress(OSError):
            sysctl[key.replace("/", ".")] = Path("/proc/sys", key).read_text().strip()
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "cpu": cpu_model,
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "git": commit + ("+changes" if dirty else ""),
        "sysctl": sysctl,
    }


def relative(text: str) -> str:
    """Machine paths out of anything written to results: the repo's own paths become relative."""
    return text.replace(f"{REPO}/", "").replace(str(REPO), ".")


# ---------------------------------------------------------------- profiling


def profile_run(procs: Processes, opts: Options, proxy: Proxy, stamp: str) -> dict[str, Any]:
    """One extra c50 run of Fulcrum with py-spy recording a flame graph (not part of the medians)."""
    py_spy = ensure_py_spy()
    if py_spy is None:
        return {"error": "py-spy not available"}
    svg = RESULTS_DIR / f"{stamp}-flame.svg"
    argv = [
        str(py_spy),
        "record",
        "--pid",
        str(proxy.pid),
        "--subprocesses",
        "--rate",
        "250",
        "--duration",
        str(opts.duration),
        "--output",
        str(svg),
        "--format",
        "flamegraph",
    ]
    # --nonblocking reads the stacks without pausing the proxy (less distortion), but cannot unwind C frames
    argv.append("--native" if opts.profile_native else "--nonblocking")
    log_path = RUN_ROOT / stamp / "py-spy.log"
    log(f"profiling {proxy.name} (pid {proxy.pid}) at c50 for {opts.duration} s with py-spy ...")
    spy = procs.start("py-spy", argv, log_path, opts.load_cpu)
    wrk = run_wrk(procs, opts, proxy.port, 50, opts.duration)
    try:
        spy.wait(timeout=opts.duration + 30)
    except subprocess.TimeoutExpired:
        log("  py-spy overran; stopping it")
    procs.stop(spy)
    if not svg.exists():
        tail = log_path.read_text(errors="replace")[-600:] if log_path.exists() else ""
        log(f"  py-spy wrote no flame graph (exit {spy.returncode}): {tail.strip()}")
        return {"error": relative(tail.strip()), "rps_while_profiled": wrk.rps}
    svg.write_text(relative(svg.read_text(errors="replace")))  # its titles name the command line
    log(f"  flame graph: {relative(str(svg))}  (rps while profiled: {wrk.rps:,.0f})")
    return {"flame_graph": relative(str(svg)), "rps_while_profiled": wrk.rps, "native": opts.profile_native}


# ---------------------------------------------------------------- main


class StatusPoller:
    """Reads fulcrum-admin's ``/api/v1/status`` every ADMIN_POLL_S seconds in a thread, as an open dashboard does."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(ADMIN_POLL_S):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/api/v1/status")
                resp = conn.getresponse()
                json.loads(resp.read())
                conn.close()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
            except (OSError, ValueError, http.client.HTTPException):
                self.failed += 1


def proxy_port(opts: Options, name: str) -> int:
    if name == SUBJECT and opts.fulcrum_config and opts.fulcrum_port:
        return opts.fulcrum_port
    return opts.ports.proxy(name)


def check_ports(opts: Options) -> None:
    """Fail with a clear message, before anything starts, if a port of the run is taken."""
    ports = [opts.ports.status, *opts.ports.backends, *(proxy_port(opts, name) for name in opts.proxies)]
    if "fulcrum-admin" in opts.proxies:
        ports.append(opts.ports.admin)
    if len(set(ports)) != len(ports):
        raise SystemExit(f"two parts of the run would share a port: {ports}")
    busy = [p for p in ports if port_in_use(p)]
    if busy:
        raise SystemExit(
            f"port(s) {busy} on 127.0.0.1 are already in use; free them or move the run with --base-port N"
            + (" / --fulcrum-port" if opts.fulcrum_config else "")
        )


def start_backends(procs: Processes, opts: Options, run_dir: Path) -> subprocess.Popen[bytes]:
    """The one nginx serving the three upstreams (and the stub_status port), on the load CPU, once they answer."""
    b1, b2, b3 = opts.ports.backends
    values: dict[str, object] = dict(
        RUN_DIR=run_dir, BACKEND_1=b1, BACKEND_2=b2, BACKEND_3=b3, STATUS_PORT=opts.ports.status
    )
    (run_dir / "1m.bin").write_bytes(b"x" * MIB)  # GET /1m of the body workloads
    conf = render("backends.nginx.conf", run_dir / "backends.conf", values)
    backend = procs.start("backends", nginx_argv(run_dir, conf, "backends"), run_dir / "backends.log", opts.load_cpu)
    for port in opts.ports.backends:
        if err := wait_ready(port, backend):
            raise SystemExit(f"upstream on port {port}: {err}; see {relative(str(run_dir))}/backends.*")
    return backend


def start_proxies(procs: Processes, opts: Options, run_dir: Path, proxies: list[Proxy]) -> list[Proxy]:
    """Start each proxy on the proxy CPU and keep those that come up and pass the sanity check."""
    ready = []
    for px in proxies:
        log_path = run_dir / f"{px.name}.log"
        proc = procs.start(px.name, px.argv, log_path, opts.proxy_cpu)
        px.pid = proc.pid
        err = wait_ready(px.port, proc, tls=opts.https)
        if err is None:
            px.sanity = sanity_check(px.port, opts.ports.backends, tls=opts.https)
            err = "; ".join(px.sanity.problems) or None
        if err is not None:
            tail = log_path.read_text(errors="replace")[-800:].strip() if log_path.exists() else ""
            log(f"  {px.name:<11} FAILED: {err}\n    log {relative(str(log_path))}:\n    {tail}")
            procs.stop(proc)
            continue
        spread = " ".join(f"{k}:{v}" for k, v in px.sanity.backends.items()) if px.sanity else ""
        log(f"  {px.name:<11} pid {px.pid:<7} port {px.port}  sanity ok  X-Backend {spread}")
        ready.append(px)
    return ready


def wait_for_quiet(opts: Options) -> float:
    """Sample the CPU used by everything but this harness in 0.5 s windows until it is below --noisy
    or --quiet-wait has passed; returns the last sample in % of one CPU. (The proxies and upstreams
    are idle here, so what shows up is someone else's work.)"""
    deadline = time.monotonic() + opts.quiet_wait
    while True:
        busy0, ours0, t0 = machine_busy_seconds(), own_and_waited_seconds(), time.monotonic()
        time.sleep(0.5)
        elapsed = time.monotonic() - t0
        pct = 100 * ((machine_busy_seconds() - busy0) - (own_and_waited_seconds() - ours0)) / elapsed
        if pct < opts.noisy_pct or time.monotonic() >= deadline:
            return max(0.0, pct)


def measure_all(procs: Processes, opts: Options, proxies: list[Proxy], backend_pid: int) -> tuple[list[Run], list[Run]]:
    """All measured runs: (the ones kept, the noisier attempts that were measured again)."""
    if opts.warmup:
        log(f"warm-up: {opts.warmup} s per proxy at c{max(opts.conns)}")
        for px in proxies:
            run_wrk(procs, opts, px.port, max(opts.conns), opts.warmup)
    runs: list[Run] = []
    discarded: list[Run] = []
    total = opts.reps * len(opts.conns) * len(proxies)
    for rep in range(1, opts.reps + 1):
        for conns in opts.conns:
            for px in proxies:
                attempts: list[Run] = []
                while len(attempts) <= opts.retries:
                    if opts.quiet_wait:
                        wait_for_quiet(opts)
                    run = measure(procs, opts, px, backend_pid, conns, rep)
                    attempts.append(run)
                    noisy = run.other_cpu_pct >= opts.noisy_pct
                    log(
                        f"[{len(runs) + 1}/{total}] rep {rep} c{conns:<4} {px.name:<11} {run.rps:>10,.0f} rps  "
                        f"p50 {_fmt(run.p50_ms, '.2f')} ms  p99 {_fmt(run.p99_ms, '.2f')} ms  "
                        f"errors {run.socket_errors}/{run.non_2xx}  CPU {_fmt(run.cpu_us_per_req, '.1f')} µs/req "
                        f"({run.proxy_cpu_pct:.0f}%)  new upstream conns {run.new_upstream_conns}  "
                        f"other CPU {run.other_cpu_pct:.0f}%" + ("  NOISY" if noisy else "")
                    )
                    if run.socket_errors:
                        log(f"  socket errors: {run.socket_error_kinds}")
                    if run.wrk_tail:
                        log(f"  wrk reported no requests:\n{run.wrk_tail}")
                    if not noisy:
                        break
                best = min(attempts, key=lambda r: r.other_cpu_pct)
                best.attempts = len(attempts)
                runs.append(best)
                discarded += [a for a in attempts if a is not best]
    return runs, discarded


def on_signal(signum: int, _frame: FrameType | None) -> None:
    # ignore further signals while cleaning up, then unwind to main's `finally`
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    ensure_tools(["nginx", "wrk", *(["taskset"] if opts.load_cpu else [])], opts.install)
    if opts.fulcrum_config and not opts.fulcrum_config.exists():
        raise SystemExit(f"--fulcrum-config: no such file: {opts.fulcrum_config}")
    raise_fd_limit()

    check_ports(opts)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RUN_ROOT / stamp
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    proxies = build_proxies(opts, run_dir)

    procs = Processes()
    poller: StatusPoller | None = None
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pinning = f"wrk + upstreams on CPU {opts.load_cpu}, proxy on CPU {opts.proxy_cpu}" if opts.load_cpu else "none"
    log(f"run dir {relative(str(run_dir))}; pinning: {pinning}")
    try:
        backend = start_backends(procs, opts, run_dir)
        ready = start_proxies(procs, opts, run_dir, proxies)
        if not ready:
            raise SystemExit("no proxy came up; nothing to measure")
        if any(p.name == "fulcrum-admin" for p in ready):
            poller = StatusPoller(opts.ports.admin)
            poller.start()
        runs, discarded = measure_all(procs, opts, ready, backend.pid)
        if poller is not None:
            poller.stop()
            log(f"status poller: {poller.ok} reads of /api/v1/status, {poller.failed} failed")
        profile: dict[str, Any] | None = None
        subject = next((p for p in ready if p.name == SUBJECT), None)
        if opts.profile:
            profile = profile_run(procs, opts, subject, stamp) if subject else {"error": "fulcrum did not run"}
        for gone in procs.exited():
            log(f"WARNING: {gone.name} (pid {gone.proc.pid}) exited during the run, status {gone.proc.returncode}")
    except Interrupted as exc:
        log(f"interrupted ({exc}); stopping everything started")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if poller is not None:
            poller.stop()
        procs.stop_all()

    names = [p.name for p in ready]
    rows = summarize(runs, names, opts.conns)
    have_pair = SUBJECT in names and BASELINE in names
    rs = ratios(runs, opts.conns) if have_pair else []
    vs = verdicts(runs, opts.conns) if SUBJECT in names else []
    vs += gateway_verdicts(runs, opts.conns, names)
    if not have_pair:
        vs = [v for v in vs if "nginx" not in v.target]
    if SUBJECT in opts.proxies:
        ok = SUBJECT in names
        started = Verdict("Fulcrum starts and passes the sanity check", "-", "yes" if ok else "no", "yes", "PASS")
        vs.insert(0, started if ok else replace(started, result="MISS"))
    meta: dict[str, Any] = {
        "stamp": stamp,
        "reps": opts.reps,
        "duration_s": opts.duration,
        "warmup_s": opts.warmup,
        "conns": opts.conns,
        "wrk_threads": opts.threads,
        "wrk_timeout_s": opts.wrk_timeout,
        "https": opts.https,
        "pinning": pinning,
        "ports": {"status": opts.ports.status, "upstreams": list(opts.ports.backends)},
        "proxies": {
            p.name: {"port": p.port, "argv": p.argv, "note": p.note, "sanity": asdict(p.sanity) if p.sanity else None}
            for p in proxies
        },
        "failed_to_start": [p.name for p in proxies if p not in ready],
        "gateway_ratios": gateway_ratios(runs, opts.conns, names),
        "environment": environment(),
        "run_dir": str(run_dir),
    }
    report = markdown_report(meta, rows, rs, vs)
    if discarded:
        errors = ", ".join(f"{r.proxy} c{r.conns} rep {r.rep}: {r.errors}" for r in discarded if r.errors)
        report += (
            f"\n{len(discarded)} noisy attempt(s) were measured again and left out"
            + (f"; errors in them: {errors}" if errors else "; no errors in them")
            + " (all in the .json).\n"
        )
    if profile is not None:
        report += f"\nProfile: {json.dumps(profile)}\n"
    report += f"\nEnvironment: {json.dumps(meta['environment'])}\n"
    base = RESULTS_DIR / stamp
    Path(f"{base}.md").write_text(relative(report))
    document = {
        "meta": meta,
        "summary": [asdict(r) for r in rows],
        "ratios": [asdict(r) for r in rs],
        "targets": [asdict(v) for v in vs],
        "profile": profile,
        "runs": [asdict(r) for r in runs],
        "discarded_noisy_runs": [asdict(r) for r in discarded],
    }
    Path(f"{base}.json").write_text(relative(json.dumps(document, indent=1, ensure_ascii=False)) + "\n")
    print(relative(report))
    print(f"results: {relative(str(base))}.md, .json")
    missed = any(v.result == "MISS" for v in vs)
    return 1 if missed and opts.fail_on_miss else 0


if __name__ == "__main__":
    sys.exit(main())
