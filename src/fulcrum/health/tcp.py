"""Health checks by TCP connect for the servers of a TCP service.

A check opens a connection and closes it at once: a server that accepts within the timeout
passes. The state machine is the HTTP checker's (``HealthRecord``: the first result decides,
then ``fall`` failures in a row take a server down and ``rise`` passes bring it back), and so is
the one thing written to the data plane, the server's ``Down.ACTIVE_CHECK`` flag. Records are kept
by server id, so a checker rebuilt on a reload takes over its predecessor's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Sequence

from fulcrum.config.tcp import TcpHealthCheck
from fulcrum.health.active import HealthRecord, ProbeResult, next_delay
from fulcrum.state.server import Down
from fulcrum.state.tcp import TcpServer

logger = logging.getLogger("fulcrum.health")


async def connect_probe(host: str, port: int, timeout: float) -> ProbeResult:
    """Whether ``host:port`` accepts a TCP connection within ``timeout``; never raises (but for cancellation)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except TimeoutError:
        return ProbeResult(False, f"connect timeout after {timeout:g}s")
    except ConnectionRefusedError:
        return ProbeResult(False, "connect refused")
    except socket.gaierror:
        return ProbeResult(False, f"cannot resolve {host}")
    except OSError as err:
        return ProbeResult(False, f"connect error: {err.strerror or type(err).__name__}")
    transport.close()
    return ProbeResult(True)


class TcpHealthChecker:
    """Connect checks for the servers of one TCP service, each on its own cadence (``interval`` ± jitter)."""

    def __init__(
        self,
        service: str,
        servers: Sequence[TcpServer],
        spec: TcpHealthCheck,
        *,
        previous: TcpHealthChecker | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self.spec = spec
        self._rng = rng or random.Random()
        self._servers = {s.id: s for s in servers}
        prior = previous._records if previous is not None else {}
        self._records: dict[str, HealthRecord] = {}
        for server in servers:
            record = prior.get(server.id) or HealthRecord(healthy=spec.initial == "healthy")
            self._records[server.id] = record
            server.set_down(Down.ACTIVE_CHECK, not record.healthy)
        self._tasks: list[asyncio.Task[None]] = []

    def record(self, server_id: str) -> HealthRecord:
        return self._records[server_id]

    async def check_all_once(self) -> None:
        """One round over every server at once, each bounded by the check timeout."""
        await asyncio.gather(*(self._check(server) for server in self._servers.values()))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(s), name=f"fulcrum tcp health {self.service} {s.id}")
                       for s in self._servers.values()]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _first_delay(self, record: HealthRecord, now: float) -> float:
        # Never checked: at once. Checked before (the first round, or the checker this one replaced): on cadence.
        if record.last_check is None:
            return 0.0
        delay = next_delay(self.spec.interval, self.spec.jitter, self._rng)
        return min(max(0.0, delay - (now - record.last_check)), delay)

    async def _run(self, server: TcpServer) -> None:
        loop = asyncio.get_running_loop()
        delay = self._first_delay(self._records[server.id], loop.time())
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            try:
                await self._check(server)
            except Exception:  # keep checking whatever one round did
                logger.exception("TCP health check of %s %s crashed", self.service, server.id)
            delay = max(0.0, next_delay(self.spec.interval, self.spec.jitter, self._rng) - (loop.time() - started))

    async def _check(self, server: TcpServer) -> None:
        result = await connect_probe(server.host, server.port, self.spec.timeout)
        record = self._records[server.id]
        now = asyncio.get_running_loop().time()
        if record.record(result, now, rise=self.spec.rise, fall=self.spec.fall):
            if record.healthy:
                logger.info("tcp service %s: %s up (%d check(s) passed)", self.service, server.id, record.passes)
            else:
                logger.info("tcp service %s: %s down: %s", self.service, server.id, result.reason)
        server.set_down(Down.ACTIVE_CHECK, not record.healthy)
