"""Where a chunked body ends, for a reader that keeps the raw bytes of what follows it.

The client side forwards request heads from the bytes the client sent, so it must know where each
message starts in a read. llhttp parses and checks every byte, but tells no offsets: after a head or a
Content-Length body the offset follows from the lengths, after a chunked body it does not. ``ChunkedEnd``
walks the framing of a chunked body that llhttp has already accepted (sizes, extensions, the CRLF after
each chunk, trailer lines, the final blank line), across as many reads as the body takes, and says at
which offset of a read the message ended. It checks nothing llhttp has checked; it only counts.
"""

from __future__ import annotations

from typing import Final

# where the walk is inside the body
_SIZE: Final = 0  # the hex digits of a chunk-size line
_EXT: Final = 1  # the rest of a chunk-size line (extensions), up to its LF
_DATA: Final = 2  # chunk data, ``left`` bytes of it
_DATA_END: Final = 3  # the CRLF after chunk data, ``left`` bytes of it
_LINE_START: Final = 4  # the start of a trailer line, or the blank line that ends the message
_LINE: Final = 5  # inside a trailer line, up to its LF
_LAST_LF: Final = 6  # the LF of the final blank line

_CR: Final = 13
_LF: Final = 10


def _hex(c: int) -> int:
    """The value of one hex digit, -1 for any other byte."""
    if 48 <= c <= 57:
        return c - 48
    c |= 0x20
    if 97 <= c <= 102:
        return c - 87
    return -1


class ChunkedEnd:
    """The walk through one chunked body; ``feed`` it each read from where the body (or the read) starts."""

    __slots__ = ("left", "size", "state")

    def __init__(self) -> None:
        self.state = _SIZE
        self.size = 0
        self.left = 0

    def feed(self, data: bytes, pos: int) -> int:
        """Walk ``data`` from ``pos``; the offset just past the body's end, or -1 when it goes on in a later read."""
        n = len(data)
        state = self.state
        while pos < n:
            if state == _DATA:
                step = min(self.left, n - pos)
                pos += step
                self.left -= step
                if not self.left:
                    state = _DATA_END
                    self.left = 2
                continue
            if state == _DATA_END:
                step = min(self.left, n - pos)
                pos += step
                self.left -= step
                if not self.left:
                    state = _SIZE
                    self.size = 0
                continue
            c = data[pos]
            pos += 1
            if state == _SIZE:
                digit = _hex(c)
                if digit >= 0:
                    self.size = self.size * 16 + digit
                    continue
                state = _EXT
            if state == _EXT:
                if c == _LF:
                    if self.size:
                        state = _DATA
                        self.left = self.size
                    else:
                        state = _LINE_START
            elif state == _LINE_START:
                state = _LAST_LF if c == _CR else _LINE
            elif state == _LINE:
                if c == _LF:
                    state = _LINE_START
            elif state == _LAST_LF:
                self.state = _SIZE
                return pos
        self.state = state
        return -1
