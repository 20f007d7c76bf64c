"""Several worker processes (``workers: N``): the main process's side.

With ``workers: 1`` none of this runs: one process serves, as ``fulcrum.supervisor.runner`` sets up.
With more, the main process keeps the control plane (the config, the admin API, health checks) and
starts N data-plane workers (``fulcrum.supervisor.worker``), each a fresh interpreter:

- sockets: the main process binds one SO_REUSEPORT socket per listen address and worker
  (``fulcrum.supervisor.sockets``) and passes each worker its own over the channel;
- snapshots: every config the main process puts in force (a reload, an admin API change) is sent to
  every worker as plain data (the effective config and the servers' health, disabled and draining
  flags); the main process waits until each worker has applied it. Health transitions and operators'
  flags are sent on their own as they happen;
- counters: each worker reports its counters; the main process shows their sums where one process
  would show its own (``fulcrum.supervisor.tally``), and each worker's figures beside them;
- restarts: a worker that exits unasked is logged, counted and replaced on the same sockets, so the
  connections waiting in its accept queue are served by its replacement; the others serve on.

``MainServer`` is the ``ProxyServer`` that ``Control`` drives in the main process: it builds the
snapshots and runs the health checks as a single process does, but serves no connections itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fulcrum.config import Config
from fulcrum.proxy.server import ProxyServer
from fulcrum.state.server import Server
from fulcrum.state.snapshot import Snapshot
from fulcrum.supervisor.ipc import Channel, Message
from fulcrum.supervisor.sockets import ListenSockets
from fulcrum.supervisor.tally import MAIN_FLAGS, Report, Tally, down_map

log = logging.getLogger("fulcrum.workers")

#: How long a worker may take to start serving, and to apply a config, before the main process moves on.
START_TIMEOUT = 60.0
APPLY_TIMEOUT = 10.0
#: A worker that dies sooner than this after starting is restarted after a growing delay (up to RESTART_MAX).
STABLE_AFTER = 10.0
RESTART_MAX = 5.0
#: How long past the shutdown grace a worker may take to exit before it is killed.
STOP_MARGIN = 5.0


class WorkerProcess:
    """One worker slot: the current process in it, its channel, its last report and how often it was replaced."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.pidfd = -1
        self.pid = 0
        self.ready = False
        self.started = 0.0
        self.restarts = 0
        self.quick_deaths = 0
        self.applied = 0  # the generation of the last config it acknowledged
        self.serving = 0  # the generation of the config it serves (the last it applied without error)
        self.waiting: list[tuple[int, asyncio.Future[None]]] = []
        self.up: asyncio.Future[None] | None = None
        self.last: Report | None = None

    def acknowledge(self, gen: int) -> None:
        self.applied = max(self.applied, gen)
        self.release(lambda g: g <= gen)

    def release(self, which: Callable[[int], bool] = lambda g: True) -> None:
        keep = []
        for gen, future in self.waiting:
            if which(gen):
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((gen, future))
        self.waiting = keep


