"""Socket-free request loop: what one request costs in Fulcrum's data plane, without the kernel.

The real objects serve each request: a ClientConnection parsing with httptools, an Exchange, the
route table and middleware of the snapshot, the balancer, a Pool and its UpstreamConnection. Only the
transports are fakes, in memory. Per request the driver feeds the request bytes to the client
connection, takes the request head the exchange wrote to an upstream transport, feeds that
connection a canned keep-alive response (after the client's ``data_received`` has returned, as a
later read would) and checks that the client transport got a complete 200. Each server's pool holds
one idle connection, and the same one serves every request sent to that server: no connect, no task,
the event loop never runs.

    python benchmarks/hotloop.py                          # bare config, 20,000 requests, best of 5
    python benchmarks/hotloop.py --config mw5 --requests 50000
    python benchmarks/hotloop.py --all                    # the four configs and their ratios to bare
    python benchmarks/hotloop.py --all --callgrind --requests 2000
    python benchmarks/hotloop.py --browser --callgrind --requests 2000   # bare and browser, and their ratio

Configs: ``bare`` (one group of three servers, the catch-all route, as ``fulcrum proxy``), ``mw5``
(the catch-all with request_id, access_log to a file, rate_limit, cors and headers secure),
``routes1k`` (999 host + prefix routes that do not match, then the catch-all) and ``browser`` (bare,
with a request carrying a desktop browser's 14 headers besides Host, the list of ``browser.py`` that
``bench_traffic.py`` sends with wrk). The same configs as ``run.py --gateway``.

``--browser`` runs ``bare`` and ``browser`` and prints both, with the browser request's cost as a
multiple of the bare one's against the target (at most 1.3x in instructions with ``--callgrind``).

``--callgrind`` runs this script twice under ``valgrind --tool=callgrind`` with N and 2N requests
and prints (I(2N) - I(N)) / N instructions per request: start-up and warm-up cancel out, and the
figure does not move with the machine's load as wall time does (about 1% between runs). The figures include the
driver's own work per request (a few bytes comparisons, about 0.6 µs in pure Python), the same in every
config.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools

from browser import BROWSER_HEADERS as BROWSER_REQUEST_HEADERS
from fulcrum.build import stale_compiled_modules
from fulcrum.config import parse_config
from fulcrum.proxy.downstream import IDLE, ClientConnection
from fulcrum.proxy.server import ProxyServer, install_uvloop
from fulcrum.proxy.upstream import UpstreamConnection

CONFIGS = ("bare", "mw5", "routes1k", "browser")
#: Never connected to: each pool is handed a connection over a fake transport before the first request.
BACKENDS = ("http://127.0.0.1:19381", "http://127.0.0.1:19382", "http://127.0.0.1:19383")
#: The modules setup.py compiles with mypyc (its COMPILED list, read from setup.py).
COMPILED_MODULES = tuple(
    m.replace("/", ".").removeprefix("src.").removesuffix(".py")
    for m in re.findall(r'"(src/fulcrum/[^"]+\.py)"', (Path(__file__).resolve().parents[1] / "setup.py").read_text())
)

BODY = b"hello, world\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nX-Backend: %d\r\n\r\n" + BODY
OK_PREFIX = b"HTTP/1.1 200 OK\r\n"
OK_SUFFIX = b"\r\n\r\n" + BODY
HEAD_END = b"\r\n\r\n"
#: The sweeper's tick (deadlines, access log flush) runs every this many requests: about every
#: 50 ms at 20,000 requests/s, where the real tick runs every 10 to 250 ms.
SWEEP_EVERY = 1000

#: What wrk sends in run.py.
PLAIN_HEADERS = (b"Host: 127.0.0.1:8080\r\n",)
#: What a desktop browser sends with a page load: Host and the 14 headers of ``browser.py``.
BROWSER_HEADERS = (PLAIN_HEADERS[0], *(header.encode() + b"\r\n" for header in BROWSER_REQUEST_HEADERS))
#: ``--browser``: instructions per browser request at most this many times the bare request's.
BROWSER_TARGET = 1.3


class BenchFailure(Exception):
    """The proxy did not answer as it should: the figures would mean nothing."""


def config_dict(name: str, tmp: Path) -> dict[str, Any]:
    """The config of ``name``: three servers, round robin, no health check (so nothing else runs)."""
    group = {"balance": "round_robin", "servers": list(BACKENDS)}
    routes: list[dict[str, Any]] = []
    if name == "mw5":
        middleware = [
            {"request_id": {}},
            {"access_log": {"format": "combined", "path": str(tmp / "mw5.access.log")}},
            {"rate_limit": {"rate": "10000000/s", "burst": 10000000}},
            {"cors": {"allow_origins": ["https://app.example"]}},
            {"headers": {"preset": "secure"}},
        ]
        routes = [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": middleware}]
    elif name == "routes1k":
        routes = [
            {"match": {"host": f"h{i}.example.com", "path_prefix": f"/p{i}/"}, "upstream": "app"} for i in range(999)
        ]
        routes.append({"match": {"path_prefix": "/"}, "upstream": "app"})
    data: dict[str, Any] = {"listen": ["127.0.0.1:8080"], "upstreams": {"app": group}}
    if routes:
        data["routes"] = routes
    return data


def request_bytes(name: str) -> bytes:
    headers = BROWSER_HEADERS if name == "browser" else PLAIN_HEADERS
    return b"GET / HTTP/1.1\r\n" + b"".join(headers) + b"\r\n"


# -- fake transports ---------------------------------------------------------------------


class FakeTransport:
    """The part of ``asyncio.Transport`` the data plane calls, in memory: writes are kept in a list."""

    __slots__ = ("closing", "extra", "paused", "writes")

    def __init__(self, extra: dict[str, object]) -> None:
        self.extra = extra
        self.writes: list[bytes] = []
        self.paused = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, data: Sequence[bytes]) -> None:
        self.writes.extend(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.extra.get(name, default)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    # A real transport calls connection_lost on a later loop turn; the driver fails on ``closing`` first.
    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class UpstreamTransport(FakeTransport):
    """An upstream server's end: the first write since the last response puts it on ``ready``."""

    __slots__ = ("protocol", "ready", "response")

    def __init__(self, ready: list[UpstreamTransport], response: bytes) -> None:
        super().__init__({"peername": ("127.0.0.1", 19381), "socket": None})
        self.ready = ready
        self.response = response
        self.protocol: UpstreamConnection | None = None

    def write(self, data: bytes) -> None:
        if not self.writes:
            self.ready.append(self)
        self.writes.append(data)

    def writelines(self, data: Sequence[bytes]) -> None:
        if not self.writes:
            self.ready.append(self)
        self.writes.extend(data)


