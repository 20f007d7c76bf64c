"""The raw response-head rewrite: hop-by-hop lines cut, framing read, status line as HTTP/1.1."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fulcrum.proxy import rawhead
from fulcrum.proxy.upstream import CHUNKED, LENGTH, UNTIL_CLOSE
from fulcrum.proxy.upstream import response_head_policy as _policy


def response_head_policy(head: bytes) -> tuple[bytes, int, bool]:
    """The policy of a head as it comes (a blank line and a body after it): its offset past the blank line
    must be where the body begins."""
    raw = head + b"\r\n\r\nBODY"
    out, framing, close, after, length_at, length_end = _policy(raw, 0)
    assert raw[after:] == b"BODY"
    if framing == LENGTH:  # where the (last) Content-Length value is
        value = raw[length_at:length_end]
        assert value == value.strip() and raw[:length_at].lower().rstrip(b" \t").endswith(b"content-length:")
    else:
        assert (length_at, length_end) == (0, 0) or b"content-length" in head.lower()
    return out, framing, close


def test_plain_head_is_forwarded_unchanged() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5"
    assert response_head_policy(head) == (head, LENGTH, False)


def test_hop_by_hop_lines_are_cut_and_framing_read() -> None:
    head = (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n"
            b"Transfer-Encoding: chunked\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nTE: trailers")
    out, framing, close = response_head_policy(head)
    assert out == b"HTTP/1.1 200 OK\r\nX-A: 1"
    assert framing == CHUNKED
    assert not close


def test_connection_close_and_named_headers() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: close, X-Secret\r\nX-Kept: 2\r\ncontent-length: 0"
    out, framing, close = response_head_policy(head)
    assert out == b"HTTP/1.1 200 OK\r\nX-Kept: 2\r\ncontent-length: 0"
    assert framing == LENGTH
    assert close


def test_http10_status_line_becomes_11_and_no_length_means_until_close() -> None:
    out, framing, close = response_head_policy(b"HTTP/1.0 404 Not Found\r\nServer: old")
    assert out == b"HTTP/1.1 404 Not Found\r\nServer: old"
    assert framing == UNTIL_CLOSE
    assert not close


def test_header_names_that_only_start_like_hop_by_hop_are_kept() -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection-Id: 7\r\nTEx: 1\r\nUpgraded: no\r\nContent-Length: 1"
    assert response_head_policy(head)[0] == head


HOP = ("Connection", "Keep-Alive", "Transfer-Encoding", "Proxy-Connection", "TE", "Trailer", "Upgrade")
OTHER = ("Content-Length", "Content-Type", "X-A", "Server", "Connection-Id", "TEx", "Trailers", "Upgraded", "Date")


def _reference(head: bytes) -> tuple[bytes, int, bool]:
    """The same rules, written the slow and obvious way: one header line at a time."""
    status, *lines = head.split(b"\r\n")
    parsed = [(ln.split(b":", 1)[0].lower(), ln.split(b":", 1)[1].strip().lower(), ln) for ln in lines]
    named: set[bytes] = set()
    close = False
    for name, value, _ in parsed:
        if name == b"connection":
            tokens = {t.strip() for t in value.split(b",") if t.strip()}
            close = close or b"close" in tokens
            named |= tokens - {b"close", b"keep-alive"}
    hop = {n.lower().encode() for n in HOP}
    framing = CHUNKED if any(n == b"transfer-encoding" for n, _, _ in parsed) else (
        LENGTH if any(n == b"content-length" for n, _, _ in parsed) else UNTIL_CLOSE)
    kept = [ln for name, _, ln in parsed if name not in hop and name not in named]
    return b"\r\n".join([b"HTTP/1.1" + status[8:], *kept]), framing, close


@given(
    st.lists(
        st.tuples(
            st.sampled_from(HOP + OTHER).map(lambda n: n.upper() if len(n) % 2 else n.lower()),
            st.sampled_from(["keep-alive", "close", "x-a", "Close, X-A", "1", "chunked", " v "]),
        ),
        max_size=8,
    ),
    st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 404 Not Found"]),
)
def test_matches_a_line_by_line_reference(headers: list[tuple[str, str]], status: bytes) -> None:
    head = b"\r\n".join([status, *(f"{n}: {v}".encode() for n, v in headers)])
    assert response_head_policy(head) == _reference(head)


@given(
    st.binary(max_size=16),
    st.lists(st.tuples(st.sampled_from(HOP + OTHER), st.sampled_from(["close", "x-a", "1", "keep-alive"])), max_size=6),
    st.binary(max_size=32),
)
def test_a_head_after_earlier_bytes_and_before_a_body(
    before: bytes, headers: list[tuple[str, str]], body: bytes
) -> None:
    """A head that starts mid-buffer (after an earlier response's bytes) reads as the same head on its own,
    and nothing in the body after it counts."""
    head = b"\r\n".join([b"HTTP/1.1 200 OK", *(f"{n}: {v}".encode() for n, v in headers)])
    raw = before + head + b"\r\n\r\n" + body
    out, framing, close, after, _, _ = _policy(raw, len(before))
    assert (out, framing, close) == _reference(head)
    assert raw[after:] == body


def test_the_python_pass_agrees_on_response_heads() -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection:  close \r\nX: 1\r\nTE: a\r\nContent-Length: 0\r\n\r\n"
    found = rawhead._index_head_py(head, 0, rawhead.RESPONSE)
    assert found == rawhead.index_head(head, 0, rawhead.RESPONSE)
    assert found is not None and [head[found[i + 2] : found[i + 3]] for i in range(2, len(found), 5)] == [
        b"close", b"a", b"0"]