class WorkerSet:
    """Starts, feeds, watches and stops the worker processes of one main process."""

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop, sockets: ListenSockets,
                 first_message: Callable[[int], tuple[Message, list[int]]],
                 on_report: Callable[[], None]) -> None:
        self.count = count
        self.loop = loop
        self.sockets = sockets
        self.first_message = first_message
        self.on_report = on_report
        self.slots = [WorkerProcess(i) for i in range(count)]
        self.tally = Tally()
        self.stopping = False
        self._respawns: set[asyncio.TimerHandle] = set()
        self._exited = asyncio.Event()

    # -- starting and replacing ---------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each serves; ``RuntimeError`` when one cannot start."""
        for worker in self.slots:
            self._spawn(worker)
        ups = [w.up for w in self.slots if w.up is not None]
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.gather(*ups)
        except TimeoutError:
            raise RuntimeError(f"the workers did not start within {START_TIMEOUT:g}s") from None

    def _spawn(self, worker: WorkerProcess) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "fulcrum.supervisor.worker", "--index", str(worker.slot),
                "--channel", str(theirs.fileno())]
        try:
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.proc = proc
        worker.pid = proc.pid
        worker.ready = False
        worker.started = time.monotonic()
        worker.applied = worker.serving = 0
        worker.up = self.loop.create_future()
        worker.up.add_done_callback(_retrieve)  # a replacement's failure is logged, not raised
        worker.channel = Channel(ours, self.loop, lambda m, fds: self._received(worker, m, fds),
                                 lambda: self._channel_lost(worker))
        worker.pidfd = os.pidfd_open(proc.pid)
        self.loop.add_reader(worker.pidfd, self._exited_now, worker)
        message, fds = self.first_message(worker.slot)
        worker.channel.send(message, fds)

    def _received(self, worker: WorkerProcess, message: Message, fds: list[int]) -> None:
        for fd in fds:  # workers send none
            os.close(fd)
        kind = message.get("type")
        if kind == "report":
            worker.last = message["report"]
            self.tally.update(worker.slot, message["report"])
            self.on_report()
        elif kind == "ready":
            worker.ready = True
            worker.serving = int(message.get("gen", 0))
            worker.acknowledge(worker.serving)
            log.info("worker %d serving (pid %d)", worker.slot, worker.pid)
            if worker.up is not None and not worker.up.done():
                worker.up.set_result(None)
        elif kind == "applied":
            if message.get("error"):
                log.error("worker %d (pid %d) could not apply config %s: %s", worker.slot, worker.pid,
                          message.get("gen"), message["error"])
            else:
                worker.serving = int(message.get("gen", 0))
            worker.acknowledge(int(message.get("gen", 0)))

    def _channel_lost(self, worker: WorkerProcess) -> None:
        proc = worker.proc
        if proc is not None and proc.poll() is None and not self.stopping:
            log.warning("worker %d (pid %d): its channel broke; stopping it", worker.slot, worker.pid)
            proc.terminate()

    def _exited_now(self, worker: WorkerProcess) -> None:
        self.loop.remove_reader(worker.pidfd)
        os.close(worker.pidfd)
        worker.pidfd = -1
        proc = worker.proc
        assert proc is not None
        code = proc.wait()
        channel, worker.channel = worker.channel, None
        if channel is not None:
            channel.read_pending()  # its last report, when it had time to send one
            channel.close()
        worker.proc = None
        worker.ready = False
        worker.release()
        self.tally.retire(worker.slot)
        worker.last = None
        self.on_report()
        if worker.up is not None and not worker.up.done():
            worker.up.set_exception(RuntimeError(f"worker {worker.slot} exited ({_how(code)}) before serving"))
        if self.stopping:
            if all(w.proc is None for w in self.slots):
                self._exited.set()
            return
        lived = time.monotonic() - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if lived < STABLE_AFTER else 0
        delay = restart_delay(worker.quick_deaths)
        worker.restarts += 1
        log.warning("worker %d (pid %d) %s; starting a new one%s", worker.slot, worker.pid, _how(code),
                    f" in {delay:g}s" if delay else "")
        self._respawn_later(worker, delay)

    def _respawn_later(self, worker: WorkerProcess, delay: float) -> None:
        handle: asyncio.TimerHandle | None = None

        def respawn() -> None:
            if handle is not None:
                self._respawns.discard(handle)
            if self.stopping:
                return
            try:
                self._spawn(worker)
            except OSError as err:  # out of processes or memory, say: try again later
                log.error("worker %d cannot be started: %s; trying again in %gs", worker.slot, err, RESTART_MAX)
                self._respawn_later(worker, RESTART_MAX)

        handle = self.loop.call_later(delay, respawn)
        self._respawns.add(handle)

    # -- feeding -------------------------------------------------------------------------

    def send_all(self, message: Message, fds_of: Callable[[int], list[int]] | None = None) -> None:
        for worker in self.slots:
            if worker.channel is not None:
                worker.channel.send(message, fds_of(worker.slot) if fds_of is not None else ())

    async def wait_applied(self, gen: int) -> None:
        """Until every live worker has applied config ``gen`` (or died, or APPLY_TIMEOUT passed)."""
        futures = []
        for worker in self.slots:
            if worker.channel is not None and worker.applied < gen:
                future: asyncio.Future[None] = self.loop.create_future()
                worker.waiting.append((gen, future))
                futures.append(future)
        if not futures:
            return
        try:
            async with asyncio.timeout(APPLY_TIMEOUT):
                await asyncio.gather(*futures)
        except TimeoutError:
            late = [w.slot for w in self.slots if w.channel is not None and w.applied < gen]
            log.warning("worker(s) %s have not applied config %d after %gs", late, gen, APPLY_TIMEOUT)

    # -- stopping --------------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Tell every worker to drain for up to ``grace`` seconds and exit; kill those that do not."""
        self.stopping = True
        for handle in self._respawns:
            handle.cancel()
        self._respawns.clear()
        self.send_all({"type": "stop", "grace": grace})
        if all(w.proc is None for w in self.slots):
            return
        try:
            async with asyncio.timeout(grace + STOP_MARGIN):
                await self._exited.wait()
        except TimeoutError:
            for worker in self.slots:
                if worker.proc is not None:
                    log.warning("worker %d (pid %d) did not stop in time; killing it", worker.slot, worker.pid)
                    worker.proc.kill()
            await self._exited.wait()

    # -- figures ---------------------------------------------------------------------------

    def view(self) -> list[dict[str, Any]]:
        """Each worker's own figures, for ``GET /api/v1/status``."""
        out = []
        for worker in self.slots:
            last = worker.last or {}
            stats = last.get("stats", {})
            out.append({
                "worker": worker.slot,
                "pid": worker.pid if worker.proc is not None else None,
                "up": worker.ready,
                "restarts": worker.restarts,
                "uptime_s": round(time.monotonic() - worker.started, 3) if worker.proc is not None else 0.0,
                "requests_total": stats.get("requests_total", 0),
                "responses_5xx": stats.get("responses_5xx", 0),
                "connections_active": stats.get("connections_active", 0),
                "connections_total": stats.get("connections_total", 0),
                "health_checks": last.get("health_checks", 0),
                "memory_bytes": last.get("memory_bytes", 0),
                "config_generation": worker.serving,
                "down": down_map(last) if last else {},
            })
        return out

    def memory_bytes(self) -> int:
        """Resident memory of the workers, as they last reported it."""
        return sum(int((w.last or {}).get("memory_bytes", 0)) for w in self.slots)

    def collect(self) -> Iterator[Metric]:
        """The per-worker metric families (the totals are in the usual ones)."""
        up = GaugeMetricFamily("fulcrum_worker_up", "1 while the worker process serves.", labels=("worker",))
        restarts = CounterMetricFamily("fulcrum_worker_restarts", "Times the worker process was replaced after "
                                       "exiting unasked.", labels=("worker",))
        requests = CounterMetricFamily("fulcrum_worker_requests", "Client requests the current worker process "
                                       "served (starts again at 0 when it is replaced).", labels=("worker",))
        connections = GaugeMetricFamily("fulcrum_worker_connections_active", "Open client connections of the "
                                        "worker process.", labels=("worker",))
        for worker in self.slots:
            label = (str(worker.slot),)
            stats = (worker.last or {}).get("stats", {})
            up.add_metric(label, 1 if worker.ready else 0)
            restarts.add_metric(label, worker.restarts)
            requests.add_metric(label, stats.get("requests_total", 0))
            connections.add_metric(label, stats.get("connections_active", 0))
        yield GaugeMetricFamily("fulcrum_workers", "Worker processes configured.", value=self.count)
        yield from (up, restarts, requests, connections)


