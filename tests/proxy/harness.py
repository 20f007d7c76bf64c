"""Runs a Fulcrum proxy in-process, on its own uvloop loop in a background thread, for tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import uvloop

from fulcrum.config import parse_config
from fulcrum.proxy.server import ProxyServer

T = TypeVar("T")


class RunningProxy:
    """A started proxy: ``.port``, ``.url``, ``.server``; ``stop()`` drains and joins the thread."""

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        config.setdefault("listen", ["127.0.0.1:0"])
        self.config = parse_config(config, source="test")
        self.loop = uvloop.new_event_loop()
        self.server: ProxyServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fulcrum-test-proxy", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.server = ProxyServer(self.config, self.loop)
            self.loop.run_until_complete(self.server.start())
        except BaseException as err:  # reported to the test thread
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> RunningProxy:
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("proxy did not start")
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.ports[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
        """Run a coroutine on the proxy's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 15) -> T:
        """Call a function on the proxy's loop thread (to read or change its state safely)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self.server is not None and self._thread.is_alive():
            try:
                self.run(self.server.shutdown(grace), timeout=grace + 10)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)

    def __enter__(self) -> RunningProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def upstream_config(*urls: str, **group: Any) -> dict[str, Any]:
    """A one-group config for the given upstream URLs; extra keys go into the group."""
    return {"upstreams": {"app": {"servers": list(urls), **group}}}


def client(proxy: RunningProxy, source: str | None = None) -> httpx.Client:
    """An httpx client of ``proxy`` (no proxies from the environment), from ``source`` (another loopback address)
    when given."""
    transport = httpx.HTTPTransport(local_address=source) if source is not None else None
    return httpx.Client(base_url=proxy.url, trust_env=False, timeout=10, transport=transport)


def echo(resp: httpx.Response) -> dict[str, Any]:
    """The JSON of the test upstream's ``/echo`` (asserting a 200), with ``hdrs``: its headers by lower-case name."""
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    data["hdrs"] = {k.lower(): v for k, v in data["headers"]}
    return data


def header_values(doc: dict[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` the upstream received (an ``/echo`` document), in order."""
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]
