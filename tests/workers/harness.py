"""``fulcrum run -c FILE`` with several workers, as a real process tree, and what tests read from it.

``WorkersRun`` writes the config (the proxy and admin listeners on free loopback ports), starts the
command, waits until every worker serves, and offers the admin API, the workers' pids, the sockets each
process holds (read from /proc) and bounded client load. ``close`` sends SIGTERM and returns the exit code.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FULCRUM = Path(sys.executable).with_name("fulcrum")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(int(inode))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open."""
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


class WorkersRun:
    """One ``fulcrum run`` with its config file; the log (stderr) is kept in ``lines``."""

    def __init__(self, tmp: Path, config: dict[str, Any], *args: str, session: bool = False) -> None:
        self.path = tmp / "fulcrum.json"
        self.port = free_port()
        self.admin_port = free_port()
        self.config = config
        self.write(config)
        self.proc = subprocess.Popen([str(FULCRUM), "run", *args, "-c", str(self.path)], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     start_new_session=session)  # its own process group, as in a terminal
        self.lines: list[str] = []
        stderr = self.proc.stderr
        assert stderr is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(stderr.readline, "")), daemon=True)
        self._reader.start()
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.admin_port}", trust_env=False, timeout=20)
        self.wait_for(lambda: self._all_up(config.get("workers", 1)), timeout=60)

    def write(self, config: dict[str, Any]) -> None:
        data = {"listen": [f"127.0.0.1:{self.port}"], "admin": {"listen": f"127.0.0.1:{self.admin_port}"}, **config}
        self.path.write_text(json.dumps(data))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait_for(self, check: Callable[[], bool], timeout: float = 30) -> None:
        """Poll ``check`` until it holds (generous deadline: the machine may be busy)."""
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, f"fulcrum exited with {self.proc.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"timed out waiting; log:\n{self.log}"
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        r = self.api.get("/api/v1/status")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def _all_up(self, count: int) -> bool:
        try:
            workers = self.status()["worker_processes"]
        except (httpx.HTTPError, KeyError):
            return False
        return len(workers) == count and all(w["up"] for w in workers)

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self.status()["worker_processes"]
        return workers

    def pids(self) -> list[int]:
        return [int(w["pid"]) for w in self.workers()]

    def get(self, path: str = "/", **headers: str) -> http.client.HTTPResponse:
        """One request on a new connection (so the kernel picks a worker for it)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        conn.request("GET", path, headers={"Connection": "close", **headers})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    def served_by(self, n: int = 20) -> list[str]:
        """The upstream names that answered ``n`` requests, each on its own connection."""
        return [self.get().getheader("X-Upstream-Name") or "" for _ in range(n)]

    def close(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Stop it with ``sig``; the exit code."""
        self.api.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


class Load:
    """``threads`` clients sending requests back to back until stopped: bounded, for a few seconds at most.

    Each client keeps one connection alive (a new one after an error) and has at most one request in
    flight, so a failure costs at most one request per client.
    """

    def __init__(self, port: int, threads: int = 4, path: str = "/") -> None:
        self.port, self.path = port, path
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def wait_ok(self, n: int, timeout: float = 30) -> None:
        """Until ``n`` more requests have succeeded."""
        target = self.ok + n
        deadline = time.monotonic() + timeout
        while self.ok < target:
            assert time.monotonic() < deadline, f"load stalled: {self.ok} ok, failures {self.failures[:5]}"
            time.sleep(0.02)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                good = response.status == 200
                reason = f"status {response.status}"
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as err:
                good, reason = False, f"{type(err).__name__}: {err}"
                conn.close()
                conn = None
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(reason)
        if conn is not None:
            conn.close()
