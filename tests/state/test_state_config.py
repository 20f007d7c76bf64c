"""The ``state`` section: memory by default, redis with a URL checked without any I/O, every error at its key path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fulcrum.config import ConfigError, describe, parse_config
from fulcrum.config.diff import config_from_dump
from fulcrum.config.state import redact_url

FULCRUM = Path(sys.executable).with_name("fulcrum")
BASE: dict[str, Any] = {"upstreams": {"app": {"servers": ["http://127.0.0.1:5001"]}}}


def errors_of(state: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "state": state}, source="t.yaml")
    return {issue.path: issue.message for issue in caught.value.errors}


def test_memory_is_the_default_and_redis_takes_a_url() -> None:
    assert parse_config(BASE).state.backend == "memory"
    state = parse_config({**BASE, "state": {"backend": "redis", "url": "redis://10.0.0.9:6380/2"}}).state
    assert (state.backend, state.url, state.prefix) == ("redis", "redis://10.0.0.9:6380/2", "fulcrum")
    for url in ("rediss://cache.internal", "redis://:secret@127.0.0.1:6379/0", "unix:///run/redis/redis.sock",
                "redis://[::1]:6379"):
        assert parse_config({**BASE, "state": {"backend": "redis", "url": url}}).state.url == url


@pytest.mark.parametrize(("state", "path", "words"), [
    ({"backend": "redis"}, "state.url", "is required with backend: redis"),
    ({"backend": "redis", "url": "http://127.0.0.1:6379"}, "state.url", "must start with redis://"),
    ({"backend": "redis", "url": "127.0.0.1:6379"}, "state.url", "must be a Redis URL"),
    ({"backend": "redis", "url": "redis://127.0.0.1:99999/0"}, "state.url", "not a valid URL"),
    ({"backend": "redis", "url": "redis://127.0.0.1:6379/cache"}, "state.url", "database number"),
    ({"backend": "redis", "url": "redis:///0"}, "state.url", "must name a host"),
    ({"url": "redis://127.0.0.1:6379/0"}, "state.url", "only with backend: redis"),
    ({"backend": "etcd"}, "state.backend", "memory"),
    ({"backend": "redis", "url": "redis://h", "prefix": "a b"}, "state.prefix", "letters, digits"),
    ({"backend": "redis", "url": "redis://h", "db": 1}, "state.db", ""),
])
def test_bad_state_names_its_key(state: dict[str, Any], path: str, words: str) -> None:
    errors = errors_of(state)
    assert list(errors) == [path]
    assert words in errors[path]


def test_check_refuses_a_bad_url_naming_state_url(tmp_path: Path) -> None:
    bad = tmp_path / "fulcrum.json"
    bad.write_text(json.dumps({**BASE, "state": {"backend": "redis", "url": "redis://127.0.0.1:6379/x"}}))
    done = subprocess.run([str(FULCRUM), "check", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{bad}: state.url: the path must be a database number" in done.stderr + done.stdout


def test_check_accepts_redis_without_reaching_it_and_hides_the_password(tmp_path: Path) -> None:
    good = tmp_path / "fulcrum.json"
    good.write_text(json.dumps({**BASE, "state": {"backend": "redis", "url": "redis://:s3cret@127.0.0.1:1/0"}}))
    done = subprocess.run([str(FULCRUM), "check", "-c", str(good)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "state: redis redis://:***@127.0.0.1:1/0 (prefix fulcrum)" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


def test_describe_says_nothing_of_the_memory_backend() -> None:
    assert "state:" not in describe(parse_config(BASE))


def test_redact_url() -> None:
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://:pw@h") == "redis://:***@h"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_a_dump_reads_back_as_the_same_config() -> None:
    config = parse_config({**BASE, "state": {"backend": "redis", "url": "redis://h:6379/1", "prefix": "eu-1"}})
    assert config_from_dump(config.model_dump(mode="json"), "dump").state == config.state
