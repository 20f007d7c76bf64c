"""Hot reload through a real instance: under load, refused configs, listeners, health and runtime changes kept."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admin.harness import TOKEN, RunningInstance, write_config
from tests.support.upstream import UpstreamServer

Make = Callable[..., RunningInstance]
ADMIN = {"listen": "127.0.0.1:0", "token": TOKEN}



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reload(inst: RunningInstance, config: dict[str, Any]) -> httpx.Response:
    write_config(inst.path, {"admin": ADMIN, **config})
    return inst.api.post("/api/v1/reload")


def servers_of(inst: RunningInstance, group: str = "app") -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in inst.api.get(f"/api/v1/upstreams/{group}").json()["servers"]}


class Load:
    """Clients sending requests without pause until stopped: two on keep-alive connections, two opening one each."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.by_server: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(keep,), daemon=True) for keep in (1, 1, 0, 0)]

    def _run(self, keep_alive: int) -> None:
        with httpx.Client(trust_env=False, timeout=10) as c:
            n = 0
            while not self.done.is_set():
                n += 1
                headers = {} if keep_alive else {"Connection": "close"}
                try:
                    r = c.get(f"{self.url}/echo?n={n}", headers=headers)
                except httpx.HTTPError as err:
                    with self._lock:
                        self.failures.append(f"{type(err).__name__}: {err}")
                    continue
                with self._lock:
                    if r.status_code == 200:
                        self.ok += 1
                        self.by_server[r.headers["x-upstream-name"]] += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text.strip()}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self._threads:
            t.join(15)