# -- the loop ------------------------------------------------------------------------------


class Harness:
    """One proxy (ProxyServer over a config), one client connection, one pooled connection per server."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp
        self.loop = install_uvloop()()  # never run: it gives loop.time() and nothing else is asked of it
        config = parse_config(config_dict(name, tmp), source=f"hotloop {name}")
        self.server = ProxyServer(config, self.loop)
        ctx = self.ctx = self.server.ctx
        self.ready: list[UpstreamTransport] = []
        self.upstreams: list[UpstreamTransport] = []
        for group in ctx.snapshot.groups.values():
            for i, server in enumerate(group.servers):
                pool = ctx.new_pool(group, server)
                conn = UpstreamConnection(pool)
                transport = UpstreamTransport(self.ready, RESPONSE % (i + 1))
                transport.protocol = conn
                conn.connection_made(transport)  # type: ignore[arg-type]
                pool.release(conn)
                self.upstreams.append(transport)
            if not group.eligible:
                raise BenchFailure(f"upstream group {group.name!r} has no eligible server")
        self.client_transport = FakeTransport({"peername": ("127.0.0.1", 50000), "socket": None})
        self.client = ClientConnection(ctx)
        self.client.connection_made(self.client_transport)  # type: ignore[arg-type]
        self.request = request_bytes(name)
        self.served = 0
        self.check_one()

    def check_one(self) -> None:
        """One request, checked whole: the head sent upstream and the client's response, parsed again."""
        self.client.data_received(self.request)
        if len(self.ready) != 1:
            raise BenchFailure(f"{self.name}: {len(self.ready)} upstream connections got a request (expected 1)")
        up = self.ready.pop()
        head = b"".join(up.writes)
        up.writes.clear()
        if not head.startswith(b"GET / HTTP/1.1\r\n") or not head.endswith(HEAD_END) or b"X-Request-ID: " not in head:
            raise BenchFailure(f"{self.name}: unexpected request head upstream: {head!r}")
        assert up.protocol is not None
        up.protocol.data_received(up.response)
        out = b"".join(self.client_transport.writes)
        self.client_transport.writes.clear()
        status, headers, body, complete = parse_response(out)
        if status != 200 or body != BODY or not complete or b"x-request-id" not in headers:
            raise BenchFailure(f"{self.name}: unexpected response to the client: {out!r}")
        self._check_state()
        self.served += 1

    def _check_state(self) -> None:
        client = self.client
        if client.state != IDLE or client.current is not None or self.client_transport.closing:
            raise BenchFailure(f"{self.name}: client connection not idle and open after a response")
        if self.client_transport.paused:
            raise BenchFailure(f"{self.name}: client reading left paused")
        for up in self.upstreams:
            if up.closing:
                raise BenchFailure(f"{self.name}: an upstream connection was closed; its pool would connect")

    def run(self, n: int) -> None:
        """``n`` requests, each checked enough to fail loudly when the proxy stops answering right."""
        feed = self.client.data_received
        request = self.request
        ready = self.ready
        writes = self.client_transport.writes
        sweep = self.ctx.sweep
        left = n
        while left:
            batch = min(left, SWEEP_EVERY)
            for _ in range(batch):
                feed(request)
                if len(ready) != 1:
                    raise BenchFailure(f"{self.name}: {len(ready)} upstream connections got a request (expected 1)")
                up = ready.pop()
                up_writes = up.writes
                if len(up_writes) != 1 or not up_writes[0].endswith(HEAD_END):
                    raise BenchFailure(f"{self.name}: unexpected writes upstream: {up_writes!r}")
                up_writes.clear()
                up.protocol.data_received(up.response)  # type: ignore[union-attr]
                out = writes[0] if len(writes) == 1 else b"".join(writes)
                if not (out.startswith(OK_PREFIX) and out.endswith(OK_SUFFIX)):
                    raise BenchFailure(f"{self.name}: unexpected response to the client: {out!r}")
                writes.clear()
            left -= batch
            sweep()
        self.served += n
        self._check_state()

    def finish(self) -> None:
        """Check that every request reused its server's one connection, round robin; close everything."""
        uses = [up.protocol.uses for up in self.upstreams if up.protocol is not None]
        ctx = self.ctx
        opened = sum(pool.opened for pool in ctx.pools.values())
        if sum(uses) != self.served or max(uses) - min(uses) > 1 or opened or ctx.connect_tasks:
            raise BenchFailure(
                f"{self.name}: {self.served} requests but connection uses {uses}, {opened} connections opened"
            )
        if ctx.stats.requests_total != self.served or ctx.stats.responses_5xx:
            raise BenchFailure(f"{self.name}: stats say {ctx.stats.requests_total} requests, "
                               f"{ctx.stats.responses_5xx} 5xx; served {self.served}")
        ctx.snapshot.close()  # stops the access log's writer thread, after it wrote everything
        self.loop.close()
        if self.name == "mw5":
            lines = (self.tmp / "mw5.access.log").read_bytes().count(b"\n")
            if lines != self.served:
                raise BenchFailure(f"mw5: {lines} access log lines for {self.served} requests")


