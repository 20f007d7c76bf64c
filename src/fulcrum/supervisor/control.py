"""The control plane of one process: runtime changes, reloads, DNS discovery, and what the admin API reads.

Every change builds a new snapshot from the file's config, with the servers discovered in DNS filled in
(``fulcrum.state.discovery``) and the runtime overlay applied over that (``fulcrum.state.changes``), and
swaps it in; changes are serialised by one lock, so two changes never build from the same base.

With ``state: {backend: redis}`` the overlay is shared (``fulcrum.state.redis``): each change made
here is handed to the store after it is applied, and a change made on another instance replaces
the overlay here and is applied the same way. A reload of the file is not shared: each instance
reads its own file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from fulcrum.config import Config, ConfigError, load_config
from fulcrum.config.schema import ServerSpec
from fulcrum.config.state import redact_url
from fulcrum.proxy.context import Metrics, Stats
from fulcrum.proxy.server import ProxyServer
from fulcrum.state.changes import ChangeError, Key, Overlay, State, server_id
from fulcrum.state.discovery import Discovered
from fulcrum.state.redis import shared_overlay
from fulcrum.state.server import Down, Server
from fulcrum.state.snapshot import Snapshot
from fulcrum.state.tcp import TcpGroup
from fulcrum.supervisor.discovery import DnsDiscovery

log = logging.getLogger("fulcrum")

#: How often a server being deleted is checked for its last request to end.
REMOVAL_POLL = 0.05


class Control:
    """Owns the running config: the file's, the overlay of runtime changes, and reloads of the file."""

    def __init__(self, server: ProxyServer, config: Config, path: str | None = None) -> None:
        self.server = server
        self.path = path
        self.file_config = config
        self.overlay = Overlay()
        self.started = time.time()
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._removals: asyncio.Task[None] | None = None
        self.shared = shared_overlay(config.state, self._on_shared)  # None: this instance's memory only
        self.discovered = Discovered()
        self._dns = DnsDiscovery(self.discovered, self._rediscovered)

    async def start(self) -> None:
        """Load the shared runtime changes, when the state is shared (before the proxy takes traffic); look up
        the discovered groups once (before the first health round), then keep them up to date."""
        if self.shared is not None:
            await self.shared.start()
        if await self._dns.first(self.file_config):
            async with self._lock:
                try:
                    await self._apply()
                except (ConfigError, OSError) as err:  # the groups fill on the next change instead
                    log.error("the servers discovered in DNS could not be put in force: %s", err)
        self._dns.sync(self.file_config)

    # -- reading -------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self.server.snapshot

    @property
    def stats(self) -> Stats:
        return self.server.ctx.stats

    @property
    def counters(self) -> Metrics:
        return self.server.ctx.metrics

    @property
    def tcp_groups(self) -> dict[str, TcpGroup]:
        return self.server.tcp.groups

    def running_config(self) -> dict[str, Any]:
        """The file's config as JSON data (the admin token and any Redis password left out), for ``fulcrum check
        --admin``."""
        data: dict[str, Any] = self.file_config.model_dump(mode="json")
        data["admin"]["token"] = None
        if data["state"]["url"] is not None:
            data["state"]["url"] = redact_url(data["state"]["url"])  # a Redis password stays in the file
        return data

    def changes(self) -> dict[str, Any]:
        """The overlay (``GET /api/v1/changes``), and with a shared state the version this instance has."""
        data = self.overlay.describe()
        if self.shared is not None:
            data["shared"] = {"backend": "redis", "version": self.shared.version, "connected": self.shared.connected}
        return data

    def server_state(self, group: str, server: Server) -> State:
        return self.overlay.state((group, server.id))

    def discovered_ids(self, group: str) -> frozenset[str]:
        """The ids of the servers of ``group`` that DNS discovery found."""
        spec = self.file_config.upstreams.get(group)
        source = spec.servers_from if spec is not None else None
        return self.discovered.ids(group, source) if source is not None else frozenset()

    def find(self, group: str, sid: str) -> Server:
        """The server ``sid`` of ``group`` in the running snapshot; ``ChangeError`` 404 when there is none."""
        g = self.snapshot.groups.get(group)
        if g is None:
            raise ChangeError(404, f"no upstream group {group!r}", "group")
        server = g.by_id.get(sid)
        if server is None:
            raise ChangeError(404, f"no server {sid!r} in upstream group {group!r}", "id")
        return server

    # -- runtime changes -----------------------------------------------------------

    async def add_server(self, group: str, url: str, weight: int) -> Server:
        """Add a server to ``group``; it takes traffic once its first health check passes."""
        async with self._lock:
            if group not in self.snapshot.groups:
                raise ChangeError(404, f"no upstream group {group!r}", "group")
            try:
                spec = ServerSpec(url=url, weight=weight)
            except ValueError as err:  # pydantic's ValidationError is a ValueError
                raise ChangeError(400, _first_error(err), _first_field(err)) from None
            sid = server_id(spec.url)
            if sid in self.snapshot.groups[group].by_id:
                raise ChangeError(409, f"server {sid} is already in upstream group {group!r}", "url")
            key = self.overlay.add(group, spec.url, spec.weight)
            await self._apply()
            self._share()
            log.info("admin: added server %s to %s (weight %d)", sid, group, spec.weight)
            return self.find(*key)

    async def update_server(self, group: str, sid: str, weight: int | None, state: State | None) -> Server:
        """Set the weight or the state (enabled, disabled, draining) of a server."""
        async with self._lock:
            self.find(group, sid)
            key = (group, sid)
            if key in self.overlay.removing:
                raise ChangeError(409, f"server {sid} is being removed", "id")
            if weight is not None:
                self.overlay.set_weight(key, weight)
            if state is not None:
                self.overlay.set_state(key, state)
            await self._apply()
            self._share()
            log.info("admin: server %s of %s now %s", sid, group,
                     ", ".join(p for p in (f"weight {weight}" if weight is not None else "",
                                           f"state {state}" if state else "") if p))
            return self.find(group, sid)

    async def remove_server(self, group: str, sid: str) -> Server:
        """Drain a server at once; it leaves the group when its in-flight requests have finished."""
        async with self._lock:
            server = self.find(group, sid)
            self.overlay.remove((group, sid))
            self._set_flags(self.snapshot)
            self._share()
            log.info("admin: removing server %s from %s once its %d request(s) in flight end", sid, group,
                     server.active)
            self._watch_removals()
            return server

    def _watch_removals(self) -> None:
        if self._removals is None or self._removals.done():
            self._removals = asyncio.get_running_loop().create_task(self._finish_removals())

    async def _finish_removals(self) -> None:
        while self.overlay.removing:
            await asyncio.sleep(REMOVAL_POLL)
            async with self._lock:
                done = [k for k in self.overlay.removing if self._idle(k)]
                if not done:
                    continue
                for key in done:
                    self.overlay.finish_removal(key)
                    log.info("admin: removed server %s from %s", key[1], key[0])
                await self._apply()
                self._share()  # every instance ends its own drain; they all write the same result

    def _idle(self, key: Key) -> bool:
        group = self.snapshot.groups.get(key[0])
        server = group.by_id.get(key[1]) if group is not None else None
        return server is None or server.active == 0

    # -- reload --------------------------------------------------------------------

    async def reload(self) -> list[str]:
        """Read the config file again and swap it in; the errors, when it is refused (nothing changes then)."""
        if self.path is None:
            return ["this instance was started without a config file; there is nothing to reload"]
        async with self._lock:
            started = time.time()
            try:
                config = load_config(self.path)
                await self._dns.first(config)  # a new or changed servers_from is looked up before it goes in
                await self._apply(config)
                self._dns.sync(config)
            except ConfigError as err:
                errors = [str(issue) for issue in err.errors]
            except OSError as err:
                errors = [f"{self.path}: listen: {err.strerror or err}"]
            else:
                errors = []
            self.reloads += 1
            self.last_reload = {"at": started, "ok": not errors, "errors": errors}
            if errors:
                log.error("reload of %s refused, the running config stays (%d error(s)):\n%s", self.path,
                          len(errors), "\n".join(errors))
            else:
                log.info("reloaded %s", self.path)
            return errors

    # -- applying --------------------------------------------------------------------

    async def _rediscovered(self) -> None:
        """A discovered group's servers changed: a new snapshot (servers that stay keep their state)."""
        async with self._lock:
            await self._apply()

    async def _apply(self, config: Config | None = None) -> None:
        """Swap in the overlay over ``config`` (a new file) or over the file config already running."""
        base = config if config is not None else self.file_config
        effective = self.overlay.effective(self.discovered.fill(base))
        same_routes = config is None or config.routes == self.file_config.routes
        await self.server.apply(effective, same_routes=same_routes, prepare=self._set_flags)
        self.file_config = base

    def _set_flags(self, snapshot: Snapshot) -> None:
        """Operators' states as server flags: disabled, draining (a removal drains too)."""
        overlay = self.overlay
        for name, group in snapshot.groups.items():
            for server in group.servers:
                state = overlay.state((name, server.id))
                server.set_down(Down.DISABLED, state == "disabled")
                server.set_down(Down.DRAINING, state == "draining")

    # -- shared state (state.backend: redis) --------------------------------------------

    def _share(self) -> None:
        if self.shared is not None:
            self.shared.changed(self.overlay.describe())

    async def _on_shared(self, version: int, data: dict[str, Any]) -> None:
        """Another instance's runtime changes (or the stored ones): they replace this instance's overlay."""
        async with self._lock:
            if self.shared is None or not self.shared.accept(version):
                return
            previous = self.overlay
            try:
                self.overlay = Overlay.from_data(data)
                await self._apply()
            except (ValueError, ConfigError, OSError) as err:
                self.overlay = previous
                log.error("state backend: runtime changes of version %d not applied, the running ones stay: %s",
                          version, err)
                return
            self.shared.applied(version, data)
            log.info("state backend: applied the shared runtime changes (version %d)", version)
            if self.overlay.removing:
                self._watch_removals()

    async def close(self) -> None:
        await self._dns.close()
        if self._removals is not None:
            self._removals.cancel()
        if self.shared is not None:
            await self.shared.close()


def _first_error(err: ValueError) -> str:
    errors: Callable[[], list[Any]] | None = getattr(err, "errors", None)
    if errors is None:
        return str(err)
    first = errors()[0]
    return str(first.get("msg", err)).removeprefix("Value error, ")


def _first_field(err: ValueError) -> str | None:
    errors: Callable[[], list[Any]] | None = getattr(err, "errors", None)
    if errors is None:
        return None
    loc = errors()[0].get("loc", ())
    return ".".join(str(p) for p in loc) or None
