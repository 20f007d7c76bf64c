"""`fulcrum top`: the picture from real statuses, the loop with a fake clock, the command against an instance."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from fulcrum.top import (
    COLUMNS,
    LOST,
    NONE,
    STATUS_PATH,
    AdminAuthError,
    AdminError,
    Sample,
    render,
    run,
    server_lines,
    totals,
)
from tests.admin.harness import TOKEN, RunningInstance, write_config
from tests.support.upstream import RefusingPort, UpstreamServer

FULCRUM = Path(sys.executable).with_name("fulcrum")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def instance(tmp_path: Path, make_upstream: Callable[..., UpstreamServer],
             dead_port: RefusingPort) -> Iterator[tuple[RunningInstance, UpstreamServer, UpstreamServer, str]]:
    """An instance over a (weight 1), b (weight 3) and a dead server, health-checked; with the dead one's id."""
    a, b = make_upstream(name="a"), make_upstream(name="b")
    dead = f"127.0.0.1:{dead_port.port}"
    config = {"upstreams": {"app": {
        "balance": "weighted_round_robin",
        "servers": [a.url, {"url": b.url, "weight": 3}, f"http://{dead}"],
        "health_check": {"path": "/health", "interval": "1s", "timeout": "500ms"},
    }}}
    inst = RunningInstance(write_config(tmp_path / "fulcrum.json", config)).start()
    yield inst, a, b, dead
    inst.stop()


def traffic(inst: RunningInstance, n: int, path: str = "/") -> None:
    with httpx.Client(trust_env=False) as client:
        for _ in range(n):
            client.get(inst.url + path)


def status(inst: RunningInstance) -> dict[str, Any]:
    answer: dict[str, Any] = inst.api.get(STATUS_PATH).json()
    return answer


def cells(lines: list[Any]) -> dict[str, dict[str, str]]:
    return {line.cells[0]: dict(zip(COLUMNS, line.cells, strict=True)) for line in lines}


def text_of(renderable: Any, width: int = 200) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(renderable)
    return buffer.getvalue()


# -- the picture, from real statuses -------------------------------------------------------


def test_rows_and_rates_from_two_real_statuses(instance: tuple[RunningInstance, UpstreamServer, UpstreamServer,
                                                                str]) -> None:
    inst, a, b, dead = instance
    traffic(inst, 4)
    before = Sample(status(inst), at=100.0)
    traffic(inst, 8)
    after = Sample(status(inst), at=102.0)

    (group,) = after.status["upstreams"]
    rows = cells(server_lines(group, after, before))
    assert set(rows) == {a.id, b.id, dead}
    assert rows[a.id] | {"p50 ms": "", "p99 ms": "", "bytes/s": ""} == {
        "server": a.id, "state": "enabled", "health": "up", "weight": "1", "active": "0", "requests": "3",
        "req/s": "1.0", "errors": "0.0%", "p50 ms": "", "p99 ms": "", "bytes/s": "", "new conn": "33%"}
    assert rows[b.id]["weight"] == "3" and rows[b.id]["requests"] == "9" and rows[b.id]["req/s"] == "3.0"
    assert rows[dead] | {"bytes/s": ""} == {
        "server": dead, "state": "enabled", "health": "down: active_check", "weight": "1", "active": "0",
        "requests": "0", "req/s": "0.0", "errors": NONE, "p50 ms": NONE, "p99 ms": NONE, "bytes/s": "",
        "new conn": NONE}
    for row in (rows[a.id], rows[b.id]):
        assert re.fullmatch(r"\d+\.\d+", row["p50 ms"]) and re.fullmatch(r"\d+\.\d+", row["p99 ms"])
        assert re.fullmatch(r"\d+ B/s|\d+\.\d KiB/s", row["bytes/s"])

    figures = dict(totals(after, before))
    assert figures["requests"] == "12" and figures["req/s"] == "4.0"
    assert figures["success"] == "100.00% (100.00% now)" and figures["5xx"] == "0"
    assert figures["connections"].endswith(" active") and figures["workers"] == "1"
    assert re.fullmatch(r"\d+s", figures["uptime"]) and figures["memory"].endswith(" MiB")

    text = text_of(render(after, before, source=inst.admin_url, interval=2.0))
    assert f"fulcrum top  {inst.admin_url}  every 2s" in text
    assert "app (weighted_round_robin): 3 servers, 2 taking traffic" in text
    assert "requests 12   req/s 4.0   success 100.00% (100.00% now)" in text
    for name in COLUMNS:
        assert name in text
    dead_line = next(line for line in text.splitlines() if dead in line)
    assert dead_line.split()[:4] == [dead, "enabled", "down:", "active_check"]