def parse_response(data: bytes) -> tuple[int, dict[bytes, bytes], bytes, bool]:
    """Status, headers (lower-case names), body and whether the response was complete."""

    class Sink:
        def __init__(self) -> None:
            self.headers: dict[bytes, bytes] = {}
            self.body = b""
            self.complete = False

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.complete = True

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as err:
        raise BenchFailure(f"the client got a malformed response ({err}): {data!r}") from None
    return int(parser.get_status_code()), sink.headers, sink.body, sink.complete


def measure(name: str, requests: int, warmup: int, repeat: int) -> float:
    """Best microseconds per request over ``repeat`` runs of ``requests``."""
    with tempfile.TemporaryDirectory(prefix="fulcrum-hotloop-") as tmp:
        harness = Harness(name, Path(tmp))
        harness.run(warmup)
        best = float("inf")
        for _ in range(repeat):
            gc.collect()
            start = time.perf_counter()
            harness.run(requests)
            best = min(best, time.perf_counter() - start)
        harness.finish()
    return best / requests * 1e6


def child_run(name: str, requests: int, warmup: int) -> None:
    """What runs under callgrind: warm-up, then ``requests`` requests once."""
    with tempfile.TemporaryDirectory(prefix="fulcrum-hotloop-") as tmp:
        harness = Harness(name, Path(tmp))
        harness.run(warmup)
        harness.run(requests)
        harness.finish()


# -- callgrind -----------------------------------------------------------------------------

_TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def callgrind_instructions(name: str, requests: int, warmup: int, tmp: Path) -> int:
    """Instructions of one run of this script under callgrind (the whole process, every thread)."""
    out = tmp / f"callgrind.{name}.{requests}.out"
    argv = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, str(Path(__file__).resolve()), "--child-run",
        "--config", name, "--requests", str(requests), "--warmup", str(warmup),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same hashes, so the same dict layouts, in both runs
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchFailure(f"callgrind run of {name} ({requests} requests) failed:\n{proc.stdout}{proc.stderr}")
    found = _TOTALS.findall(out.read_bytes())
    if not found:
        raise BenchFailure(f"no summary or totals line in {out}")
    return int(found[-1])


