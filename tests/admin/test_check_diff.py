"""`fulcrum check -c NEW --diff OLD` and `--admin URL`: what a reload would change, from files or a running instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fulcrum import cli
from tests.admin.harness import TOKEN, RunningInstance, write_config
from tests.support.upstream import RefusingPort, UpstreamServer

FULCRUM = Path(sys.executable).with_name("fulcrum")

OLD: dict[str, Any] = {
    "listen": [":8080"],
    "upstreams": {
        "app": {"servers": ["http://127.0.0.1:5001", {"url": "http://127.0.0.1:5002", "weight": 3}]},
        "legacy": {"servers": ["http://127.0.0.1:6001"]},
    },
    "routes": [
        {"name": "api", "match": {"path_prefix": "/api/"}, "upstream": "app",
         "middleware": [{"request_id": {}}, {"rate_limit": {"rate": "100/s"}}]},
        {"match": {"path_prefix": "/old/"}, "upstream": "legacy"},
        {"match": {"path_prefix": "/"}, "upstream": "app"},
    ],
}
NEW: dict[str, Any] = {
    "listen": [":8080", ":8081"],
    "upstreams": {
        "app": {"balance": "least_conn",
                "servers": [{"url": "http://127.0.0.1:5002", "weight": 5}, "http://127.0.0.1:5003"]},
        "billing": {"servers": ["http://127.0.0.1:7001"]},
    },
    "routes": [
        {"match": {"path_prefix": "/"}, "upstream": "app"},
        {"name": "api", "match": {"path_prefix": "/api/"}, "upstream": "app",
         "middleware": [{"rate_limit": {"rate": "50/s"}}, {"request_id": {}}]},
        {"match": {"path_prefix": "/billing/"}, "upstream": "billing"},
    ],
}
CHANGES = [
    '~ listen: ["0.0.0.0:8080"] → ["0.0.0.0:8080", "0.0.0.0:8081"]',
    "- route */old/ ([1] -> legacy)",
    "+ route */billing/ ([2] -> billing)",
    "~ route */: moved [2] → [0]",
    "~ route api middleware rate_limit: rate 100/s → 50/s",
    "~ route api: middleware order request_id, rate_limit → rate_limit, request_id",
    "~ upstream app: balance round_robin → least_conn",
    "- server app 127.0.0.1:5001",
    "+ server app 127.0.0.1:5003 (weight 1)",
    "~ server app 127.0.0.1:5002: weight 3 → 5",
    "+ upstream billing (round_robin, 1 server)",
    "- upstream legacy (round_robin, 1 server)",
]


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def fulcrum(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "FULCRUM_ADMIN_TOKEN"}
    return subprocess.run([str(FULCRUM), *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})})


def changes(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.startswith("  ")]


@pytest.fixture
def instance(tmp_path: Path, make_upstream: Any) -> Iterator[RunningInstance]:
    """A running instance (admin token ``TOKEN``) whose file has two groups behind three routes."""
    a, b = make_upstream(name="a"), make_upstream(name="b")
    config = {"upstreams": {"app": {"servers": [a.url, {"url": b.url, "weight": 3}]},
                            "legacy": {"servers": [a.url]}},
              "routes": [{"match": {"path_prefix": "/old/"}, "upstream": "legacy",
                          "middleware": [{"rate_limit": {"rate": "10/min"}}]},
                         {"match": {"path_prefix": "/"}, "upstream": "app"}]}
    inst = RunningInstance(write_config(tmp_path / "running.json", config)).start()
    yield inst
    inst.stop()


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FULCRUM_ADMIN_TOKEN", raising=False)


# -- two files ------------------------------------------------------------------------------


def test_diff_of_two_files_lists_every_change(tmp_path: Path) -> None:
    old, new = write(tmp_path / "old.json", OLD), write(tmp_path / "new.json", NEW)
    out = fulcrum("check", "-c", str(new), "--diff", str(old))
    assert out.returncode == 0, out.stderr
    head, *_ = out.stdout.splitlines()
    assert head == f"{new}: configuration is valid"
    assert f"a reload from {old} to {new} would make {len(CHANGES)} change(s):" in out.stdout
    assert changes(out.stdout) == CHANGES
    assert "compiled route table" not in out.stdout  # the diff instead of the whole description


def test_diff_of_a_file_with_itself_is_no_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path / "old.json", OLD)
    yaml = tmp_path / "same.yaml"
    yaml.write_text("listen: ':8080'\nupstreams:\n  app: {servers: [http://127.0.0.1:5001, "
                    "{url: http://127.0.0.1:5002, weight: 3}]}\n  legacy: {servers: [http://127.0.0.1:6001]}\n"
                    "routes:\n  - {name: api, match: {path_prefix: /api/}, upstream: app,"
                    " middleware: [request_id, {rate_limit: {rate: 6000/min}}]}\n"
                    "  - {match: {path_prefix: /old/}, upstream: legacy}\n"
                    "  - {match: {path_prefix: /}, upstream: app}\n")
    assert cli.main(["check", "-c", str(yaml), "--diff", str(old)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{yaml}: configuration is valid", f"no changes from {old}"]


def test_every_error_of_both_files_is_printed(tmp_path: Path) -> None:
    bad_new = write(tmp_path / "new.json", {**NEW, "listen": ["nope"], "routes": [{"upstream": "missing"}]})
    bad_old = write(tmp_path / "old.json", {"upstreams": {"app": {"servers": ["ftp://x"]}}})
    out = fulcrum("check", "-c", str(bad_new), "--diff", str(bad_old))
    assert out.returncode == 1
    assert out.stdout == ""
    assert f"{bad_new}: listen[0]:" in out.stderr
    assert f"{bad_new}: routes[0].upstream: unknown upstream 'missing'" in out.stderr
    assert f"{bad_old}: upstreams.app.servers[0]:" in out.stderr


def test_a_missing_old_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path / "new.json", NEW)
    assert cli.main(["check", "-c", str(new), "--diff", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope.yaml'}: no such file" in err


def test_diff_and_admin_exclude_each_other(tmp_path: Path) -> None:
    new = write(tmp_path / "new.json", NEW)
    out = fulcrum("check", "-c", str(new), "--diff", str(new), "--admin", "http://127.0.0.1:9")
    assert out.returncode == 2 and "not allowed with" in out.stderr


# -- a running instance ---------------------------------------------------------------------


def test_the_running_config_against_its_own_file_is_no_changes(instance: RunningInstance) -> None:
    out = fulcrum("check", "-c", str(instance.path), "--admin", instance.admin_url, "--token", TOKEN)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{instance.path}: configuration is valid",
                                       f"no changes from the config running at {instance.admin_url}"]


def test_changes_from_the_running_config(instance: RunningInstance, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(instance.path.read_text())
    app = data["upstreams"]["app"]
    app["servers"][1]["weight"] = 1
    app["servers"].append("http://127.0.0.1:5999")
    data["upstreams"].pop("legacy")
    data["routes"] = data["routes"][1:]
    data["admin"]["token"] = "a-new-token-that-is-not-printed"
    new = write(tmp_path / "new.json", data)
    b = app["servers"][1]["url"].removeprefix("http://")
    assert cli.main(["check", "-c", str(new), "--admin", instance.admin_url.removeprefix("http://"),
                     "--token", TOKEN]) == 0
    out = capsys.readouterr().out
    assert changes(out) == [
        "- route */old/ ([0] -> legacy)",
        "+ server app 127.0.0.1:5999 (weight 1)",
        f"~ server app {b}: weight 3 → 1",
        "- upstream legacy (round_robin, 1 server)",
    ]
    assert "token" not in out  # the API never tells it, so its change is neither known nor shown


def test_the_token_may_come_from_the_environment(instance: RunningInstance) -> None:
    out = fulcrum("check", "-c", str(instance.path), "--admin", instance.admin_url,
                  env={"FULCRUM_ADMIN_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    assert "no changes" in out.stdout


def test_a_wrong_token_is_exit_1_with_a_message(instance: RunningInstance) -> None:
    out = fulcrum("check", "-c", str(instance.path), "--admin", instance.admin_url, "--token", TOKEN + "x")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.strip() == f"fulcrum: the admin API at {instance.admin_url} refused the token (HTTP 401): " \
                                 "check --token or $FULCRUM_ADMIN_TOKEN"


def test_no_token_is_exit_1_with_a_message(instance: RunningInstance, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "-c", str(instance.path), "--admin", instance.admin_url]) == 1
    err = capsys.readouterr().err
    assert "needs a token (HTTP 401): pass --token or set $FULCRUM_ADMIN_TOKEN" in err
    assert len(err.strip().splitlines()) == 1


def test_a_refused_connection_is_exit_1_with_a_message(tmp_path: Path, dead_port: RefusingPort,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path / "new.json", NEW)
    assert cli.main(["check", "-c", str(new), "--admin", f"http://127.0.0.1:{dead_port.port}"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"fulcrum: cannot reach the admin API at http://127.0.0.1:{dead_port.port}: " \
                          "connection refused"


def test_an_answer_that_is_not_json_is_exit_1_with_a_message(tmp_path: Path, upstream_server: UpstreamServer,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path / "new.json", NEW)
    assert cli.main(["check", "-c", str(new), "--admin", upstream_server.url, "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"fulcrum: GET {upstream_server.url}/api/v1/config did not answer JSON " \
                          f"(is {upstream_server.url} Fulcrum's admin listener?)"


def test_an_invalid_new_file_is_exit_1_even_when_the_instance_answers(instance: RunningInstance,
                                                                     tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", {"upstreams": {"app": {"servers": []}}})
    out = fulcrum("check", "-c", str(bad), "--admin", instance.admin_url, "--token", TOKEN)
    assert out.returncode == 1
    assert f"{bad}: upstreams.app.servers: list at least one server" in out.stderr
