"""CORS: origin matching, preflight answers and the headers of actual responses."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fulcrum.middleware.policy.cors import CorsPolicy

VARY_PREFLIGHT = ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


def policy(
    origins: Sequence[str] = ("https://app.example.com",),
    methods: Sequence[str] = ("GET", "PUT", "DELETE"),
    headers: Sequence[str] = ("Content-Type", "X-Request-Id"),
    credentials: bool = False,
    max_age: int = 600,
    expose: Sequence[str] = (),
) -> CorsPolicy:
    return CorsPolicy(origins, methods, headers, credentials, max_age, expose)


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        (["https://app.example.com"], "https://app.example.com", True),
        (["https://app.example.com"], "HTTPS://App.Example.COM", True),
        (["https://App.Example.com/"], "https://app.example.com", True),
        (["https://app.example.com:443"], "https://app.example.com", True),
        (["https://app.example.com"], "http://app.example.com", False),
        (["https://app.example.com"], "https://app.example.com:8443", False),
        (["https://app.example.com:8443"], "https://app.example.com:8443", True),
        (["https://app.example.com"], "https://app.example.com.evil.net", False),
        (["https://app.example.com"], "https://evilapp.example.com", False),
        (["https://app.example.com"], "", False),
        (["https://*.example.com"], "https://a.example.com", True),
        (["https://*.example.com"], "https://a.b.example.com", True),
        (["https://*.example.com"], "https://A.Example.com", True),
        (["https://*.example.com"], "https://example.com", False),
        (["https://*.example.com"], "https://.example.com", False),
        (["https://*.example.com"], "https://evilexample.com", False),
        (["https://*.example.com"], "http://a.example.com", False),
        (["https://*.example.com"], "https://a.example.com:8443", False),
        (["https://*.example.com"], "https://a.example.com.evil.net", False),
        (["https://*.example.com"], "https://evil.net/.example.com", False),
        (["https://*.example.com"], "https://evil.net:1.example.com", False),
        (["https://*.example.com:8443"], "https://a.example.com:8443", True),
        (["*"], "https://anything.test", True),
        (["*"], "null", True),
        (["null"], "null", True),
        (["https://app.example.com"], "null", False),
        ([], "https://app.example.com", False),
        (["http://[::1]:8080"], "http://[::1]:8080", True),
    ],
)
def test_origin_allowed(origins: list[str], origin: str, allowed: bool) -> None:
    assert policy(origins).origin_allowed(origin) is allowed


def test_star_does_not_allow_null_with_credentials() -> None:
    assert not policy(["*"], credentials=True).origin_allowed("null")
    assert policy(["*", "null"], credentials=True).origin_allowed("null")


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path", "https://", "*.example.com",
                                 "https://a.*.example.com", "https://*example.com", "ftp//x", "https://a b"])
def test_bad_origin_in_config(bad: str) -> None:
    with pytest.raises(ValueError, match="an allowed origin must be"):
        policy([bad])


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_age must be 0 or more"):
        policy(max_age=-1)
    with pytest.raises(ValueError, match="must be tokens"):
        policy(headers=["X Bad"])
    with pytest.raises(ValueError, match="must be tokens"):
        policy(methods=["GE\nT"])


def test_preflight_echoes_the_origin() -> None:
    answer = policy().preflight("https://app.example.com", "PUT", "content-type, x-request-id")
    assert answer == [
        ("Access-Control-Allow-Origin", "https://app.example.com"),
        ("Access-Control-Allow-Methods", "GET, PUT, DELETE"),
        ("Access-Control-Allow-Headers", "Content-Type, X-Request-Id"),
        ("Access-Control-Max-Age", "600"),
        VARY_PREFLIGHT,
    ]


def test_preflight_with_credentials_and_no_max_age() -> None:
    answer = policy(credentials=True, max_age=0, headers=()).preflight("https://app.example.com", "DELETE", None)
    assert answer == [
        ("Access-Control-Allow-Origin", "https://app.example.com"),
        ("Access-Control-Allow-Methods", "GET, PUT, DELETE"),
        ("Access-Control-Allow-Credentials", "true"),
        VARY_PREFLIGHT,
    ]


def test_preflight_any_origin_without_credentials_is_star() -> None:
    answer = policy(["*"]).preflight("https://x.test", "GET", None)
    assert answer is not None
    assert ("Access-Control-Allow-Origin", "*") in answer
    assert all(name != "Vary" for name, _ in answer)


def test_preflight_any_origin_with_credentials_echoes() -> None:
    answer = policy(["*"], credentials=True).preflight("https://x.test", "GET", None)
    assert answer is not None
    assert ("Access-Control-Allow-Origin", "https://x.test") in answer
    assert VARY_PREFLIGHT in answer


def test_preflight_wildcard_methods_and_headers_echo_the_request() -> None:
    answer = policy(methods=["*"], headers=["*"], credentials=True).preflight(
        "https://app.example.com", "PATCH", "X-Custom,  Authorization ,"
    )
    assert answer is not None
    assert ("Access-Control-Allow-Methods", "PATCH") in answer
    assert ("Access-Control-Allow-Headers", "x-custom, authorization") in answer


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [
        ("https://evil.test", "PUT", None),  # origin
        ("https://app.example.com", "PATCH", None),  # method
        ("https://app.example.com", "put", "x-other"),  # one header
        ("https://app.example.com", "PUT", "content-type, x-other"),
        ("https://app.example.com", "PUT", "bad header"),
        ("https://app.example.com", "", None),
        ("https://app.example.com", "P UT", None),
    ],
)
def test_preflight_refused(origin: str, method: str, headers: str | None) -> None:
    assert policy().preflight(origin, method, headers) is None


def test_preflight_methods_and_headers_are_case_insensitive() -> None:
    answer = policy(methods=["put"]).preflight("https://app.example.com", "put", "X-REQUEST-ID")
    assert answer is not None
    assert ("Access-Control-Allow-Methods", "PUT") in answer


def test_safelisted_methods_need_no_listing() -> None:
    p = policy(methods=[], headers=["x-a"])
    answer = p.preflight("https://app.example.com", "POST", "x-a")
    assert answer is not None
    assert ("Access-Control-Allow-Methods", "POST") in answer
    assert p.preflight("https://app.example.com", "PUT", "x-a") is None


def test_preflight_with_empty_header_list() -> None:
    answer = policy(headers=["*"]).preflight("https://app.example.com", "GET", " , ")
    assert answer is not None
    assert all(name != "Access-Control-Allow-Headers" for name, _ in answer)


def test_actual_response_headers() -> None:
    p = policy(credentials=True, expose=["X-Request-Id", "ETag"])
    assert p.actual("https://app.example.com") == [
        ("Access-Control-Allow-Origin", "https://app.example.com"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Request-Id, ETag"),
        ("Vary", "Origin"),
    ]
    assert p.actual("https://evil.test") == []
    assert p.actual(None) == []


def test_actual_any_origin() -> None:
    assert policy(["*"]).actual("https://x.test") == [("Access-Control-Allow-Origin", "*")]
    assert policy(["*", "https://a.test"]).actual("https://x.test") == [
        ("Access-Control-Allow-Origin", "https://x.test"),
        ("Vary", "Origin"),
    ]


def test_answers_are_fresh_lists() -> None:
    p = policy(credentials=True)
    first = p.actual("https://app.example.com")
    first.append(("X", "y"))
    assert ("X", "y") not in p.actual("https://app.example.com")
    pre = p.preflight("https://app.example.com", "GET", None)
    assert pre is not None
    pre.clear()
    assert p.preflight("https://app.example.com", "GET", None)


@pytest.mark.parametrize(
    ("method", "origin", "acrm", "expected"),
    [
        ("OPTIONS", "https://a.test", "PUT", True),
        ("OPTIONS", None, "PUT", False),
        ("OPTIONS", "https://a.test", None, False),
        ("GET", "https://a.test", "PUT", False),
        ("options", "https://a.test", "PUT", False),  # methods are case-sensitive
    ],
)
def test_is_preflight(method: str, origin: str | None, acrm: str | None, expected: bool) -> None:
    assert CorsPolicy.is_preflight(method, origin, acrm) is expected
