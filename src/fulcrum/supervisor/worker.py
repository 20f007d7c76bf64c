"""A data-plane worker process: serves the snapshots its main process sends, on the sockets it is given.

Started by the main process as ``python -m fulcrum.supervisor.worker --index I --channel FD`` (a fresh
interpreter, not a fork: the main process's event loop, threads and admin server never exist here, and
uvloop starts clean). Over the channel (``fulcrum.supervisor.ipc``) it receives:

- ``config``: the effective config (the file's with the admin API's changes), the main-owned flags of
  every server (health, disabled, draining) and the listening sockets of each ``listen`` entry; it is
  put in force as a reload is in one process, and acknowledged with ``applied``;
- ``flags``: the same flags alone, sent on every health transition or operator change;
- ``stop``: drain (as on SIGTERM) and exit.

It sends ``ready`` once serving and a ``report`` of its counters every ``REPORT_INTERVAL``. It runs no
active health checks (the main process does, once for all workers); passive ejection and circuit
breakers are its own, as is balancing state. When the channel ends (the main process is gone) it
drains and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

from fulcrum.config import Config, ConfigError
from fulcrum.config.diff import config_from_dump
from fulcrum.proxy.server import ProxyServer, install_uvloop
from fulcrum.state.snapshot import Snapshot
from fulcrum.supervisor.ipc import Channel, Message
from fulcrum.supervisor.tally import REPORT_INTERVAL, report, set_main_flags

log = logging.getLogger("fulcrum")

Address = tuple[str, int]
Flags = dict[str, dict[str, int]]  # group -> server id -> main-owned Down flags


def apply_flags(snapshot: Snapshot, flags: Flags) -> None:
    """Set the main process's flags on the servers of ``snapshot`` (servers it does not name are left alone)."""
    for name, group in snapshot.groups.items():
        by_id = flags.get(name)
        if by_id is None:
            continue
        for server in group.servers:
            down = by_id.get(server.id)
            if down is not None:
                set_main_flags(server, down)