def instructions_per_request(name: str, requests: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory(prefix="fulcrum-hotloop-cg-") as tmp:
        one = callgrind_instructions(name, requests, warmup, Path(tmp))
        two = callgrind_instructions(name, 2 * requests, warmup, Path(tmp))
    return (two - one) / requests


# -- report --------------------------------------------------------------------------------


def build_description() -> str:
    """Which of the per-request modules run compiled by mypyc, so figures of two builds are never mixed."""
    compiled = []
    present = []
    for module in COMPILED_MODULES:
        try:
            path = getattr(importlib.import_module(module), "__file__", None) or ""
        except ImportError:  # an older build, from before this module existed
            continue
        present.append(module)
        if path.endswith(".so"):
            compiled.append(module)
    if not compiled:
        text = f"pure Python (none of the {len(COMPILED_MODULES)} mypyc modules is compiled)"
    elif len(compiled) == len(present):
        text = f"compiled by mypyc (all {len(present)} modules)"
    else:
        pure = [m for m in present if m not in compiled]
        text = f"MIXED: {len(compiled)} of {len(COMPILED_MODULES)} modules compiled; pure: {', '.join(pure)}"
    stale = stale_compiled_modules()
    if stale:
        text += "; STALE: " + ", ".join(f"{src.name} is newer than {so.name}" for so, src in stale)
    return text


@dataclass
class Row:
    name: str
    us: float
    instructions: float | None = None


def print_table(rows: list[Row]) -> None:
    with_ir = any(row.instructions is not None for row in rows)
    print(f"{'config':<10} {'µs/req':>8}" + (f" {'instr/req':>11}" if with_ir else ""))
    for row in rows:
        line = f"{row.name:<10} {row.us:>8.2f}"
        if with_ir:
            line += f" {row.instructions:>11,.0f}" if row.instructions is not None else f" {'-':>11}"
        print(line)
    base = next((row for row in rows if row.name == "bare"), None)
    others = [row for row in rows if row.name != "bare"]
    if base is None or not others:
        return
    print()
    print(f"{'ratio':<15} {'µs':>6}" + (f" {'instr':>6}" if with_ir else ""))
    for row in others:
        line = f"{row.name + '/bare':<15} {row.us / base.us:>6.2f}"
        if with_ir and row.instructions is not None and base.instructions:
            line += f" {row.instructions / base.instructions:>6.2f}"
        print(line)


def print_browser_target(rows: list[Row]) -> None:
    """The browser request's cost as a multiple of the bare one's, judged in instructions when counted."""
    base = next((row for row in rows if row.name == "bare"), None)
    browser = next((row for row in rows if row.name == "browser"), None)
    if base is None or browser is None:
        return
    print()
    if browser.instructions is not None and base.instructions:
        ratio = browser.instructions / base.instructions
        verdict = "PASS" if ratio <= BROWSER_TARGET else "MISS"
        print(f"instructions per browser request: {browser.instructions:,.0f}, bare: {base.instructions:,.0f}; "
              f"{ratio:.2f}x (target <= {BROWSER_TARGET}x: {verdict})")
    else:
        print(f"µs per browser request: {browser.us:.2f}, bare: {base.us:.2f}; {browser.us / base.us:.2f}x "
              f"(wall clock; the {BROWSER_TARGET}x target is judged in instructions, with --callgrind)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--config", choices=CONFIGS, default="bare", help="which config to serve (default bare)")
    parser.add_argument("--all", action="store_true", help="every config in turn, with the ratios to bare")
    parser.add_argument("--browser", action="store_true",
                        help=f"bare and browser (14 browser headers), with the ratio against its target "
                             f"(<= {BROWSER_TARGET}x in instructions)")
    parser.add_argument("--requests", type=int, default=20000, help="requests per timed run (default 20000)")
    parser.add_argument("--warmup", type=int, default=2000, help="requests before timing (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best counts (default 5)")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per request under valgrind's callgrind (N and 2N requests)")
    parser.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.repeat < 1:
        parser.error("--requests and --repeat must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_run:
        child_run(args.config, args.requests, args.warmup)
        return 0
    if args.callgrind and shutil.which("valgrind") is None:
        print("hotloop: valgrind is not installed, so --callgrind cannot count instructions "
              "(install valgrind, or run without --callgrind)", file=sys.stderr)
        return 2
    names = list(CONFIGS) if args.all else ["bare", "browser"] if args.browser else [args.config]
    print(f"fulcrum data plane: {build_description()}")
    print(f"{args.requests} requests per run, {args.warmup} warm-up, best of {args.repeat}"
          + (f"; callgrind: {args.requests} and {2 * args.requests} requests" if args.callgrind else ""))
    print()
    rows = []
    try:
        for name in names:
            row = Row(name, measure(name, args.requests, args.warmup, args.repeat))
            if args.callgrind:
                row.instructions = instructions_per_request(name, args.requests, args.warmup)
            rows.append(row)
    except BenchFailure as err:
        print(f"hotloop: FAILED: {err}", file=sys.stderr)
        return 1
    print_table(rows)
    print_browser_target(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
