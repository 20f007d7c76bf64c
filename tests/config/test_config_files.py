"""load_config on real files: YAML, JSON, the seed style, syntax errors and unreadable files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fulcrum.config import ConfigError, ConfigIssue, load_config

DESIGN_STYLE = """\
listen: ["0.0.0.0:8080"]          # "host:port" or ":port"
workers: 1
limits: {max_request_line: 8k, max_header_bytes: 32k, max_body_bytes: 0, header_timeout: 10s, keepalive_timeout: 75s}
expose_upstream: false
access_log: true
forwarding: {trusted_proxies: [10.0.0.0/8], style: x-forwarded}
upstreams:
  app:
    balance: round_robin
    hash_key: "header:X-User-Id"
    sticky: {cookie: FULCRUM_SRV}
    servers:
      - "http://127.0.0.1:5001"
      - {url: "http://127.0.0.1:5002", weight: 3}
    health_check: {path: /health, method: GET, interval: 2s, timeout: 1s, expect_status: "200-399", rise: 2, fall: 3}
    timeouts: {connect: 2s, read: 30s}
    pool: {max_idle: 64, idle_timeout: 60s, max_connections: 0}
  admin-api:
    servers: ["http://${ADMIN_HOST:-127.0.0.1}:${ADMIN_PORT}"]
routes:
  - match: {host: "api.example.com", path_prefix: "/api/"}
    upstream: app
  - match: {path_prefix: /admin/}
    upstream: admin-api
  - match: {path_prefix: /}
    upstream: app
