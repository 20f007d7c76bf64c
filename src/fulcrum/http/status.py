"""Status lines and the short error responses Fulcrum writes itself, precomputed at import."""

from __future__ import annotations

from http import HTTPStatus

REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}

#: ``HTTP/1.1 <code> <reason>\r\n`` for every code 100-599 (empty reason when unregistered).
STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"")) for code in range(100, 600)
}

#: Statuses whose responses never carry a body (RFC 9110 6.4.1).
NO_BODY_STATUSES = frozenset((204, 304, *range(100, 200)))


def error_body(status: int, detail: str, request_id: bytes) -> bytes:
    """The plain-text body of an error Fulcrum makes: the status, the problem and the request id."""
    reason = REASONS.get(status, b"Error").decode("ascii")
    return f"{status} {reason}: {detail}\nrequest id: {request_id.decode('ascii', 'replace')}\n".encode()


def error_response(status: int, detail: str, request_id: bytes, *, close: bool, extra: bytes = b"") -> bytes:
    """A complete plain-text response naming the problem and the request id (``extra``: more header lines)."""
    body = error_body(status, detail, request_id)
    head = [
        STATUS_LINES[status],
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
    ]
    if request_id:
        head.append(b"X-Request-ID: " + request_id + b"\r\n")
    if close:
        head.append(b"Connection: close\r\n")
    if extra:
        head.append(extra)
    head.append(b"\r\n")
    return b"".join(head) + body
