"""``fulcrum top``: the dashboard's live table in a terminal, polled from the admin API's ``GET /api/v1/status``.

The picture is a pure function of two status samples (``render``, with ``totals`` and ``server_lines``
for its parts), so it is tested on captured statuses; ``run`` does the polling and the terminal, with
its fetch, clock and sleep passed in. Rates (req/s, error rate) come from the counters' change between
the two samples; the latency percentiles, bytes/s and new-connection share are the server's own figures
over its last minute. The API is read with ``fulcrum.admin.client``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fulcrum.admin.client import AdminAuthError, AdminError, get_json

STATUS_PATH = "/api/v1/status"
#: What a figure that cannot be known yet (no earlier sample, no requests, not reported) shows.
NONE = "\u2013"  # an en dash
LOST = "connection lost — retrying"
#: Width of the table when stdout is not a terminal (rich would assume 80 columns and squeeze it).
PIPE_WIDTH = 160

COLUMNS = ("server", "state", "health", "weight", "active", "requests", "req/s", "errors", "p50 ms", "p99 ms",
           "bytes/s", "new conn")
#: down reasons that say the server is unwell; the others (disabled, draining) are an operator's choice.
_UNWELL = ("active_check", "passive", "breaker")

def status_of(data: Any, base: str) -> Mapping[str, Any]:
    """``data`` when it looks like ``GET /api/v1/status``'s answer; ``AdminError`` otherwise."""
    if not isinstance(data, Mapping) or not isinstance(data.get("upstreams"), list):
        raise AdminError(f"GET {base}{STATUS_PATH} did not answer a Fulcrum status (is {base} the admin listener?)")
    return data


# ---------------------------------------------------------------- the picture (pure)


@dataclass(frozen=True)
class Sample:
    """One status answer and when it arrived, on the poller's monotonic clock."""

    status: Mapping[str, Any]
    at: float


@dataclass(frozen=True)
class ServerLine:
    """One server's row: its cells (in ``COLUMNS`` order) and a style for the whole row."""

    cells: tuple[str, ...]
    style: str = ""


def _interval(cur: Sample, prev: Sample | None) -> float | None:
    """Seconds between the samples; None when rates cannot be had (no earlier sample, or a restart between)."""
    if prev is None or cur.at <= prev.at:
        return None
    if _number(cur.status.get("uptime_s"), 0.0) < _number(prev.status.get("uptime_s"), 0.0):
        return None
    return cur.at - prev.at


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _delta(cur: Mapping[str, Any], prev: Mapping[str, Any] | None, key: str) -> int | None:
    """How much counter ``key`` grew; None without an earlier value or when it went back (a reset)."""
    if prev is None:
        return None
    now, before = cur.get(key), prev.get(key)
    if not isinstance(now, int) or not isinstance(before, int) or now < before:
        return None
    return now - before


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else NONE


def _rate(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _percent(value: float | None, digits: int = 1) -> str:
    return NONE if value is None else f"{value:.{digits}%}"


def _ms(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _bytes(value: object, suffix: str = "") -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    if value < 1024:
        return f"{value:.0f} B{suffix}"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}{suffix}"


def _uptime(seconds: object) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return NONE
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def totals(cur: Sample, prev: Sample | None) -> list[tuple[str, str]]:
    """The instance's figures as (label, value): requests, req/s, success rate, connections, uptime, memory..."""
    status, dt = cur.status, _interval(cur, prev)
    before = prev.status if prev is not None and dt is not None else None
    requests, errors = _delta(status, before, "requests_total"), _delta(status, before, "responses_5xx")
    success = _percent(_number(status.get("success_rate"), 1.0), 2)
    if requests and errors is not None:
        success += f" ({_percent(1 - errors / requests, 2)} now)"
    return [
        ("requests", _count(status.get("requests_total"))),
        ("req/s", _rate(None if requests is None or dt is None else requests / dt)),
        ("success", success),
        ("5xx", _count(status.get("responses_5xx"))),
        ("retries", _count(status.get("retries_total"))),
        ("connections", f"{_count(status.get('connections_active'))} active"),
        ("uptime", _uptime(status.get("uptime_s"))),
        ("memory", _bytes(status.get("memory_bytes"))),
        ("workers", _count(status.get("workers"))),
    ]


def _health(server: Mapping[str, Any]) -> tuple[str, str]:
    """The health cell and the row's style: up; down with its reasons; or out by an operator's choice."""
    reasons = [str(r) for r in server.get("down") or ()]
    unwell = [r for r in reasons if r in _UNWELL]
    if unwell or server.get("healthy") is False:
        return "down: " + ", ".join(unwell or ["active_check"]), "red"
    if reasons or server.get("eligible") is False:
        return "up, out: " + ", ".join(reasons), "yellow"
    return "up", ""


def server_lines(group: Mapping[str, Any], cur: Sample, prev: Sample | None) -> list[ServerLine]:
    """A row per server of ``group`` (an element of the status's ``upstreams``), rates against ``prev``."""
    dt = _interval(cur, prev)
    earlier: dict[str, Mapping[str, Any]] = {}
    if prev is not None and dt is not None:
        for g in prev.status.get("upstreams", ()):
            if g.get("name") == group.get("name"):
                earlier = {str(s.get("id")): s for s in g.get("servers", ())}
    lines = []
    for server in group.get("servers", ()):
        before = earlier.get(str(server.get("id")))
        requests, errors = _delta(server, before, "requests"), _delta(server, before, "errors")
        health, style = _health(server)
        share = server.get("new_connection_share")
        lines.append(ServerLine((
            str(server.get("id", NONE)),
            str(server.get("state", NONE)),
            health,
            _count(server.get("weight")),
            _count(server.get("active")),
            _count(server.get("requests")),
            _rate(None if requests is None or dt is None else requests / dt),
            _percent(errors / requests if requests and errors is not None else None),
            _ms(server.get("p50_ms")),
            _ms(server.get("p99_ms")),
            _bytes(server.get("bytes_per_s"), "/s"),
            _percent(share if isinstance(share, int | float) else None, 0),
        ), style))
    return lines


def _group_table(group: Mapping[str, Any], cur: Sample, prev: Sample | None) -> Table:
    servers: Sequence[Mapping[str, Any]] = group.get("servers", ())
    up = sum(1 for s in servers if s.get("eligible", s.get("healthy")))
    title = f"{group.get('name')} ({group.get('balance')}): {len(servers)} server{'s' if len(servers) != 1 else ''}, " \
            f"{up} taking traffic"
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("server", "state", "health") else "right",
                         no_wrap=name == "server")
    for line in server_lines(group, cur, prev):
        table.add_row(*line.cells, style=line.style)
    return table


