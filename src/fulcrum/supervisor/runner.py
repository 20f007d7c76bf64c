"""Runs one proxy process until SIGTERM or SIGINT, then drains and exits 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from fulcrum.config import Config, ConfigError
from fulcrum.proxy.server import ProxyServer, install_uvloop

log = logging.getLogger("fulcrum")

#: A config, or a coroutine function making one inside the loop (the demo starts its backends first).
ConfigSource = Config | Callable[[], Awaitable[Config]]


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(source: ConfigSource, *, after_start: Callable[[ProxyServer], None] | None = None) -> int:
    """Serve a config in this process until SIGTERM/SIGINT; returns the exit code."""
    with asyncio.Runner(loop_factory=install_uvloop()) as runner:
        return runner.run(_serve(source, after_start))


async def _serve(source: ConfigSource, after_start: Callable[[ProxyServer], None] | None) -> int:
    loop = asyncio.get_running_loop()
    config = source if isinstance(source, Config) else await source()
    try:
        server = ProxyServer(config, loop)
    except ConfigError as err:
        log.error("configuration is not valid (%d error(s)):\n%s", len(err.errors), err)
        return 1
    try:
        await server.start()
    except OSError as err:
        log.error("cannot listen: %s", err)
        await server.shutdown(0)
        return 1
    if after_start is not None:
        after_start(server)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: no new connections; waiting up to %gs for requests in flight", server.config.shutdown_grace)
    await server.shutdown()
    log.info("stopped")
    return 0