def test_without_an_earlier_sample_rates_are_a_dash(instance: tuple[RunningInstance, UpstreamServer,
                                                                     UpstreamServer, str]) -> None:
    inst, a, _, _ = instance
    traffic(inst, 4)
    only = Sample(status(inst), at=5.0)
    rows = cells(server_lines(only.status["upstreams"][0], only, None))
    assert rows[a.id]["requests"] == "1" and rows[a.id]["req/s"] == NONE and rows[a.id]["errors"] == NONE
    assert dict(totals(only, None))["req/s"] == NONE
    # a restart between two samples (uptime went back) gives no rates either
    earlier = Sample({**only.status, "uptime_s": only.status["uptime_s"] + 100}, at=4.0)
    assert cells(server_lines(only.status["upstreams"][0], only, earlier))[a.id]["req/s"] == NONE


def test_figures_the_status_does_not_report_are_a_dash(instance: tuple[RunningInstance, UpstreamServer,
                                                                        UpstreamServer, str]) -> None:
    inst, a, _, _ = instance
    traffic(inst, 4)
    real = status(inst)
    for group in real["upstreams"]:
        for server in group["servers"]:
            for key in ("p50_ms", "p99_ms", "bytes_per_s", "new_connection_share"):
                server.pop(key)
    sample = Sample(real, at=1.0)
    row = cells(server_lines(real["upstreams"][0], sample, None))[a.id]
    assert [row[k] for k in ("p50 ms", "p99 ms", "bytes/s", "new conn")] == [NONE] * 4
    assert a.id in text_of(render(sample, None, source="x", interval=1))


def test_a_draining_server_is_up_but_out(instance: tuple[RunningInstance, UpstreamServer, UpstreamServer,
                                                          str]) -> None:
    inst, _, b, _ = instance
    assert inst.api.patch(f"/api/v1/upstreams/app/servers/{b.id}", json={"state": "draining"}).status_code == 200
    sample = Sample(status(inst), at=1.0)
    (line,) = [ln for ln in server_lines(sample.status["upstreams"][0], sample, None) if ln.cells[0] == b.id]
    assert line.cells[1:3] == ("draining", "up, out: draining") and line.style == "yellow"
    assert "1 taking traffic" in text_of(render(sample, None, source="x", interval=1))


# -- the loop, with a fake fetch, clock and sleep -------------------------------------------


class Script:
    """Answers (or raises) in turn for fetch; sleep records the waits and raises KeyboardInterrupt when told."""

    def __init__(self, answers: list[Any], interrupt_after: int | None = None) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, str | None]] = []
        self.sleeps: list[float] = []
        self.now = 0.0
        self.interrupt_after = interrupt_after

    def fetch(self, base: str, path: str, token: str | None) -> Any:
        self.calls.append((base, path, token))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.interrupt_after is not None and len(self.sleeps) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.now += seconds


def statuses(requests: list[int]) -> list[dict[str, Any]]:
    server = {"id": "127.0.0.1:5001", "state": "enabled", "healthy": True, "eligible": True, "down": [],
              "weight": 1, "active": 0, "errors": 0}
    return [{"uptime_s": 10.0 + i, "requests_total": n, "success_rate": 1.0, "responses_5xx": 0,
             "upstreams": [{"name": "app", "balance": "round_robin", "servers": [{**server, "requests": n}]}]}
            for i, n in enumerate(requests)]


def terminal(buffer: io.StringIO | None = None) -> Console:
    return Console(file=buffer or io.StringIO(), width=200, force_terminal=True, color_system=None)


def test_once_polls_twice_an_interval_apart(capsys: pytest.CaptureFixture[str]) -> None:
    script = Script(statuses([10, 25]))
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None)
    code = run("http://admin", "tok", interval=0.5, once=True, console=console, fetch=script.fetch,
               clock=script.clock, sleep=script.sleep)
    assert code == 0
    assert script.calls == [("http://admin", STATUS_PATH, "tok")] * 2 and script.sleeps == [0.5]
    out = buffer.getvalue()
    assert "requests 25   req/s 30.0" in out
    assert re.search(r"127\.0\.0\.1:5001 +enabled +up +1 +0 +25 +30\.0 +0\.0%", out)


def test_once_fails_with_a_message_when_the_api_cannot_be_read(capsys: pytest.CaptureFixture[str]) -> None:
    script = Script([AdminError("cannot reach the admin API at http://admin: connection refused")])
    code = run("http://admin", None, once=True, console=terminal(), fetch=script.fetch, clock=script.clock,
               sleep=script.sleep)
    assert code == 1
    assert capsys.readouterr().err == "fulcrum: cannot reach the admin API at http://admin: connection refused\n"


def test_once_refuses_an_answer_that_is_not_a_status(capsys: pytest.CaptureFixture[str]) -> None:
    script = Script([{"detail": "Not Found"}])
    assert run("http://admin", None, once=True, console=terminal(), fetch=script.fetch, clock=script.clock,
               sleep=script.sleep) == 1
    assert "did not answer a Fulcrum status" in capsys.readouterr().err