def restart_delay(quick_deaths: int) -> float:
    """Seconds before a dead worker is replaced: at once, unless it keeps dying soon after starting
    (then 0.5 s, 1 s, 2 s ... up to RESTART_MAX), so a worker that cannot start does not spin."""
    if quick_deaths <= 1:
        return 0.0
    return float(min(RESTART_MAX, 0.25 * 2 ** (quick_deaths - 1)))


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def main_flags(snapshot: Snapshot) -> dict[str, dict[str, int]]:
    """The flags the main process owns (health, disabled, draining) of every server, by group and id."""
    return {name: {s.id: int(s.down & MAIN_FLAGS) for s in group.servers} for name, group in snapshot.groups.items()}


class MainServer(ProxyServer):
    """The main process's ``ProxyServer`` with several workers: snapshots and health checks, no connections.

    Every config it puts in force is sent to the workers (``apply`` returns once they have it); every
    change of a server's health or operator flags is sent as it happens. Its counters and servers'
    figures are the workers' totals.
    """

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop | None = None, source: str = "config") -> None:
        super().__init__(config, loop, source)
        self.sockets = ListenSockets(config.workers)
        self.workers = WorkerSet(config.workers, self.loop, self.sockets, self._first_message, self._tally)
        self.gen = 1
        self.same_routes = False
        self._dump: dict[str, Any] = config.model_dump(mode="json")
        self._watched: tuple[Server, ...] = ()
        self._flags_due = False
        self._flags_sent: dict[str, dict[str, int]] = {}

    @property
    def ports(self) -> list[int]:
        return self.sockets.ports(self.config)

    async def start(self) -> None:
        """Check health once, bind every worker's sockets, start the workers and wait until they serve."""
        await self._start_checkers(self.config)
        self.sockets.commit(self.sockets.prepare(self.config))
        self._watch(self.snapshot)
        try:
            await self.workers.start()
        except RuntimeError as err:
            await self.workers.stop(0)
            self.sockets.close()
            raise OSError(str(err)) from None
        log.info("listening on %s with %d workers", ", ".join(lst.describe() for lst in self.config.listen),
                 self.workers.count)

    async def apply(
        self,
        config: Config,
        *,
        same_routes: bool = False,
        prepare: Callable[[Snapshot], None] | None = None,
    ) -> None:
        """Put ``config`` in force here, then in every worker; a port that cannot be bound changes nothing."""
        pending = self.sockets.prepare(config)
        try:
            await super().apply(config, same_routes=same_routes, prepare=prepare)
        except BaseException:
            self.sockets.cancel(pending)
            raise
        self.sockets.commit(pending)
        self.gen += 1
        self.same_routes = same_routes
        self._dump = config.model_dump(mode="json")
        self._watch(self.snapshot)
        message = self._config_message()
        self.workers.send_all(message, lambda slot: self.sockets.for_slot(self.config, slot)[1])
        self._flags_sent = message["flags"]  # every worker has these now
        await self.workers.wait_applied(self.gen)

    def _config_message(self) -> Message:
        addresses, _ = self.sockets.for_slot(self.config, 0)
        return {"type": "config", "gen": self.gen, "source": self.source, "config": self._dump,
                "same_routes": self.same_routes, "flags": main_flags(self.snapshot),
                "listen": [list(a) for a in addresses]}

    def _first_message(self, slot: int) -> tuple[Message, list[int]]:
        return {**self._config_message(), "same_routes": False}, self.sockets.for_slot(self.config, slot)[1]

    # -- flags -------------------------------------------------------------------------------

    def _watch(self, snapshot: Snapshot) -> None:
        """Hear of every flag change of the servers in force (health checks, operators)."""
        for server in self._watched:
            server.unsubscribe(self._flag_changed)
        self._watched = tuple(s for g in snapshot.groups.values() for s in g.servers)
        for server in self._watched:
            server.subscribe(self._flag_changed)

    def _flag_changed(self, server: Server) -> None:
        if not self._flags_due:  # several changes in one turn of the loop go in one message
            self._flags_due = True
            self.loop.call_soon(self._send_flags)

    def _send_flags(self) -> None:
        self._flags_due = False
        flags = main_flags(self.snapshot)
        if flags != self._flags_sent:  # a change of the workers' own flags (shown here) is not news to them
            self._flags_sent = flags
            self.workers.send_all({"type": "flags", "gen": self.gen, "flags": flags})

    def _tally(self) -> None:
        self.workers.tally.apply(self.ctx.stats, self.ctx.metrics, self.snapshot)

    # -- stopping ------------------------------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain every worker (up to ``grace``), close the sockets, stop the health checks."""
        if grace is None:
            grace = self.config.shutdown_grace
        stopping = self.loop.create_task(self.workers.stop(grace))
        await asyncio.sleep(0)
        self.sockets.close()  # the workers close theirs as they stop: nothing accepts on the port any more
        await stopping
        for server in self._watched:
            server.unsubscribe(self._flag_changed)
        await super().shutdown(0)
