"""Durations, sizes, status ranges and listen addresses as written in config files."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulcrum.config import (
    ConfigError,
    StatusRanges,
    format_duration,
    format_size,
    parse_config,
    parse_duration,
    parse_size,
)
from fulcrum.config.units import parse_rate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("1m30s", 90.0),
        ("2S", 2.0),
        (" 10 s ", 10.0),
        ("1d", 86400.0),
        ("3", 3.0),
        ("0.25", 0.25),
        ("0s", 0.0),
        (2, 2.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["fast", "", "s", "2x", "-1s", "1s2", "ms", -3, float("inf"), float("nan"), True])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="must be a duration like 2s or 500ms, got"):
        parse_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(2.0, "2s"), (0.5, "500ms"), (90.0, "1m30s"), (3600.0, "1h"), (0.00025, "250us"), (1.5, "1.5s"), (0.0, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**7))
def test_format_duration_round_trips_whole_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16k", 16 * 1024),
        ("16K", 16 * 1024),
        ("16kb", 16 * 1024),
        ("16KiB", 16 * 1024),
        ("100m", 100 * 1024**2),
        ("1g", 1024**3),
        ("1G", 1024**3),
        ("512b", 512),
        ("512", 512),
        ("1.5k", 1536),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["big", "", "k", "16x", "-1k", "1kk", -1, True, 1.5])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="must be a size like 16k or 1m, got"):
        parse_size(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**40))
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_status_ranges() -> None:
    single = StatusRanges.parse("200")
    assert single.matches(200)
    assert not single.matches(201)
    span = StatusRanges.parse("200-399")
    assert span.matches(200) and span.matches(302) and span.matches(399)
    assert not span.matches(199) and not span.matches(400)
    mixed = StatusRanges.parse("200, 204,300-399")
    assert [c for c in (200, 201, 204, 299, 300, 399, 400) if mixed.matches(c)] == [200, 204, 300, 399]
    assert mixed.text == "200, 204,300-399"
    assert str(mixed) == "200, 204,300-399"
    assert StatusRanges.parse(204).matches(204)
    classes = StatusRanges.parse("2xx")
    assert classes.matches(250) and not classes.matches(300)


@pytest.mark.parametrize("bad", ["abc", "", "200-", "99", "600", "399-200", "200,,204", "2000", True])
def test_status_ranges_reject(bad: object) -> None:
    with pytest.raises(ValueError, match="must be status codes like"):
        StatusRanges.parse(bad)  # type: ignore[arg-type]


def _listen(value: object) -> list[tuple[str, int]]:
    config = parse_config({"listen": value, "upstreams": {"app": {"servers": ["http://127.0.0.1:5001"]}}}, env={})
    return [(item.host, item.port) for item in config.listen]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":8080", [("0.0.0.0", 8080)]),
        ("127.0.0.1:9000", [("127.0.0.1", 9000)]),
        ("localhost:80", [("localhost", 80)]),
        ("[::1]:8080", [("::1", 8080)]),
        ("[::]:0", [("::", 0)]),
        ("8080", [("0.0.0.0", 8080)]),
        (8080, [("0.0.0.0", 8080)]),
        ("*:81", [("0.0.0.0", 81)]),
        ({"host": "127.0.0.1", "port": 82}, [("127.0.0.1", 82)]),
        ([":8080", "127.0.0.1:8081"], [("0.0.0.0", 8080), ("127.0.0.1", 8081)]),
        (["127.0.0.1:0", "127.0.0.1:0"], [("127.0.0.1", 0), ("127.0.0.1", 0)]),
    ],
)
def test_listen_forms(value: object, expected: list[tuple[str, int]]) -> None:
    assert _listen(value) == expected


def test_listen_str_puts_brackets_on_ipv6() -> None:
    config = parse_config({"listen": ["[::1]:8080", ":81"], "upstreams": {"a": {"servers": ["http://h"]}}}, env={})
    assert [str(item) for item in config.listen] == ["[::1]:8080", "0.0.0.0:81"]


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        ("nope", "listen[0]", "the port is missing"),
        (":http", "listen[0]", "must be host:port, :port or [ipv6]:port, got ':http'"),
        ("::1:8080", "listen[0]", "IPv6 addresses need brackets"),
        ("[::1]8080", "listen[0]", "must be host:port"),
        (":70000", "listen[0].port", "must be between 0 and 65535, got 70000"),
        ("bad host!:80", "listen[0].host", "must be an IP address or a host name"),
        ([":80", ":80"], "listen[1]", "0.0.0.0:80 is already listed at listen[0]"),
        ([], "listen", "list at least one address"),
        (True, "listen", "must be a list"),
    ],
)
def test_listen_errors(value: object, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _listen(value)
    [issue] = caught.value.errors
    assert issue.path == path
    assert reason in issue.message


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("100/s", 100.0),
        ("10/m", 10 / 60),
        ("10/min", 10 / 60),
        ("600/h", 600 / 3600),
        ("5/hour", 5 / 3600),
        ("2/second", 2.0),
        ("1.5/s", 1.5),
        ("86400/day", 1.0),
        (" 10 / MIN ", 10 / 60),
        (".5/s", 0.5),
    ],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    "bad",
    ["ten/s", "100", "0/s", "0.0/m", "-1/s", "5/fortnight", "/s", "10/", "10//s", "", "1e3/s", 10, 1.5, None, True],
)
def test_parse_rate_rejects(bad: object) -> None:
    problem = r"must be a rate like 100/s, 10/min or 600/h \(more than zero\), got"
    with pytest.raises(ValueError, match=problem) as caught:
        parse_rate(bad)
    assert repr(bad) in str(caught.value)


def test_parse_rate_rejects_overflow() -> None:
    with pytest.raises(ValueError, match="must be a rate like"):
        parse_rate("9" * 400 + "/s")
