"""The indexed lookup agrees with a naive first-match scan over random route sets and requests."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.routing.route import HeaderMatch
from fulcrum.routing.table import Route, RouteTable, mismatch

ROUTE_HOSTS = [b"example.com", b"a.example.com", b"b.a.example.com", b"*.example.com", b"*.a.example.com", b"*.org"]
REQUEST_HOSTS = [*ROUTE_HOSTS[:3], b"", b"c.example.com", b"x.b.a.example.com", b"org", b"a.org", b".org", b"com"]
ROUTE_PATHS = [b"", b"/", b"/a", b"/a/", b"/a/b", b"/ab", b"/b"]
REQUEST_PATHS = [*ROUTE_PATHS, b"/a/bc", b"/abc", b"/b/a", b"*"]
REGEXES = [re.compile(p) for p in (rb"^/a", rb"b$", rb"/a/b", rb"^/$", rb"[0-9]")]
METHODS = [b"GET", b"POST", b"DELETE"]
HEADER_MATCHES = [
    HeaderMatch(b"x-canary", value=b"1"),
    HeaderMatch(b"x-canary", regex=re.compile(rb"^[12]$")),
    HeaderMatch(b"x-canary"),
    HeaderMatch(b"host", value=b"a.example.com"),
    HeaderMatch(b"accept", regex=re.compile(rb"html")),
]
HEADER_LINES = [
    b"X-Canary: 1\r\n",
    b"x-canary:  2 \r\n",
    b"X-CANARY: 3\r\n",
    b"HOST: a.example.com\r\n",
    b"Host: example.com\r\n",
    b"Accept: text/html\r\n",
    b"accept: */*\r\n",
]
QUERY_PAIRS = [("v", "1"), ("v", "2"), ("debug", "")]
QUERIES = [b"", b"v=1", b"v=2&v=1", b"debug", b"debug=&v=2", b"v=%31", b"w=1"]


def maybe(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.sampled_from(values))


conditions = st.fixed_dictionaries(
    {},
    optional={
        "host": maybe(ROUTE_HOSTS),
        "path": maybe(ROUTE_PATHS),
        "path_prefix": maybe(ROUTE_PATHS),
        "path_regex": maybe(REGEXES),
        "methods": st.one_of(st.none(), st.frozensets(st.sampled_from(METHODS), max_size=2)),
        "headers": st.lists(st.sampled_from(HEADER_MATCHES), max_size=2).map(tuple),
        "query": st.lists(st.sampled_from(QUERY_PAIRS), max_size=2).map(tuple),
    },
)

requests = st.tuples(
    st.sampled_from(REQUEST_HOSTS),
    st.sampled_from(REQUEST_PATHS),
    st.sampled_from(METHODS),
    st.lists(st.sampled_from(HEADER_LINES), max_size=4),
    st.sampled_from(QUERIES),
)


@settings(max_examples=300)
@given(specs=st.lists(conditions, max_size=30), batch=st.lists(requests, min_size=1, max_size=10))
def test_match_is_the_first_route_that_matches(
    specs: list[dict[str, Any]], batch: list[tuple[bytes, bytes, bytes, list[bytes], bytes]]
) -> None:
    routes = [Route(index=i, name=f"r{i}", upstream="up", **spec) for i, spec in enumerate(specs)]
    table = RouteTable(routes)
    for request in batch:
        expected = next((r for r in routes if mismatch(r, *request) is None), None)
        assert table.match(*request) is expected
        explained = table.explain(*request)
        tried = routes[: routes.index(expected) + 1] if expected is not None else routes
        assert [r for r, _ in explained] == tried
        assert [reason is None for _, reason in explained] == [r is expected for r, _ in explained]