class Worker:
    """One worker's life: wait for the first config, serve it, follow the channel, stop."""

    def __init__(self, index: int, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.loop = loop
        self.server: ProxyServer | None = None
        self.sockets: dict[Address, list[socket.socket]] = {}
        self.inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self.grace: float | None = None
        self.channel = Channel(sock, loop, self._received, self._lost)

    # -- the channel -------------------------------------------------------------------

    def _received(self, message: Message, fds: list[int]) -> None:
        if message.get("type") == "config":
            message["_sockets"] = self._sockets_of(message.get("listen", []), fds)
        else:
            for fd in fds:
                os.close(fd)
        if message.get("type") == "stop":
            grace = message.get("grace")
            self.grace = float(grace) if grace is not None else None
            self.stopping.set()
            return
        self.inbox.put_nowait(message)

    def _lost(self) -> None:
        if not self.stopping.is_set():
            log.warning("worker %d: the main process is gone; stopping", self.index)
        self.stopping.set()

    @staticmethod
    def _sockets_of(addresses: list[Any], fds: list[int]) -> dict[Address, list[socket.socket]]:
        """The sockets a config message carries, by listen address (in the order of its entries)."""
        sockets: dict[Address, list[socket.socket]] = {}
        for (host, port), fd in zip(addresses, fds, strict=False):
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            sockets.setdefault((str(host), int(port)), []).append(sock)
        for fd in fds[len(addresses):]:
            os.close(fd)
        return sockets

    def _take_sockets(self, message: Message) -> None:
        """Make a config message's sockets the ones ``_bind`` hands out (any left from before are closed)."""
        self._close_sockets()
        self.sockets = message.pop("_sockets", {})

    def _close_sockets(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets = {}

    def _bind(self, address: Address) -> socket.socket:
        """``ProxyServer``'s way to a listening socket: the one the main process sent for ``address``."""
        socks = self.sockets.get(address)
        if not socks:
            raise OSError(f"no socket from the main process for {address[0]}:{address[1]}")
        return socks.pop(0)

    # -- serving -----------------------------------------------------------------------

    async def run(self) -> int:
        self.loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        # Ctrl-C and a terminal's hangup reach the whole process group: the main process decides (it stops
        # or reloads every worker), so a worker does not act on them alone.
        for sig in (signal.SIGINT, signal.SIGHUP):
            self.loop.add_signal_handler(sig, lambda: None)
        first = await self._next()
        if first is None:
            return 0
        self._take_sockets(first)
        try:
            config = self._config(first)
            self.server = ProxyServer(config, self.loop, source="config", bind=self._bind, checks=False)
            apply_flags(self.server.snapshot, first.get("flags", {}))
            await self.server.start()
        except (ConfigError, OSError) as err:
            log.error("worker %d cannot start: %s", self.index, err)
            self.channel.send({"type": "applied", "gen": first.get("gen", 0), "error": str(err)})
            return 1
        finally:
            self._close_sockets()  # the ones not taken (an address already listened on)
        self.channel.send({"type": "ready", "pid": os.getpid(), "gen": first.get("gen", 0)})
        reporter = self.loop.create_task(self._report())
        follower = self.loop.create_task(self._follow())
        await self.stopping.wait()
        follower.cancel()
        log.info("worker %d stopping: waiting up to %gs for requests in flight", self.index,
                 self.grace if self.grace is not None else self.server.config.shutdown_grace)
        await self.server.shutdown(self.grace)
        reporter.cancel()
        self.channel.send({"type": "report", "report": report(self.server)})
        self.channel.send({"type": "stopped"})
        await self._drain_channel()
        self.channel.close()
        return 0

    async def _next(self) -> Message | None:
        """The next message, or None once stopping."""
        get = self.loop.create_task(self.inbox.get())
        stop = self.loop.create_task(self.stopping.wait())
        done, _ = await asyncio.wait((get, stop), return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            stop.cancel()
            return get.result()
        get.cancel()
        return None

    async def _follow(self) -> None:
        """Apply configs and flags in the order they were sent."""
        while True:
            message = await self.inbox.get()
            if message is None:
                return
            try:
                await self._handle(message)
            except Exception:  # one bad message must not stop the worker serving
                log.exception("worker %d: could not apply a message from the main process", self.index)

    async def _handle(self, message: Message) -> None:
        server = self.server
        assert server is not None
        kind = message.get("type")
        if kind == "flags":
            apply_flags(server.snapshot, message.get("flags", {}))
        elif kind == "config":
            error: str | None = None
            flags: Flags = message.get("flags", {})
            self._take_sockets(message)
            try:
                await server.apply(self._config(message), same_routes=bool(message.get("same_routes")),
                                   prepare=lambda snapshot: apply_flags(snapshot, flags))
            except (ConfigError, OSError) as err:
                error = str(err)
                log.error("worker %d kept its running config: %s", self.index, err)
            finally:
                self._close_sockets()
            self.channel.send({"type": "applied", "gen": message.get("gen", 0), "error": error})

    def _config(self, message: Message) -> Config:
        return config_from_dump(message["config"], source=str(message.get("source", "config")))

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            if self.server is not None:
                self.channel.send({"type": "report", "report": report(self.server)})

    async def _drain_channel(self) -> None:
        """Let the last messages reach the main process (bounded: it may be gone)."""
        for _ in range(100):
            if self.channel.closed or not self.channel.pending:
                return
            await asyncio.sleep(0.01)


def setup_logging(index: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fulcrum-worker", description="a Fulcrum data-plane worker (started by "
                                     "`fulcrum run` with workers > 1, not by hand)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--channel", type=int, required=True, help="descriptor of the socket to the main process")
    args = parser.parse_args(argv)
    setup_logging(args.index)
    sock = socket.socket(fileno=args.channel)

    async def serve() -> int:
        return await Worker(args.index, sock, asyncio.get_running_loop()).run()

    with asyncio.Runner(loop_factory=install_uvloop()) as runner:
        return runner.run(serve())


if __name__ == "__main__":
    sys.exit(main())
