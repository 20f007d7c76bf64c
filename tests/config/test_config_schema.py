"""The schema: defaults, interpolation, the seed style, and bad configs reported key by key."""

from __future__ import annotations

import ipaddress
import os
import pickle
from typing import Any

import pytest

from fulcrum.config import (
    Config,
    ConfigError,
    ConfigIssue,
    describe,
    parse_config,
    seed_to_config,
)
from fulcrum.config.schema import cpu_count

ONE = {"upstreams": {"app": {"servers": ["http://127.0.0.1:5001"]}}}


def errors_of(data: Any, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="test.yaml", env=env or {})
    assert all(issue.source == "test.yaml" for issue in caught.value.errors)
    return [(issue.path, issue.message) for issue in caught.value.errors]


def only_error(data: Any, env: dict[str, str] | None = None) -> tuple[str, str]:
    found = errors_of(data, env)
    assert len(found) == 1, found
    return found[0]


def with_upstream(**fields: Any) -> dict[str, Any]:
    return {"upstreams": {"app": {"servers": ["http://127.0.0.1:5001"], **fields}}}


# ---------------------------------------------------------------- defaults


def test_every_default() -> None:
    config = parse_config(ONE, env={})
    assert [(lst.host, lst.port) for lst in config.listen] == [("0.0.0.0", 8080)]
    assert config.workers == 1
    assert config.expose_upstream is False
    assert config.access_log is False
    assert config.shutdown_grace == 30.0
    limits = config.limits
    assert (limits.max_request_line, limits.max_header_bytes, limits.max_body_bytes) == (8192, 32768, 0)
    assert (limits.header_timeout, limits.keepalive_timeout) == (10.0, 75.0)
    assert config.forwarding.trusted_proxies == ()
    assert config.forwarding.style == "x-forwarded"
    assert (config.http2.h2c, config.http2.max_concurrent_streams) == (False, 100)
    [route] = config.routes
    assert (route.match.host, route.match.path_prefix, route.upstream) == (None, "/", "app")
    app = config.upstreams["app"]
    assert app.balance == "round_robin"
    assert app.hash_key == "ip"
    assert app.sticky is None
    assert app.slow_start == 0.0
    assert app.health_check is None
    assert [(s.url, s.weight) for s in app.servers] == [("http://127.0.0.1:5001", 1)]
    assert (app.timeouts.connect, app.timeouts.read, app.timeouts.total) == (2.0, 30.0, 0.0)
    assert (app.pool.max_idle, app.pool.idle_timeout, app.pool.max_connections) == (1024, 60.0, 0)


def test_health_check_defaults() -> None:
    check = parse_config(with_upstream(health_check={}), env={}).upstreams["app"].health_check
    assert check is not None
    assert (check.path, check.method, check.host) == ("/health", "GET", None)
    assert (check.interval, check.timeout, check.jitter) == (2.0, 1.0, 0.1)
    assert check.expect_status.text == "200-399"
    assert check.expect_status.matches(204) and not check.expect_status.matches(404)
    assert (check.expect_body, check.rise, check.fall, check.initial) == (None, 2, 3, "unhealthy")


def test_models_are_frozen() -> None:
    config = parse_config(ONE, env={})
    with pytest.raises(ValueError, match="frozen"):
        config.workers = 2