def render(cur: Sample, prev: Sample | None, *, source: str, interval: float,
           note: str | None = None) -> RenderableType:
    """The whole picture: a heading, the totals, a table per upstream group; ``note`` (a lost connection) on top."""
    heading = Text.assemble(("fulcrum top", "bold"), f"  {source}  every {interval:g}s")
    version = cur.status.get("version")
    if isinstance(version, str):
        heading.append(f"  fulcrum {version}")
    figures = Text()
    for i, (label, value) in enumerate(totals(cur, prev)):
        figures.append("   " if i else "")
        figures.append(f"{label} ", "dim")
        figures.append(value, "bold")
    parts: list[RenderableType] = [heading, figures]
    if note:
        parts.insert(0, Text(note, "bold red"))
    for group in cur.status.get("upstreams", ()):
        parts += [Text(), _group_table(group, cur, prev)]
    return Group(*parts)


# ---------------------------------------------------------------- polling and the terminal


def default_console() -> Console:
    """Standard output; wide enough for the table when it is a pipe or a file and COLUMNS does not say."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    return console


def run(
    base: str,
    token: str | None,
    *,
    interval: float = 1.0,
    once: bool = False,
    console: Console | None = None,
    fetch: Callable[[str, str, str | None], Any] = get_json,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll ``base``'s status every ``interval`` seconds and show it until Ctrl-C (0), or a 401 (1).

    With ``once``: two polls ``interval`` apart (so rates exist), one picture printed, 0; or 1 with a
    message when the admin API cannot be read. In the live view a lost connection is shown and retried.
    """
    console = console or default_console()

    def poll() -> Sample:
        return Sample(status_of(fetch(base, STATUS_PATH, token), base), clock())

    try:
        if once:
            try:
                first = poll()
                sleep(interval)
                second = poll()
            except AdminError as err:
                print(f"fulcrum: {err}", file=sys.stderr)
                return 1
            console.print(render(second, first, source=base, interval=interval))
            return 0
        return _live(poll, console, base, interval, clock, sleep)
    except KeyboardInterrupt:
        return 0


def _live(poll: Callable[[], Sample], console: Console, base: str, interval: float, clock: Callable[[], float],
          sleep: Callable[[float], None]) -> int:
    prev: Sample | None = None
    cur: Sample | None = None
    refused: AdminAuthError | None = None
    with Live(Text(f"connecting to {base}…"), console=console, auto_refresh=False) as live:
        due = clock()
        while True:
            note = None
            try:
                prev, cur = cur, poll()
            except AdminAuthError as err:
                refused = err
                break
            except AdminError as err:
                note = f"{LOST}: {err}"
            picture = Text(note or "", "bold red") if cur is None else \
                render(cur, prev, source=base, interval=interval, note=note)
            live.update(picture, refresh=True)
            due = max(due + interval, clock())
            sleep(max(0.0, due - clock()))
    print(f"fulcrum: {refused}", file=sys.stderr)
    return 1
