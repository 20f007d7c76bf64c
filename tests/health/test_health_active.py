"""Active health checks against real asyncio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulcrum.health.active import (
    CheckStatus,
    HealthChecker,
    HealthRecord,
    ProbeResult,
    build_request,
    next_delay,
)
from fulcrum.state.server import Down, Server

WAIT = 5.0  # upper bound on waiting for a condition; never reached when things work


@dataclass
class Codes:
    low: int = 200
    high: int = 399

    def matches(self, code: int) -> bool:
        return self.low <= code <= self.high


@dataclass
class Spec:
    path: str = "/health"
    method: str = "GET"
    host: str | None = None
    interval: float = 2.0
    timeout: float = 1.0
    jitter: float = 0.1
    expect_status: Codes = field(default_factory=Codes)
    expect_body: str | None = None
    rise: int = 2
    fall: int = 3
    initial: str = "unhealthy"


def response(status: int = 200, body: bytes = b"ok", *, chunked: bool = False, head: bytes = b"") -> bytes:
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        framing = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    return b"HTTP/1.1 %d X\r\n%s" % (status, head) + framing


@dataclass
class Reply:
    data: bytes
    hang: bool = False  # after writing data, keep the connection open and silent


HANG = Reply(b"", hang=True)


class FakeUpstream:
    """A minimal HTTP server: answers each connection with the next scripted reply, else ``default``."""

    def __init__(self, default: Reply) -> None:
        self.default = default
        self.script: deque[Reply] = deque()
        self.requests: list[bytes] = []
        self.port = 0
        self._release = asyncio.Event()
        self._arrived = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            self._arrived.set()
            reply = self.script.popleft() if self.script else self.default
            writer.write(reply.data)
            await writer.drain()
            if reply.hang:
                await self._release.wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)

    async def wait_requests(self, count: int) -> None:
        """Wait until ``count`` requests have arrived (bounded by WAIT)."""

        async def arrived() -> None:
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(arrived(), WAIT)

    async def close(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._handlers, return_exceptions=True)


Factory = Callable[..., Awaitable[FakeUpstream]]


@pytest.fixture
async def start_fake() -> AsyncIterator[Factory]:
    started: list[FakeUpstream] = []

    async def make(default: Reply | bytes | None = None) -> FakeUpstream:
        if not isinstance(default, Reply):
            default = Reply(response() if default is None else default)
        upstream = await FakeUpstream(default).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    # Bound but not listening: connecting is refused, and no one else can take the port meanwhile.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


class Changes:
    """Records on_change calls; ``wait_for`` waits until a server reaches a state."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, server: Server, healthy: bool, reason: str) -> None:
        self.calls.append((server.id, healthy, reason))
        self._changed.set()

    async def wait_for(self, server_id: str, healthy: bool) -> None:
        async def reached() -> None:
            while not any(c[:2] == (server_id, healthy) for c in self.calls):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(reached(), WAIT)


async def check(server: Server, spec: Spec | None = None) -> CheckStatus:
    checker = HealthChecker("app", [server], spec or Spec())
    await checker.check_all_once()
    return checker.status(server.id)


# -- one check ----------------------------------------------------------------


async def test_passing_check_sends_a_proper_request(start_fake: Factory) -> None:
    upstream = await start_fake()
    server = Server(upstream.url)
    status = await check(server)
    assert status.healthy and status.last_ok and status.checked
    assert status.last_status == 200
    assert status.last_failure is None
    assert server.healthy
    (request,) = upstream.requests
    lines = request.decode().split("\r\n")
    assert lines[0] == "GET /health HTTP/1.1"
    assert f"Host: 127.0.0.1:{upstream.port}" in lines
    assert "User-Agent: fulcrum-health" in lines
    assert "Connection: close" in lines


async def test_configured_host_method_and_path(start_fake: Factory) -> None:
    upstream = await start_fake()
    await check(Server(upstream.url), Spec(host="app.internal", path="/ready?deep=1", method="post"))
    lines = upstream.requests[0].decode().split("\r\n")
    assert lines[0] == "POST /ready?deep=1 HTTP/1.1"
    assert "Host: app.internal" in lines