def test_ten_reloads_under_steady_load_fail_no_request(make_instance: Make,
                                                       make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b, c = make_upstream(name="a"), make_upstream(name="b"), make_upstream(name="c")
    base = {"upstreams": {"app": {"servers": [a.url, b.url]}},
            "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "app"}]}
    # Each reload changes something a request meets: weights, servers (one removed while it serves),
    # the policy, the routes and their middleware, a timeout.
    variants: list[dict[str, Any]] = [
        {"upstreams": {"app": {"servers": [a.url, {"url": b.url, "weight": 3}]}}},
        {"upstreams": {"app": {"servers": [a.url, b.url, c.url]}}},
        {"upstreams": {"app": {"servers": [a.url, c.url], "balance": "least_conn"}}},
        {"upstreams": {"app": {"servers": [b.url, c.url], "balance": "consistent_hash", "hash_key": "path"}}},
        {"routes": [{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "app"},
                    {"name": "all", "match": {"path_prefix": "/"}, "upstream": "app",
                     "middleware": [{"request_id": {}}]}]},
        {"upstreams": {"app": {"servers": [a.url, b.url, c.url], "balance": "random"}}},
        {"limits": {"header_timeout": "20s"}},
        {"upstreams": {"app": {"servers": [c.url]}}},
        {"upstreams": {"app": {"servers": [a.url, b.url], "balance": "p2c"}}},
        {},
    ]
    inst = make_instance(base)
    with Load(inst.url) as load:
        for variant in variants:
            before = load.ok
            r = reload(inst, {**base, **variant})
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 10
            while load.ok < before + 20 and time.monotonic() < deadline:  # traffic flows on the new config
                time.sleep(0.01)
    assert load.failures == []
    assert load.ok > 200
    assert set(load.by_server) == {"a", "b", "c"}
    status = inst.api.get("/api/v1/status").json()
    assert status["requests_total"] == load.ok and status["success_rate"] == 1.0
    assert inst.api.get("/api/v1/changes").status_code == 200


def test_an_invalid_config_is_refused_with_every_error_and_the_old_one_keeps_serving(
        make_instance: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    good = {"upstreams": {"app": {"servers": [a.url]}}}
    inst = make_instance(good)
    bad = {"upstreams": {"app": {"servers": [b.url], "balance": "fastest"}},
           "routes": [{"match": {"path_regex": "(unclosed"}, "upstream": "app"},
                      {"match": {"path_prefix": "/"}, "upstream": "nowhere"}]}
    r = reload(inst, bad)
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert len(errors) == 3, errors
    assert any("upstreams.app.balance" in e for e in errors)
    assert any("routes[0].match.path_regex" in e for e in errors)
    assert any("routes[1].upstream" in e and "nowhere" in e for e in errors)
    with httpx.Client(trust_env=False) as client:
        assert {client.get(f"{inst.url}/").headers["x-upstream-name"] for _ in range(4)} == {"a"}
    assert list(servers_of(inst)) == [a.id]
    (inst.path).write_text("{not json")
    r = inst.api.post("/api/v1/reload")
    assert r.status_code == 400 and len(r.json()["errors"]) == 1
    assert list(servers_of(inst)) == [a.id]
    # A listen address that cannot be bound is refused too, and nothing changes.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = reload(inst, {**good, "listen": ["127.0.0.1:0", f"127.0.0.1:{port}"],
                          "upstreams": {"app": {"servers": [b.url]}}})
    assert r.status_code == 400 and "listen" in r.json()["errors"][0]
    assert list(servers_of(inst)) == [a.id]
    assert httpx.get(f"{inst.url}/", trust_env=False).headers["x-upstream-name"] == "a"


def test_new_listeners_are_bound_first_and_open_connections_keep_working(
        make_instance: Make, upstream_server: UpstreamServer) -> None:
    first, second = free_port(), free_port()
    ups = {"upstreams": {"app": {"servers": [upstream_server.url]}}}
    inst = make_instance({**ups, "listen": [f"127.0.0.1:{first}"]})
    with httpx.Client(trust_env=False) as kept:
        assert kept.get(f"http://127.0.0.1:{first}/echo").json()["conn"] == 1
        assert reload(inst, {**ups, "listen": [f"127.0.0.1:{first}", f"127.0.0.1:{second}"]}).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{second}/", trust_env=False).status_code == 200
        assert reload(inst, {**ups, "listen": [f"127.0.0.1:{second}"]}).status_code == 200
        # The first address is closed to new clients; the connection opened on it still serves.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{first}/", trust_env=False)
        for _ in range(3):
            assert kept.get(f"http://127.0.0.1:{first}/").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{second}/", trust_env=False).status_code == 200


def test_health_of_unchanged_servers_is_kept_and_hash_rings_are_rebuilt(
        make_instance: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b, c = make_upstream(name="a"), make_upstream(name="b"), make_upstream(name="c")
    b.healthy = False
    # Checks far apart: whatever the state after the reload is, it was kept, not checked again.
    check = {"path": "/health", "interval": "1h", "initial": "healthy"}
    ring = {"balance": "consistent_hash", "hash_key": "path", "health_check": check}
    inst = make_instance({"upstreams": {"app": {"servers": [a.url, b.url], **ring}}})
    assert {i: s["healthy"] for i, s in servers_of(inst).items()} == {a.id: True, b.id: False}
    with httpx.Client(trust_env=False) as client:
        before = {p: client.get(f"{inst.url}/k{p}").headers["x-upstream-name"] for p in range(60)}
    assert set(before.values()) == {"a"}
    b.healthy = True  # b would pass a new check: it must not get one from the reload
    r = reload(inst, {"upstreams": {"app": {"servers": [a.url, b.url, c.url], **ring}}})
    assert r.status_code == 200, r.text
    servers = servers_of(inst)
    assert servers[a.id]["healthy"] and not servers[b.id]["healthy"]
    # c is new: the first check of a new server decides its health (and it passes).
    assert servers[c.id]["healthy"]
    with httpx.Client(trust_env=False) as client:
        after = {p: client.get(f"{inst.url}/k{p}").headers["x-upstream-name"] for p in range(60)}
    # The ring now has c: some keys moved to it, and every key that moved went to c.
    moved = {p for p in after if after[p] != before[p]}
    assert moved and {after[p] for p in moved} == {"c"}


def test_runtime_changes_survive_a_reload_as_the_readme_states(
        make_instance: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b, c, d = (make_upstream(name=n) for n in "abcd")
    config = {"upstreams": {"app": {"servers": [a.url, b.url, c.url]}}}
    inst = make_instance(config)
    api = inst.api
    assert api.post("/api/v1/upstreams/app/servers", json={"url": d.url, "weight": 2}).status_code == 201
    assert api.patch(f"/api/v1/upstreams/app/servers/{a.id}", json={"weight": 5}).status_code == 200
    assert api.patch(f"/api/v1/upstreams/app/servers/{b.id}", json={"state": "disabled"}).status_code == 200
    assert api.delete(f"/api/v1/upstreams/app/servers/{c.id}").status_code == 202
    deadline = time.monotonic() + 10
    while c.id in servers_of(inst) and time.monotonic() < deadline:
        time.sleep(0.02)
    # The file changes something else: every runtime change stays.
    r = reload(inst, {**config, "limits": {"header_timeout": "20s"}})
    assert r.status_code == 200, r.text
    servers = servers_of(inst)
    assert set(servers) == {a.id, b.id, d.id}
    assert servers[a.id]["weight"] == 5 and servers[b.id]["state"] == "disabled" and servers[d.id]["weight"] == 2
    # The file now lists d itself with its own weight: the file's entry is the server from then on.
    r = reload(inst, {"upstreams": {"app": {"servers": [a.url, b.url, c.url, {"url": d.url, "weight": 7}]}}})
    assert r.status_code == 200
    servers = servers_of(inst)
    assert set(servers) == {a.id, b.id, d.id}  # c was removed at run time: it stays removed
    assert servers[d.id]["weight"] == 7
    # The group leaves the file: its runtime changes are forgotten with it.
    r = reload(inst, {"upstreams": {"other": {"servers": [a.url]}}})
    assert r.status_code == 200
    r = reload(inst, config)
    assert r.status_code == 200
    servers = servers_of(inst)
    assert set(servers) == {a.id, b.id, c.id}
    assert servers[a.id]["weight"] == 1 and servers[b.id]["state"] == "enabled"


class FulcrumRun:
    """``fulcrum run`` as a user starts it, serving one group on ``port`` from ``path``; its log is kept."""

    def __init__(self, path: Path, port: int, *args: str) -> None:
        self.path, self.port = path, port
        exe = str(Path(sys.executable).with_name("fulcrum"))  # the script installed beside this interpreter
        self.proc = subprocess.Popen([exe, "run", *args, "-c", str(path)], stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        stderr = self.proc.stderr
        assert stderr is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(stderr.readline, "")), daemon=True)
        self._reader.start()

    @staticmethod
    def write(path: Path, port: int, server_url: str) -> Path:
        return write_config(path, {"listen": [f"127.0.0.1:{port}"], "admin": {"listen": None},
                                   "upstreams": {"app": {"servers": [server_url]}}})

    def served_by(self) -> str | None:
        try:
            r = httpx.get(f"http://127.0.0.1:{self.port}/", trust_env=False, timeout=2)
        except httpx.HTTPError:
            return None
        return r.headers.get("x-upstream-name")

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait_for(self, check: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def test_sighup_reloads_and_a_bad_file_on_sighup_keeps_the_old_config(
        tmp_path: Path, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    port = free_port()
    path = FulcrumRun.write(tmp_path / "fulcrum.json", port, a.url)
    run = FulcrumRun(path, port)
    try:
        run.wait_for(lambda: run.served_by() == "a")
        FulcrumRun.write(path, port, b.url)
        run.proc.send_signal(signal.SIGHUP)
        run.wait_for(lambda: run.served_by() == "b")
        path.write_text('{"upstreams": {"app": {"servers": ["ftp://nope"]}}}')
        run.proc.send_signal(signal.SIGHUP)
        run.wait_for(lambda: run.logged("refused"))
        assert run.served_by() == "b" and run.proc.poll() is None
        assert run.logged("upstreams.app.servers[0]"), "".join(run.lines)
    finally:
        run.close()


def test_run_watch_reloads_when_the_file_changes_and_keeps_serving_a_broken_one(
        tmp_path: Path, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    port = free_port()
    path = FulcrumRun.write(tmp_path / "fulcrum.json", port, a.url)
    run = FulcrumRun(path, port, "--watch")
    try:
        run.wait_for(lambda: run.served_by() == "a")
        FulcrumRun.write(path, port, b.url)  # no signal: the watcher sees the change
        run.wait_for(lambda: run.served_by() == "b")
        path.write_text('{"upstreams": {"app": {"servers": []}}}')
        run.wait_for(lambda: run.logged("refused"))
        assert run.served_by() == "b" and run.proc.poll() is None
    finally:
        run.close()
