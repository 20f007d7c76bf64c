"""Accept-Encoding negotiation, compressible types and the streaming encoders."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.middleware.policy.compress import (
    DEFAULT_TYPES,
    available_encodings,
    compressible,
    negotiate,
    new_encoder,
)

ALL = ("br", "zstd", "gzip")


def test_available_encodings_with_everything_installed() -> None:
    assert available_encodings() == ALL


@pytest.mark.parametrize(
    ("blocked", "expected"),
    [(["brotli"], ("zstd", "gzip")), (["zstandard"], ("br", "gzip")), (["brotli", "zstandard"], ("gzip",))],
)
def test_brotli_and_zstandard_are_optional(blocked: list[str], expected: tuple[str, ...]) -> None:
    script = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from fulcrum.middleware.policy import compress\n"
        "e = compress.new_encoder('gzip')\n"
        "print(compress.available_encodings())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == repr(expected)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip, br", "br"),  # equal q: the server's order
        ("gzip, deflate, br, zstd", "br"),
        ("gzip;q=1.0, br;q=0.8", "gzip"),
        ("br;q=0.5, zstd;q=0.9, gzip;q=0.9", "zstd"),
        ("identity", None),
        ("deflate", None),
        ("*", "br"),
        ("*;q=0", None),
        ("br;q=0, *", "zstd"),
        ("br;q=0, zstd;q=0, *;q=0.1", "gzip"),
        ("gzip;q=0", None),
        ("gzip;q=0.000", None),
        ("gzip;q=0.001", "gzip"),
        ("gzip ; Q=0.5 , br ; q=0.4", "gzip"),
        ("gzip;q=2, br;q=0.1", "br"),  # a malformed q-value drops its item
        ("gzip;q=0.1234, br;q=0.1", "br"),
        ("gzip;q=, br;q=0.1", "br"),
        ("gzip;level=9", "gzip"),
        (",,, gzip ,", "gzip"),
        ("x-gzip;q=0.2, gzip;q=0.7, br;q=0.5", "gzip"),
    ],
)
def test_negotiate(header: str | None, expected: str | None) -> None:
    assert negotiate(header, ALL) == expected


def test_negotiate_respects_what_is_offered() -> None:
    assert negotiate("br, gzip", ("gzip",)) == "gzip"
    assert negotiate("br", ("gzip",)) is None
    assert negotiate("br, gzip", ()) is None
    assert negotiate("*", ("gzip", "br")) == "gzip"


codings = st.sampled_from(["br", "zstd", "gzip", "x-gzip", "deflate", "identity", "*", "compress"])
qvalues = st.one_of(st.none(), st.sampled_from(["0", "0.5", "1", "0.001", "1.000", "0.9"]))


@given(st.lists(st.tuples(codings, qvalues), max_size=6), st.permutations(list(ALL)))
def test_negotiate_picks_an_acceptable_coding_of_highest_weight(
    items: list[tuple[str, str | None]], offered: list[str]
) -> None:
    header = ", ".join(c if q is None else f"{c};q={q}" for c, q in items)
    weights: dict[str, float] = {}
    for c, q in items:
        c = "gzip" if c == "x-gzip" else c
        weights[c] = max(weights.get(c, 0.0), 1.0 if q is None else float(q))
    acceptable = {c: weights.get(c, weights.get("*", 0.0)) for c in offered}
    chosen = negotiate(header, offered)
    if all(q == 0 for q in acceptable.values()):
        assert chosen is None
    else:
        assert chosen is not None
        top = max(acceptable.values())
        assert acceptable[chosen] == top
        assert chosen == next(c for c in offered if acceptable[c] == top)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/html", True),
        ("text/html; charset=utf-8", True),
        ("Application/JSON;charset=UTF-8", True),
        (" image/svg+xml ", True),
        ("application/wasm", True),
        ("image/png", False),
        ("text/event-stream", False),
        ("application/octet-stream", False),
        ("", False),
        (None, False),
        ("text", False),
    ],
)
def test_compressible_default_types(content_type: str | None, expected: bool) -> None:
    assert compressible(content_type, DEFAULT_TYPES) is expected


def test_compressible_wildcards() -> None:
    assert compressible("text/anything", ["text/*"])
    assert not compressible("textual/x", ["text/*"])
    assert compressible("image/png", ["*/*"])
    assert compressible("application/json", ["Application/Json"])
    assert not compressible("text/html", [])


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def decode_prefix(coding: str, data: bytes) -> bytes:
    """What a client can decode of a stream that has not ended yet."""
    if coding == "gzip":
        return zlib.decompressobj(31).decompress(data)
    if coding == "br":
        return bytes(brotli.Decompressor().process(data))
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def run(coding: str, chunks: list[bytes], level: int | None = None) -> bytes:
    encoder = new_encoder(coding, level)
    return b"".join(encoder.compress(c) for c in chunks) + encoder.finish()


text_chunks = st.lists(st.binary(max_size=2000) | st.text(max_size=500).map(str.encode), max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ALL), text_chunks)
def test_encoders_round_trip(coding: str, chunks: list[bytes]) -> None:
    assert decode(coding, run(coding, chunks)) == b"".join(chunks)


@pytest.mark.parametrize("coding", ALL)
def test_empty_input(coding: str) -> None:
    assert decode(coding, run(coding, [])) == b""
    assert decode(coding, run(coding, [b"", b""])) == b""


@pytest.mark.parametrize("coding", ALL)
def test_many_tiny_chunks(coding: str) -> None:
    body = b"".join(b"line %d of a log\n" % i for i in range(2000))
    encoded = run(coding, [body[i : i + 1] for i in range(len(body))])
    assert decode(coding, encoded) == body
    assert len(encoded) < len(body) // 4


@pytest.mark.parametrize("coding", ALL)
def test_flush_gives_a_decodable_prefix(coding: str) -> None:
    encoder = new_encoder(coding)
    head = encoder.compress(b"data: first event\n\n") + encoder.flush()
    assert decode_prefix(coding, head) == b"data: first event\n\n"
    head += encoder.flush()  # flushing with nothing new is harmless
    rest = encoder.compress(b"data: second\n\n") + encoder.flush() + encoder.finish()
    assert decode(coding, head + rest) == b"data: first event\n\ndata: second\n\n"


def test_gzip_has_a_real_gzip_header() -> None:
    assert run("gzip", [b"hello"])[:3] == b"\x1f\x8b\x08"


@pytest.mark.parametrize(("coding", "level"), [("gzip", 1), ("gzip", 9), ("br", 0), ("br", 11), ("zstd", 1),
                                               ("zstd", 19)])
def test_levels(coding: str, level: int) -> None:
    body = b"abc" * 1000
    assert decode(coding, run(coding, [body], level)) == body


@pytest.mark.parametrize(
    ("coding", "level", "message"),
    [("deflate", None, "the coding must be one of br, zstd, gzip, got 'deflate'"), ("gzip", 0, "from 1 to 9"),
     ("gzip", 10, "from 1 to 9"), ("br", 12, "from 0 to 11"), ("zstd", 20, "from 1 to 19"), ("zstd", 0, "from 1")],
)
def test_bad_encoder_settings(coding: str, level: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        new_encoder(coding, level)
