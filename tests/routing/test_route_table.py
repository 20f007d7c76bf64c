"""RouteTable: each condition, their combinations, order, explain, and that lookups do not scan."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

import pytest

from fulcrum.routing.route import HeaderMatch
from fulcrum.routing.table import Route, RouteTable, mismatch

HEADERS = [b"Host: api.example.com\r\n", b"X-Canary:  1 \r\n", b"accept: text/html\r\n"]


def routes(*specs: dict[str, Any]) -> list[Route]:
    return [Route(index=i, name=f"r{i}", upstream="up", **spec) for i, spec in enumerate(specs)]


def match(
    table: RouteTable,
    host: bytes = b"api.example.com",
    path: bytes = b"/",
    method: bytes = b"GET",
    headers: Sequence[bytes] = HEADERS,
    query: bytes = b"",
) -> Route | None:
    return table.match(host, path, method, headers, query)


def matches(spec: dict[str, Any], **request: Any) -> bool:
    """Whether one route with ``spec`` matches, checked by the table and by ``mismatch`` alike."""
    route = routes(spec)[0]
    # a catch-all second route keeps the table's catch_all shortcut from answering for the first
    table = RouteTable([Route(index=0, name="never", upstream="up", path=b"/never"), route])
    found = match(table, **request) is route
    args = {"host": b"api.example.com", "path": b"/", "method": b"GET", "headers": HEADERS, "query": b""} | request
    assert found == (mismatch(route, **args) is None)
    return found


# -- host


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        (b"api.example.com", b"api.example.com", True),
        (b"api.example.com", b"www.example.com", False),
        (b"api.example.com", b"", False),
        (b"*.example.com", b"a.example.com", True),
        (b"*.example.com", b"x.y.example.com", True),
        (b"*.example.com", b"example.com", False),
        (b"*.example.com", b".example.com", False),
        (b"*.example.com", b"aexample.com", False),
        (b"*.example.com", b"example.com.evil", False),
        (b"*.com", b"a.example.com", True),
    ],
)
def test_host(pattern: bytes, host: bytes, expected: bool) -> None:
    assert matches({"host": pattern}, host=host) is expected


def test_exact_host_and_wildcard_both_hit_lowest_index_wins() -> None:
    table = RouteTable(routes({"host": b"*.example.com", "path_prefix": b"/a"}, {"host": b"api.example.com"}))
    assert match(table, path=b"/a/x") is table.routes[0]
    assert match(table, path=b"/b") is table.routes[1]
    assert match(table, host=b"www.example.com", path=b"/b") is None


def test_nested_wildcards() -> None:
    post_only = {"host": b"*.b.example.com", "methods": frozenset({b"POST"})}
    table = RouteTable(routes(post_only, {"host": b"*.example.com"}))
    assert match(table, host=b"a.b.example.com", method=b"POST") is table.routes[0]
    assert match(table, host=b"a.b.example.com") is table.routes[1]
    assert match(table, host=b"b.example.com", method=b"POST") is table.routes[1]


# -- path


@pytest.mark.parametrize(
    ("spec", "path", "expected"),
    [
        ({"path": b"/api"}, b"/api", True),
        ({"path": b"/api"}, b"/api/", False),
        ({"path": b"/api"}, b"/ap", False),
        ({"path_prefix": b"/api"}, b"/api", True),
        ({"path_prefix": b"/api"}, b"/apix", True),  # character based, like nginx
        ({"path_prefix": b"/api"}, b"/api/v1", True),
        ({"path_prefix": b"/api"}, b"/ap", False),
        ({"path_prefix": b"/api/"}, b"/api", False),
        ({"path_prefix": b"/"}, b"/anything", True),
        ({"path_prefix": b"/"}, b"*", True),  # prefix / matches every path, as Route.catch_all says
        ({"path_prefix": b""}, b"*", True),
        ({"path": b"/api", "path_prefix": b"/a"}, b"/api", True),
        ({"path": b"/api", "path_prefix": b"/b"}, b"/api", False),
        ({"path_regex": re.compile(rb"^/v[0-9]+/")}, b"/v2/users", True),
        ({"path_regex": re.compile(rb"^/v[0-9]+/")}, b"/api/v2/users", False),
        ({"path_regex": re.compile(rb"\.php$")}, b"/x/index.php", True),  # searched, not anchored
        ({"path_prefix": b"/api", "path_regex": re.compile(rb"/users$")}, b"/api/v1/users", True),
        ({"path_prefix": b"/api", "path_regex": re.compile(rb"/users$")}, b"/v1/users", False),
    ],
)
def test_path(spec: dict[str, Any], path: bytes, expected: bool) -> None:
    assert matches(spec, path=path) is expected


def test_longer_prefix_later_does_not_beat_earlier_shorter_one() -> None:
    table = RouteTable(routes({"path_prefix": b"/api"}, {"path_prefix": b"/api/v1"}, {"path": b"/api/v1/x"}))
    assert match(table, path=b"/api/v1/x") is table.routes[0]
    assert match(table, path=b"/other") is None


def test_same_prefix_twice_first_wins() -> None:
    table = RouteTable(routes({"path_prefix": b"/a", "methods": frozenset({b"PUT"})}, {"path_prefix": b"/a"}))
    assert match(table, path=b"/ab") is table.routes[1]
    assert match(table, path=b"/ab", method=b"PUT") is table.routes[0]


# -- methods, headers, query


@pytest.mark.parametrize(
    ("methods", "method", "expected"),
    [
        (frozenset({b"GET", b"POST"}), b"GET", True),
        (frozenset({b"GET", b"POST"}), b"DELETE", False),
        (frozenset(), b"DELETE", True),  # empty means any
    ],
)
def test_methods(methods: frozenset[bytes], method: bytes, expected: bool) -> None:
    assert matches({"methods": methods}, method=method) is expected


def test_method_mismatch_falls_through_to_a_later_route() -> None:
    table = RouteTable(routes({"path_prefix": b"/api", "methods": frozenset({b"GET"})}, {"path_prefix": b"/api"}))
    assert match(table, path=b"/api/x", method=b"GET") is table.routes[0]
    assert match(table, path=b"/api/x", method=b"DELETE") is table.routes[1]


@pytest.mark.parametrize(
    ("header", "lines", "expected"),
    [
        (HeaderMatch(b"x-canary", value=b"1"), [b"X-Canary: 1\r\n"], True),
        (HeaderMatch(b"x-canary", value=b"1"), [b"x-canary:1\r\n"], True),
        (HeaderMatch(b"x-canary", value=b"1"), [b"X-CANARY: \t1  \r\n"], True),
        (HeaderMatch(b"x-canary", value=b"1"), [b"X-Canary: 2\r\n"], False),
        (HeaderMatch(b"x-canary", value=b"1"), [b"X-Canary: 2\r\n", b"X-Canary: 1\r\n"], True),  # any line
        (HeaderMatch(b"x-canary", value=b"1"), [b"X-Canary-Other: 1\r\n"], False),
        (HeaderMatch(b"x-canary", value=b"1"), [b"X-Canar: 1\r\n"], False),
        (HeaderMatch(b"x-canary", value=b"1"), [], False),
        (HeaderMatch(b"x-canary", regex=re.compile(rb"^[12]$")), [b"X-Canary: 2\r\n"], True),
        (HeaderMatch(b"x-canary", regex=re.compile(rb"^[12]$")), [b"X-Canary: 3\r\n"], False),
        (HeaderMatch(b"x-canary", regex=re.compile(rb"beta")), [b"X-Canary: is beta here\r\n"], True),
        (HeaderMatch(b"x-canary"), [b"X-Canary: anything\r\n"], True),  # presence
        (HeaderMatch(b"host", value=b"api.example.com"), [b"HOST: api.example.com\r\n"], True),
    ],
)
def test_headers(header: HeaderMatch, lines: list[bytes], expected: bool) -> None:
    assert matches({"headers": (header,)}, headers=lines) is expected


def test_every_header_condition_must_hold() -> None:
    spec = {"headers": (HeaderMatch(b"x-canary", value=b"1"), HeaderMatch(b"accept", regex=re.compile(rb"html")))}
    assert matches(spec, headers=[b"Accept: text/html\r\n", b"X-Canary: 1\r\n"])
    assert not matches(spec, headers=[b"Accept: text/plain\r\n", b"X-Canary: 1\r\n"])
    assert not matches(spec, headers=[b"Accept: text/html\r\n"])


@pytest.mark.parametrize(
    ("pairs", "query", "expected"),
    [
        ((("v", "2"),), b"v=2", True),
        ((("v", "2"),), b"v=1&v=2", True),
        ((("v", "2"),), b"v=1", False),
        ((("v", "2"),), b"", False),
        ((("v", "2"),), b"w=2", False),
        ((("v", "2"), ("debug", "")), b"debug&v=2", True),
        ((("v", "2"), ("debug", "")), b"v=2", False),
        ((("q", "a b"),), b"q=a+b", True),  # compared after decoding
        ((("q", "é"),), b"q=%C3%A9", True),
    ],
)
def test_query(pairs: tuple[tuple[str, str], ...], query: bytes, expected: bool) -> None:
    assert matches({"query": pairs}, query=query) is expected


def test_all_conditions_together() -> None:
    spec = {
        "host": b"*.example.com",
        "path_prefix": b"/api/",
        "path_regex": re.compile(rb"/users/[0-9]+$"),
        "methods": frozenset({b"GET"}),
        "headers": (HeaderMatch(b"x-canary", value=b"1"),),
        "query": (("v", "2"),),
    }
    good: dict[str, Any] = {
        "host": b"api.example.com",
        "path": b"/api/users/7",
        "method": b"GET",
        "headers": HEADERS,
        "query": b"v=2",
    }
    assert matches(spec, **good)
    changes: list[dict[str, Any]] = [
        {"host": b"example.com"},
        {"path": b"/v1/users/7"},
        {"path": b"/api/users/x"},
        {"method": b"POST"},
        {"headers": [b"X-Canary: 0\r\n"]},
        {"query": b"v=3"},
    ]
    for change in changes:
        assert not matches(spec, **(good | change)), change


# -- the table


def test_no_match_and_empty_table() -> None:
    assert match(RouteTable(routes({"path": b"/x"})), path=b"/y") is None
    empty = RouteTable([])
    assert empty.routes == ()
    assert empty.catch_all is None
    assert not empty.uses_host
    assert match(empty) is None
    assert empty.explain(b"a", b"/", b"GET", [], b"") == []


def test_first_match_wins_even_if_a_later_route_is_more_specific() -> None:
    table = RouteTable(routes({"path_prefix": b"/api"}, {"host": b"api.example.com", "path": b"/api/users"}))
    assert match(table, path=b"/api/users") is table.routes[0]


@pytest.mark.parametrize("first", [{}, {"path_prefix": b"/"}])
def test_catch_all(first: dict[str, Any]) -> None:
    table = RouteTable(routes(first, {"host": b"api.example.com"}))
    assert table.catch_all is table.routes[0]
    assert match(table, path=b"*") is table.routes[0]
    assert table.explain(b"", b"*", b"GET", [], b"") == [(table.routes[0], None)]


@pytest.mark.parametrize(
    "first", [{"path_prefix": b"/a"}, {"methods": frozenset({b"GET"})}, {"host": b"a"}, {"query": (("a", "b"),)}]
)
def test_not_catch_all(first: dict[str, Any]) -> None:
    table = RouteTable(routes(first, {}))
    assert table.catch_all is None
    assert match(table, path=b"/zzz", method=b"POST") is table.routes[1]


def test_catch_all_only_when_first() -> None:
    table = RouteTable(routes({"path": b"/x"}, {}))
    assert table.catch_all is None
    assert match(table, path=b"/x") is table.routes[0]
    assert match(table, path=b"/y") is table.routes[1]


def test_uses_host() -> None:
    assert not RouteTable(routes({"path_prefix": b"/a"}, {"headers": (HeaderMatch(b"host", value=b"a"),)})).uses_host
    assert RouteTable(routes({"path_prefix": b"/a"}, {"host": b"*.a"})).uses_host


# -- explain


def test_explain_reasons_and_match_last() -> None:
    table = RouteTable(
        routes(
            {"host": b"www.example.com"},
            {"host": b"*.example.org"},
            {"path": b"/exact"},
            {"path_prefix": b"/api/"},
            {"path_regex": re.compile(rb"^/v[0-9]+")},
            {"methods": frozenset({b"POST", b"GET"})},
            {"headers": (HeaderMatch(b"x-canary"),)},
            {"headers": (HeaderMatch(b"accept", value=b"text/plain"),)},
            {"headers": (HeaderMatch(b"accept", regex=re.compile(rb"json")),)},
            {"query": (("v", "2"),)},
            {"path_prefix": b"/api"},
            {},
        )
    )
    request = (b"api.example.com", b"/apix", b"DELETE", [b"Accept:  text/html \r\n"], b"v=1")
    assert table.explain(*request) == [
        (table.routes[0], "host api.example.com != www.example.com"),
        (table.routes[1], "host api.example.com does not match *.example.org"),
        (table.routes[2], "path /apix != /exact"),
        (table.routes[3], "path does not start with /api/"),
        (table.routes[4], "path does not match ^/v[0-9]+"),
        (table.routes[5], "method DELETE not in GET, POST"),
        (table.routes[6], "header X-Canary missing"),
        (table.routes[7], "header Accept text/html != text/plain"),
        (table.routes[8], "header Accept text/html does not match json"),
        (table.routes[9], "query v=2 missing"),
        (table.routes[10], None),
    ]
    assert table.match(*request) is table.routes[10]


def test_explain_names_the_first_failing_condition() -> None:
    (route,) = routes({"host": b"a.example.com", "path_prefix": b"/api", "methods": frozenset({b"GET"})})
    assert mismatch(route, b"", b"/x", b"PUT", [], b"") == "host (none) != a.example.com"
    assert mismatch(route, b"a.example.com", b"/x", b"PUT", [], b"") == "path does not start with /api"
    assert mismatch(route, b"a.example.com", b"/api", b"PUT", [], b"") == "method PUT not in GET"
    assert mismatch(route, b"a.example.com", b"/api", b"GET", [], b"") is None


def test_explain_lists_every_route_when_none_matches() -> None:
    table = RouteTable(routes({"path": b"/a"}, {"path": b"/b"}))
    explained = table.explain(b"", b"/c", b"GET", [], b"")
    assert [route for route, _ in explained] == list(table.routes)
    assert all(reason is not None for _, reason in explained)


# -- cost: the lookup visits the matching buckets only


class CountingRegex:
    """Stands in for a compiled regex and counts the searches: each is one candidate checked."""

    pattern = b"counted"

    def __init__(self) -> None:
        self.calls = 0

    def search(self, path: bytes) -> object:
        self.calls += 1
        return self


def counted_table(n: int, regex: CountingRegex, host: bool = True) -> RouteTable:
    pattern = cast(re.Pattern[bytes], regex)
    specs: list[dict[str, Any]] = []
    for i in range(n):
        spec: dict[str, Any] = {"path_prefix": f"/svc{i}/".encode(), "path_regex": pattern}
        if host:
            spec["host"] = f"h{i}.example.com".encode()
        specs.append(spec)
    return RouteTable(routes(*specs))


@pytest.mark.parametrize("host", [True, False])
@pytest.mark.parametrize("n", [10, 1000])
def test_lookup_checks_only_the_matching_candidate(n: int, host: bool) -> None:
    regex = CountingRegex()
    table = counted_table(n, regex, host)
    last = n - 1
    assert match(table, host=f"h{last}.example.com".encode(), path=f"/svc{last}/items".encode()) is table.routes[last]
    assert regex.calls == 1
    regex.calls = 0
    assert match(table, host=b"nowhere.example.com", path=b"/nothing") is None
    assert regex.calls == 0


def test_lookup_through_wildcards_does_not_scan() -> None:
    regex = CountingRegex()
    pattern = cast(re.Pattern[bytes], regex)
    table = RouteTable(routes(*({"host": f"*.t{i}.example.com".encode(), "path_regex": pattern} for i in range(1000))))
    assert match(table, host=b"a.b.t999.example.com", path=b"/x") is table.routes[999]
    assert match(table, host=b"t999.example.com", path=b"/x") is None
    assert regex.calls == 1


def test_many_routes_one_host_and_exact_paths() -> None:
    table = RouteTable(routes(*({"host": b"api.example.com", "path": f"/p/{i}".encode()} for i in range(1000))))
    assert match(table, path=b"/p/999") is table.routes[999]
    assert match(table, path=b"/p/1000") is None
    assert match(table, host=b"www.example.com", path=b"/p/1") is None
