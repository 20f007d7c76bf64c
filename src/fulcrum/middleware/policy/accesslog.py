"""Access log lines (common, combined, JSON) and a writer that never blocks the event loop.

Client-supplied text (target, referer, user agent, request id) is escaped
the way Apache does it, so a line is always one line of printable ASCII:
``"`` as ``\\"``, ``\\`` as ``\\\\``, other characters outside printable
ASCII as ``\\xHH`` (``\\uHHHH`` above U+00FF).
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("fulcrum.accesslog")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_QUOTED = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0x100))} | {ord('"'): '\\"', ord("\\"): "\\\\"}
_BARE = _QUOTED | {ord(" "): "\\x20"}  # values outside quotes must not hold a space either
_MAX_PENDING_LINES = 100_000
_MAX_QUEUED_BATCHES = 64


class LogRecord:
    """What is logged of one request. ``bytes_sent`` counts response body bytes sent to the client.

    A plain class with an ``__init__`` of its own, not a dataclass: compiled, one is built without
    going through a Python-level ``__init__`` (which cost more than the whole log line's formatting).
    """

    __slots__ = (
        "attempts", "bytes_sent", "client_ip", "duration_ms", "error", "method", "referer", "request_id", "route",
        "status", "target", "time", "upstream", "upstream_ms", "user_agent", "version",
    )  # fmt: skip

    def __init__(
        self,
        client_ip: str,
        time: float,  # epoch seconds, when the request arrived
        method: str,
        target: str,
        version: str,  # "1.1"
        status: int,
        bytes_sent: int,
        referer: str | None,
        user_agent: str | None,
        upstream: str | None,  # server id
        duration_ms: float,
        upstream_ms: float | None,
        request_id: str,
        route: str,
        error: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.client_ip = client_ip
        self.time = time
        self.method = method
        self.target = target
        self.version = version
        self.status = status
        self.bytes_sent = bytes_sent
        self.referer = referer
        self.user_agent = user_agent
        self.upstream = upstream
        self.duration_ms = duration_ms
        self.upstream_ms = upstream_ms
        self.request_id = request_id
        self.route = route
        self.error = error
        self.attempts = attempts


#: The record's fields in order: the keys of a JSON line.
FIELD_NAMES = (
    "client_ip", "time", "method", "target", "version", "status", "bytes_sent", "referer", "user_agent", "upstream",
    "duration_ms", "upstream_ms", "request_id", "route", "error", "attempts",
)  # fmt: skip


_SAFE_QUOTED = re.compile(r'[ !#-\[\]-~]*')  # printable ASCII but " and \: nothing to escape
_SAFE_BARE = re.compile(r'[!#-\[\]-~]*')


def _escape(text: str, table: dict[int, str] = _QUOTED) -> str:
    if (_SAFE_QUOTED if table is _QUOTED else _SAFE_BARE).fullmatch(text) is not None:
        return text
    out = text.translate(table)
    if out.isascii():
        return out
    return "".join(c if c < "\x80" else f"\\u{ord(c):04x}" if c <= "\uffff" else f"\\U{ord(c):08x}" for c in out)


class _ClfClock:
    """The bracketed CLF time of the last second asked for, formatted once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def at(self, second: int) -> str:
        if second != self.second:
            t = time.gmtime(second)
            self.text = (f"[{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:"
                         f"{t.tm_sec:02d} +0000]")
            self.second = second
        return self.text


_CLOCK = _ClfClock()


def _clf_time(second: int) -> str:
    return _CLOCK.at(second)


def _quoted(text: str) -> str:
    """``text`` for a double-quoted field (the common case, printable ASCII without quotes, as it is)."""
    # isprintable on ASCII text is exactly " " to "~": cheaper than the regex for the common case
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return _escape(text, _QUOTED)


def _bare(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text and " " not in text:
        return text
    return _escape(text, _BARE)


_BARE_SEEN: dict[str, str] = {}  # server ids, escaped: a small set, the same on every line


def _bare_server(text: str) -> str:
    found = _BARE_SEEN.get(text)
    if found is None:
        found = _bare(text)
        if len(_BARE_SEEN) < 4096:
            _BARE_SEEN[text] = found
    return found


def _bare_id(text: str) -> str:
    """A request id for an unquoted field: letters and digits only (Fulcrum's own ids) need no regex."""
    if text.isascii() and text.isalnum():
        return text
    return _bare(text)


def _millis(ms: float) -> str:
    """``ms`` with three decimals, without the cost of float formatting."""
    if not 0.0 <= ms < 1e12:
        return f"{ms:.3f}"
    digits = str(int(ms * 1000.0 + 0.5))
    if len(digits) < 4:
        digits = "0" * (4 - len(digits)) + digits
    return digits[:-3] + "." + digits[-3:]


def _common(r: LogRecord) -> str:
    # the method is an HTTP token and the client address came from the socket: only the target needs a look
    size = str(r.bytes_sent) if r.bytes_sent else "-"
    return (f'{r.client_ip or "-"} - - {_CLOCK.at(int(r.time))} "{r.method} {_quoted(r.target)} '
            f'HTTP/{r.version}" {r.status} {size}')


def format_common(r: LogRecord) -> str:
    """NCSA common log format: ``1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET /a HTTP/1.1" 200 2326``.

    The size is ``-`` when no body bytes were sent, as in Apache's ``%b``.
    """
    return _common(r)


def format_combined(r: LogRecord) -> str:
    """Combined log format, then Fulcrum's fields, exactly::

        <common> "<referer>" "<user agent>" upstream=<id> duration_ms=<ms> request_id=<id>

    A missing referer, user agent, upstream or request id is ``-``;
    ``duration_ms`` has three decimals (microseconds).
    """
    referer = _quoted(r.referer) if r.referer else "-"
    agent = _quoted(r.user_agent) if r.user_agent else "-"
    upstream = _bare_server(r.upstream) if r.upstream else "-"
    request_id = _bare_id(r.request_id) if r.request_id else "-"
    return (f'{_common(r)} "{referer}" "{agent}" upstream={upstream} duration_ms={_millis(r.duration_ms)} '
            f"request_id={request_id}")


def _iso_time(epoch: float) -> str:
    second = math.floor(epoch)
    millis = min(999, int((epoch - second) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{millis:03d}Z"


def format_json(r: LogRecord) -> str:
    """One JSON object on one line (ASCII only): the fields of ``LogRecord`` by name, ``time`` as ISO-8601 UTC
    with milliseconds (``2000-10-10T13:55:36.123Z``), missing values as null."""
    values = {name: getattr(r, name) for name in FIELD_NAMES}
    values["time"] = _iso_time(r.time)
    for key in ("duration_ms", "upstream_ms"):
        value = values[key]
        if value is not None and not math.isfinite(value):
            values[key] = None  # NaN is not JSON
    return json.dumps(values, ensure_ascii=True, separators=(",", ":"))


FORMATS: dict[str, Callable[[LogRecord], str]] = {
    "common": format_common,
    "combined": format_combined,
    "json": format_json,
}


def open_check(path: str) -> str | None:
    """Why ``path`` cannot be appended to (for config validation), or None when it can. Creates nothing."""
    if path == "-":
        return None
    if os.path.isdir(path):
        return f"cannot append to {path}: it is a directory"
    if os.path.exists(path):
        try:
            with open(path, "a", encoding="utf-8"):
                return None
        except OSError as exc:
            return f"cannot append to {path}: {exc.strerror or exc}"
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return f"cannot create {path}: the directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: the directory {parent} is not writable"
    return None


class LogWriter:
    """Collects log lines on the event loop and writes them from one background thread.

    ``write`` only appends to a list; ``flush`` (on a periodic tick) hands the
    lines collected to the thread in one piece. The thread opens the file
    itself, so not even the open can stall the loop. When the file cannot be
    written, one error is logged per failure spell and lines are dropped;
    lines are dropped too, and counted in ``dropped``, when the thread falls
    far behind.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.dropped = 0
        self._pending: list[str] = []
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._queued = 0  # batches handed over; the thread counts those it took in _taken
        self._taken = 0
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="fulcrum-accesslog", daemon=True)
        self._worker.start()

    def write(self, line: str) -> None:
        """Add one line (without its newline); it reaches the file after the next ``flush``."""
        pending = self._pending
        if len(pending) < _MAX_PENDING_LINES and not self._closed:
            pending.append(line)
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Hand the lines written since the last flush to the writer thread; never blocks."""
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        if self._queued - self._taken >= _MAX_QUEUED_BATCHES:
            self.dropped += len(lines)
            return
        self._queued += 1
        self._queue.put("\n".join(lines) + "\n")

    def close(self) -> None:
        """Flush, let the thread write everything and stop, and close the file. Blocks until then."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._queue.put(None)
        self._worker.join()

    def _run(self) -> None:
        file: TextIO | None = None
        failing = False
        while (batch := self._queue.get()) is not None:
            self._taken += 1
            try:
                if self.path == "-":
                    sys.stdout.write(batch)
                    sys.stdout.flush()
                else:
                    if file is None:
                        file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open across batches
                    file.write(batch)
                    file.flush()
                failing = False
            except (OSError, ValueError) as exc:
                if not failing:
                    log.error("access log %s cannot be written, dropping lines: %s", self.path, exc)
                failing = True
                if file is not None:
                    try:
                        file.close()
                    except OSError:
                        pass
                    file = None  # open again for the next batch
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                log.error("access log %s could not be closed: %s", self.path, exc)
