"""``tcp_services`` in the config: what it means, what ``fulcrum check`` says of it, and what a reload would change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fulcrum.config import ConfigError, describe, parse_config
from fulcrum.config.diff import diff_configs, format_changes

FULCRUM = Path(sys.executable).with_name("fulcrum")
BASE: dict[str, Any] = {"upstreams": {"app": {"servers": ["http://127.0.0.1:5001"]}}}


def errors_of(config: dict[str, Any]) -> dict[str, str]:
    """Every problem of a config, by key path."""
    with pytest.raises(ConfigError) as caught:
        parse_config(config, source="t.yaml")
    return {issue.path: issue.message for issue in caught.value.errors}


def test_a_service_and_its_defaults() -> None:
    config = parse_config({**BASE, "tcp_services": {"db": {
        "listen": ":5433",
        "servers": ["10.0.0.5:5432", {"address": "[::1]:5432", "weight": 2}, "db.internal:5432"],
        "balance": "least_conn",
        "health_check": {"interval": "2s"},
    }}})
    db = config.tcp_services["db"]
    assert (db.listen.host, db.listen.port, str(db.listen)) == ("0.0.0.0", 5433, "0.0.0.0:5433")
    assert [(s.address, s.host, s.port, s.weight) for s in db.servers] == [
        ("10.0.0.5:5432", "10.0.0.5", 5432, 1), ("[::1]:5432", "::1", 5432, 2), ("db.internal:5432", "db.internal",
                                                                                   5432, 1)]
    assert (db.timeouts.connect, db.timeouts.idle) == (2.0, 600.0)
    assert db.health_check is not None
    assert (db.health_check.timeout, db.health_check.rise, db.health_check.fall) == (1.0, 2, 3)
    assert parse_config(BASE).tcp_services == {}
    assert parse_config({**BASE, "tcp_services": {"x": {"listen": 7000, "servers": ["h:1"]}}}) \
        .tcp_services["x"].balance == "round_robin"


def test_every_problem_at_once_with_its_key_path() -> None:
    problems = errors_of({**BASE, "listen": ["127.0.0.1:8080"], "tcp_services": {
        "db": {"listen": ":5433", "servers": ["10.0.0.5:5432", "http://10.0.0.6:5432", "10.0.0.7"],
               "balance": "least_connections", "health_check": {"rise": 0}},
        "cache": {"listen": "127.0.0.1:99999", "servers": ["[::1:6379"]},
        "web": {"listen": "0.0.0.0:8080", "servers": ["10.0.0.8:80", "10.0.0.8:80"]},
        "other": {"listen": ":5433", "servers": ["10.0.0.9:1"], "timeouts": {"connect": "0s", "idle": "soon"},
                  "health_check": {"interval": "1s", "timeout": "2s"}},
        "bad name": {"listen": ":7001", "servers": ["h:1"], "extra": 1},
    }})
    expected = {
        "tcp_services.db.servers[1]": "no scheme",
        "tcp_services.db.servers[2]": "port is missing",
        "tcp_services.db.balance": "did you mean 'least_conn'",
        "tcp_services.cache.listen": "0 to 65535",
        "tcp_services.cache.servers[0]": "host:port",
        "tcp_services.web.servers[1]": "already listed at servers[0]",
        "tcp_services.web.listen": "HTTP listen address 127.0.0.1:8080",
        "tcp_services.other.listen": "listen address of TCP service db",
        "tcp_services.other.timeouts.connect": "longer than 0",
        "tcp_services.other.timeouts.idle": "duration",
        "tcp_services.other.health_check.timeout": "longer than the interval",
        "tcp_services.db.health_check.rise": "between 1 and 100",
        "tcp_services['bad name']": "letters, digits",
        "tcp_services['bad name'].extra": "unknown key",
    }
    for path, words in expected.items():
        assert words in problems.get(path, ""), (path, problems)
    assert set(problems) == set(expected)


def test_addresses_that_collide() -> None:
    admin = errors_of({**BASE, "tcp_services": {"a": {"listen": "127.0.0.1:9090", "servers": ["h:1"]}}})
    assert admin == {"tcp_services.a.listen": "127.0.0.1:9090 is also the admin listen address 127.0.0.1:9090"}
    default_http = errors_of({**BASE, "tcp_services": {"a": {"listen": "10.1.2.3:8080", "servers": ["h:1"]}}})
    assert "HTTP listen address 0.0.0.0:8080" in default_http["tcp_services.a.listen"]  # the wildcard takes all
    # different hosts on one port, the admin listener turned off, and ephemeral ports are fine
    parse_config({**BASE, "admin": {"listen": None}, "tcp_services": {
        "a": {"listen": "127.0.0.1:7000", "servers": ["h:1"]}, "b": {"listen": "127.0.0.2:7000", "servers": ["h:1"]},
        "c": {"listen": "127.0.0.1:9090", "servers": ["h:1"]},
        "d": {"listen": "127.0.0.1:0", "servers": ["h:1"]}, "e": {"listen": "127.0.0.1:0", "servers": ["h:1"]},
    }})


def test_check_lists_tcp_services(tmp_path: Path) -> None:
    path = tmp_path / "fulcrum.json"
    path.write_text(json.dumps({**BASE, "tcp_services": {"db": {
        "listen": ":5433", "servers": ["10.0.0.5:5432", {"address": "10.0.0.6:5432", "weight": 3}],
        "balance": "least_conn", "health_check": {"interval": "2s"}, "timeouts": {"idle": "1h"}}}}))
    out = subprocess.run([str(FULCRUM), "check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ("tcp services:\n"
            "  db: listen 0.0.0.0:5433, least_conn, 2 servers, connect timeout 2s, idle timeout 1h\n"
            "    10.0.0.5:5432  weight 1\n"
            "    10.0.0.6:5432  weight 3\n"
            "    health: TCP connect every 2s (timeout 1s), rise 2, fall 3, start unhealthy\n") in out.stdout
    config = parse_config(json.loads(path.read_text()))
    assert "tcp services:" in describe(config)
    assert "tcp services:" not in describe(parse_config(BASE))


def test_check_fails_with_every_tcp_error(tmp_path: Path) -> None:
    """The four mistakes a user makes most, in one file: all reported, each with its file and key path."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**BASE, "listen": [":8080"], "tcp_services": {
        "db": {"listen": ":5433", "servers": ["10.0.0.5:5432"], "balance": "leastconn"},
        "cache": {"listen": "localhost:port", "servers": ["10.0.0.6:6379"]},
        "web": {"listen": ":8080", "servers": ["10.0.0.7:80"]},
        "mq": {"listen": ":5672", "servers": ["amqp://10.0.0.8:5672"]},
    }}))
    out = subprocess.run([str(FULCRUM), "check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"{path}: ")]
    for key, words in {
        "tcp_services.db.balance": "must be one of round_robin",
        "tcp_services.cache.listen": "host:port",
        "tcp_services.web.listen": "is also the HTTP listen address 0.0.0.0:8080",
        "tcp_services.mq.servers[0]": "no scheme",
    }.items():
        assert any(line.startswith(f"{path}: {key}: ") and words in line for line in lines), (key, lines)
    assert len(lines) == 4, lines


def test_diff_reports_tcp_service_changes() -> None:
    old = parse_config({**BASE, "tcp_services": {
        "db": {"listen": ":5433", "servers": ["10.0.0.1:5432", "10.0.0.2:5432"]},
        "gone": {"listen": ":6000", "servers": ["h:1"]}}})
    new = parse_config({**BASE, "tcp_services": {
        "db": {"listen": ":5434", "balance": "least_conn", "timeouts": {"idle": "1h"},
               "servers": [{"address": "10.0.0.1:5432", "weight": 2}, "10.0.0.3:5432"]},
        "cache": {"listen": "127.0.0.1:6379", "servers": ["10.0.0.9:6379"]}}})
    assert format_changes(diff_configs(old, new)) == [
        "+ tcp service cache (127.0.0.1:6379, round_robin, 1 server)",
        "~ tcp service db: listen 0.0.0.0:5433 → 0.0.0.0:5434",
        "~ tcp service db: balance round_robin → least_conn",
        "~ tcp service db: timeouts.idle 10m → 1h",
        "- server tcp db 10.0.0.2:5432",
        "+ server tcp db 10.0.0.3:5432 (weight 1)",
        "~ server tcp db 10.0.0.1:5432: weight 1 → 2",
        "- tcp service gone (0.0.0.0:6000, round_robin, 1 server)",
    ]
    assert format_changes(diff_configs(new, new)) == ["no changes"]


def test_a_dump_reads_back_as_the_same_config() -> None:
    """``GET /api/v1/config`` dumps the running config; ``fulcrum check --admin`` reads it back."""
    from fulcrum.config.diff import config_from_dump

    config = parse_config({**BASE, "tcp_services": {"db": {
        "listen": "[::1]:5433", "servers": ["10.0.0.5:5432", {"address": "[::1]:5432", "weight": 2}],
        "balance": "ip_hash", "timeouts": {"connect": "250ms", "idle": 0}, "health_check": {"initial": "healthy"}}}})
    assert config_from_dump(config.model_dump(mode="json"), "dump").tcp_services == config.tcp_services
