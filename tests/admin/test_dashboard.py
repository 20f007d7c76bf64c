"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a real instance and upstreams.

The token prompt and the live table, Drain and weights through the page, a wrong token, a listener without a
token, and the "connection lost" state when the instance stops. The first test leaves a screenshot of the page
with traffic in ``build/test-artifacts/dashboard.png`` (the README shows it).
"""

from __future__ import annotations

import math
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.admin.harness import TOKEN, RunningInstance
from tests.support.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "build" / "test-artifacts" / "dashboard.png"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Polls four times a second (``?interval=`` in ms), so the charts fill in seconds rather than minutes.
FAST = "/?interval=250"
WAIT_MS = 8000
Make = Callable[..., RunningInstance]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the module; the tests skip when it is missing or does not start."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed (`apt-get install chromium`, or `make test` does it): "
                    "the dashboard's browser tests need it")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, timeout=20_000)
        except PlaywrightError as err:
            pytest.skip(f"chromium at {path} did not start: {err.message.splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) at a laptop's size; an uncaught script error fails the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda err: script_errors.append(str(err)))
    tab.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    yield tab
    context.close()
    assert script_errors == [], f"the page's script failed: {script_errors}"


@pytest.fixture
def pair(make_upstream: Callable[..., UpstreamServer]) -> tuple[UpstreamServer, UpstreamServer]:
    return make_upstream(name="a"), make_upstream(name="b")


def app_group(a: UpstreamServer, b: UpstreamServer) -> dict[str, Any]:
    """Group "app": a (weight 1) and b (weight 2), health-checked."""
    return {"upstreams": {"app": {
        "balance": "weighted_round_robin",
        "servers": [a.url, {"url": b.url, "weight": 2}],
        "health_check": {"path": "/health", "interval": "1s", "timeout": "500ms"},
    }}}


class Traffic:
    """Requests through the proxy from a few client threads until stopped, at a rate that rises and falls (so the
    charts have a shape), with slow answers, bodies of a few sizes and a rare 500 among them."""

    PATHS = ("/", "/bytes/6000", "/", "/slow-head/4", "/bytes/20000", "/", "/slow-head/12", "/")

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"dashboard-traffic-{i}", daemon=True)
                         for i in range(clients)]

    def _run(self, offset: int) -> None:
        start = time.monotonic()
        with httpx.Client(trust_env=False, timeout=5) as client:
            n = offset
            while not self._stop.is_set():
                path = "/status/500" if n % 97 == 96 else self.PATHS[n % len(self.PATHS)]
                try:
                    client.get(self.url + path)
                except httpx.HTTPError:
                    pass  # the instance may stop under the traffic; the assertions are elsewhere
                n += 1
                phase = math.sin((time.monotonic() - start) * 1.3 + offset)
                self._stop.wait(0.01 + 0.03 * (1 + phase))  # pacing, not waiting for anything

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def row(page: Page, server_id: str) -> Any:
    return page.locator(f'section[data-group="app"] tr[data-server="{server_id}"]')


def cell(page: Page, server_id: str, field: str) -> Any:
    return row(page, server_id).locator(f'td[data-field="{field}"]')


def enter_token(page: Page, token: str) -> None:
    page.locator("#token-input").fill(token)
    page.locator("#token-submit").click()


def api_server(inst: RunningInstance, server_id: str) -> dict[str, Any]:
    servers: list[dict[str, Any]] = inst.api.get("/api/v1/upstreams/app").json()["servers"]
    (server,) = [s for s in servers if s["id"] == server_id]
    return server


# -- the tests ----------------------------------------------------------------------------------------------


def test_the_page_asks_for_the_token_shows_the_servers_live_and_drains_one(
        page: Page, make_instance: Make, pair: tuple[UpstreamServer, UpstreamServer]) -> None:
    a, b = pair
    inst = make_instance(app_group(a, b))
    with Traffic(inst.url):
        page.goto(inst.admin_url + FAST)
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.locator("#connection")).to_have_text("token needed")
        expect(page.locator("#token-error")).to_be_hidden()  # asking is not an error
        expect(page.locator("tr[data-server]")).to_have_count(0)

        enter_token(page, TOKEN)
        expect(page.locator("#token-form")).to_be_hidden()
        expect(page.locator("#connection")).to_have_text("live")
        for server in (a, b):
            expect(cell(page, server.id, "state")).to_have_text("enabled")
            expect(cell(page, server.id, "health")).to_contain_text("healthy")
        expect(cell(page, b.id, "weight").locator("input")).to_have_value("2")

        # The figures arrive: rates from two polls, last-minute latency and bytes, and charts with a history.
        page.wait_for_function(
            "n => [...document.querySelectorAll('td[data-field=trend] svg')]"
            ".every(svg => Number(svg.dataset.samples) >= n)", arg=20, timeout=WAIT_MS)
        for server in (a, b):
            for field in ("rps", "p50_ms", "p99_ms", "bytes_per_s", "new_connection_share"):
                expect(cell(page, server.id, field)).not_to_have_text("\u2013")
            expect(cell(page, server.id, "trend").locator("path.chart-line")).to_have_attribute("d", re.compile("L"))
        expect(page.locator('[data-total="rps"]')).not_to_have_text("\u2013")
        expect(page.locator('[data-total="requests_total"]')).not_to_have_text("0")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.locator("body").screenshot(path=str(SCREENSHOT))  # the page down to its footer

        row(page, a.id).locator('button[data-action="drain"]').click()
        expect(cell(page, a.id, "state")).to_have_text("draining")
        expect(cell(page, a.id, "health")).to_have_attribute("title", "not eligible: draining")
        expect(row(page, a.id).locator('button[data-action="drain"]')).to_be_disabled()
        assert api_server(inst, a.id)["state"] == "draining"
        assert api_server(inst, b.id)["state"] == "enabled"
        expect(cell(page, b.id, "state")).to_have_text("enabled")

        weight = cell(page, b.id, "weight")
        weight.locator("input").fill("5")
        weight.locator('button[data-action="weight"]').click()
        expect(page.locator("#messages .msg-ok", has_text=f"{b.id} in app: weight set to 5")).to_be_visible()
        assert api_server(inst, b.id)["weight"] == 5
        expect(weight.locator("input")).to_have_value("5")

        # The API's own error is shown: a weight it refuses.
        weight.locator("input").fill("0")
        weight.locator('button[data-action="weight"]').click()
        expect(page.locator("#messages .msg-error", has_text="greater than or equal to 1")).to_be_visible()
        assert api_server(inst, b.id)["weight"] == 5

        row(page, a.id).locator('button[data-action="enable"]').click()
        expect(cell(page, a.id, "state")).to_have_text("enabled")
        assert api_server(inst, a.id)["state"] == "enabled"


def test_a_wrong_token_is_asked_again_with_the_error_and_a_right_one_is_kept_for_the_tab(
        page: Page, make_instance: Make, pair: tuple[UpstreamServer, UpstreamServer]) -> None:
    a, b = pair
    inst = make_instance(app_group(a, b))
    page.goto(inst.admin_url + FAST)
    enter_token(page, "not-the-token")
    expect(page.locator("#token-error")).to_be_visible()
    expect(page.locator("#token-error")).to_contain_text("the bearer token is wrong")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("tr[data-server]")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0  # a refused token is not kept

    enter_token(page, TOKEN)
    expect(row(page, a.id)).to_be_visible()
    expect(page.locator("#token-error")).to_be_hidden()
    page.reload()  # the same tab keeps the token: no second prompt
    expect(cell(page, b.id, "state")).to_have_text("enabled")
    expect(page.locator("#token-form")).to_be_hidden()


def test_without_a_token_the_page_just_works(
        page: Page, make_instance: Make, pair: tuple[UpstreamServer, UpstreamServer]) -> None:
    a, b = pair
    inst = make_instance({**app_group(a, b), "admin": {"listen": "127.0.0.1:0"}})
    page.goto(inst.admin_url + FAST)
    expect(cell(page, a.id, "state")).to_have_text("enabled")
    expect(cell(page, b.id, "state")).to_have_text("enabled")
    expect(page.locator("#token-form")).to_be_hidden()


def test_a_stopped_instance_shows_connection_lost_and_the_page_recovers_when_it_is_back(
        page: Page, tmp_path: Path, make_instance: Make, pair: tuple[UpstreamServer, UpstreamServer]) -> None:
    a, b = pair
    inst = make_instance(app_group(a, b))
    page.goto(inst.admin_url + FAST)
    enter_token(page, TOKEN)
    expect(cell(page, a.id, "state")).to_have_text("enabled")
    expect(page.locator("#lost")).to_be_hidden()

    port = inst.admin_url.rsplit(":", 1)[1]
    inst.stop(grace=1)
    expect(page.locator("#connection")).to_have_text("connection lost \u2014 retrying")
    expect(page.locator("#lost")).to_be_visible()
    expect(cell(page, a.id, "state")).to_have_text("enabled")  # the last figures stay, dimmed

    # The same admin address again: the page's next poll finds it and the warning goes.
    make_instance({**app_group(a, b), "admin": {"listen": f"127.0.0.1:{port}", "token": TOKEN}}, name="again.json")
    expect(page.locator("#connection")).to_have_text("live")
    expect(page.locator("#lost")).to_be_hidden()
    expect(page.locator("#token-form")).to_be_hidden()