def test_full_example() -> None:
    data = {
        "listen": ["0.0.0.0:8080", "[::1]:8081"],
        "workers": 1,
        "limits": {
            "max_request_line": "4k",
            "max_header_bytes": "64k",
            "max_body_bytes": "10m",
            "header_timeout": "5s",
            "keepalive_timeout": "1m",
        },
        "expose_upstream": True,
        "access_log": "yes",
        "forwarding": {"trusted_proxies": ["10.0.0.0/8", "192.168.1.7", "fd00::/8"], "style": "both"},
        "shutdown_grace": "45s",
        "upstreams": {
            "app": {
                "balance": "consistent_hash",
                "hash_key": "header:X-User-Id",
                "sticky": {"cookie": "FULCRUM_SRV", "ttl": "1h"},
                "slow_start": "30s",
                "servers": ["http://127.0.0.1:5001", {"url": "http://127.0.0.1:5002", "weight": 3}],
                "health_check": {
                    "path": "/health",
                    "method": "head",
                    "host": "app.internal",
                    "interval": "5s",
                    "timeout": "500ms",
                    "jitter": 0.2,
                    "expect_status": "200,204,300-399",
                    "expect_body": "ok",
                    "rise": 1,
                    "fall": 5,
                    "initial": "healthy",
                },
                "timeouts": {"connect": "1s", "read": "10s", "total": "1m"},
                "pool": {"max_idle": 8, "idle_timeout": "30s", "max_connections": 100},
            },
            "static.v2": {"balance": "least_conn", "servers": ["http://localhost"]},
        },
        "routes": [
            {"match": {"host": "API.Example.com:8443", "path_prefix": "/api/"}, "upstream": "app"},
            {"match": {"host": "*.cdn.example.com"}, "upstream": "static.v2"},
            {"upstream": "app"},
        ],
    }
    config = parse_config(data, env={})
    assert [str(lst) for lst in config.listen] == ["0.0.0.0:8080", "[::1]:8081"]
    assert config.limits.max_request_line == 4096
    assert config.limits.max_body_bytes == 10 * 1024 * 1024
    assert config.limits.keepalive_timeout == 60.0
    assert config.access_log is True
    assert config.expose_upstream is True
    assert config.shutdown_grace == 45.0
    assert config.forwarding.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    app = config.upstreams["app"]
    assert app.balance == "consistent_hash"
    assert app.hash_key == "header:X-User-Id"
    assert app.sticky is not None and (app.sticky.cookie, app.sticky.ttl) == ("FULCRUM_SRV", 3600.0)
    assert app.slow_start == 30.0
    assert [(s.url, s.weight, s.address) for s in app.servers] == [
        ("http://127.0.0.1:5001", 1, "127.0.0.1:5001"),
        ("http://127.0.0.1:5002", 3, "127.0.0.1:5002"),
    ]
    check = app.health_check
    assert check is not None
    assert (check.method, check.host, check.interval, check.timeout, check.jitter) == (
        "HEAD",
        "app.internal",
        5.0,
        0.5,
        0.2,
    )
    assert check.expect_status.matches(204) and not check.expect_status.matches(201)
    assert (check.expect_body, check.rise, check.fall, check.initial) == ("ok", 1, 5, "healthy")
    assert (app.timeouts.connect, app.timeouts.read, app.timeouts.total) == (1.0, 10.0, 60.0)
    assert (app.pool.max_idle, app.pool.idle_timeout, app.pool.max_connections) == (8, 30.0, 100)
    static = config.upstreams["static.v2"]
    assert [(s.url, s.host, s.port) for s in static.servers] == [("http://localhost:80", "localhost", 80)]
    assert [(r.match.host, r.match.path_prefix, r.upstream) for r in config.routes] == [
        ("api.example.com", "/api/", "app"),
        ("*.cdn.example.com", None, "static.v2"),
        (None, None, "app"),
    ]
    # The model serialises (for the admin API) and validates again to the same config.
    assert Config.model_validate(config.model_dump()) == config


def test_server_urls_are_normalised() -> None:
    servers = (
        parse_config(
            {"upstreams": {"a": {"servers": ["http://LocalHost:81/", "http://[::1]:82", " http://10.0.0.1 "]}}}, env={}
        )
        .upstreams["a"]
        .servers
    )
    assert [(s.url, s.address) for s in servers] == [
        ("http://localhost:81", "localhost:81"),
        ("http://[::1]:82", "[::1]:82"),
        ("http://10.0.0.1:80", "10.0.0.1:80"),
    ]


def test_match_host_star_means_any_host() -> None:
    config = parse_config({**ONE, "routes": [{"match": {"host": "*"}, "upstream": "app"}]}, env={})
    assert config.routes[0].match.host is None


# ---------------------------------------------------------------- ${VAR} interpolation


def test_env_set_and_default() -> None:
    data = {
        "listen": ["${HOST:-127.0.0.1}:${PORT}"],
        "upstreams": {"app": {"servers": ["http://${BACKEND}:5001"], "timeouts": {"read": "${READ:-15s}"}}},
        "access_log": "${LOG}",
    }
    config = parse_config(data, env={"PORT": "9001", "BACKEND": "10.1.2.3", "LOG": "true"})
    assert (config.listen[0].host, config.listen[0].port) == ("127.0.0.1", 9001)
    assert config.upstreams["app"].servers[0].url == "http://10.1.2.3:5001"
    assert config.upstreams["app"].timeouts.read == 15.0
    assert config.access_log is True


