"""diff_configs and format_changes on real configs: what a reload would change, as a reviewer reads it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from fulcrum.config import Config, load_config, parse_config
from fulcrum.config.diff import TOKEN_LEFT_OUT, Change, config_from_dump, diff_configs, format_changes

HASH = "$2b$04$" + "a" * 53  # bcrypt's shape; never checked against a password here
OTHER_HASH = "$2b$04$" + "b" * 53

BASE: dict[str, Any] = {
    "listen": [":8080"],
    "admin": {"listen": "127.0.0.1:9090", "token": "old-admin-token"},
    "upstreams": {
        "app": {"servers": ["http://127.0.0.1:5001", {"url": "http://127.0.0.1:5002", "weight": 3}],
                "health_check": {"path": "/health", "interval": "2s"}},
        "legacy": {"servers": ["http://127.0.0.1:6001"]},
    },
    "routes": [
        {"name": "api", "match": {"path_prefix": "/api/"}, "upstream": "app",
         "middleware": [{"request_id": {}}, {"rate_limit": {"rate": "100/s", "burst": 200}}]},
        {"match": {"path_prefix": "/old/"}, "upstream": "legacy"},
        {"match": {"path_prefix": "/"}, "upstream": "app"},
    ],
}


def config(data: dict[str, Any]) -> Config:
    return parse_config(data, env={})


def changed(**top: Any) -> dict[str, Any]:
    """A deep copy of BASE with top-level keys replaced."""
    data = copy.deepcopy(BASE)
    data.update(top)
    return data


def lines(old: dict[str, Any], new: dict[str, Any], **kwargs: Any) -> list[str]:
    return format_changes(diff_configs(config(old), config(new), **kwargs))


# -- nothing to do --------------------------------------------------------------------------


def test_the_same_config_has_no_changes() -> None:
    assert diff_configs(config(BASE), config(BASE)) == []
    assert format_changes([]) == ["no changes"]


def test_defaults_written_out_are_no_change() -> None:
    explicit = changed(listen=["0.0.0.0:8080"], workers=1,
                       limits={"header_timeout": "10000ms", "max_header_bytes": "32k"})
    explicit["upstreams"]["app"]["balance"] = "round_robin"
    explicit["upstreams"]["app"]["servers"][0] = {"url": "http://127.0.0.1:5001/", "weight": 1}
    assert lines(BASE, explicit) == ["no changes"]


def test_the_same_file_in_yaml_and_json_has_no_changes(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(BASE))
    (tmp_path / "b.yaml").write_text(
        "listen: ':8080'\n"
        "admin: {listen: 127.0.0.1:9090, token: old-admin-token}\n"
        "upstreams:\n"
        "  app: {servers: [http://127.0.0.1:5001, {url: http://127.0.0.1:5002, weight: 3}],"
        " health_check: {path: /health, interval: 2s}}\n"
        "  legacy: {servers: [http://127.0.0.1:6001]}\n"
        "routes:\n"
        "  - {name: api, match: {path_prefix: /api/}, upstream: app,"
        " middleware: [request_id, {rate_limit: {rate: 6000/min, burst: 200}}]}\n"
        "  - {match: {path_prefix: /old/}, upstream: legacy}\n"
        "  - {match: {path_prefix: /}, upstream: app}\n"
    )
    assert diff_configs(load_config(tmp_path / "a.json"), load_config(tmp_path / "b.yaml")) == []


# -- routes ---------------------------------------------------------------------------------


def test_a_route_added_and_one_removed() -> None:
    new = changed()
    new["routes"][1] = {"match": {"path_prefix": "/billing/"}, "respond": {"status": 503, "body": "later"}}
    assert lines(BASE, new) == ["- route */old/ ([1] -> legacy)", "+ route */billing/ ([1] respond 503)"]


def test_a_named_route_is_summarised_with_its_match() -> None:
    new = changed()
    new["routes"].insert(0, {"name": "health", "match": {"path": "/healthz"}, "respond": {"status": 200}})
    assert lines(BASE, new) == ["+ route health ([0] */healthz respond 200)"]


def test_a_changed_route_lists_each_changed_field() -> None:
    new = changed()
    new["routes"][0].update(upstream="legacy", strip_prefix="/api")
    new["routes"][0]["match"]["methods"] = ["get", "POST"]
    assert lines(BASE, new) == [
        "~ route api: match.methods none → [\"GET\", \"POST\"]",
        "~ route api: upstream app → legacy",
        "~ route api: strip_prefix none → /api",
    ]


def test_a_route_moved_to_the_top_is_one_move() -> None:
    new = changed()
    new["routes"] = [new["routes"][2], new["routes"][0], new["routes"][1]]
    assert lines(BASE, new) == ["~ route */: moved [2] → [0]"]


def test_a_route_inserted_before_others_moves_none_of_them() -> None:
    new = changed()
    new["routes"].insert(0, {"match": {"host": "admin.example.com"}, "upstream": "legacy"})
    assert lines(BASE, new) == ["+ route admin.example.com/ ([0] -> legacy)"]


def test_unnamed_routes_with_the_same_match_are_told_apart() -> None:
    old = changed(routes=[
        {"match": {"path_prefix": "/"}, "upstream": "app"},
        {"match": {"path_prefix": "/"}, "upstream": "legacy"},
    ])
    new = changed(routes=[
        {"match": {"path_prefix": "/"}, "upstream": "app"},
        {"match": {"path_prefix": "/"}, "upstream": "app"},
    ])
    assert lines(old, new) == ["~ route */ #2: upstream legacy → app"]


# -- middleware -----------------------------------------------------------------------------


def test_a_middleware_option_change_is_one_line() -> None:
    new = changed()
    new["routes"][0]["middleware"][1] = {"rate_limit": {"rate": "50/s", "burst": 200}}
    assert lines(BASE, new) == ["~ route api middleware rate_limit: rate 100/s → 50/s"]


def test_a_middleware_order_change_is_reported_as_order() -> None:
    new = changed()
    new["routes"][0]["middleware"].reverse()
    assert lines(BASE, new) == ["~ route api: middleware order request_id, rate_limit → rate_limit, request_id"]


def test_middleware_added_and_removed() -> None:
    new = changed()
    new["routes"][0]["middleware"] = [{"rate_limit": {"rate": "100/s", "burst": 200}},
                                      {"max_body": {"max_bytes": "1m"}}]
    assert lines(BASE, new) == [
        "- route api middleware request_id",
        "+ route api middleware max_body ({max_bytes: 1m})",
    ]


def test_a_plugin_is_keyed_by_its_factory() -> None:
    old = changed()
    old["routes"][0]["middleware"] = [{"plugin": "mypkg.auth:factory", "options": {"header": "X-Key"}}]
    new = copy.deepcopy(old)
    new["routes"][0]["middleware"][0]["options"]["header"] = "X-Api"
    assert lines(old, new) == ['~ route api middleware plugin mypkg.auth:factory: header X-Key → X-Api']


# -- upstream groups and servers ------------------------------------------------------------


def test_groups_added_and_removed() -> None:
    new = changed()
    del new["upstreams"]["legacy"]
    new["routes"][1]["upstream"] = "billing"
    new["upstreams"]["billing"] = {"balance": "least_conn", "servers": ["http://10.0.0.1:80", "http://10.0.0.2:80"]}
    assert lines(BASE, new) == [
        "~ route */old/: upstream legacy → billing",
        "+ upstream billing (least_conn, 2 servers)",
        "- upstream legacy (round_robin, 1 server)",
    ]


def test_balance_and_group_settings_changed() -> None:
    new = changed()
    app = new["upstreams"]["app"]
    app.update(balance="consistent_hash", hash_key="header:X-User")
    app["health_check"].update(interval="1s", timeout="500ms")
    app["pool"] = {"max_idle": 16}
    assert lines(BASE, new) == [
        "~ upstream app: balance round_robin → consistent_hash",
        "~ upstream app: hash_key ip → header:X-User",
        "~ upstream app: health_check.interval 2s → 1s",
        "~ upstream app: health_check.timeout 1s → 500ms",
        "~ upstream app: pool.max_idle 1024 → 16",
    ]


def test_servers_added_removed_and_reweighted() -> None:
    new = changed()
    new["upstreams"]["app"]["servers"] = [{"url": "http://127.0.0.1:5002", "weight": 5}, "http://[::1]:5003"]
    assert lines(BASE, new) == [
        "- server app 127.0.0.1:5001",
        "+ server app [::1]:5003 (weight 1)",
        "~ server app 127.0.0.1:5002: weight 3 → 5",
    ]


def test_server_order_is_reported() -> None:
    new = changed()
    new["upstreams"]["app"]["servers"].reverse()
    assert lines(BASE, new) == ["~ upstream app: server order 127.0.0.1:5001, 127.0.0.1:5002 → "
                                "127.0.0.1:5002, 127.0.0.1:5001"]


# -- top-level settings ---------------------------------------------------------------------


def test_listen_and_limits_print_as_written() -> None:
    new = changed(listen=[":8080", "[::1]:8443"], limits={"max_body_bytes": "1m", "header_timeout": "5s"},
                  admin={"listen": "[::1]:9091", "token": "old-admin-token"}, shutdown_grace="1m30s")
    assert lines(BASE, new) == [
        '~ listen: ["0.0.0.0:8080"] → ["0.0.0.0:8080", "[::1]:8443"]',
        "~ limits.max_body_bytes: 0 → 1m",
        "~ limits.header_timeout: 10s → 5s",
        "~ admin.listen: 127.0.0.1:9090 → [::1]:9091",
        "~ shutdown_grace: 30s → 1m30s",
    ]


def test_change_reads_as_its_op() -> None:
    assert str(Change("+", "upstream a", "round_robin, 1 server")) == "+ upstream a (round_robin, 1 server)"
    assert str(Change("-", "server a 1.2.3.4:80")) == "- server a 1.2.3.4:80"
    assert str(Change("~", "listen", "x → y")) == "~ listen: x → y"


# -- secrets --------------------------------------------------------------------------------


SECRETS = ("old-admin-token", "new-admin-token", HASH, OTHER_HASH, "upstream-secret", "rotated-secret",
           "sid=abc123", "k-12345", "k-54321", "hunter1", "hunter2", "match-secret")


def with_secrets(*, new: bool) -> dict[str, Any]:
    """BASE with a secret in each place one can be: old (``new=False``) or rotated, with more of them."""
    data = changed(admin={"listen": "127.0.0.1:9090", "token": "new-admin-token" if new else "old-admin-token"})
    route = data["routes"][0]
    route["request_headers"] = {"set": {"Authorization": "Bearer " + ("rotated-secret" if new else "upstream-secret"),
                                        "X-Env": "prod"}}
    if new:
        route["response_headers"] = {"set": {"Set-Cookie": "sid=abc123"}}
        route["match"]["headers"] = {"Authorization": "match-secret"}
    route["middleware"] = [
        {"basic_auth": {"users": {"bob": OTHER_HASH, "al": HASH} if new else {"bob": HASH}}},
        {"plugin": "mypkg.auth:factory", "options": {"api_key": "k-54321" if new else "k-12345",
                                                      "url": f"redis://app:{'hunter2' if new else 'hunter1'}@db:6379"}},
    ]
    return data


def test_secrets_are_never_printed() -> None:
    out = lines(with_secrets(new=False), with_secrets(new=True))
    text = "\n".join(out)
    for secret in SECRETS:
        assert secret not in text, secret
    assert out == [
        "~ admin.token: *** → ***",
        "~ route api: match.headers.Authorization none → ***",
        "~ route api: request_headers.set.Authorization *** → ***",
        "~ route api: response_headers none → {set: {Set-Cookie: ***}}",
        "~ route api middleware basic_auth: users.bob *** → ***",
        "~ route api middleware basic_auth: users.al none → ***",
        "~ route api middleware plugin mypkg.auth:factory: api_key *** → ***",
        "~ route api middleware plugin mypkg.auth:factory: url redis://app:***@db:6379 → redis://app:***@db:6379",
    ]


def test_secrets_in_added_things_are_masked_too() -> None:
    old = changed()
    new = with_secrets(new=True)
    new["routes"].append({"name": "more", "match": {"path": "/more"}, "upstream": "app",
                          "middleware": [{"basic_auth": {"users": {"bob": HASH}}}]})
    out = lines(old, new)
    text = "\n".join(out)
    for secret in SECRETS:
        assert secret not in text, secret
    assert "+ route more ([3] */more -> app)" in out
    assert '~ route api: request_headers none → {set: {Authorization: ***, X-Env: "prod"}}' in out
    assert '+ route api middleware basic_auth ({realm: "Restricted", users: ***})' in out
    assert '+ route api middleware plugin mypkg.auth:factory ({api_key: ***, url: "redis://app:***@db:6379"})' in out


def test_a_cookie_name_is_not_a_secret() -> None:
    new = changed()
    new["upstreams"]["app"]["sticky"] = {"cookie": "FULCRUM_SRV"}
    assert lines(BASE, new) == ['~ upstream app: sticky none → {cookie: "FULCRUM_SRV"}']


def test_ignored_settings_are_left_out() -> None:
    new = changed(admin={"listen": "127.0.0.1:9091", "token": "new-admin-token"})
    assert lines(BASE, new, ignore={"admin.token"}) == ["~ admin.listen: 127.0.0.1:9090 → 127.0.0.1:9091"]
    assert lines(BASE, new, ignore={"admin"}) == ["no changes"]


# -- the running config, read back ----------------------------------------------------------


def dumped(cfg: Config) -> Any:
    """What GET /api/v1/config answers: the dump as JSON, the token nulled."""
    data = json.loads(json.dumps(cfg.model_dump(mode="json")))
    data["admin"]["token"] = None
    return data


def test_a_dump_reads_back_as_the_same_config() -> None:
    data = changed(forwarding={"trusted_proxies": ["10.0.0.0/8"], "style": "both"})
    data["upstreams"]["app"].update(sticky={"cookie": "S", "ttl": "1h"}, retries={"budget": "10%"},
                                    passive={}, circuit_breaker={}, health_check={"expect_status": "200,204"})
    data["routes"][0]["match"].update(path_regex="^/api/v[0-9]+", headers={"X-A": {"regex": "^a"}},
                                      query={"q": "1"})
    data["routes"][0].update(rewrite={"regex": "^/api(.*)", "replacement": "\\1"},
                             request_headers={"set": {"X-Literal": "$${NOT_A_VAR}"}})
    data["routes"][0]["middleware"] += [
        {"rate_limit": {"rate": "10/min", "key": "header:X-User"}}, {"ip_filter": {"deny": ["192.0.2.0/24"]}},
        {"basic_auth": {"users": {"bob": HASH}}}, {"cors": {}}, {"compress": {}}, {"headers": {"preset": "secure"}},
        {"access_log": {"format": "json"}}, {"plugin": "mypkg.mod:factory", "options": {"a": [1, 2]}},
        {"plugin": "mypkg.mod:other"},
    ]
    data["routes"].insert(1, {"match": {"path": "/r"}, "redirect": {"url": "https://example.com{path}"}})
    original = config(data)
    back = config_from_dump(dumped(original), source="admin")
    assert back.admin.token == TOKEN_LEFT_OUT
    assert back.model_copy(update={"admin": original.admin}) == original
    assert back.routes[0].request_headers is not None
    assert back.routes[0].request_headers.set["X-Literal"] == "${NOT_A_VAR}"
    assert diff_configs(back, original, ignore={"admin.token"}) == []


def test_a_dump_of_a_public_admin_listener_reads_back_without_its_token() -> None:
    original = config(changed(admin={"listen": "0.0.0.0:9090", "token": "old-admin-token"}))
    back = config_from_dump(dumped(original), source="admin")
    assert back.admin.listen == original.admin.listen
    assert diff_configs(back, original, ignore={"admin.token"}) == []


def test_a_dump_with_the_admin_listener_off_keeps_it_off() -> None:
    original = config(changed(admin={"listen": None}))
    back = config_from_dump(dumped(original), source="admin")
    assert back.admin.listen is None
