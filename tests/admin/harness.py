"""A whole Fulcrum instance (proxy, control plane, admin listener) in a background thread, from a config file."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvloop

from fulcrum.config import load_config
from fulcrum.supervisor.runner import Instance

T = TypeVar("T")
TOKEN = "test-token-0123456789"


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as JSON (the admin listener on an ephemeral loopback port unless given)."""
    data = dict(config)
    data.setdefault("listen", ["127.0.0.1:0"])
    data.setdefault("admin", {"listen": "127.0.0.1:0", "token": TOKEN})
    path.write_text(json.dumps(data))
    return path


class RunningInstance:
    """``fulcrum run -c path`` in this process: ``.url`` (proxy), ``.admin_url``, ``.api`` (an httpx client)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = load_config(str(path))
        self.loop = uvloop.new_event_loop()
        self.instance: Instance | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fulcrum-test-instance", daemon=True)
        self.api = httpx.Client(trust_env=False, timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.instance = Instance(self.config, str(self.path), self.loop)
            self.loop.run_until_complete(self.instance.start())
        except BaseException as err:  # reported to the test thread
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> RunningInstance:
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("instance did not start")
        if self._error is not None:
            raise self._error
        token = self.config.admin.token
        if token:
            self.api.headers["Authorization"] = f"Bearer {token}"
        self.api.base_url = httpx.URL(self.admin_url)
        return self

    @property
    def url(self) -> str:
        assert self.instance is not None
        return f"http://127.0.0.1:{self.instance.server.ports[0]}"

    @property
    def admin_url(self) -> str:
        assert self.instance is not None and self.instance.admin is not None
        return f"http://127.0.0.1:{self.instance.admin.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 15) -> T:
        """Call ``fn`` on the instance's loop thread (to read its state safely)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def stop(self, grace: float = 5.0) -> None:
        self.api.close()
        if self.instance is not None and self._thread.is_alive():
            try:
                self.run(self.instance.stop(grace), timeout=grace + 10)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)
