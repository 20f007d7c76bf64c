"""Request heads as the client sent them: what Fulcrum handles is taken out, the rest is forwarded unparsed.

llhttp has checked every byte of a head before it gets here; ``scan_head`` only sorts its lines, which
``index_head`` (C, ``_headscan.c``; ``_index_head_py`` where that is not built) finds in one pass. A line whose
name Fulcrum does not handle stays in one block (``Exchange.raw``), forwarded as it came; the handled ones
(framing, hop-by-hop, forwarding headers, the request id, ...) fill the exchange's fields, and those Fulcrum
writes itself are cut out. ``Reject`` is how the client side's parser callbacks refuse a request.
"""

from __future__ import annotations

from collections.abc import Callable
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
_PROXY_CONN: Final = 15  # dropped too; llhttp reads it as Connection, so keep-alive is then the parser's answer
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
_SPECIAL[b"proxy-connection"] = _PROXY_CONN
for _name in HOP_BY_HOP:
    _SPECIAL.setdefault(_name, _DROP)
#: The tables of names ``index_head`` reports, by slot: request heads here, response heads in upstream.py.
REQUEST: Final = 0
RESPONSE: Final = 1
_TABLES: Final[list[dict[bytes, int]]] = [_SPECIAL, {}]
_GET: Final = b"GET"


class Reject(Exception):
    """Raised inside parser callbacks: answer ``status`` and close (``extra``: header lines to add)."""

    def __init__(self, status: int, detail: str, extra: bytes = b"") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


def _index_head_py(source: bytes, start: int, slot: int = REQUEST) -> tuple[int, ...] | None:
    """``_headscan.index_head`` in Python: where the builds have no C compiler, and to test the two agree.

    The head begins at ``start`` with its first line (request or status line). Returns the offset of its
    blank line, that of its first header line, and then five numbers for each line whose name is in the
    table of ``slot``: its kind, where the line begins, where its value begins and ends (without surrounding
    blanks), where the next line begins. None: no blank line ends a head there.
    """
    table = _TABLES[slot]
    end = source.find(b"\r\n\r\n", start)
    if end < 0:
        return None
    lines = source[start : end + 2].split(b"\r\n")
    first = pos = start + len(lines[0]) + 2
    found = [0, first]
    for i in range(1, len(lines) - 1):  # the last is empty: the head ends with a CRLF
        line = lines[i]
        at = pos
        pos += len(line) + 2
        colon = line.find(b":")
        if colon <= 0:
            continue
        kind = table.get(line[:colon].lower(), -1)
        if kind < 0:
            continue
        begin = at + colon + 1
        stop = pos - 2
        while begin < stop and source[begin] in (32, 9):
            begin += 1
        while stop > begin and source[stop - 1] in (32, 9):
            stop -= 1
        found += (kind, at, begin, stop, pos)
    found[0] = pos
    return tuple(found)


_Index = Callable[[bytes, int, int], "tuple[int, ...] | None"]
_Configure = Callable[[tuple[tuple[bytes, int], ...], int], None]


def _pick() -> tuple[_Index, _Configure | None]:
    try:
        from fulcrum.proxy._headscan import configure, index_head
    except ImportError:  # built without a C compiler (FULCRUM_PURE=1): the same in Python
        return _index_head_py, None
    return index_head, configure


_PICKED: Final = _pick()
#: ``_headscan.index_head`` where it is built, else ``_index_head_py``.
index_head: Final = _PICKED[0]
_configure: Final = _PICKED[1]


def configure_names(slot: int, names: dict[bytes, int]) -> None:
    """Which names (lower-case) ``index_head(..., slot)`` reports, with their kinds."""
    _TABLES[slot] = dict(names)
    if _configure is not None:
        _configure(tuple(names.items()), slot)


configure_names(REQUEST, _SPECIAL)


def scan_head(ex: Exchange, source: bytes, start: int) -> int:
    """Read the head that begins at ``start`` in ``source``; return the offset just past its blank line.

    llhttp has checked the head and said it is complete; ``index_head`` finds its end and the lines whose
    names Fulcrum handles (framing, hop-by-hop, forwarding headers, the request id, ...) in one pass over
    its bytes. Those fill the exchange's fields, and the ones Fulcrum sets itself are cut out; every other
    line is forwarded as it came, in ``ex.raw``. ``Exchange.header_lines`` builds the per-line form only
    for routes and middleware that read or change headers.

    The request line gives ``ex.method``, ``ex.version11`` and ``ex.keep_alive``; ``ex.method`` stays
    empty when they are the parser's to tell (an unusual request line, a Proxy-Connection header).
    """
    found = index_head(source, start, REQUEST)
    if found is None:
        raise Reject(400, "the request head could not be located")
    blank = found[0]
    first = found[1]
    if blank - first > ex.snap.max_header_bytes:
        raise Reject(431, "request header block too large")
    pieces: list[bytes] | None = None
    run = first
    ask_parser = False
    for j in range(2, len(found), 5):
        kind = found[j]
        value = source[found[j + 2] : found[j + 3]]
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
        at = found[j + 1]
        if at > run:
            pieces.append(source[run:at])
        run = found[j + 4]
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
        elif kind == _PROXY_CONN:
            ask_parser = True
        # _DROP: hop-by-hop, not forwarded
    if pieces is None:
        ex.raw = source[first:blank] if first < blank else b""
    else:
        if run < blank:
            pieces.append(source[run:blank])
        ex.raw = b"".join(pieces)
    if not ask_parser:
        request_line_fields(ex, source, start, first - 2)
    return blank + 2


def request_line_fields(ex: Exchange, source: bytes, start: int, end: int) -> None:
    """Method, version and keep-alive from a request line llhttp has checked (``METHOD SP target SP HTTP/d.d``),
    ``source[start:end]``.

    Leaves ``ex.method`` empty for the parser to answer when the line does not end as expected.
    """
    if (end - start < 14 or source[end - 8] != 72 or source[end - 4] != 47 or source[end - 2] != 46
            or source[end - 9] != 32):
        return  # not "... HTTP/d.d"
    major = source[end - 3]
    minor = source[end - 1]
    if major != 49:  # "1"
        version = source[end - 3 : end].decode("latin-1")
        raise Reject(505, f"HTTP version {version} is not supported")
    space = start
    while space < end and source[space] != 32:
        space += 1
    if space == start + 3 and source[start] == 71 and source[start + 1] == 69 and source[start + 2] == 84:
        ex.method = _GET
    else:
        ex.method = source[start:space]
    tokens = ex.conn_tokens
    if minor != 48:  # HTTP/1.1 (llhttp reads any minor above 0 as 1.1)
        ex.version11 = True
        ex.keep_alive = tokens is None or b"close" not in tokens
    else:
        ex.version11 = False
        ex.keep_alive = tokens is not None and b"keep-alive" in tokens
