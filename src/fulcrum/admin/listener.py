"""The admin listener: the admin application served by uvicorn inside the proxy's own event loop.

uvicorn's ``serve()`` would install its own signal handlers; the process's signals belong to the
supervisor, so the listener runs uvicorn's startup, main loop and shutdown steps itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

log = logging.getLogger("fulcrum")


class AdminListener:
    """Serves ``app`` on ``host:port`` until ``stop``; ``bind`` raises OSError before anything is served."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning",
                                      access_log=False, loop="none", http="h11", ws="none",
                                      timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(self._config)
        self._sock: socket.socket | None = None
        self._main: asyncio.Task[None] | None = None

    def bind(self) -> None:
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, type_, proto, _, address = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]

    async def start(self) -> None:
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        config = self._config
        if not config.loaded:
            config.load()
        server = self._server
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._sock])
        self._main = asyncio.get_running_loop().create_task(server.main_loop())
        log.info("admin API on http://%s:%d/", self.host if ":" not in self.host else f"[{self.host}]", self.port)

    async def stop(self) -> None:
        server = self._server
        server.should_exit = True
        if self._main is not None:
            await self._main
            self._main = None
            await server.shutdown(sockets=[self._sock] if self._sock is not None else None)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
