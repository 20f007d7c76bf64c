"""``workers: 2`` as users run it: ``fulcrum run -c FILE``, a main process and two worker processes.

Each test starts the real command against real upstream servers and looks at it from outside: the
sockets in /proc, the admin API, the responses, signals and exit codes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.upstream import UpstreamServer
from tests.workers.harness import Load, WorkersRun, listening_inodes, socket_inodes

Make = Callable[..., WorkersRun]


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Make]:
    """Start ``fulcrum run`` with a config; each one still running after the test is stopped (and must exit 0)."""
    started: list[WorkersRun] = []

    def make(config: dict[str, Any], *args: str, session: bool = False) -> WorkersRun:
        run = WorkersRun(tmp_path, config, *args, session=session)
        started.append(run)
        return run

    yield make
    for run in started:
        if run.proc.poll() is None:
            assert run.close() == 0, run.log


def two_workers(*servers: UpstreamServer, **upstream: Any) -> dict[str, Any]:
    return {"workers": 2, "upstreams": {"app": {"servers": [s.url for s in servers], **upstream}}}


def test_two_worker_processes_each_hold_their_own_socket_on_the_port_and_both_serve(
        make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a = make_upstream(name="a")
    run = make_run(two_workers(a))
    pids = run.pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids and run.proc.pid not in pids
    on_port = listening_inodes(run.port)
    held = [socket_inodes(pid) & on_port for pid in pids]
    # SO_REUSEPORT: one listening socket per worker, each worker holding its own
    assert len(on_port) == 2 and all(len(h) == 1 for h in held) and held[0] != held[1]
    assert run.served_by(40) == ["a"] * 40  # each on a new connection: the kernel spreads them
    run.wait_for(lambda: run.status()["requests_total"] == 40)
    status = run.status()
    assert status["workers"] == 2
    per_worker = [w["requests_total"] for w in status["worker_processes"]]
    assert sum(per_worker) == 40 and all(n > 0 for n in per_worker), per_worker
    assert status["upstreams"][0]["servers"][0]["requests"] == 40
    worker_memory = [w["memory_bytes"] for w in status["worker_processes"]]
    assert all(m > 0 for m in worker_memory) and status["memory_bytes"] > sum(worker_memory)  # the main's too
    metrics = run.api.get("/metrics").text
    assert 'fulcrum_requests_total{code="200",route="*/",upstream="app"} 40.0' in metrics
    assert "fulcrum_workers 2.0" in metrics and 'fulcrum_worker_up{worker="1"} 1.0' in metrics


def test_sighup_reaches_every_worker_and_a_bad_file_or_a_new_worker_count_reaches_none(
        make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    run = make_run(two_workers(a))
    pids = run.pids()
    assert [w["config_generation"] for w in run.workers()] == [1, 1]
    run.write(two_workers(b))
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for(lambda: run.logged("reloaded"))
    assert [w["config_generation"] for w in run.workers()] == [2, 2]  # SIGHUP's reload waits for every worker
    served = run.served_by(40)
    assert served == ["b"] * 40
    run.wait_for(lambda: sum(w["requests_total"] for w in run.workers()) == 40)
    assert all(w["requests_total"] > 0 for w in run.workers())  # both workers served b
    run.path.write_text('{"workers": 2, "upstreams": {"app": {"servers": ["ftp://nope"]}}}')
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for(lambda: run.logged("refused"))
    assert run.served_by(20) == ["b"] * 20
    assert run.pids() == pids  # a reload never restarts a worker
    assert [w["config_generation"] for w in run.workers()] == [2, 2]  # nothing of the bad file reached them
    assert "upstreams.app.servers[0]" in run.log
    # the number of workers is fixed at start
    run.write({**two_workers(a), "workers": 3})
    r = run.api.post("/api/v1/reload")
    assert r.status_code == 400
    assert any("workers: changed from 2 to 3: a new number of workers takes a restart" in e
               for e in r.json()["errors"]), r.text
    assert run.served_by(10) == ["b"] * 10 and run.pids() == pids


def test_admin_changes_reach_every_worker(make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    run = make_run(two_workers(a))
    r = run.api.post("/api/v1/upstreams/app/servers", json={"url": b.url})
    assert r.status_code == 201, r.text
    assert [w["config_generation"] for w in run.workers()] == [2, 2]  # answered once every worker had it
    r = run.api.patch(f"/api/v1/upstreams/app/servers/{a.id}", json={"state": "disabled"})
    assert r.status_code == 200, r.text
    # the API answers once every worker has the new server; the flag follows at once
    run.wait_for(lambda: all(w["down"] == {f"app/{a.id}": ["disabled"]} for w in run.workers()))
    before = [w["requests_total"] for w in run.workers()]
    assert run.served_by(40) == ["b"] * 40
    run.wait_for(lambda: sum(w["requests_total"] for w in run.workers()) == sum(before) + 40)
    assert all(w["requests_total"] > n for w, n in zip(run.workers(), before, strict=True))
    # enabled again, then deleted: it drains on every worker and leaves the group
    assert run.api.patch(f"/api/v1/upstreams/app/servers/{a.id}", json={"state": "enabled"}).status_code == 200
    run.wait_for(lambda: all(w["down"] == {} for w in run.workers()))
    assert set(run.served_by(40)) == {"a", "b"}
    assert run.api.delete(f"/api/v1/upstreams/app/servers/{a.id}").status_code == 202
    run.wait_for(lambda: [s["id"] for s in run.api.get("/api/v1/upstreams/app").json()["servers"]] == [b.id])
    assert run.served_by(20) == ["b"] * 20


def test_health_is_checked_once_in_the_main_process_and_seen_by_every_worker(
        make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    check = {"path": "/health", "interval": "200ms", "timeout": "200ms", "fall": 1, "rise": 1}
    run = make_run(two_workers(a, b, health_check=check))
    assert all(w["health_checks"] == 0 for w in run.workers())
    assert set(run.served_by(40)) == {"a", "b"}
    a.healthy = False  # its /health answers 503 from now on
    run.wait_for(lambda: all(w["down"] == {f"app/{a.id}": ["active_check"]} for w in run.workers()))
    assert run.served_by(40) == ["b"] * 40
    a.healthy = True
    run.wait_for(lambda: all(w["down"] == {} for w in run.workers()))
    assert set(run.served_by(40)) == {"a", "b"}
    checks = [r for r in a.requests if r.path == "/health"]
    assert checks and {r.header("User-Agent") for r in checks} == {"fulcrum-health"}


def test_a_killed_worker_costs_only_its_requests_in_flight_and_is_replaced(
        make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a = make_upstream(name="a")
    run = make_run(two_workers(a))
    clients = 8
    with Load(run.port, threads=clients) as load:
        load.wait_ok(100)
        run.wait_for(lambda: run.status()["requests_total"] >= 100)
        # the victim: the worker serving more of the clients' connections (so it has some)
        status = run.status()
        victim, other = sorted(status["worker_processes"], key=lambda w: -w["connections_active"])
        before = status["requests_total"]
        slot = victim["worker"]
        os.kill(victim["pid"], signal.SIGKILL)
        run.wait_for(lambda: run.workers()[slot]["pid"] not in (None, victim["pid"]) and run.workers()[slot]["up"])
        lost = len(load.failures)
        load.wait_ok(200)
    # at most one request in flight per client, and only clients connected to the killed worker lost one
    assert lost <= victim["connections_active"] and len(load.failures) == lost, load.failures
    workers = run.workers()
    assert workers[slot]["restarts"] == 1 and other["pid"] in run.pids()
    assert [w["restarts"] for w in workers if w["worker"] != slot] == [0]
    assert run.logged(f"worker {slot} (pid {victim['pid']}) was killed by SIGKILL; starting a new one")
    assert f'fulcrum_worker_restarts_total{{worker="{slot}"}} 1.0' in run.api.get("/metrics").text
    # the dead worker's counts (up to its last report) stay in the totals: they never go back
    after = run.status()["requests_total"]
    assert after >= before
    assert run.get().status == 200
    run.wait_for(lambda: run.status()["requests_total"] >= after + 1)
    assert sum(w["requests_total"] for w in run.workers()) < run.status()["requests_total"]
    on_port = listening_inodes(run.port)
    assert all(len(socket_inodes(pid) & on_port) == 1 for pid in run.pids())


def test_ten_reloads_under_load_fail_no_request(make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a = make_upstream(name="a")
    config = two_workers(a)
    run = make_run(config)
    with Load(run.port, threads=4) as load:
        load.wait_ok(50)
        for i in range(10):
            run.write({**config, "upstreams": {"app": {"servers": [a.url], "timeouts": {"read": f"{20 + i}s"}}}})
            r = run.api.post("/api/v1/reload")
            assert r.status_code == 200, r.text
            load.wait_ok(20)
    assert load.failures == [] and load.ok >= 250


def test_sigterm_drains_every_worker_and_exits_0(make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    import http.client
    import threading

    a = make_upstream(name="a")
    run = make_run(two_workers(a))
    pids = run.pids()
    answers: list[int] = []

    def slow() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=30)
        conn.request("GET", "/slow-head/1500")
        answers.append(conn.getresponse().status)
        conn.close()

    clients = [threading.Thread(target=slow) for _ in range(4)]
    for t in clients:
        t.start()
    run.wait_for(lambda: len([r for r in a.requests if r.path.startswith("/slow-head")]) == 4)
    assert run.close() == 0, run.log
    for t in clients:
        t.join(30)
    assert answers == [200] * 4  # requests in flight finished during the drain
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert run.logged("stopped")


def test_a_reload_moves_every_worker_to_new_addresses_and_a_busy_one_changes_nothing(
        make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    import socket

    from tests.workers.harness import free_port

    a = make_upstream(name="a")
    config = two_workers(a)
    run = make_run(config)
    old, new = run.port, free_port()
    with socket.create_server(("127.0.0.1", 0)) as busy:  # held by someone else, without SO_REUSEPORT
        taken = busy.getsockname()[1]
        run.write({**config, "listen": [f"127.0.0.1:{old}", f"127.0.0.1:{taken}"]})
        r = run.api.post("/api/v1/reload")
        assert r.status_code == 400 and f"listen[1] 127.0.0.1:{taken}" in r.text, r.text
        assert len(listening_inodes(taken)) == 1  # only the other program's: nothing of ours was left bound
    assert run.served_by(10) == ["a"] * 10
    run.write({**config, "listen": [f"127.0.0.1:{new}"]})
    assert run.api.post("/api/v1/reload").status_code == 200
    on_new = listening_inodes(new)
    held = [socket_inodes(pid) & on_new for pid in run.pids()]
    assert len(on_new) == 2 and all(len(h) == 1 for h in held) and held[0] != held[1]
    run.wait_for(lambda: listening_inodes(old) == set())  # every process let go of the old port
    run.port = new
    assert run.served_by(20) == ["a"] * 20


def test_ctrl_c_in_a_terminal_stops_the_whole_process_group_once(
        make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a = make_upstream(name="a")
    run = make_run(two_workers(a), session=True)
    pids = run.pids()
    assert run.served_by(4) == ["a"] * 4
    os.killpg(run.proc.pid, signal.SIGINT)  # what the terminal sends: main process and workers alike
    assert run.proc.wait(60) == 0, run.log
    assert run.close() == 0
    assert not run.logged("starting a new one"), run.log  # no worker was taken for dead and replaced
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_the_one_line_proxy_runs_workers_too(tmp_path: Path, make_upstream: Callable[..., UpstreamServer]) -> None:
    import subprocess

    import httpx

    from tests.workers.harness import FULCRUM, free_port

    a, b = make_upstream(name="a"), make_upstream(name="b")
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([str(FULCRUM), "proxy", "--listen", f"127.0.0.1:{port}", "--to", a.url, "--to", b.url,
                             "--workers", "2", "--admin", f"127.0.0.1:{admin}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(trust_env=False, timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline
                try:
                    workers = client.get(f"http://127.0.0.1:{admin}/api/v1/status").json()["worker_processes"]
                    if len(workers) == 2 and all(w["up"] for w in workers):
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            names = {client.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}).text
                     for _ in range(10)}
        assert names == {"ok a\n", "ok b\n"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0


def test_the_file_watch_reaches_every_worker(make_run: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    run = make_run(two_workers(a), "--watch")
    run.write(two_workers(b))  # no signal, no API call: the main process sees the file change
    run.wait_for(lambda: [w["config_generation"] for w in run.workers()] == [2, 2])
    assert run.served_by(20) == ["b"] * 20
