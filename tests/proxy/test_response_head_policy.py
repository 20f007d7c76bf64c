"""The raw response-head rewrite: hop-by-hop lines cut, framing read, status line as HTTP/1.1."""

from __future__ import annotations

from fulcrum.proxy.upstream import CHUNKED, LENGTH, UNTIL_CLOSE, response_head_policy


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
