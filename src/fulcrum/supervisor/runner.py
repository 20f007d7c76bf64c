"""Runs Fulcrum until SIGTERM or SIGINT, then drains and exits 0: one process, or a main process and its workers."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from fulcrum.admin.app import make_app
from fulcrum.admin.listener import AdminListener
from fulcrum.config import Config, ConfigError
from fulcrum.proxy.server import ProxyServer, install_uvloop
from fulcrum.supervisor.control import Control
from fulcrum.supervisor.watch import watch_file
from fulcrum.supervisor.workers import MainServer

log = logging.getLogger("fulcrum")

#: A config, or a coroutine function making one inside the loop (the demo starts its backends first).
ConfigSource = Config | Callable[[], Awaitable[Config]]


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(
    source: ConfigSource,
    *,
    path: str | None = None,
    after_start: Callable[[ProxyServer], None] | None = None,
    watch: float = 0.0,
) -> int:
    """Serve a config in this process until SIGTERM/SIGINT; returns the exit code.

    ``path`` is the config file, read again on SIGHUP and ``POST /api/v1/reload``, and every time it
    changes when ``watch`` (seconds between looks) is set.
    """
    with asyncio.Runner(loop_factory=install_uvloop()) as runner:
        return runner.run(_serve(source, path, after_start, watch))


class Instance:
    """One process's whole Fulcrum: the proxy, its control plane and the admin listener (if configured).

    With ``workers`` above 1 the proxy is a ``MainServer``: the workers it starts serve the connections.
    """

    def __init__(self, config: Config, path: str | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        source = path or "config"
        # ConfigError: bad routes. With several workers this process keeps the control plane (MainServer).
        self.server = MainServer(config, self.loop, source) if config.workers > 1 \
            else ProxyServer(config, self.loop, source=source)
        self.control = Control(self.server, config, path)
        workers = self.server.workers if isinstance(self.server, MainServer) else None
        listen = config.admin.listen
        self.admin = AdminListener(make_app(self.control, config.admin.token, workers), listen.host, listen.port) \
            if listen is not None else None

    async def start(self) -> None:
        """Bind everything (the admin port first: a busy one fails before traffic is taken), load the shared
        runtime changes (``state: redis``), then serve."""
        if self.admin is not None:
            self.admin.bind()
        await self.control.start()  # shared changes and DNS discovery's first answers, before the first health round
        await self.server.start()
        if self.admin is not None:
            await self.admin.start()

    async def stop(self, grace: float | None = None) -> None:
        if self.admin is not None:
            await self.admin.stop()
        await self.control.close()
        await self.server.shutdown(grace)


async def _serve(
    source: ConfigSource,
    path: str | None,
    after_start: Callable[[ProxyServer], None] | None,
    watch: float = 0.0,
) -> int:
    loop = asyncio.get_running_loop()
    config = source if isinstance(source, Config) else await source()
    try:
        instance = Instance(config, path, loop)
    except ConfigError as err:
        log.error("configuration is not valid (%d error(s)):\n%s", len(err.errors), err)
        return 1
    server, control = instance.server, instance.control
    try:
        await instance.start()
    except OSError as err:
        log.error("cannot listen: %s", err)
        await instance.stop(0)
        return 1
    if after_start is not None:
        after_start(server)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_hangup() -> None:
        log.info("SIGHUP: reloading %s", path or "(no config file)")
        task = loop.create_task(control.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    watcher = loop.create_task(watch_file(path, control.reload, watch)) if path and watch > 0 else None
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    log.info("stopping: no new connections; waiting up to %gs for requests in flight", server.config.shutdown_grace)
    await instance.stop()
    log.info("stopped")
    return 0
