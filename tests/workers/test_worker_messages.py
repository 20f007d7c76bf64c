"""What a worker makes of the main process's messages: the same config, and the main's flags on its servers."""

from __future__ import annotations

import asyncio
import json

from fulcrum.config import parse_config
from fulcrum.config.diff import config_from_dump
from fulcrum.proxy.server import ProxyServer
from fulcrum.state.server import Down
from fulcrum.supervisor.worker import apply_flags
from fulcrum.supervisor.workers import main_flags

FULL = {
    "workers": 2,
    "admin": {"listen": "0.0.0.0:9090", "token": "s3cret"},
    "limits": {"header_timeout": "5s", "max_body_bytes": "1m"},
    "upstreams": {"app": {"balance": "least_conn", "servers": ["http://127.0.0.1:5001", {"url": "http://127.0.0.1:5002",
                                                                                       "weight": 3}],
                          "health_check": {"path": "/health", "interval": "2s"}}},
    "routes": [{"match": {"path_prefix": "/api/"}, "upstream": "app", "strip_prefix": "/api",
                "request_headers": {"set": {"X-Literal": "$${NOT_A_VAR}"}},
                "middleware": [{"request_id": {}}, {"rate_limit": {"rate": "100/s", "burst": 200}}]},
               {"match": {"path_prefix": "/"}, "upstream": "app"}],
}


def test_the_config_a_worker_rebuilds_from_the_message_is_the_main_processes() -> None:
    config = parse_config(FULL, env={})
    wire = json.loads(json.dumps(config.model_dump(mode="json")))  # as it crosses the channel
    again = config_from_dump(wire, "config")
    assert again == config
    assert again.routes[0].request_headers.set["X-Literal"] == "${NOT_A_VAR}"


async def test_the_main_flags_are_set_on_a_workers_servers_and_its_own_are_kept() -> None:
    loop = asyncio.get_running_loop()
    config = parse_config(FULL, env={})
    main = ProxyServer(config, loop)
    worker = ProxyServer(config, loop, checks=False)
    ma, mb = main.snapshot.groups["app"].servers
    ma.set_down(Down.ACTIVE_CHECK, False)
    mb.set_down(Down.ACTIVE_CHECK, False)
    mb.set_down(Down.DISABLED, True)
    wa, wb = worker.snapshot.groups["app"].servers
    wa.set_down(Down.PASSIVE, True)  # the worker's own ejection: not the main's to change
    assert wa.down & Down.ACTIVE_CHECK and wb.down & Down.ACTIVE_CHECK  # unchecked until the main says
    apply_flags(worker.snapshot, json.loads(json.dumps(main_flags(main.snapshot))))
    assert (wa.down, wb.down) == (Down.PASSIVE, Down.DISABLED)
    assert worker.snapshot.groups["app"].eligible == ()
    wa.set_down(Down.PASSIVE, False)
    assert worker.snapshot.groups["app"].eligible == (wa,)


def test_a_worker_that_keeps_dying_at_start_is_replaced_ever_later_up_to_a_bound() -> None:
    from fulcrum.supervisor.workers import RESTART_MAX, restart_delay

    assert [restart_delay(n) for n in range(6)] == [0.0, 0.0, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == RESTART_MAX
