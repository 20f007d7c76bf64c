"""The schedule of DNS discovery: one task per ``servers_from`` group, looking up its name when due.

Each result goes into ``fulcrum.state.discovery.Discovered``; when a group's set changes, ``on_change``
(the control plane) builds and swaps in a new snapshot. ``first`` looks up, all at once and each
bounded by its timeout, the groups that have no answer yet: the control plane calls it before the
first health round at start, and before a reload's new config goes in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fulcrum.config import Config
from fulcrum.config.discovery import ServersFrom
from fulcrum.state.discovery import Discovered, Lookup, next_lookup
from fulcrum.state.resolve import DnsLookup

log = logging.getLogger("fulcrum.discovery")

LookupFactory = Callable[[ServersFrom], DnsLookup]


class DnsDiscovery:
    """Keeps one lookup task per discovered group of the running config."""

    def __init__(self, discovered: Discovered, on_change: Callable[[], Awaitable[None]],
                 lookup: LookupFactory = DnsLookup) -> None:
        self.discovered = discovered
        self._on_change = on_change
        self._lookup = lookup
        self._tasks: dict[str, tuple[ServersFrom, asyncio.Task[None]]] = {}
        self._last: dict[str, tuple[ServersFrom, Lookup]] = {}  # the result ``first`` got, for the task's first wait

    async def first(self, config: Config) -> bool:
        """Look up every discovered group of ``config`` that has no answer for its target yet; whether any set
        changed (so a snapshot is due)."""
        todo = [(name, up.servers_from) for name, up in config.upstreams.items()
                if up.servers_from is not None and not self.discovered.known(name, up.servers_from)
                and not self._running(name, up.servers_from)]
        if not todo:
            return False
        results = await asyncio.gather(*(self._lookup(spec).lookup() for _, spec in todo))
        changed = False
        for (name, spec), result in zip(todo, results, strict=True):
            self._last[name] = (spec, result)
            changed = self._record(name, spec, result) or changed
        return changed

    def sync(self, config: Config) -> None:
        """Run a task for each discovered group of ``config``; stop those of groups it no longer has, or whose
        ``servers_from`` changed (a new task takes over)."""
        wanted = {name: up.servers_from for name, up in config.upstreams.items() if up.servers_from is not None}
        self.discovered.retain(config)
        for name in list(self._tasks):
            spec, task = self._tasks[name]
            if wanted.get(name) != spec:
                task.cancel()
                del self._tasks[name]
        loop = asyncio.get_running_loop()
        for name, spec in wanted.items():
            if name not in self._tasks:
                run = self._run(name, spec, self._first_delay(name, spec))
                task = loop.create_task(run, name=f"fulcrum dns {name}")
                self._tasks[name] = (spec, task)
        self._last = {}

    async def close(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _running(self, name: str, spec: ServersFrom) -> bool:
        entry = self._tasks.get(name)
        return entry is not None and entry[0].target == spec.target

    def _record(self, name: str, spec: ServersFrom, result: Lookup) -> bool:
        outcome = self.discovered.record(name, spec, result)
        if outcome.message is not None:
            log.log(logging.WARNING if outcome.problem else logging.INFO, "%s", outcome.message)
        return outcome.changed

    def _first_delay(self, name: str, spec: ServersFrom) -> float:
        last = self._last.get(name)
        if last is not None and last[0] == spec:
            return next_lookup(spec, last[1])  # ``first`` just looked it up
        if self.discovered.known(name, spec):
            return spec.refresh  # a new task for a change of refresh or timeout: the set is fresh enough
        return 0.0

    async def _run(self, name: str, spec: ServersFrom, delay: float) -> None:
        lookup = self._lookup(spec)
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            delay = spec.refresh
            try:
                result = await lookup.lookup()
                delay = next_lookup(spec, result)
                if self._record(name, spec, result):
                    await self._on_change()
            except asyncio.CancelledError:
                raise
            except Exception:  # the schedule must outlive anything one round did (a snapshot that failed to build)
                log.exception("%s: the servers discovered in DNS could not be put in force", name)
