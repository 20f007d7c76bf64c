"""Blocking raw-socket HTTP/1.1 helpers for tests that send malformed or exact bytes.

Every call has a deadline, so a silent peer fails a test instead of hanging it. ``read_response`` consumes exactly
one response from a socket (it peeks before it reads), so several calls on one connection read pipelined responses
one by one, and plain ``sock.recv`` calls can be mixed in between.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Protocol

DEFAULT_TIMEOUT = 5.0
MAX_HEAD = 1024 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")


class BadResponse(ValueError):
    """The bytes are not a valid HTTP/1.x response."""


class IncompleteResponse(ConnectionError):
    """The peer closed the connection before the response was complete; ``partial`` holds what came."""

    def __init__(self, message: str, partial: bytes) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True)
class RawResponse:
    """One response as received: the parsed parts and the exact bytes (``raw``)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes  # decoded from chunked framing if it was chunked
    raw: bytes
    version: str = "HTTP/1.1"
    trailers: list[tuple[str, str]] | None = None  # None unless the body was chunked

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive name), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


def open_conn(port: int, timeout: float = DEFAULT_TIMEOUT, host: str = "127.0.0.1") -> socket.socket:
    """A connected TCP socket with a timeout on every operation (use it as a context manager)."""
    return socket.create_connection((host, port), timeout=timeout)


def send_raw(port: int, data: bytes, timeout: float = DEFAULT_TIMEOUT, host: str = "127.0.0.1") -> bytes:
    """Send ``data``, then read until the peer closes (or resets) or ``timeout`` passes; return all that came.

    The peer may close before everything was sent (a server rejecting a request early): that is not an error, what
    it answered is still returned.
    """
    deadline = time.monotonic() + timeout
    out = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # closed or reset while sending: still read what it said
            sock.sendall(data)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            out += chunk
    return bytes(out)


def read_response(sock: socket.socket, method: str = "GET", timeout: float | None = None) -> RawResponse:
    """Read exactly one response from ``sock`` and return it.

    The body is framed as a client would: none for HEAD (``method``), 1xx, 204 and 304; else chunked,
    Content-Length, or until the peer closes. A 1xx is returned on its own; call again for the final response.
    ``timeout`` bounds the whole read (default: the socket's timeout, or 5 s if it has none); raises TimeoutError,
    IncompleteResponse on an early close, BadResponse on invalid bytes.
    """
    if timeout is None:
        timeout = sock.gettimeout() or DEFAULT_TIMEOUT
    saved = sock.gettimeout()
    try:
        return _read_one(_SocketSource(sock, time.monotonic() + timeout), method)
    finally:
        sock.settimeout(saved)


def parse_responses(data: bytes, methods: list[str] | None = None) -> list[RawResponse]:
    """Split bytes that hold whole responses (e.g. what ``send_raw`` returned) into responses.

    ``methods`` gives the request method of each response in order (default GET); a body with no framing runs to
    the end of the data.
    """
    src = _BytesSource(data)
    out: list[RawResponse] = []
    while src.pos < len(data):
        method = methods[len(out)] if methods and len(out) < len(methods) else "GET"
        out.append(_read_one(src, method))
    return out


class _Source(Protocol):
    def read_until(self, delim: bytes, limit: int) -> bytes: ...
    def read_exact(self, n: int) -> bytes: ...
    def read_to_eof(self) -> bytes: ...


class _SocketSource:
    """Reads from a socket without ever taking bytes past what is asked for."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def _recv(self, n: int, flags: int = 0) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out reading a response")
        self.sock.settimeout(left)
        return self.sock.recv(n, flags)

    def read_until(self, delim: bytes, limit: int) -> bytes:
        got = bytearray()
        while True:
            peeked = self._recv(65536, socket.MSG_PEEK)
            if not peeked:
                raise IncompleteResponse("connection closed before the end of a line or head", bytes(got))
            start = max(0, len(got) - len(delim) + 1)
            idx = (got + peeked).find(delim, start)
            if idx >= 0:
                got += self.read_exact(idx + len(delim) - len(got))
                return bytes(got)
            # None of the peeked bytes ends the head: take them all, so the next peek waits for new data.
            got += self.read_exact(len(peeked))
            if len(got) > limit:
                raise BadResponse(f"no {delim!r} within {limit} bytes")

    def read_exact(self, n: int) -> bytes:
        got = bytearray()
        while len(got) < n:
            chunk = self._recv(min(n - len(got), 1024 * 1024))
            if not chunk:
                raise IncompleteResponse(f"connection closed after {len(got)} of {n} bytes", bytes(got))
            got += chunk
        return bytes(got)

    def read_to_eof(self) -> bytes:
        got = bytearray()
        while chunk := self._recv(1024 * 1024):
            got += chunk
        return bytes(got)


class _BytesSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read_until(self, delim: bytes, limit: int) -> bytes:
        idx = self.data.find(delim, self.pos)
        if idx < 0:
            raise IncompleteResponse("data ends before the end of a line or head", self.data[self.pos :])
        return self.read_exact(idx + len(delim) - self.pos)

    def read_exact(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise IncompleteResponse(f"data ends before {n} more bytes", self.data[self.pos :])
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def read_to_eof(self) -> bytes:
        return self.read_exact(len(self.data) - self.pos)


def _parse_fields(lines: list[bytes]) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise BadResponse(f"obsolete line folding: {line!r}")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadResponse(f"malformed header line {line!r}")
        fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return fields


def _read_one(src: _Source, method: str) -> RawResponse:
    head = src.read_until(b"\r\n\r\n", MAX_HEAD)
    status_line, *lines = head[:-4].split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise BadResponse(f"malformed status line {status_line!r}")
    status = int(parts[1])
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    headers = _parse_fields(lines)
    raw = bytearray(head)
    trailers: list[tuple[str, str]] | None = None

    def values(name: str) -> list[str]:
        return [v for k, v in headers if k.lower() == name]

    if method.upper() == "HEAD" or status < 200 or status in (204, 304):
        body = b""
    elif te := values("transfer-encoding"):
        if te[-1].split(",")[-1].strip().lower() != "chunked":
            body = src.read_to_eof()
            raw += body
        else:
            body, trailers = _read_chunked(src, raw)
    elif cl := values("content-length"):
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise BadResponse(f"bad Content-Length {cl!r}")
        body = src.read_exact(int(cl[0]))
        raw += body
    else:
        body = src.read_to_eof()
        raw += body
    version = parts[0].decode("latin-1")
    return RawResponse(status, reason, headers, body, bytes(raw), version, trailers)


def _read_chunked(src: _Source, raw: bytearray) -> tuple[bytes, list[tuple[str, str]]]:
    body = bytearray()
    while True:
        line = src.read_until(b"\r\n", 4096)
        raw += line
        size_field = line[:-2].split(b";", 1)[0].strip(b" \t")
        if not size_field or not set(size_field) <= _HEX:
            raise BadResponse(f"bad chunk size line {line!r}")
        size = int(size_field, 16)
        if size == 0:
            break
        data = src.read_exact(size + 2)
        raw += data
        if data[-2:] != b"\r\n":
            raise BadResponse("chunk data not followed by CRLF")
        body += data[:-2]
    trailer_lines: list[bytes] = []
    while (line := src.read_until(b"\r\n", MAX_HEAD)) != b"\r\n":
        raw += line
        trailer_lines.append(line[:-2])
    raw += b"\r\n"
    return bytes(body), _parse_fields(trailer_lines)
