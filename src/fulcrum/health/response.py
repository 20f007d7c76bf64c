"""An incremental parser for the one HTTP/1.1 response a health check reads.

It knows nothing of sockets: feed it bytes as they arrive and tell it when
the peer closed. The rules it enforces (RFC 9112):

- A response is a status line ``HTTP/1.x SP 3DIGIT [SP reason]``, header
  lines ``name: value`` and an empty line. Lines end in CRLF; a bare LF is
  accepted, a bare CR, a NUL, an obs-fold or a space before the colon is not.
- Interim 1xx responses (other than 101) are skipped; the final response
  after them is the one that counts.
- Body framing, in order: none for a HEAD request and for 1xx/204/304;
  chunked when it is the last transfer coding; any other Transfer-Encoding
  means "until close"; else Content-Length (all values equal, digits only);
  else until close.
- The head is limited (``head_cap``); the body is read only up to
  ``body_cap`` bytes, after which parsing stops with ``body_truncated`` set.
- Anything else, or a close before the framing says the body is complete,
  raises :class:`InvalidResponse`.
"""

from __future__ import annotations

import re
from enum import Enum, auto

#: Statuses whose responses carry no body (RFC 9110 6.4.1).
_NO_BODY = frozenset((204, 304, *range(100, 200)))
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?")
_MAX_LINE = 8192
_PREFIX = b"HTTP/1."


class InvalidResponse(ValueError):
    """The bytes are not a well-formed HTTP/1.x response."""


class NoResponse(InvalidResponse):
    """The peer closed the connection before sending a single byte."""


class _Stage(Enum):
    HEAD = auto()
    FIXED = auto()
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_END = auto()
    TRAILERS = auto()
    UNTIL_CLOSE = auto()
    DONE = auto()