async def test_refused_port(refused_port: int) -> None:
    server = Server(f"http://127.0.0.1:{refused_port}")
    status = await check(server)
    assert (status.healthy, status.last_ok, status.last_failure) == (False, False, "connect refused")
    assert server.down & Down.ACTIVE_CHECK


async def test_hanging_server_times_out(start_fake: Factory) -> None:
    upstream = await start_fake(HANG)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = await check(Server(upstream.url), Spec(timeout=0.1))
    assert status.last_failure == "timeout after 0.1s"
    assert loop.time() - started < 1.0


async def test_server_that_sends_headers_then_stalls_times_out(start_fake: Factory) -> None:
    upstream = await start_fake(Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", hang=True))
    status = await check(Server(upstream.url), Spec(timeout=0.1))
    assert status.last_failure == "timeout after 0.1s"


async def test_wrong_status(start_fake: Factory) -> None:
    upstream = await start_fake(response(503))
    status = await check(Server(upstream.url))
    assert (status.last_failure, status.last_status, status.healthy) == ("status 503", 503, False)


async def test_expect_status_is_the_spec_matcher(start_fake: Factory) -> None:
    upstream = await start_fake(response(503))
    status = await check(Server(upstream.url), Spec(expect_status=Codes(500, 503)))
    assert status.healthy


async def test_body_must_contain_expect_body(start_fake: Factory) -> None:
    upstream = await start_fake(response(200, b"status: degraded"))
    status = await check(Server(upstream.url), Spec(expect_body="ok"))
    assert status.last_failure == "body lacks 'ok'"
    assert not status.healthy


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_containing_expect_body_passes(start_fake: Factory, chunked: bool) -> None:
    upstream = await start_fake(response(200, b'{"status": "ok"}', chunked=chunked))
    status = await check(Server(upstream.url), Spec(expect_body='"ok"'))
    assert status.healthy


async def test_body_read_until_close(start_fake: Factory) -> None:
    upstream = await start_fake(b"HTTP/1.0 200 OK\r\n\r\nall is ok")
    status = await check(Server(upstream.url), Spec(expect_body="is ok"))
    assert status.healthy


async def test_garbage_response(start_fake: Factory) -> None:
    upstream = await start_fake(b"this is not http at all\r\n\r\n")
    status = await check(Server(upstream.url))
    assert status.last_failure == "invalid response"


async def test_garbage_without_close_fails_before_the_timeout(start_fake: Factory) -> None:
    upstream = await start_fake(Reply(b"\x00\x01\x02", hang=True))
    status = await check(Server(upstream.url), Spec(timeout=WAIT))
    assert status.last_failure == "invalid response"


async def test_close_without_response(start_fake: Factory) -> None:
    upstream = await start_fake(b"")
    status = await check(Server(upstream.url))
    assert status.last_failure == "no response"


async def test_head_reads_no_body(start_fake: Factory) -> None:
    # A HEAD response announces a body it does not send; waiting for it would time out.
    upstream = await start_fake(Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", hang=True))
    status = await check(Server(upstream.url), Spec(method="HEAD", path="/", timeout=WAIT))
    assert status.healthy
    assert upstream.requests[0].startswith(b"HEAD / HTTP/1.1\r\n")


def test_request_rejects_what_cannot_go_on_the_wire() -> None:
    with pytest.raises(ValueError, match="path"):
        build_request(Spec(path="/a b"), "h:1")
    with pytest.raises(ValueError, match="path"):
        build_request(Spec(path="health"), "h:1")
    with pytest.raises(ValueError, match="method"):
        build_request(Spec(method="GE T"), "h:1")
    with pytest.raises(ValueError, match="host"):
        build_request(Spec(), "h\r\nX: 1")
    with pytest.raises(ValueError, match="interval"):
        HealthChecker("app", [], Spec(interval=0))
    with pytest.raises(ValueError, match="rise"):
        HealthChecker("app", [], Spec(rise=0))


# -- state: first round, rise and fall -----------------------------------------


async def test_first_round_decides_alone(start_fake: Factory, refused_port: int) -> None:
    good = Server((await start_fake()).url)
    bad = Server(f"http://127.0.0.1:{refused_port}")
    changes = Changes()
    checker = HealthChecker("app", [good, bad], Spec(rise=5, fall=5), on_change=changes)
    assert good.down & Down.ACTIVE_CHECK and bad.down & Down.ACTIVE_CHECK  # unknown until checked
    assert not checker.status(good.id).checked
    await checker.check_all_once()
    assert good.eligible  # one pass, although rise is 5
    assert bad.down == Down.ACTIVE_CHECK
    assert changes.calls == [(good.id, True, "1 check passed")]


async def test_first_round_failure_takes_down_an_initially_healthy_server(refused_port: int) -> None:
    bad = Server(f"http://127.0.0.1:{refused_port}")
    changes = Changes()
    checker = HealthChecker("app", [bad], Spec(initial="healthy", fall=5), on_change=changes)
    assert bad.eligible
    await checker.check_all_once()
    assert not bad.healthy
    assert changes.calls == [(bad.id, False, "connect refused")]


async def test_rise_and_fall_are_respected_exactly(start_fake: Factory) -> None:
    upstream = await start_fake()
    server = Server(upstream.url)
    changes = Changes()
    checker = HealthChecker("app", [server], Spec(rise=2, fall=3), on_change=changes)
    ok, fail = Reply(response(200)), Reply(response(503))
    # result sent -> health expected after it
    steps = [
        (ok, True),
        (fail, True),
        (fail, True),
        (ok, True),  # a pass resets the failure run
        (fail, True),
        (fail, True),
        (fail, False),  # third consecutive failure
        (ok, False),
        (fail, False),  # a failure resets the pass run
        (ok, False),
        (ok, True),  # second consecutive pass
        (ok, True),
    ]
    for number, (reply, healthy) in enumerate(steps, 1):
        upstream.script.append(reply)
        await checker.check_all_once()
        assert server.healthy is healthy, f"after check {number}"
    assert [c[1] for c in changes.calls] == [True, False, True]
    status = checker.status(server.id)
    assert (status.total_checks, status.total_failures) == (12, 6)
    assert (status.consecutive_passes, status.consecutive_failures) == (3, 0)
    assert status.last_failure == "status 503"


async def test_state_change_is_logged_once(start_fake: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum.health")
    upstream = await start_fake()
    server = Server(upstream.url)
    checker = HealthChecker("app", [server], Spec(fall=3))
    await checker.check_all_once()
    await checker.check_all_once()
    upstream.script.extend([Reply(response(503))] * 4)
    for _ in range(4):
        await checker.check_all_once()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert messages == [f"app {server.id} up: 1 check passed", f"app {server.id} down: status 503 (3 failures)"]


async def test_failing_callback_does_not_stop_checks(start_fake: Factory) -> None:
    server = Server((await start_fake()).url)

    def explode(server: Server, healthy: bool, reason: str) -> None:
        raise RuntimeError("boom")

    checker = HealthChecker("app", [server], Spec(), on_change=explode)
    await checker.check_all_once()
    assert server.healthy


def results() -> st.SearchStrategy[list[bool]]:
    return st.lists(st.booleans(), min_size=1, max_size=40)


def trailing(outcomes: list[bool], value: bool) -> int:
    run = 0
    for outcome in reversed(outcomes):
        if outcome is not value:
            break
        run += 1
    return run


@given(results(), st.integers(1, 4), st.integers(1, 4), st.booleans())
def test_record_changes_only_on_a_full_run(outcomes: list[bool], rise: int, fall: int, initial: bool) -> None:
    record = HealthRecord(healthy=initial)
    for i, ok in enumerate(outcomes):
        before = record.healthy
        changed = record.record(ProbeResult(ok, "" if ok else "status 500"), float(i), rise=rise, fall=fall)
        assert changed == (record.healthy != before)
        seen = outcomes[: i + 1]
        if i == 0:
            assert record.healthy == ok  # no history: the first result decides
            continue
        if changed:
            assert trailing(seen, record.healthy) == (rise if record.healthy else fall)
        if trailing(seen, True) >= rise:
            assert record.healthy
        if trailing(seen, False) >= fall:
            assert not record.healthy
        assert (record.passes, record.failures) == (trailing(seen, True), trailing(seen, False))
    assert record.total == len(outcomes)
    assert record.total_failures == outcomes.count(False)


# -- membership and reloads -------------------------------------------------------


async def test_added_server_starts_down_until_one_pass(start_fake: Factory) -> None:
    upstream = await start_fake()
    checker = HealthChecker("app", [], Spec(rise=3))
    server = Server(upstream.url)
    checker.add_server(server)
    assert server.down == Down.ACTIVE_CHECK
    await checker.check_once(server.id)
    assert server.eligible


async def test_added_server_that_fails_first_needs_rise(start_fake: Factory) -> None:
    upstream = await start_fake()
    upstream.script.append(Reply(response(500)))
    checker = HealthChecker("app", [], Spec(rise=2))
    server = Server(upstream.url)
    checker.add_server(server)
    await checker.check_once(server.id)
    await checker.check_once(server.id)
    assert not server.healthy
    await checker.check_once(server.id)
    assert server.healthy


async def test_added_server_with_initial_healthy(refused_port: int) -> None:
    checker = HealthChecker("app", [], Spec(initial="healthy"))
    server = Server(f"http://127.0.0.1:{refused_port}")
    checker.add_server(server)
    assert server.eligible
    assert checker.status(server.id).healthy
    with pytest.raises(ValueError, match="already"):
        checker.add_server(Server(server.url))


async def test_remove_server(refused_port: int) -> None:
    server = Server(f"http://127.0.0.1:{refused_port}")
    checker = HealthChecker("app", [server], Spec())
    assert checker.remove_server(server.id)
    assert not checker.remove_server(server.id)
    assert checker.statuses() == {}
    with pytest.raises(KeyError):
        checker.status(server.id)
    await checker.check_all_once()  # nothing left to check


async def test_rebuilt_checker_keeps_state_by_server_id(start_fake: Factory) -> None:
    kept_upstream = await start_fake(response(503))
    other_upstream = await start_fake()
    kept, other = Server(kept_upstream.url), Server(other_upstream.url)
    old = HealthChecker("app", [kept, other], Spec(fall=3))
    await old.check_all_once()
    await old.check_all_once()
    before = old.status(kept.id)
    assert (before.healthy, before.total_checks, before.consecutive_failures) == (False, 2, 2)

    # A reload: new Server objects, one server gone, one new.
    new_upstream = await start_fake()
    kept2, added = Server(kept_upstream.url), Server(new_upstream.url)
    assert kept2.eligible
    new = HealthChecker("app", [kept2, added], Spec(fall=3, rise=2), previous=old)
    assert new.status(kept.id) == before
    assert kept2.down == Down.ACTIVE_CHECK
    assert not new.status(added.id).checked and added.down == Down.ACTIVE_CHECK
    assert set(new.statuses()) == {kept.id, added.id}

    # The counters go on from where they were, and the old checker's records are not shared.
    kept_upstream.default = Reply(response(200))
    await new.check_all_once()
    status = new.status(kept.id)
    assert (status.total_checks, status.consecutive_passes, status.healthy) == (3, 1, False)
    assert old.status(kept.id).total_checks == 2


async def test_adopt_after_construction(start_fake: Factory) -> None:
    upstream = await start_fake()
    old_server = Server(upstream.url)
    old = HealthChecker("app", [old_server], Spec())
    await old.check_all_once()
    server = Server(upstream.url)
    new = HealthChecker("app", [server], Spec())
    assert not server.healthy
    new.adopt(old)
    assert server.healthy
    assert new.status(server.id).total_checks == 1


# -- background scheduling ------------------------------------------------------------


async def test_background_checks_follow_the_endpoint(start_fake: Factory) -> None:
    upstream = await start_fake()
    server = Server(upstream.url)
    changes = Changes()
    checker = HealthChecker("app", [server], Spec(interval=0.02, timeout=0.5, rise=2, fall=2), on_change=changes)
    checker.start()
    try:
        await changes.wait_for(server.id, True)
        upstream.default = Reply(response(503))
        await changes.wait_for(server.id, False)
        assert checker.status(server.id).consecutive_failures >= 2
        upstream.default = Reply(response(200))
        changes.calls.clear()
        await changes.wait_for(server.id, True)
        assert server.healthy
    finally:
        await checker.stop()
    assert [c[1] for c in changes.calls] == [True]


async def test_hanging_server_does_not_block_the_others(start_fake: Factory) -> None:
    hanging = Server((await start_fake(HANG)).url)
    good_upstream = await start_fake()
    good = Server(good_upstream.url)
    checker = HealthChecker("app", [hanging, good], Spec(interval=0.02, timeout=WAIT))
    checker.start()
    try:
        # One server's checks run one after another, so a fourth request means three results are in.
        await good_upstream.wait_requests(4)
        assert checker.status(good.id).total_checks >= 3
        assert good.healthy
        assert checker.status(hanging.id).total_checks == 0
    finally:
        await checker.stop()


async def test_server_added_while_running_is_checked_at_once(start_fake: Factory) -> None:
    changes = Changes()
    checker = HealthChecker("app", [], Spec(interval=60), on_change=changes)
    checker.start()
    try:
        server = Server((await start_fake()).url)
        checker.add_server(server)
        await changes.wait_for(server.id, True)
    finally:
        await checker.stop()


def health_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("fulcrum health")]


async def test_stop_leaves_no_tasks(start_fake: Factory, refused_port: int) -> None:
    good_upstream = await start_fake()
    servers = [
        Server((await start_fake(HANG)).url),
        Server(good_upstream.url),
        Server(f"http://127.0.0.1:{refused_port}"),
    ]
    checker = HealthChecker("app", servers, Spec(interval=0.01, timeout=WAIT))
    checker.start()
    with pytest.raises(RuntimeError):
        checker.start()
    assert len(health_tasks()) == 3
    await good_upstream.wait_requests(2)
    checker.remove_server(servers[2].id)
    await checker.stop()
    assert health_tasks() == []
    assert not checker.running
    checker.start()  # a stopped checker can start again
    assert len(health_tasks()) == 2
    await checker.stop()
    assert health_tasks() == []


# -- timing, pure ----------------------------------------------------------------------


def test_jitter_spreads_checks() -> None:
    rng = random.Random(7)
    delays = [next_delay(2.0, 0.1, rng) for _ in range(1000)]
    assert all(1.8 <= d <= 2.2 for d in delays)
    assert len(set(delays)) == len(delays)
    assert min(delays) < 1.85 and max(delays) > 2.15  # the whole band is used
    assert 1.97 < sum(delays) / len(delays) < 2.03  # and the mean interval is kept
    assert next_delay(2.0, 0.0, rng) == 2.0


def test_checked_server_keeps_its_cadence() -> None:
    now = [100.0]
    checker = HealthChecker("app", [], Spec(interval=2.0, jitter=0.0), clock=lambda: now[0])
    assert checker._first_delay(HealthRecord(healthy=False)) == 0.0  # never checked: at once
    record = HealthRecord(healthy=True, checked=True, last_check=99.5)
    assert checker._first_delay(record) == 1.5
    now[0] = 130.0
    assert checker._first_delay(record) == 0.0  # overdue
    now[0] = 50.0
    assert checker._first_delay(record) == 2.0  # a clock behind the record waits one interval at most


def test_same_seed_same_schedule() -> None:
    first = [next_delay(1.0, 0.5, random.Random(3)) for _ in range(3)]
    assert first == [next_delay(1.0, 0.5, random.Random(3)) for _ in range(3)]


async def test_injected_clock_stamps_results(start_fake: Factory) -> None:
    now = [100.0]
    server = Server((await start_fake()).url)
    checker = HealthChecker("app", [server], Spec(), clock=lambda: now[0])
    await checker.check_all_once()
    now[0] = 105.0
    await checker.check_all_once()
    status = checker.status(server.id)
    assert (status.last_check, status.changed_at) == (105.0, 100.0)
