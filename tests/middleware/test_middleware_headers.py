"""The ``headers`` built-in: its one-pass edit of a raw upstream head answers as the mapping path does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.middleware.api import Request, Response
from fulcrum.middleware.builtins import SECURE_HEADERS, HeadersMiddleware

NAMES = [name for name, _ in SECURE_HEADERS] + ["X-Powered-By", "X-Upstream-Name", "Content-Type", "X-Frame"]


def _request() -> Request:
    return Request("GET", b"/", [b"Host: a\r\n"], "127.0.0.1", "r", "id")


def _head(lines: list[tuple[str, str]]) -> bytes:
    return b"HTTP/1.1 200 OK" + b"".join(f"\r\n{n}: {v}".encode() for n, v in lines)


def _lines(resp: Response) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in resp.headers.items()]


def _both(mw: HeadersMiddleware, head: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    raw = Response.upstream(200, head)
    mw.on_response(_request(), raw)
    mapped = Response.upstream(200, head)
    _ = mapped.headers  # built first, as another middleware would: the edit goes through the mapping
    mw.on_response(_request(), mapped)
    return _lines(raw), _lines(mapped)


def test_secure_preset_adds_what_is_absent_and_keeps_the_upstreams_own() -> None:
    mw = HeadersMiddleware("secure", {}, [])
    head = _head([("Content-Type", "text/plain"), ("x-FRAME-options", "DENY"), ("X-Powered-By", "PHP/5")])
    raw, mapped = _both(mw, head)
    assert raw == mapped
    got = dict(raw)
    assert got["x-frame-options"] == "DENY"  # any case counts as present
    assert "x-powered-by" not in got
    assert got["x-content-type-options"] == "nosniff" and got["x-xss-protection"] == "0"
    assert [name for name, _ in raw].count("x-frame-options") == 1


def test_a_name_the_route_sets_is_not_added_again_by_the_preset() -> None:
    mw = HeadersMiddleware("secure", {"X-Frame-Options": "DENY"}, ["X-XSS-Protection"])
    raw, mapped = _both(mw, _head([("Content-Type", "text/plain")]))
    assert raw == mapped
    assert [v for n, v in raw if n == "x-frame-options"] == ["DENY"]
    assert "x-xss-protection" not in dict(raw)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(st.sampled_from(NAMES).map(lambda n: st.sampled_from([n, n.lower(), n.upper()])).flatmap(
        lambda s: s), st.sampled_from(["v", "1", "a b"])), max_size=8),
    preset=st.sampled_from([None, "secure"]),
    set_=st.dictionaries(st.sampled_from(NAMES), st.just("set"), max_size=2),
    remove=st.lists(st.sampled_from(NAMES), max_size=2),
)
def test_raw_edit_matches_the_mapping_edit(lines: list[tuple[str, str]], preset: str | None, set_: dict[str, str],
                                           remove: list[str]) -> None:
    mw = HeadersMiddleware(preset, set_, remove)
    raw, mapped = _both(mw, _head(lines))
    assert sorted(raw) == sorted(mapped)
    names = [name for name, _ in raw]
    for name in {n.lower() for n in (*set_, *remove)}:
        if name in {n.lower() for n in remove} and name not in {n.lower() for n in set_}:
            assert name not in names
    for name in {n.lower() for n in set_}:
        assert [v for n, v in raw if n == name] == ["set"]
