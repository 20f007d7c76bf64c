"""Response compression: which coding a client accepts (RFC 9110 12.5.3), which types to compress,
and streaming encoders for gzip, brotli and zstd.

gzip (stdlib zlib) is always there; br and zstd are offered only when the
``brotli`` and ``zstandard`` packages import. Levels are cheap by default,
and windows are kept small (512 KiB for br and zstd), because a proxy
compresses on the fly, for many responses at once.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Protocol

try:
    import brotli  # type: ignore[import-untyped, import-not-found, unused-ignore]

    HAVE_BROTLI = True
except ImportError:  # optional
    HAVE_BROTLI = False
try:
    import zstandard  # type: ignore[import-untyped, import-not-found, unused-ignore]

    HAVE_ZSTD = True
except ImportError:  # optional
    HAVE_ZSTD = False

DEFAULT_TYPES: tuple[str, ...] = (
    "text/html", "text/css", "text/plain", "text/xml", "text/javascript",
    "application/javascript", "application/json", "application/xml", "application/xhtml+xml",
    "application/rss+xml", "application/atom+xml", "application/ld+json", "application/manifest+json",
    "application/wasm", "image/svg+xml",
)  # fmt: skip
"""Media types compressed unless configured otherwise. Not text/event-stream: compressing a stream of
events holds them back until a flush, which the application may not expect."""

DEFAULT_LEVELS = {"gzip": 5, "br": 4, "zstd": 3}
_LEVEL_RANGES = {"gzip": (1, 9), "br": (0, 11), "zstd": (1, 19)}  # zstd above 19 needs windows browsers refuse
_WINDOW_LOG = 19
_QVALUE = re.compile(r"q=(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)", re.IGNORECASE)
_ALIASES = {"x-gzip": "gzip"}


def available_encodings() -> tuple[str, ...]:
    """The codings this process can produce, in the server's order of preference."""
    return (*(("br",) if HAVE_BROTLI else ()), *(("zstd",) if HAVE_ZSTD else ()), "gzip")


def _weights(accept_encoding: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params:
            param = param.strip()
            if param[:2].lower() == "q=":
                match = _QVALUE.fullmatch(param)
                if match is None:
                    break
                q = float(match.group(1))
        else:
            coding = _ALIASES.get(coding, coding)
            weights[coding] = max(q, weights.get(coding, 0.0))
    return weights


def negotiate(accept_encoding: str | None, offered: Sequence[str]) -> str | None:
    """The coding of ``offered`` to answer with, or None for identity.

    Among the offered codings the client accepts with the highest q-value,
    the first in ``offered`` order wins; ``*`` stands for any coding not
    named, ``q=0`` refuses one, ``x-gzip`` is gzip. Items with a malformed
    q-value are ignored. No header at all means no compression: the client
    said nothing of what it can decode.
    """
    if not accept_encoding:
        return None
    weights = _weights(accept_encoding)
    star = weights.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in offered:
        q = weights.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    return best


def compressible(content_type: str | None, types: Sequence[str]) -> bool:
    """Whether a response of ``content_type`` should be compressed: its media type (parameters left out,
    any case) is in ``types``, whose entries may be ``type/*`` or ``*/*``."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    for entry in types:
        entry = entry.lower()
        if entry == media or entry == "*/*" or (entry.endswith("/*") and media.startswith(entry[:-1])):
            return True
    return False


class Encoder(Protocol):
    """A streaming compressor for one response body."""

    def compress(self, data: bytes) -> bytes:
        """Compress ``data``; returns what is ready, possibly nothing."""
        ...

    def flush(self) -> bytes:
        """Everything buffered so far, decodable by the client, with the stream kept open."""
        ...

    def finish(self) -> bytes:
        """The rest of the stream and its end; the encoder cannot be used after."""
        ...


class _Gzip:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip header and trailer

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = brotli.Compressor(quality=level, lgwin=_WINDOW_LOG)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._c.process(data))

    def flush(self) -> bytes:
        return bytes(self._c.flush())

    def finish(self) -> bytes:
        return bytes(self._c.finish())


class _Zstd:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(level, window_log=_WINDOW_LOG)
        self._c = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._c.compress(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def finish(self) -> bytes:
        out: bytes = self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        return out


def new_encoder(coding: str, level: int | None = None) -> Encoder:
    """A fresh encoder for ``coding`` (one of ``available_encodings()``) at ``level`` or the default:
    gzip 5 (of 1-9), br 4 (0-11), zstd 3 (1-19)."""
    if coding not in available_encodings():
        raise ValueError(f"the coding must be one of {', '.join(available_encodings())}, got {coding!r}")
    low, high = _LEVEL_RANGES[coding]
    chosen = DEFAULT_LEVELS[coding] if level is None else level
    if not low <= chosen <= high:
        raise ValueError(f"the {coding} level must be from {low} to {high}, got {level!r}")
    if coding == "gzip":
        return _Gzip(chosen)
    if coding == "br":
        return _Brotli(chosen)
    return _Zstd(chosen)
