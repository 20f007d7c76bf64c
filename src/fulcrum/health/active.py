"""Active health checks: a periodic HTTP request to every server of a group.

One :class:`HealthChecker` per upstream group. Each check opens a new TCP
connection (TLS for an https server, verified as the group's requests are),
sends one ``Connection: close`` request and reads the response
(bounded by the check timeout and a 64 KiB body cap). The checker writes one
thing to the data plane, the ``Down.ACTIVE_CHECK`` flag of each server; the
rest of its state (counters, last result, last failure) is kept by server id
so that a checker rebuilt on a config reload can take it over.

Rules, in the order they apply to a server:

- Before its first result a server is down, unless ``initial: healthy``.
- The first result decides alone (there is no history): a pass marks it up,
  a failure marks it down. Fulcrum runs one round (:meth:`check_all_once`)
  before it accepts traffic, so no request goes to a server known dead.
- After that, ``fall`` consecutive failures take a healthy server down and
  ``rise`` consecutive passes bring a down server back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fulcrum.health.response import InvalidResponse, NoResponse, ResponseParser
from fulcrum.state.server import Down, Server

logger = logging.getLogger("fulcrum.health")

#: How much of a response body a check reads at most.
BODY_CAP = 65536
USER_AGENT = "fulcrum-health"
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[\x21-\x7e]+")  # visible ASCII, no spaces or controls
_READ_SIZE = 16384


class StatusMatcher(Protocol):
    """Decides whether a response status passes (the config's ``expect_status``)."""

    def matches(self, code: int) -> bool: ...


class HealthCheckSpec(Protocol):
    """What a checker reads from an upstream group's ``health_check`` config; times in seconds."""

    @property
    def path(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def host(self) -> str | None: ...
    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def jitter(self) -> float: ...
    @property
    def expect_status(self) -> StatusMatcher: ...
    @property
    def expect_body(self) -> str | None: ...
    @property
    def rise(self) -> int: ...
    @property
    def fall(self) -> int: ...
    @property
    def initial(self) -> str: ...


class ClientTLSSpec(Protocol):
    """How checks of https servers connect (``fulcrum.proxy.tls.ClientTLS``)."""

    @property
    def context(self) -> ssl.SSLContext: ...
    def hostname(self, host: str) -> str: ...


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one check: ``reason`` says why it failed (empty when it passed)."""

    ok: bool
    reason: str = ""
    status: int | None = None


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """A snapshot of one server's health-check state, for the admin API and metrics.

    Times are in the checker's clock (loop time unless another was given).
    """

    server_id: str
    healthy: bool
    checked: bool
    last_check: float | None
    last_ok: bool | None
    last_status: int | None
    last_failure: str | None
    consecutive_passes: int
    consecutive_failures: int
    total_checks: int
    total_failures: int
    changed_at: float | None


@dataclass(slots=True)
class HealthRecord:
    """The health state machine of one server: pure, fed with results and times."""

    healthy: bool
    checked: bool = False
    passes: int = 0
    failures: int = 0
    total: int = 0
    total_failures: int = 0
    last_check: float | None = None
    last_ok: bool | None = None
    last_status: int | None = None
    last_failure: str | None = None
    changed_at: float | None = None

    def record(self, result: ProbeResult, now: float, *, rise: int, fall: int) -> bool:
        """Apply one result; True when the server changed between healthy and down."""
        self.total += 1
        self.last_check = now
        self.last_ok = result.ok
        self.last_status = result.status
        if result.ok:
            self.passes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.passes = 0
            self.total_failures += 1
            self.last_failure = result.reason
        if not self.checked:
            self.checked = True
            healthy = result.ok  # no history yet: the first result decides
        elif self.healthy:
            healthy = self.failures < fall
        else:
            healthy = self.passes >= rise
        if healthy == self.healthy:
            return False
        self.healthy = healthy
        self.changed_at = now
        return True

    def status(self, server_id: str) -> CheckStatus:
        return CheckStatus(
            server_id=server_id,
            healthy=self.healthy,
            checked=self.checked,
            last_check=self.last_check,
            last_ok=self.last_ok,
            last_status=self.last_status,
            last_failure=self.last_failure,
            consecutive_passes=self.passes,
            consecutive_failures=self.failures,
            total_checks=self.total,
            total_failures=self.total_failures,
            changed_at=self.changed_at,
        )


def next_delay(interval: float, jitter: float, rng: random.Random) -> float:
    """Seconds to the next check: ``interval`` ± ``jitter * interval``, so the checks of many servers spread out."""
    if jitter <= 0:
        return interval
    return max(0.0, interval * (1.0 + rng.uniform(-jitter, jitter)))


def build_request(spec: HealthCheckSpec, host_header: str) -> bytes:
    """The request bytes of a check; raises ValueError for a method, path or host that cannot go on the wire."""
    method = spec.method.upper()
    if _METHOD.fullmatch(method) is None:
        raise ValueError(f"health check method {spec.method!r} is not a valid HTTP method")
    if _TARGET.fullmatch(spec.path) is None or not (spec.path.startswith("/") or spec.path == "*"):
        raise ValueError(f"health check path {spec.path!r} must start with / and hold no spaces or controls")
    if _TARGET.fullmatch(host_header) is None:
        raise ValueError(f"health check host {host_header!r} holds spaces or controls")
    head = (
        f"{method} {spec.path} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n\r\n"
    )
    try:
        return head.encode("ascii")
    except UnicodeEncodeError as err:
        raise ValueError(f"health check request is not ASCII: {err}") from None


def evaluate(parser: ResponseParser, spec: HealthCheckSpec) -> ProbeResult:
    """Whether a parsed response passes: the status matches and the body holds ``expect_body``."""
    if not spec.expect_status.matches(parser.status):
        return ProbeResult(False, f"status {parser.status}", parser.status)
    expect = spec.expect_body
    if expect and expect.encode() not in parser.body:
        return ProbeResult(False, f"body lacks {expect!r}", parser.status)
    return ProbeResult(True, "", parser.status)


async def probe(
    host: str, port: int, request: bytes, spec: HealthCheckSpec, tls: ClientTLSSpec | None = None
) -> ProbeResult:
    """Run one check against ``host:port`` (over TLS with ``tls``); never raises (but for cancellation), bounded
    by ``spec.timeout``, the handshake included."""
    parser = ResponseParser(head_request=request.startswith(b"HEAD "), body_cap=BODY_CAP)
    try:
        async with asyncio.timeout(spec.timeout):
            if tls is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                reader, writer = await asyncio.open_connection(host, port, ssl=tls.context,
                                                               server_hostname=tls.hostname(host))
            try:
                writer.write(request)
                await writer.drain()
                while not parser.done:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        parser.feed_eof()
                        break
                    parser.feed(data)
            finally:
                writer.close()
    except TimeoutError:
        return ProbeResult(False, f"timeout after {spec.timeout}s")
    except ConnectionRefusedError:
        return ProbeResult(False, "connect refused")
    except NoResponse:
        return ProbeResult(False, "no response")
    except InvalidResponse as err:
        logger.debug("health check of %s:%s: invalid response: %s", host, port, err)
        return ProbeResult(False, "invalid response", parser.status or None)
    except (ConnectionResetError, BrokenPipeError):
        return ProbeResult(False, "connection reset")
    except ssl.SSLError as err:
        return ProbeResult(False, f"TLS error: {err.reason or err}")
    except socket.gaierror:
        return ProbeResult(False, f"cannot resolve {host}")
    except OSError as err:
        return ProbeResult(False, f"connect error: {err.strerror or type(err).__name__}")
    except Exception as err:  # a check must never take anything else down
        logger.debug("health check of %s:%s failed", host, port, exc_info=True)
        return ProbeResult(False, f"check error: {type(err).__name__}")
    return evaluate(parser, spec)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _plural(n: int, word: str, plural: str) -> str:
    return f"{n} {word if n == 1 else plural}"


class HealthChecker:
    """Active health checks for the servers of one upstream group.

    ``on_change(server, healthy, reason)`` is called when a server goes down
    (``reason`` is the failure) or comes back up. To carry state across a
    reload, build the new checker with ``previous=old`` (or call
    :meth:`adopt`): servers with the same id keep their health and counters.
    Stop the old checker before starting the new one.
    """

    def __init__(
        self,
        group: str,
        servers: Sequence[Server],
        spec: HealthCheckSpec,
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        on_change: Callable[[Server, bool, str], None] | None = None,
        previous: HealthChecker | None = None,
        tls: ClientTLSSpec | None = None,
    ) -> None:
        if spec.interval <= 0 or spec.timeout <= 0:
            raise ValueError("health check interval and timeout must be positive")
        if spec.rise < 1 or spec.fall < 1:
            raise ValueError("health check rise and fall must be at least 1")
        if spec.initial not in ("healthy", "unhealthy"):
            raise ValueError(f"health check initial must be healthy or unhealthy, got {spec.initial!r}")
        self.group = group
        self.spec = spec
        self._clock = clock or _loop_time
        self._rng = rng or random.Random()
        self._on_change = on_change
        self._tls = tls  # for the group's https servers
        self._servers: dict[str, Server] = {}
        self._records: dict[str, HealthRecord] = {}
        self._requests: dict[str, bytes] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()
        self._running = False
        prior = previous._records if previous is not None else {}
        for server in servers:
            self._add(server, prior.get(server.id))

    # -- membership and state -------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    def server_ids(self) -> list[str]:
        return list(self._servers)

    def add_server(self, server: Server) -> None:
        """Check one more server; it stays down until its first check passes (unless ``initial: healthy``)."""
        self._add(server, None)

    def remove_server(self, server_id: str) -> bool:
        """Stop checking a server; False when it was not checked here. Its flags are left as they are."""
        if self._servers.pop(server_id, None) is None:
            return False
        del self._records[server_id]
        del self._requests[server_id]
        task = self._tasks.pop(server_id, None)
        if task is not None:
            task.cancel()
            self._cancelled.add(task)
            task.add_done_callback(self._cancelled.discard)
        return True

    def adopt(self, previous: HealthChecker) -> None:
        """Take over the health state and counters of servers that ``previous`` checked under the same id."""
        for server_id, server in self._servers.items():
            record = previous._records.get(server_id)
            if record is not None:
                self._records[server_id] = dataclasses.replace(record)
                server.set_down(Down.ACTIVE_CHECK, not record.healthy)

    def status(self, server_id: str) -> CheckStatus:
        """The check state of one server; KeyError when it is not checked here."""
        return self._records[server_id].status(server_id)

    def statuses(self) -> dict[str, CheckStatus]:
        """The check state of every server, by id, in the group's order."""
        return {server_id: record.status(server_id) for server_id, record in self._records.items()}

    def _add(self, server: Server, prior: HealthRecord | None) -> None:
        if server.id in self._servers:
            raise ValueError(f"server {server.id} is already checked in group {self.group!r}")
        request = build_request(self.spec, self.spec.host or server.id)
        if prior is not None:
            record = dataclasses.replace(prior)
        else:
            record = HealthRecord(healthy=self.spec.initial == "healthy")
        self._servers[server.id] = server
        self._records[server.id] = record
        self._requests[server.id] = request
        server.set_down(Down.ACTIVE_CHECK, not record.healthy)
        if self._running:
            self._spawn(server.id)

    # -- checking ---------------------------------------------------------------

    async def check_all_once(self) -> None:
        """One round over every server at once, each bounded by the check timeout, results applied."""
        await asyncio.gather(*(self._check(server_id) for server_id in list(self._servers)))

    async def check_once(self, server_id: str) -> ProbeResult:
        """Check one server now and apply the result; KeyError when it is not checked here."""
        if server_id not in self._servers:
            raise KeyError(server_id)
        return await self._check(server_id)

    def start(self) -> None:
        """Check every server periodically in the background (needs a running loop)."""
        if self._running:
            raise RuntimeError(f"health checks of group {self.group!r} already running")
        asyncio.get_running_loop()
        self._running = True
        for server_id in self._servers:
            self._spawn(server_id)

    async def stop(self) -> None:
        """Cancel every background check and wait until they are gone."""
        self._running = False
        tasks = [*self._tasks.values(), *self._cancelled]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, server_id: str) -> None:
        self._tasks[server_id] = asyncio.get_running_loop().create_task(
            self._run(server_id), name=f"fulcrum health {self.group} {server_id}"
        )

    def _first_delay(self, record: HealthRecord) -> float:
        # A server never checked is checked at once; one checked before (by the start-up
        # round or a previous checker) keeps its cadence.
        if record.last_check is None:
            return 0.0
        delay = next_delay(self.spec.interval, self.spec.jitter, self._rng)
        elapsed = self._clock() - record.last_check
        return min(max(0.0, delay - elapsed), delay)

    async def _run(self, server_id: str) -> None:
        loop = asyncio.get_running_loop()
        record = self._records.get(server_id)
        delay = self._first_delay(record) if record is not None else 0.0
        while server_id in self._servers:
            if delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            try:
                await self._check(server_id)
            except Exception:  # keep checking whatever one round did
                logger.exception("health check of %s %s crashed", self.group, server_id)
            spent = loop.time() - started
            delay = max(0.0, next_delay(self.spec.interval, self.spec.jitter, self._rng) - spent)

    async def _check(self, server_id: str) -> ProbeResult:
        server = self._servers.get(server_id)
        record = self._records.get(server_id)
        if server is None or record is None:
            return ProbeResult(False, "not checked")  # removed before its turn came
        tls = self._tls if server.tls else None
        result = await probe(server.host, server.port, self._requests[server_id], self.spec, tls)
        if self._records.get(server_id) is not record:
            return result  # removed or taken over while the check ran
        changed = record.record(result, self._clock(), rise=self.spec.rise, fall=self.spec.fall)
        server.set_down(Down.ACTIVE_CHECK, not record.healthy)
        if changed:
            self._announce(server, record)
        elif not result.ok:
            logger.debug("%s %s check failed: %s", self.group, server_id, result.reason)
        return result

    def _announce(self, server: Server, record: HealthRecord) -> None:
        if record.healthy:
            reason = _plural(record.passes, "check passed", "checks passed")
            logger.info("%s %s up: %s", self.group, server.id, reason)
        else:
            reason = record.last_failure or "check failed"
            logger.info(
                "%s %s down: %s (%s)", self.group, server.id, reason, _plural(record.failures, "failure", "failures")
            )
        if self._on_change is not None:
            try:
                self._on_change(server, record.healthy, reason)
            except Exception:
                logger.exception("health change callback failed for %s %s", self.group, server.id)