def test_live_shows_a_lost_connection_and_keeps_polling() -> None:
    script = Script([*statuses([10])[:1], AdminError("cannot reach the admin API at http://admin: connection "
                                                     "refused"), *statuses([10, 30])[1:]], interrupt_after=3)
    buffer = io.StringIO()
    code = run("http://admin", None, interval=2.0, console=terminal(buffer), fetch=script.fetch, clock=script.clock,
               sleep=script.sleep)
    assert code == 0  # Ctrl-C
    assert len(script.calls) == 3 and script.sleeps == [2.0, 2.0, 2.0]
    frames = ANSI.sub("", buffer.getvalue())
    assert f"{LOST}: cannot reach the admin API at http://admin: connection refused" in frames
    # the last frame: back again, the rate over the four seconds since the last good sample
    assert "requests 30   req/s 5.0" in frames.rsplit(LOST, 1)[1]


def test_live_stops_on_a_refused_token(capsys: pytest.CaptureFixture[str]) -> None:
    script = Script([*statuses([1]), AdminAuthError("the admin API at http://admin refused the token (HTTP 401)")])
    assert run("http://admin", "bad", console=terminal(), fetch=script.fetch, clock=script.clock,
               sleep=script.sleep) == 1
    assert capsys.readouterr().err == "fulcrum: the admin API at http://admin refused the token (HTTP 401)\n"


# -- the command against a running instance -------------------------------------------------


def fulcrum_top(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("FULCRUM_ADMIN_TOKEN", "COLUMNS")}
    return subprocess.run([str(FULCRUM), "top", *args], capture_output=True, text=True, timeout=60,
                          env={**base, **env})


def test_top_once_shows_the_servers_of_a_running_instance(instance: tuple[RunningInstance, UpstreamServer,
                                                                           UpstreamServer, str]) -> None:
    inst, a, b, dead = instance
    traffic(inst, 8)
    traffic(inst, 2, "/status/503")
    out = fulcrum_top("--admin", inst.admin_url, "--token", TOKEN, "--once", "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    text = out.stdout
    assert "requests 10   req/s 0.0   success 80.00%" in text and "5xx 2" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip().startswith("127.0.0.1:")}
    assert set(rows) == {a.id, b.id, dead}
    # server, state, health, weight, active, requests: 10 requests at weights 1 and 3 (the dead one is skipped)
    assert rows[a.id][:6] == [a.id, "enabled", "up", "1", "0", "3"]
    assert rows[b.id][:6] == [b.id, "enabled", "up", "3", "0", "7"]
    assert rows[dead][:7] == [dead, "enabled", "down:", "active_check", "1", "0", "0"]


def test_top_takes_the_token_from_the_environment(instance: tuple[RunningInstance, UpstreamServer,
                                                                   UpstreamServer, str]) -> None:
    inst, a, _, _ = instance
    out = fulcrum_top("--admin", inst.admin_url.removeprefix("http://"), "--once", "--interval", "0.1",
                      FULCRUM_ADMIN_TOKEN=TOKEN)
    assert out.returncode == 0, out.stderr
    assert a.id in out.stdout


def test_top_with_a_wrong_token_is_exit_1(instance: tuple[RunningInstance, UpstreamServer, UpstreamServer,
                                                          str]) -> None:
    inst = instance[0]
    for args in (["--token", "wrong"], []):
        out = fulcrum_top("--admin", inst.admin_url, "--once", *args)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.startswith(f"fulcrum: the admin API at {inst.admin_url} ")
        assert ("refused the token" if args else "needs a token") in out.stderr


def test_top_once_against_a_refusing_port_is_exit_1(dead_port: RefusingPort) -> None:
    out = fulcrum_top("--admin", f"http://127.0.0.1:{dead_port.port}", "--once")
    assert out.returncode == 1
    assert out.stderr == f"fulcrum: cannot reach the admin API at http://127.0.0.1:{dead_port.port}: " \
                         "connection refused\n"


def test_top_rejects_a_bad_interval() -> None:
    out = fulcrum_top("--interval", "0", "--once")
    assert out.returncode == 2 and "must be a number of seconds above 0" in out.stderr


def read_until(fd: int, seen: list[str], pattern: str, timeout: float = 15.0) -> None:
    """Read the terminal's output into ``seen`` until ``pattern`` appears in it (ANSI codes removed)."""
    deadline = time.monotonic() + timeout
    while pattern not in ANSI.sub("", "".join(seen)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} not shown; got {ANSI.sub('', ''.join(seen))[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen.append(os.read(fd, 65536).decode(errors="replace"))
            except OSError:  # the other side closed
                raise AssertionError(f"{pattern!r} not shown before the end") from None


def test_live_top_in_a_terminal_shows_a_lost_connection_and_exits_0_on_ctrl_c(
        instance: tuple[RunningInstance, UpstreamServer, UpstreamServer, str]) -> None:
    inst, a, _, _ = instance
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k != "FULCRUM_ADMIN_TOKEN"}
    proc = subprocess.Popen([str(FULCRUM), "top", "--admin", inst.admin_url, "--token", TOKEN, "--interval", "0.1"],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env={**env, "COLUMNS": "200", "LINES": "40", "TERM": "xterm"})
    os.close(slave)
    seen: list[str] = []
    try:
        read_until(master, seen, a.id)
        inst.stop()
        read_until(master, seen, LOST)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
