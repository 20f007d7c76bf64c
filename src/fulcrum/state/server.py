"""Runtime state of upstream servers, kept apart from config and outliving reloads."""

from __future__ import annotations

from collections.abc import Callable
from enum import IntFlag
from urllib.parse import urlsplit


class Down(IntFlag):
    """Why a server is not eligible; one flag per cause, eligible when none is set."""

    NONE = 0
    ACTIVE_CHECK = 1  # failed its active health check (or not yet checked)
    PASSIVE = 2  # ejected by outlier detection
    BREAKER = 4  # circuit breaker open
    DRAINING = 8  # takes no new requests
    DISABLED = 16  # switched off by an operator


class Server:
    """One upstream server as the data plane sees it.

    ``id`` is ``host:port``, unique within its group. Health checks and the
    admin API write the flags; balancing policies only read. ``active`` counts
    requests in flight through this process; ``ewma_ms`` is the smoothed
    response time.
    """

    __slots__ = (
        "_listeners",
        "active",
        "codes",
        "down",
        "errors",
        "ewma_at",
        "ewma_ms",
        "host",
        "id",
        "port",
        "requests",
        "up_since",
        "url",
        "weight",
    )

    def __init__(self, url: str, weight: int = 1) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"server url must be http://host:port, got {url!r}")
        self.url = url
        self.host: str = parts.hostname
        self.port: int = parts.port or 80
        self.id = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        self.weight = weight
        self.down = Down.NONE
        self.active = 0
        self.ewma_ms = 0.0
        self.ewma_at = 0.0  # loop time of the last ewma update
        self.up_since = 0.0  # loop time it last became eligible (for slow start)
        self.requests = 0
        self.errors = 0
        self.codes: dict[int, int] = {}  # responses by status code, as the client got them
        self._listeners: list[Callable[[Server], None]] = []

    @property
    def healthy(self) -> bool:
        return not self.down & Down.ACTIVE_CHECK

    @property
    def draining(self) -> bool:
        return bool(self.down & Down.DRAINING)

    @property
    def disabled(self) -> bool:
        return bool(self.down & Down.DISABLED)

    @property
    def eligible(self) -> bool:
        return self.down == Down.NONE

    def set_down(self, flag: Down, on: bool) -> None:
        """Set or clear one cause; listeners hear of a change in eligibility causes."""
        new = self.down | flag if on else self.down & ~flag
        if new != self.down:
            self.down = new
            for listener in self._listeners:
                listener(self)

    def subscribe(self, listener: Callable[[Server], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Server], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __repr__(self) -> str:
        return f"Server({self.id}, weight={self.weight}, down={self.down!r}, active={self.active})"