class ResponseParser:
    """Parses one response; ``done`` turns true when the status, headers and (capped) body are in."""

    def __init__(self, *, head_request: bool = False, head_cap: int = 16384, body_cap: int = 65536) -> None:
        self.head_request = head_request
        self.head_cap = head_cap
        self.body_cap = body_cap
        self.status = 0
        self.version = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_truncated = False
        self._body = bytearray()
        self._buf = bytearray()
        self._head_bytes = 0
        self._remaining = 0  # bytes left in a Content-Length body or the current chunk
        self._stage = _Stage.HEAD

    @property
    def done(self) -> bool:
        return self._stage is _Stage.DONE

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def feed(self, data: bytes) -> None:
        """Consume bytes from the connection; raises InvalidResponse on a malformed response."""
        if self._stage is _Stage.DONE or not data:
            return
        self._buf += data
        while self._step():
            pass

    def feed_eof(self) -> None:
        """The peer closed; raises InvalidResponse unless the response is complete."""
        if self._stage is _Stage.DONE:
            return
        if self._stage is _Stage.UNTIL_CLOSE:
            self._stage = _Stage.DONE
            return
        if self._stage is _Stage.HEAD and not self.status and not self._buf and not self._head_bytes:
            raise NoResponse("connection closed before any response")
        raise InvalidResponse(f"connection closed in {self._stage.name.lower()}")

    # One step consumes what it can from the buffer; False means it needs more bytes.
    def _step(self) -> bool:
        stage = self._stage
        if stage is _Stage.DONE:
            return False
        if stage is _Stage.HEAD:
            return self._head_line()
        if stage is _Stage.FIXED or stage is _Stage.CHUNK_DATA:
            return self._fixed_data()
        if stage is _Stage.UNTIL_CLOSE:
            self._take_body(self._buf)
            self._buf.clear()
            return False
        if stage is _Stage.CHUNK_SIZE:
            return self._chunk_size()
        if stage is _Stage.CHUNK_END:
            return self._chunk_end()
        return self._trailer_line()

    def _line(self, cap: int) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > cap:
                raise InvalidResponse("line too long")
            return None
        if end > cap:
            raise InvalidResponse("line too long")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if b"\r" in line or b"\x00" in line:
            raise InvalidResponse("bare CR or NUL in line")
        return line

    def _head_line(self) -> bool:
        if not self.status and not _PREFIX.startswith(bytes(self._buf[: len(_PREFIX)])):
            raise InvalidResponse("not an HTTP/1.x response")
        line = self._line(min(_MAX_LINE, self.head_cap))
        if line is None:
            if self._head_bytes + len(self._buf) > self.head_cap:
                raise InvalidResponse("response head too large")
            return False
        self._head_bytes += len(line) + 2
        if self._head_bytes > self.head_cap:
            raise InvalidResponse("response head too large")
        if not self.status:
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                raise InvalidResponse("bad status line")
            self.version = b"1." + match.group(1)
            self.status = int(match.group(2))
            if self.status < 100:
                raise InvalidResponse("bad status code")
            return True
        if line:
            self._header(line)
            return True
        self._end_of_head()
        return True

    def _header(self, line: bytes) -> None:
        if line[:1] in (b" ", b"\t"):
            raise InvalidResponse("obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise InvalidResponse("bad header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise InvalidResponse("bad header value")
        self.headers.append((name.lower(), value))

    def _end_of_head(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:
            # Interim response: the final one follows.
            self.status = 0
            self.headers.clear()
            return
        if self.head_request or self.status in _NO_BODY:
            self._stage = _Stage.DONE
            return
        codings = [
            c.strip().lower() for key, v in self.headers if key == b"transfer-encoding" for c in v.split(b",")
        ]
        if codings:
            self._stage = _Stage.CHUNK_SIZE if codings[-1] == b"chunked" else _Stage.UNTIL_CLOSE
            return
        lengths = {
            v.strip() for key, value in self.headers if key == b"content-length" for v in value.split(b",")
        }
        if not lengths:
            self._stage = _Stage.UNTIL_CLOSE
            return
        if len(lengths) != 1:
            raise InvalidResponse("conflicting Content-Length")
        (length,) = lengths
        if not length.isdigit() or len(length) > 18:
            raise InvalidResponse("bad Content-Length")
        self._remaining = int(length)
        self._stage = _Stage.FIXED if self._remaining else _Stage.DONE

    def _fixed_data(self) -> bool:
        if not self._buf:
            return False
        take = min(self._remaining, len(self._buf))
        self._take_body(self._buf[:take])
        del self._buf[:take]
        self._remaining -= take
        if self._stage is _Stage.DONE:
            return False
        if self._remaining == 0:
            self._stage = _Stage.DONE if self._stage is _Stage.FIXED else _Stage.CHUNK_END
        return True

    def _chunk_size(self) -> bool:
        line = self._line(_MAX_LINE)
        if line is None:
            return False
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise InvalidResponse("bad chunk size")
        self._remaining = int(match.group(1), 16)
        self._stage = _Stage.CHUNK_DATA if self._remaining else _Stage.TRAILERS
        return True

    def _chunk_end(self) -> bool:
        line = self._line(_MAX_LINE)
        if line is None:
            return False
        if line:
            raise InvalidResponse("chunk data longer than its size")
        self._stage = _Stage.CHUNK_SIZE
        return True

    def _trailer_line(self) -> bool:
        line = self._line(_MAX_LINE)
        if line is None:
            return False
        if line:
            self._head_bytes += len(line) + 2
            if self._head_bytes > self.head_cap:
                raise InvalidResponse("trailers too large")
            return True
        self._stage = _Stage.DONE
        return True

    def _take_body(self, data: bytes | bytearray) -> None:
        room = self.body_cap - len(self._body)
        if len(data) > room:
            # Enough for a health check: stop rather than read an unbounded body.
            self._body += data[:room]
            self.body_truncated = True
            self._stage = _Stage.DONE
        else:
            self._body += data