def test_env_default_used_when_empty_and_value_used_when_set() -> None:
    data = {"upstreams": {"app": {"servers": ["http://${H:-fallback}"]}}}
    assert parse_config(data, env={"H": ""}).upstreams["app"].servers[0].host == "fallback"
    assert parse_config(data, env={"H": "real"}).upstreams["app"].servers[0].host == "real"


def test_env_dollar_escape() -> None:
    config = parse_config(with_upstream(health_check={"path": "/h?x=$${NOT_A_VAR}"}), env={})
    assert config.upstreams["app"].health_check is not None
    assert config.upstreams["app"].health_check.path == "/h?x=${NOT_A_VAR}"


def test_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULCRUM_TEST_BACKEND", "10.9.8.7")
    config = parse_config({"upstreams": {"a": {"servers": ["http://${FULCRUM_TEST_BACKEND}"]}}})
    assert config.upstreams["a"].servers[0].host == "10.9.8.7"


def test_env_missing_names_the_path_and_is_the_only_error_there() -> None:
    found = errors_of(
        {"listen": ["${NO_HOST}:80"], "upstreams": {"app": {"servers": ["http://h", "${NO_SERVER}"]}}}, env={}
    )
    assert found == [
        ("listen[0]", "environment variable NO_HOST is not set"),
        ("upstreams.app.servers[1]", "environment variable NO_SERVER is not set"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [("${bad name}", "bad variable reference '${bad name}'"), ("http://${OPEN", "has ${ without a closing }")],
)
def test_env_malformed_reference(text: str, reason: str) -> None:
    path, message = only_error({"upstreams": {"app": {"servers": [text]}}})
    assert path == "upstreams.app.servers[0]"
    assert reason in message


# ---------------------------------------------------------------- the seed style


def test_seed_style() -> None:
    config = parse_config(
        {"port": ":8080", "healthCheckInterval": "2s", "servers": ["http://localhost:5001", "http://localhost:5002"]},
        env={},
    )
    assert [(lst.host, lst.port) for lst in config.listen] == [("0.0.0.0", 8080)]
    assert list(config.upstreams) == ["default"]
    group = config.upstreams["default"]
    assert group.balance == "round_robin"
    assert [s.url for s in group.servers] == ["http://localhost:5001", "http://localhost:5002"]
    [route] = config.routes
    assert (route.match.host, route.match.path_prefix, route.upstream) == (None, "/", "default")
    check = group.health_check
    assert check is not None
    assert (check.method, check.path, check.interval, check.timeout) == ("HEAD", "/", 2.0, 1.0)
    assert (check.expect_status.text, check.rise, check.fall) == ("200", 1, 1)


def test_seed_style_short_interval_caps_timeout() -> None:
    config = parse_config({"healthCheckInterval": "300ms", "servers": ["http://a:1"]}, env={})
    check = config.upstreams["default"].health_check
    assert check is not None and (check.interval, check.timeout) == (0.3, 0.3)
    assert config.listen[0].port == 8080


def test_seed_to_config() -> None:
    converted = seed_to_config({"port": 9000, "servers": ["http://a:1"]})
    assert converted["listen"] == [9000]
    assert converted["upstreams"]["default"]["servers"] == ["http://a:1"]
    assert converted["upstreams"]["default"]["health_check"]["method"] == "HEAD"
    assert "routes" not in converted
    with pytest.raises(ConfigError, match="workers: unknown key in the short form"):
        seed_to_config({"servers": [], "workers": 1})


def test_seed_style_errors_name_the_seed_keys() -> None:
    found = errors_of(
        {"port": ":http", "healthCheckInterval": "fast", "servers": ["http://ok:1", "ftp://x"], "balance": "random"}
    )
    paths = [path for path, _ in found]
    assert paths == ["balance", "port", "servers[1]", "healthCheckInterval"]
    assert "unknown key in the short form" in found[0][1]
    assert "must be a duration like 2s or 500ms, got 'fast'" in found[3][1]


# ---------------------------------------------------------------- bad configs, one key at a time


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({**ONE, "workers": "many"}, "workers", "must be a number of worker processes from 1 to 256, or auto"),
        ({**ONE, "workers": 0}, "workers", "must be a number of worker processes from 1 to 256, or auto (one per CPU)"),
        ({**ONE, "workers": 257}, "workers", "got 257"),
        ({**ONE, "workers": True}, "workers", "got True"),
        ({**ONE, "workers": 2, "tcp_services": {"db": {"listen": ":5433", "servers": ["127.0.0.1:5432"]}}},
         "tcp_services", "TCP services run in a single process for now: they need workers: 1 (workers is 2)"),
        ({**ONE, "workerz": 1}, "workerz", "unknown key (did you mean 'workers'?)"),
        ({**ONE, "zzz": 1}, "zzz", "unknown key (known here: access_log, admin, expose_upstream"),
        ({**ONE, "admin": {"listen": ":9090"}}, "admin.token", "is required when admin.listen (0.0.0.0:9090) is not a"),
        ({**ONE, "admin": {"listen": "10.1.2.3:9090", "token": ""}}, "admin.token", "is required when admin.listen"),
        ({**ONE, "admin": {"token": "two words"}}, "admin.token", "must be visible ASCII characters without spaces"),
        ({**ONE, "admin": {"tokn": "x"}}, "admin.tokn", "unknown key (did you mean 'token'?)"),
        ({**ONE, "limits": {"max_header_bytes": "lots"}}, "limits.max_header_bytes", "must be a size like 16k or 1m"),
        ({**ONE, "limits": {"max_header_bytes": 0}}, "limits.max_header_bytes", "must be larger than 0"),
        ({**ONE, "limits": {"max_body_bytes": -1}}, "limits.max_body_bytes", "must be a size"),
        ({**ONE, "limits": {"header_timeout": "fast"}}, "limits.header_timeout", "got 'fast'"),
        ({**ONE, "limits": {"keepalive_timeout": "0s"}}, "limits.keepalive_timeout", "must be longer than 0"),
        ({**ONE, "limits": "big"}, "limits", "must be a mapping of keys to values, got a string"),
        ({**ONE, "expose_upstream": "maybe"}, "expose_upstream", "must be true or false, got 'maybe'"),
        ({**ONE, "shutdown_grace": "soon"}, "shutdown_grace", "must be a duration"),
        ({**ONE, "forwarding": {"style": "rfc"}}, "forwarding.style", "must be one of x-forwarded, rfc7239, both"),
        ({**ONE, "forwarding": {"trusted_proxies": ["10.0.0.0/33"]}}, "forwarding.trusted_proxies[0]", "CIDR"),
        ({**ONE, "forwarding": {"trusted_proxies": "10.0.0.0/8"}}, "forwarding.trusted_proxies", "must be a list"),
        ({"upstreams": {}}, "upstreams", "define at least one upstream"),
        ({"listen": ":80"}, "upstreams", "missing (required)"),
        ({"upstreams": {"a b": {"servers": ["http://h"]}}}, "upstreams['a b']", "upstream names may use only"),
        (with_upstream(balance="fastest"), "upstreams.app.balance", "must be one of round_robin"),
        (with_upstream(balanse="random"), "upstreams.app.balanse", "unknown key (did you mean 'balance'?)"),
        (with_upstream(hash_key="header:"), "upstreams.app.hash_key", "must be ip, path, header:NAME or cookie:NAME"),
        (with_upstream(hash_key="body"), "upstreams.app.hash_key", "got 'body'"),
        (with_upstream(sticky={"cookie": "a b"}), "upstreams.app.sticky.cookie", "must be a valid cookie name"),
        (with_upstream(sticky={}), "upstreams.app.sticky.cookie", "missing (required)"),
        (with_upstream(sticky={"cookie": "S", "ttl": "x"}), "upstreams.app.sticky.ttl", "must be a duration"),
        (with_upstream(slow_start="-1s"), "upstreams.app.slow_start", "must be a duration"),
        (with_upstream(servers=[]), "upstreams.app.servers", "list at least one server"),
        (with_upstream(servers="http://h"), "upstreams.app.servers", "must be a list, got a string"),
        (with_upstream(servers=["https://h/x"]), "upstreams.app.servers[0]", "must be just https://host:port"),
        (with_upstream(servers=["h:80"]), "upstreams.app.servers[0]",
         "must be a URL like http://host:port or https://host:port, got"),
        (with_upstream(servers=["http://h:99999"]), "upstreams.app.servers[0]", "must be a URL like http://host:port"),
        (with_upstream(servers=["http://h/app"]), "upstreams.app.servers[0]", "with no path, query or user"),
        (with_upstream(servers=["http://u@h"]), "upstreams.app.servers[0]", "with no path, query or user"),
        (with_upstream(servers=[{"url": "ftp://h"}]), "upstreams.app.servers[0].url", "must be a URL like"),
        (with_upstream(servers=[{"url": "http://h", "weight": 0}]), "upstreams.app.servers[0].weight", "1 and 1000"),
        (with_upstream(servers=[{"url": "http://h", "weight": 1001}]), "upstreams.app.servers[0].weight", "got 1001"),
        (with_upstream(servers=[{"url": "http://h", "weight": "x"}]), "upstreams.app.servers[0].weight", "whole"),
        (with_upstream(servers=[{"url": "http://h", "weight": True}]), "upstreams.app.servers[0].weight", "whole"),
        (with_upstream(servers=[{"weight": 2}]), "upstreams.app.servers[0].url", "missing (required)"),
        (
            with_upstream(servers=["http://a:1", "http://b", "http://A:1/"]),
            "upstreams.app.servers[2]",
            "a:1 is already listed at servers[0]",
        ),
        (with_upstream(health_check={"path": "health"}), "upstreams.app.health_check.path", "must start with /"),
        (with_upstream(health_check={"path": "/a b"}), "upstreams.app.health_check.path", "must not contain spaces"),
        (with_upstream(health_check={"method": "PUT"}), "upstreams.app.health_check.method", "GET, HEAD, OPTIONS"),
        (with_upstream(health_check={"interval": "1s", "timeout": "2s"}), "upstreams.app.health_check.timeout", "not"),
        (with_upstream(health_check={"jitter": 2}), "upstreams.app.health_check.jitter", "fraction from 0 to 1"),
        (with_upstream(health_check={"expect_status": "ok"}), "upstreams.app.health_check.expect_status", "codes"),
        (with_upstream(health_check={"rise": 0}), "upstreams.app.health_check.rise", "must be at least 1, got 0"),
        (with_upstream(health_check={"fall": 0}), "upstreams.app.health_check.fall", "must be at least 1"),
        (with_upstream(health_check={"initial": "up"}), "upstreams.app.health_check.initial", "healthy, unhealthy"),
        (with_upstream(health_check={"host": ""}), "upstreams.app.health_check.host", "must not be empty"),
        (with_upstream(timeouts={"connect": 0}), "upstreams.app.timeouts.connect", "must be longer than 0"),
        (with_upstream(timeouts={"read": "x"}), "upstreams.app.timeouts.read", "must be a duration"),
        (with_upstream(pool={"max_idle": -1}), "upstreams.app.pool.max_idle", "must be at least 0, got -1"),
        (with_upstream(pool={"max_conns": 1}), "upstreams.app.pool.max_conns", "unknown key"),
        (with_upstream(retries={"when": ["sometimes"]}), "upstreams.app.retries.when", "must be connect_error"),
        ({**ONE, "http2": {"max_concurrent_streams": 0}}, "http2.max_concurrent_streams", "between 1 and 1000"),
        ({**ONE, "http2": {"h2c": "sometimes"}}, "http2.h2c", "must be true or false"),
        ({**ONE, "http2": {"upgrade": True}}, "http2.upgrade", "unknown key"),
        ({**ONE, "routes": [{"upstream": "ap"}]}, "routes[0].upstream", "unknown upstream 'ap' (defined: app)"),
        ({**ONE, "routes": [{"match": {}}]}, "routes[0]", "a route needs exactly one of upstream, respond or redirect"),
        ({**ONE, "routes": []}, "routes", "list at least one route"),
        (
            {**ONE, "routes": [{"match": {"path_prefix": "api"}, "upstream": "app"}]},
            "routes[0].match.path_prefix",
            "must start with /",
        ),
        (
            {**ONE, "routes": [{"match": {"host": "bad host"}, "upstream": "app"}]},
            "routes[0].match.host",
            "must be a host name like example.com or *.example.com",
        ),
        (
            {**ONE, "routes": [{"match": {"methods": ["G T"]}, "upstream": "app"}]},
            "routes[0].match.methods",
            "must be HTTP methods like GET or POST",
        ),
        ({**ONE, "routes": [{"upstream": "app", "strip_prefix": "x"}]}, "routes[0].strip_prefix", "must start with /"),
    ],
)
def test_bad_config(data: dict[str, Any], path: str, reason: str) -> None:
    found_path, message = only_error(data)
    assert found_path == path
    assert reason in message


