"""Request heads as the client sent them: what Fulcrum handles is taken out, the rest is forwarded unparsed.

llhttp has checked every byte of a head before it gets here; ``scan_head`` only sorts its lines. A line whose
name Fulcrum does not handle stays in one block (``Exchange.raw``), forwarded as it came; the handled ones
(framing, hop-by-hop, forwarding headers, the request id, ...) fill the exchange's fields, and those Fulcrum
writes itself are cut out. ``Reject`` is how the client side's parser callbacks refuse a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from fulcrum.http.headers import HOP_BY_HOP, connection_tokens, valid_request_id

if TYPE_CHECKING:
    from fulcrum.proxy.exchange import Exchange


# Request headers handled by name; everything else is forwarded as it came. The first five are forwarded too
# (up to _WS_VERSION), the others are cut out of the head: Fulcrum writes its own or none.
_HOST: Final = 0
_EXPECT: Final = 1
_COOKIE: Final = 2
_WS_KEY: Final = 3
_WS_VERSION: Final = 4
_CL: Final = 5
_TE: Final = 6
_CONN: Final = 7
_XFF: Final = 8
_XFP: Final = 9
_XFH: Final = 10
_FWD: Final = 11
_RID: Final = 12
_UPGRADE: Final = 13
_DROP: Final = 14
_SPECIAL = {
    b"host": _HOST,
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONN,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH,
    b"forwarded": _FWD,
    b"x-request-id": _RID,
    b"expect": _EXPECT,
    b"cookie": _COOKIE,
    b"upgrade": _UPGRADE,
    b"sec-websocket-key": _WS_KEY,
    b"sec-websocket-version": _WS_VERSION,
}
for _name in HOP_BY_HOP:
    _SPECIAL.setdefault(_name, _DROP)
#: The same, also under the spellings clients send (``Host``, ``Content-Length``, ``X-Request-ID``): looked up
#: first as the line has it, so the usual spellings need no lower-casing.
_SPELLED = {**{n.title(): k for n, k in _SPECIAL.items()}, b"X-Request-ID": _RID, b"Sec-WebSocket-Key": _WS_KEY,
            b"Sec-WebSocket-Version": _WS_VERSION, b"TE": _DROP, **_SPECIAL}

#: For each first letter of a header name (``& 31``: either case), the lengths of the handled names with that first
#: letter: a line is looked at by name only when its byte at one of these lengths is the colon.
_NAME_LENGTHS: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted({len(name) for name in _SPECIAL if name[0] & 31 == letter})) for letter in range(32)
)


class Reject(Exception):
    """Raised inside parser callbacks: answer ``status`` and close (``extra``: header lines to add)."""

    def __init__(self, status: int, detail: str, extra: bytes = b"") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


def scan_head(ex: Exchange, head: bytes) -> None:
    """Take what Fulcrum handles from the header lines of ``head``; keep the rest as ``ex.raw``, unparsed.

    One pass: a line is forwarded as it came unless its name is one Fulcrum handles (framing,
    hop-by-hop, forwarding headers, the request id, ...), told apart by first letter and length before
    any slice is made. The lines Fulcrum sets itself are cut out; ``Exchange.header_lines`` builds the
    per-line form only for routes and middleware that read or change headers.
    """
    lines = head.split(b"\r\n")
    lines.pop()  # the head ends with a CRLF
    n = len(head)
    first = run = len(lines[0]) + 2  # past the request line
    if n - first > ex.snap.max_header_bytes:
        raise Reject(431, "request header block too large")
    pieces: list[bytes] | None = None
    lengths = _NAME_LENGTHS
    spelled = _SPELLED
    pos = 0
    for line in lines:
        size = len(line)
        at = pos
        pos += size + 2
        if not at or not size:
            continue  # the request line
        candidates = lengths[line[0] & 31]
        if not candidates:
            continue
        kind = -1
        start = 0
        for length in candidates:
            if size > length and line[length] == 58:  # the colon: the name may be one handled here
                name = line[:length]
                kind = spelled.get(name, -1)
                if kind < 0:
                    kind = spelled.get(name.lower(), -1)
                start = length + 1
                break
        if kind < 0:
            continue
        if start < size and line[start] == 32:
            start += 1
        value = line[start:]
        if value and (value[0] == 32 or value[0] == 9 or line[size - 1] == 32 or line[size - 1] == 9):
            value = value.strip()
        if kind <= _WS_VERSION:
            if kind == _HOST:
                ex.n_host += 1
                ex.host = value
            elif kind == _COOKIE:
                ex.cookie = value if ex.cookie is None else ex.cookie + b"; " + value
            elif kind == _EXPECT:
                ex.expect = value.lower() == b"100-continue"
            elif kind == _WS_KEY:
                ex.ws_key = value if ex.ws_key is None else b""  # two keys: no key is valid
            else:
                ex.ws_version = value
            continue
        if pieces is None:
            pieces = []
        if at > run:
            pieces.append(head[run:at])
        run = pos
        if kind == _CL:
            try:
                ex.cl = int(value)
            except ValueError:
                raise Reject(400, "malformed Content-Length") from None
        elif kind == _TE:
            ex.te = value if ex.te is None else ex.te + b", " + value
            ex.chunked_in = True
        elif kind == _CONN:
            tokens = connection_tokens(value)
            ex.conn_tokens = tokens if ex.conn_tokens is None else ex.conn_tokens | tokens
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
        elif kind == _UPGRADE:
            ex.upgrade = value if ex.upgrade is None else ex.upgrade + b", " + value
        # _DROP: hop-by-hop, not forwarded
    if pieces is None:
        ex.raw = head[first:] if first < n else b""
    else:
        if run < n:
            pieces.append(head[run:])
        ex.raw = b"".join(pieces)
