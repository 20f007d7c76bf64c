"""One HTTP/2 stream, seen by its ``Exchange`` as the client connection it writes to.

An ``Exchange`` is written against ``ClientConnection``: it writes HTTP/1.1
response bytes, says when it is done, rejects, and blocks or unblocks
reading. ``H2Stream`` offers that surface for one stream and hands every call
to the HTTP/2 connection that owns the stream (``fulcrum.proxy.http2``),
which turns the bytes into frames and "reading" into flow-control credit.

It subclasses ``ClientConnection`` so that the compiled ``Exchange`` takes it
as its client unchanged, and is compiled with it (setup.py): an interpreted
class cannot inherit from a compiled one. It imports nothing of the h2
library, so the build type-checks it without that library installed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

from fulcrum.http.headers import valid_request_id
from fulcrum.proxy.downstream import BUSY, ClientConnection
from fulcrum.proxy.exchange import BODY, DONE

if TYPE_CHECKING:
    from fulcrum.proxy.context import ProxyContext
    from fulcrum.proxy.exchange import Exchange

#: ``request_fields`` found the request malformed (RFC 9113 8.1.1): the stream is reset, nothing goes upstream.
MALFORMED = -1

# Request headers handled by name, as in ClientConnection.on_header; everything else is forwarded as it came.
_CL, _XFF, _XFP, _XFH, _FWD, _RID, _EXPECT, _COOKIE, _HOST, _TE, _DROP, _BAD = range(12)
_SPECIAL = {
    b"content-length": _CL,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH,
    b"forwarded": _FWD,
    b"x-request-id": _RID,
    b"expect": _EXPECT,
    b"cookie": _COOKIE,
    b"host": _HOST,
    b"te": _TE,
    b"trailer": _DROP,
    # connection-specific: a request that carries one is malformed (RFC 9113 8.2.2)
    b"connection": _BAD,
    b"keep-alive": _BAD,
    b"proxy-connection": _BAD,
    b"transfer-encoding": _BAD,
    b"upgrade": _BAD,
}
# A field name is a lower-case token (8.2.1: upper case is malformed); a value has no NUL, CR or LF and no
# white space at either end.
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
CRLF = b"\r\n"


class StreamOwner(Protocol):
    """What a stream asks of its HTTP/2 connection."""

    def stream_write(self, stream: H2Stream, data: bytes) -> None: ...

    def stream_done(self, stream: H2Stream, ex: Exchange, keep_alive: bool) -> None: ...

    def stream_reject(self, stream: H2Stream, status: int, detail: str, ex: Exchange | None) -> None: ...

    def stream_unblocked(self, stream: H2Stream) -> None: ...


class H2Stream(ClientConnection):
    """The client side of one exchange on an HTTP/2 connection; ``read_block`` holds back flow-control credit."""

    __slots__ = ("owner", "stream_id")

    def __init__(
        self,
        owner: StreamOwner,
        ctx: ProxyContext,
        stream_id: int,
        client_ip: str,
        client_ip_b: bytes,
        trusted: bool,
        proto: bytes,
    ) -> None:
        # ClientConnection.__init__ is not called: a stream has no transport and no HTTP/1.1 parser of its own
        self.owner = owner
        self.stream_id = stream_id
        self.ctx = ctx
        self.transport = None
        self.client_ip = client_ip
        self.client_ip_b = client_ip_b
        self.trusted = trusted
        self.current = None
        self.building = None
        self.pending = None
        self.read_block = 0
        self.write_paused = False
        self.state = BUSY
        self.deadline = 0.0
        self.proto = proto  # what X-Forwarded-Proto and Forwarded say: the connection's (https over TLS)
        self.alpn = "h2"
        self.raw_left = 0
        self.upgrade_for = None
        self.upgrade_rest = b""

    def write(self, data: bytes) -> None:
        self.owner.stream_write(self, data)

    def writelines(self, data: tuple[bytes, ...] | list[bytes]) -> None:
        self.owner.stream_write(self, b"".join(data))

    def exchange_done(self, ex: Exchange, keep_alive: bool) -> None:
        self.owner.stream_done(self, ex, keep_alive)

    def reject(self, status: int, detail: str, ex: Exchange | None, extra: bytes = b"") -> None:
        self.owner.stream_reject(self, status, detail, ex)

    def block_read(self, reason: int) -> None:
        self.read_block |= reason

    def unblock_read(self, reason: int) -> None:
        if self.read_block & reason:
            self.read_block &= ~reason
            if not self.read_block:
                self.owner.stream_unblocked(self)

    def pause_reading_for_upstream(self) -> None:
        self.block_read(self.BLOCK_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self.unblock_read(self.BLOCK_UPSTREAM)

    def close(self) -> None:
        pass  # the connection is the owner's, not the stream's

    def abort(self) -> None:
        pass

    def on_timeout(self, now: float) -> None:
        pass  # the owner watches its streams' deadlines


def request_fields(
    ex: Exchange, headers: list[tuple[bytes, bytes]], end_stream: bool, body_len: int
) -> tuple[int, str]:
    """Fill ``ex`` from an HTTP/2 request's header list, under the policy and limits of HTTP/1.1 requests.

    ``body_len`` is the length of the whole body when its end is already known (-1 if not); a request with
    neither that nor content-length goes upstream chunked. Returns ``(0, "")``, ``(MALFORMED, why)`` for a
    stream to reset, or ``(status, detail)`` for a request answered with that error.
    """
    snap = ex.snap
    method: bytes | None = None
    scheme: bytes | None = None
    path: bytes | None = None
    authority: bytes | None = None
    regular = False
    lines = ex.headers
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return MALFORMED, "pseudo-header after a regular header"
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            elif name == b":authority" and authority is None:
                authority = value
            else:
                return MALFORMED, f"unexpected or repeated pseudo-header {name.decode('latin-1')}"
            continue
        regular = True
        if not name or _BAD_NAME.search(name) is not None:
            return MALFORMED, f"bad header name {name!r}"
        if _BAD_VALUE.search(value) is not None:
            return MALFORMED, f"bad value of header {name.decode('latin-1')}"
        kind = _SPECIAL.get(name)
        if kind is None:
            lines.append(name + b": " + value + CRLF)
        elif kind == _CL:
            if not value.isdigit() or (ex.cl >= 0 and int(value) != ex.cl):
                return MALFORMED, "bad content-length"
            ex.cl = int(value)
        elif kind == _XFF:
            ex.xff = value if ex.xff is None else ex.xff + b", " + value
        elif kind == _XFP:
            ex.xfp = value
        elif kind == _XFH:
            ex.xfh = value
        elif kind == _FWD:
            ex.fwd = value if ex.fwd is None else ex.fwd + b", " + value
        elif kind == _RID:
            if valid_request_id(value):
                ex.rid = value
        elif kind == _EXPECT:
            ex.expect = value.strip().lower() == b"100-continue"
            lines.append(name + b": " + value + CRLF)
        elif kind == _COOKIE:  # h2 joined the cookie crumbs into one field (8.2.3)
            ex.cookie = value if ex.cookie is None else ex.cookie + b"; " + value
            lines.append(name + b": " + value + CRLF)
        elif kind == _HOST:
            ex.n_host += 1
            ex.host = value
        elif kind == _TE:
            if value.lower() != b"trailers":
                return MALFORMED, "te other than trailers"
        elif kind == _BAD:
            return MALFORMED, f"connection-specific header {name.decode('latin-1')}"
        # _DROP: hop-by-hop, not forwarded
    if not ex.rid:  # from here on an error answer names the request
        ids = ex.client.ctx.ids
        ex.rid = ids.next()
        ex.rid_own = True
    if method is None or scheme is None or path is None:
        if method == b"CONNECT" and path is None and scheme is None:
            return 405, "CONNECT is not supported"
        return MALFORMED, "missing :method, :scheme or :path"
    ex.method = method
    ex.method_head = method == b"HEAD"
    ex.target = path
    if not path or (path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS")):
        return MALFORMED, "bad :path"
    if method == b"CONNECT":
        return 405, "CONNECT is not supported"
    if ex.n_host > 1:
        return 400, "more than one Host header"
    if authority is not None:
        if ex.host is not None and ex.host.lower() != authority.lower():
            return MALFORMED, "host differs from :authority"
        ex.host = authority
    if ex.host is None:
        return 400, "missing :authority"
    lines.append(b"Host: " + ex.host + CRLF)
    if len(path) > snap.max_request_line:
        return 414, "request line too long"
    if end_stream:
        if ex.cl > 0:
            return MALFORMED, "content-length without a body"
        ex.phase = DONE
        return 0, ""
    if ex.cl < 0:
        if body_len >= 0:
            ex.cl = body_len  # the whole body came with the head: sent with its length, not chunked
        else:
            ex.chunked_in = True
    limit = snap.max_body_bytes
    if limit and ex.cl > limit:
        return 413, f"request body larger than {limit} bytes"
    ex.phase = BODY
    return 0, ""
