"""W3C Trace Context ``traceparent`` values: checking one received, making one to send.

Layout: ``<version>-<trace-id>-<parent-id>-<flags>``, all lowercase hex, for
version 00 exactly ``00-`` + 32 + ``-`` + 16 + ``-`` + 2 characters. The trace
id of a valid value is ``value[3:35]``.
"""

from __future__ import annotations

import random
import re
import secrets

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
# Version 00 is exactly this; a later version (not ff) starts with it and may add "-..." after.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?", re.DOTALL)
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a ``traceparent`` to keep: version 00 in its exact form, or a later version
    (not ff) that begins with that form; trace and parent ids not all zero."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return False
    version, trace_id, parent_id, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return False
    return trace_id != _ZERO_TRACE and parent_id != _ZERO_PARENT


# Ids only need to be unique, not secret: a PRNG seeded from the OS once, no system call per request.
_RANDOM = random.Random(secrets.randbits(128))


def _random_hex(nbytes: int) -> str:
    while True:
        value = _RANDOM.getrandbits(nbytes * 8)
        if value:  # all zero is invalid; once in 2**64 draws at worst
            return f"{value:0{nbytes * 2}x}"


def new_traceparent(trace_id: str | None = None) -> str:
    """A version 00 ``traceparent`` with a new random parent id and the sampled flag (``01``).

    ``trace_id`` continues a trace when it is 32 lowercase hex digits, not all
    zero; otherwise (or when absent) a random trace id is made.
    """
    if trace_id is None or trace_id == _ZERO_TRACE or not _TRACE_ID.fullmatch(trace_id):
        trace_id = _random_hex(16)
    return f"00-{trace_id}-{_random_hex(8)}-01"


class _ParentIds:
    """Parent ids cut from one draw of 256 at a time: a slice per request instead of a draw and two
    conversions."""

    __slots__ = ("at", "pool")

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def next(self) -> bytes:
        while True:
            at = self.at
            if at >= len(self.pool):
                self.pool = _RANDOM.getrandbits(64 * 256).to_bytes(2048, "big").hex().encode("ascii")
                at = 0
            self.at = at + 16
            ident = self.pool[at : at + 16]
            if ident != _ZERO_PARENT_BYTES:  # all zero is invalid
                return ident


_ZERO_PARENT_BYTES = b"0" * 16
_PARENT_IDS = _ParentIds()


def new_parent_id() -> bytes:
    """A random parent id (16 lowercase hex digits, not all zero), as bytes for a header line."""
    return _PARENT_IDS.next()