"""


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load_errors(path: Path, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env or {})
    assert all(issue.source == str(path) for issue in caught.value.errors)
    return caught.value.errors


def test_design_style_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "fulcrum.yaml", DESIGN_STYLE)
    config = load_config(path, env={"ADMIN_PORT": "7000"})
    assert [str(lst) for lst in config.listen] == ["0.0.0.0:8080"]
    assert config.limits.max_request_line == 8192
    assert config.access_log is True
    assert [str(n) for n in config.forwarding.trusted_proxies] == ["10.0.0.0/8"]
    app = config.upstreams["app"]
    assert [(s.url, s.weight) for s in app.servers] == [("http://127.0.0.1:5001", 1), ("http://127.0.0.1:5002", 3)]
    assert app.sticky is not None and app.sticky.cookie == "FULCRUM_SRV"
    assert app.health_check is not None and app.health_check.expect_status.text == "200-399"
    assert config.upstreams["admin-api"].servers[0].url == "http://127.0.0.1:7000"
    assert [(r.match.host, r.match.path_prefix, r.upstream) for r in config.routes] == [
        ("api.example.com", "/api/", "app"),
        (None, "/admin/", "admin-api"),
        (None, "/", "app"),
    ]


def test_missing_variable_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "fulcrum.yaml", DESIGN_STYLE)
    [issue] = load_errors(path)
    assert issue.path == "upstreams.admin-api.servers[0]"
    assert issue.message == "environment variable ADMIN_PORT is not set"
    assert str(issue) == f"{path}: upstreams.admin-api.servers[0]: environment variable ADMIN_PORT is not set"


def test_json_file(tmp_path: Path) -> None:
    data = {
        "listen": "127.0.0.1:9000",
        "upstreams": {"app": {"balance": "p2c", "servers": ["http://10.0.0.1:80", "http://10.0.0.2:80"]}},
    }
    config = load_config(write(tmp_path, "fulcrum.json", json.dumps(data, indent=2)), env={})
    assert (config.listen[0].host, config.listen[0].port) == ("127.0.0.1", 9000)
    assert config.upstreams["app"].balance == "p2c"
    assert config.routes[0].upstream == "app"


def test_json_with_tabs_in_a_yaml_named_file(tmp_path: Path) -> None:
    text = '{\n\t"upstreams": {"app": {"servers": ["http://h:1"]}}\n}\n'
    config = load_config(write(tmp_path, "fulcrum.yml", text), env={})
    assert config.upstreams["app"].servers[0].url == "http://h:1"


def test_seed_style_json_file(tmp_path: Path) -> None:
    text = (
        '{"port": ":8080", "healthCheckInterval": "2s", "servers": ["http://localhost:5001", "http://localhost:5002"]}'
    )
    config = load_config(write(tmp_path, "config.json", text), env={})
    assert config.listen[0].port == 8080
    group = config.upstreams["default"]
    assert len(group.servers) == 2
    assert group.health_check is not None and group.health_check.method == "HEAD"
    assert config.routes[0].upstream == "default"


def test_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.json", '{\n  "upstreams": {\n    "app": {"servers": ["http://h",]}\n  }\n}\n')
    [issue] = load_errors(path)
    assert issue.path == "line 3, column 36"  # the "]" after the trailing comma
    assert issue.message.startswith("JSON syntax error: ")


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "upstreams:\n  app:\n    servers: [http://h\n  other: 1\n")
    [issue] = load_errors(path)
    assert issue.path.startswith("line 4, column ")
    assert issue.message.startswith("YAML syntax error: ")


def test_yaml_bad_indentation(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "upstreams:\n  app:\n    servers: []\n   balance: x\n")
    [issue] = load_errors(path)
    assert issue.path == "line 4, column 4"


def test_yaml_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.yaml", "upstreams:\n  app:\n    servers: [http://a]\n  app:\n    servers: [http://b]\n")
    [issue] = load_errors(path)
    assert issue.path == "line 4, column 3"
    assert "the key 'app' is given twice" in issue.message


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = (
        "defaults: &d {balance: least_conn, servers: [http://a]}\n"
        "upstreams:\n  app:\n    <<: *d\n    servers: [http://b]\n"
    )
    path = write(tmp_path, "merge.yaml", text)
    # "defaults" is not a Fulcrum key: the merge itself parsed, and only the unknown key is reported.
    [issue] = load_errors(path)
    assert (issue.path, issue.message.split(" (")[0]) == ("defaults", "unknown key")


def test_bad_values_in_a_file_are_all_reported(tmp_path: Path) -> None:
    text = (
        "listen: ':http'\n"
        "upstreams:\n"
        "  app:\n"
        "    servers:\n"
        "      - http://a:1\n"
        "      - {url: http://b:1, weight: 0}\n"
        "    health_check: {interval: fast}\n"
        "routes:\n"
        "  - {upstream: ap}\n"
    )
    errors = load_errors(write(tmp_path, "bad.yaml", text))
    assert [(e.path, e.message) for e in errors] == [
        ("listen[0]", "must be host:port, :port or [ipv6]:port, got ':http'"),
        ("upstreams.app.servers[1].weight", "must be between 1 and 1000, got 0"),
        ("upstreams.app.health_check.interval", "must be a duration like 2s or 500ms, got 'fast'"),
        ("routes[0].upstream", "unknown upstream 'ap' (defined: app)"),
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    [issue] = load_errors(path)
    assert str(issue) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    [issue] = load_errors(tmp_path)
    assert issue.message == "is a directory, not a config file"


def test_empty_file(tmp_path: Path) -> None:
    [issue] = load_errors(write(tmp_path, "empty.yaml", "# nothing here\n"))
    assert issue.message == "the file is empty"


def test_not_a_mapping(tmp_path: Path) -> None:
    [issue] = load_errors(write(tmp_path, "list.yaml", "- a\n- b\n"))
    assert issue.message == "must be a mapping of keys to values, got ['a', 'b']"


def test_not_utf8(tmp_path: Path) -> None:
    [issue] = load_errors(write(tmp_path, "latin.yaml", b"listen: '\xff'\n"))
    assert issue.message == "is not UTF-8 text (bad byte at offset 9)"


def test_path_as_str_and_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.yaml", "\ufeffupstreams: {app: {servers: [http://h]}}\n")
    assert load_config(str(path), env={}).upstreams["app"].servers[0].url == "http://h:80"
