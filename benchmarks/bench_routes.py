"""Micro-benchmark of RouteTable.match at 10 and 1,000 routes, beside a naive linear scan.

Prints microseconds per match (best of several repeats of ``--number`` matches each; the linear scan
runs ``number * 10 / routes`` matches per repeat, so its repeats take about as long) for:
host + path_prefix routes with a request matching the last route, the same with a request matching
nothing, and prefix-only routes with a request matching the last route. The linear scan tries each
route in order with plain boolean checks, as the route table did before it was indexed.

    python benchmarks/bench_routes.py [--sizes 10,1000] [--number 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from fulcrum.routing.table import Route, RouteTable

HEADERS = (b"Host: example\r\n", b"User-Agent: bench\r\n", b"Accept: */*\r\n")
Request = tuple[bytes, bytes, bytes, Sequence[bytes], bytes]
Matcher = Callable[[bytes, bytes, bytes, Sequence[bytes], bytes], "Route | None"]


def host_prefix_routes(n: int) -> list[Route]:
    return [
        Route(index=i, name=f"r{i}", upstream="up", host=f"h{i}.example.com".encode(), path_prefix=f"/svc{i}/".encode())
        for i in range(n)
    ]


def prefix_routes(n: int) -> list[Route]:
    return [Route(index=i, name=f"r{i}", upstream="up", path_prefix=f"/svc{i}/".encode()) for i in range(n)]


def linear(routes: Sequence[Route]) -> Matcher:
    """First match by trying every route in turn (host and prefix conditions only)."""
    table = tuple(routes)

    def match(host: bytes, path: bytes, method: bytes, headers: Sequence[bytes], query: bytes) -> Route | None:
        for route in table:
            pattern = route.host
            if pattern is not None:
                if pattern[:2] == b"*.":
                    if not (len(host) > len(pattern) - 1 and host.endswith(pattern[1:])):
                        continue
                elif host != pattern:
                    continue
            if route.path_prefix is not None and not path.startswith(route.path_prefix):
                continue
            return route
        return None

    return match


def us_per_match(match: Matcher, request: Request, number: int, repeat: int) -> float:
    """Best time per match over ``repeat`` runs of ``number`` matches."""
    host, path, method, headers, query = request
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            match(host, path, method, headers, query)
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


def cases(n: int) -> list[tuple[str, list[Route], Request]]:
    last = n - 1
    hit = (f"h{last}.example.com".encode(), f"/svc{last}/items/42".encode(), b"GET", HEADERS, b"")
    miss = (b"nowhere.example.com", b"/nothing/here", b"GET", HEADERS, b"")
    prefix_hit = (b"", f"/svc{last}/items/42".encode(), b"GET", HEADERS, b"")
    return [
        ("host+prefix, last route", host_prefix_routes(n), hit),
        ("host+prefix, no match", host_prefix_routes(n), miss),
        ("prefix only, last route", prefix_routes(n), prefix_hit),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000", help="comma-separated route counts (default 10,1000)")
    parser.add_argument("--number", type=int, default=50000, help="matches per timed repeat (default 50000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats, the best is kept (default 5)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict[str, list[float]] = {}
    for n in sizes:
        for label, routes, request in cases(n):
            table = RouteTable(routes)
            expected = linear(routes)(*request)
            assert table.match(*request) is expected, label
            scan_number = max(100, args.number * 10 // n)
            for kind, match, number in (("table", table.match, args.number), ("linear", linear(routes), scan_number)):
                rows.setdefault(f"{label} ({kind})", []).append(us_per_match(match, request, number, args.repeat))
    print(f"µs per match (best of {args.repeat})")
    print(f"{'case':<36}" + "".join(f"{f'{n:,} routes':>14}" for n in sizes))
    for name, row in rows.items():
        print(f"{name:<36}" + "".join(f"{us:>14,.2f}" for us in row), flush=True)


if __name__ == "__main__":
    main()