def test_several_upstreams_need_routes() -> None:
    data = {"upstreams": {"a": {"servers": ["http://a"]}, "b": {"servers": ["http://b"]}}}
    assert only_error(data) == ("routes", "needed when there are several upstreams (defined: a, b)")


def test_every_error_is_reported() -> None:
    data = {
        "listen": ["nope"],
        "workers": "several",
        "limits": {"max_header_bytes": "lots", "header_timeot": "1s"},
        "upstreams": {
            "app": {
                "balance": "fastest",
                "servers": ["http://a:1", {"url": "http://b:1", "weight": 0}],
                "health_check": {"expect_status": "ok"},
            },
            "bad name": {"servers": ["http://c"]},
        },
        "routes": [{"upstream": "ap"}, {"match": {"path_prefix": "x"}, "upstream": "app"}],
    }
    found = dict(errors_of(data))
    assert set(found) == {
        "listen[0]",
        "workers",
        "limits.max_header_bytes",
        "limits.header_timeot",
        "upstreams.app.balance",
        "upstreams.app.servers[1].weight",
        "upstreams.app.health_check.expect_status",
        "upstreams['bad name']",
        "routes[0].upstream",
        "routes[1].match.path_prefix",
    }
    assert found["routes[0].upstream"] == "unknown upstream 'ap' (defined: app, bad name)"
    assert found["limits.header_timeot"] == "unknown key (did you mean 'header_timeout'?)"


