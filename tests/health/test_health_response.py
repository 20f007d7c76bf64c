"""The health-check response parser, fed with byte strings only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulcrum.health.response import InvalidResponse, NoResponse, ResponseParser


def parse(data: bytes, *, eof: bool = True, head_request: bool = False, body_cap: int = 65536) -> ResponseParser:
    parser = ResponseParser(head_request=head_request, body_cap=body_cap)
    parser.feed(data)
    if eof:
        parser.feed_eof()
    return parser


def test_content_length_body() -> None:
    parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nokJUNK", eof=False)
    assert parser.done
    assert (parser.status, parser.body, parser.version) == (200, b"ok", b"1.1")
    assert parser.header(b"x-a") == b"b"
    assert parser.header(b"x-missing") is None


def test_chunked_body_with_extensions_and_trailers() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    parser = parse(raw, eof=False)
    assert parser.done
    assert parser.body == b"abcde"


def test_body_until_close() -> None:
    parser = parse(b"HTTP/1.0 200 OK\r\n\r\nall of it", eof=False)
    assert not parser.done
    parser.feed_eof()
    assert parser.done
    assert parser.body == b"all of it"


def test_unknown_transfer_coding_reads_until_close() -> None:
    parser = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 1\r\n\r\nxyz")
    assert parser.body == b"xyz"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    parser = parse(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status, eof=False)
    assert parser.done
    assert parser.body == b""


def test_head_response_has_no_body() -> None:
    parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", eof=False, head_request=True)
    assert parser.done
    assert parser.status == 200


def test_interim_responses_are_skipped() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n"
    )
    parser = parse(raw, eof=False)
    assert parser.done
    assert parser.status == 503
    assert parser.header(b"link") is None


def test_bare_lf_and_missing_reason_are_accepted() -> None:
    parser = parse(b"HTTP/1.1 200\nContent-Length: 1\n\nx", eof=False)
    assert (parser.status, parser.body) == (200, b"x")


def test_body_is_capped() -> None:
    parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", eof=False, body_cap=4)
    assert parser.done
    assert parser.body_truncated
    assert parser.body == b"0123"


def test_body_of_exactly_the_cap_is_not_truncated() -> None:
    parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n0123", eof=False, body_cap=4)
    assert parser.done
    assert not parser.body_truncated


def test_endless_body_stops_at_cap() -> None:
    parser = ResponseParser(body_cap=8)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(4):
        parser.feed(b"3\r\nabc\r\n")
    assert parser.done
    assert parser.body == b"abcabcab"


def test_garbage_is_rejected_before_a_line_ends() -> None:
    with pytest.raises(InvalidResponse):
        parse(b"SSH-2.0-OpenSSH", eof=False)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n",
    ],
)
def test_malformed_responses(raw: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse(raw, eof=False)


def test_repeated_equal_content_lengths_are_accepted() -> None:
    parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", eof=False)
    assert parser.body == b"x"


def test_close_mid_body_is_invalid() -> None:
    with pytest.raises(InvalidResponse, match="fixed"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")


def test_close_mid_head_is_invalid() -> None:
    with pytest.raises(InvalidResponse) as info:
        parse(b"HTTP/1.1 200 OK\r\nX-A")
    assert not isinstance(info.value, NoResponse)


def test_close_before_anything() -> None:
    with pytest.raises(NoResponse):
        parse(b"")


def test_head_too_large() -> None:
    parser = ResponseParser(head_cap=64)
    with pytest.raises(InvalidResponse, match="too"):
        parser.feed(b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 100 + b"\r\n")


def test_many_headers_exceed_the_head_cap() -> None:
    parser = ResponseParser(head_cap=64)
    with pytest.raises(InvalidResponse, match="too large"):
        parser.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20)


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;a\r\nllo\r\n0\r\n\r\n",
]


@given(st.sampled_from(RESPONSES), st.lists(st.integers(min_value=1, max_value=7), max_size=40))
def test_any_split_of_the_bytes_parses_the_same(raw: bytes, sizes: list[int]) -> None:
    parser = ResponseParser()
    pos = 0
    for size in sizes:
        parser.feed(raw[pos : pos + size])
        pos += size
    parser.feed(raw[pos:])
    assert parser.done
    assert (parser.status, parser.body) == (200, b"hello")