def test_top_level_must_be_a_mapping() -> None:
    assert only_error(["a"]) == ("", "must be a mapping of keys to values, got ['a']")
    assert only_error(None) == ("", "the file is empty")


def test_error_text_is_one_line_per_issue() -> None:
    err = ConfigError(
        [ConfigIssue("f.yaml", "routes[0].upstream", "unknown upstream 'ap'"), ConfigIssue("f.yaml", "", "x")]
    )
    assert str(err) == "f.yaml: routes[0].upstream: unknown upstream 'ap'\nf.yaml: x"
    copy = pickle.loads(pickle.dumps(err))
    assert copy.errors == err.errors


# ---------------------------------------------------------------- describe


def test_describe() -> None:
    data = {
        "listen": [":8080"],
        "upstreams": {
            "app": {
                "balance": "weighted_round_robin",
                "servers": ["http://127.0.0.1:5001", {"url": "http://127.0.0.1:5002", "weight": 3}],
                "health_check": {"path": "/health", "interval": "2s", "timeout": "500ms"},
            },
            "api": {"balance": "consistent_hash", "hash_key": "cookie:uid", "servers": ["http://10.0.0.1:80"]},
        },
        "routes": [
            {"match": {"host": "api.example.com", "path_prefix": "/v1/"}, "upstream": "api"},
            {"upstream": "app"},
        ],
    }
    text = describe(parse_config(data, env={}))
    lines = text.splitlines()
    assert lines[0] == "listen: 0.0.0.0:8080"
    assert "  api.example.com/v1/  -> api" in lines
    assert "  */                   -> app" in lines
    assert "  app: weighted_round_robin, 2 servers" in lines
    assert "    http://127.0.0.1:5002  weight 3" in lines
    assert "    health: GET /health every 2s (timeout 500ms), expect 200-399, rise 2, fall 3, start unhealthy" in lines
    assert "  api: consistent_hash on cookie:uid, 1 server" in lines
    assert "    no health check (servers count as healthy)" in lines
    assert len(lines) < 20
    assert not any(line.startswith("http2:") for line in lines)
    h2c = describe(parse_config({**data, "http2": {"h2c": True}}, env={})).splitlines()
    assert "http2: h2c (prior knowledge) on the plain listeners, up to 100 streams per connection" in h2c


def test_workers_is_a_count_or_auto_for_one_per_cpu() -> None:
    assert parse_config({**ONE, "workers": 3}, env={}).workers == 3
    assert parse_config({**ONE, "workers": "2"}, env={}).workers == 2
    assert parse_config({**ONE, "workers": "auto"}, env={}).workers == len(os.sched_getaffinity(0))
    assert parse_config({**ONE, "workers": "auto"}, env={}).workers == cpu_count() >= 1


def test_check_names_the_worker_processes_when_there_are_several() -> None:
    assert "workers:" not in describe(parse_config(ONE, env={}))
    assert "workers: 3 worker processes and a main process (admin API, health checks)" in describe(
        parse_config({**ONE, "workers": 3}, env={}))
