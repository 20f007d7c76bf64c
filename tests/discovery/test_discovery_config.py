"""``servers_from`` in the config: what `fulcrum check` accepts, and every mistake at its key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fulcrum.config import ConfigError, parse_config
from fulcrum.config.diff import config_from_dump

FULCRUM = Path(sys.executable).with_name("fulcrum")


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "fulcrum.yaml"
    path.write_text(text)
    return subprocess.run([str(FULCRUM), "check", "-c", str(path)], capture_output=True, text=True, timeout=60)


def test_check_accepts_and_describes_a_discovered_group(tmp_path: Path) -> None:
    out = check(tmp_path, """
upstreams:
  app:
    servers_from: {dns: _http._tcp.app.internal, type: SRV, refresh: 10s, resolver: "127.0.0.1:5353"}
    health_check: {path: /health}
  web:
    servers_from: {dns: web.internal, type: aaaa, port: 8080}
routes:
  - {match: {path_prefix: /web/}, upstream: web}
  - {match: {path_prefix: /}, upstream: app}
""")
    assert out.returncode == 0, out.stderr
    assert "app: round_robin, servers from DNS SRV _http._tcp.app.internal via 127.0.0.1:5353, every 10s" in out.stdout
    assert "web: round_robin, servers from DNS AAAA web.internal port 8080 via the system resolver" in out.stdout


BAD = """
upstreams:
  both:
    servers: ["http://127.0.0.1:5001"]
    servers_from: {dns: app.internal, port: 80}
  badtype:
    servers_from: {dns: app.internal, type: MX, port: 80}
  noport:
    servers_from: {dns: app.internal, type: A}
  badresolver:
    servers_from: {dns: app.internal, port: 80, resolver: "dns.example.com:53"}
  badresolverport:
    servers_from: {dns: app.internal, port: 80, resolver: "10.0.0.2:70000"}
  badname:
    servers_from: {dns: "app internal", port: 80}
  fast:
    servers_from: {dns: app.internal, port: 80, refresh: 100ms}
  neither: {balance: random}
routes: [{match: {path_prefix: /}, upstream: both}]
"""


def test_check_names_every_mistake_at_its_key_path(tmp_path: Path) -> None:
    out = check(tmp_path, BAD)
    assert out.returncode == 1
    path = tmp_path / "fulcrum.yaml"
    expected = [
        "upstreams.both.servers_from: give either servers or servers_from, not both",
        "upstreams.badtype.servers_from.type: must be one of A, AAAA, SRV, got 'MX'",
        "upstreams.noport.servers_from.port: is required with type A",
        "upstreams.badresolver.servers_from.resolver: must be an IP address with an optional port",
        "upstreams.badresolverport.servers_from.resolver: must be an IP address with an optional port",
        "upstreams.badname.servers_from.dns: must be a DNS name",
        "upstreams.fast.servers_from.refresh: must be at least 1s",
        "upstreams.neither.servers: missing (required): list the servers, or discover them with servers_from",
    ]
    for line in expected:
        assert f"{path}: {line}" in out.stderr, out.stderr
    assert "(8 error(s))" in out.stderr


@pytest.mark.parametrize(("resolver", "stored", "nameserver"), [
    ("127.0.0.1", "127.0.0.1:53", ("127.0.0.1", 53)),
    ("127.0.0.1:5353", "127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", "[::1]:53", ("::1", 53)),
    ("[::1]:5353", "[::1]:5353", ("::1", 5353)),
])
def test_resolver_addresses(resolver: str, stored: str, nameserver: tuple[str, int]) -> None:
    config = parse_config({"upstreams": {"app": {"servers_from": {"dns": "a.test", "port": 80, "resolver": resolver}}}})
    source = config.upstreams["app"].servers_from
    assert source is not None and source.resolver == stored and source.nameserver == nameserver


def test_srv_needs_no_port_and_a_discovered_group_round_trips_through_its_dump() -> None:
    config = parse_config({"upstreams": {"app": {"servers_from": {"dns": "_x._tcp.a.test", "type": "SRV"}}}})
    again = config_from_dump(config.model_dump(mode="json"), source="dump")
    assert again.upstreams["app"] == config.upstreams["app"]
    assert again.upstreams["app"].servers == ()


def test_an_empty_servers_list_is_still_refused_without_servers_from() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": {"app": {"servers": []}}})
    assert [i.path for i in caught.value.errors] == ["upstreams.app.servers"]


def test_check_diff_shows_a_change_of_servers_from(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text('upstreams: {app: {servers: ["http://127.0.0.1:5001"]}}\n')
    new = tmp_path / "new.yaml"
    new.write_text("upstreams: {app: {servers_from: {dns: app.internal, port: 8080, refresh: 5s}}}\n")
    newer = tmp_path / "newer.yaml"
    newer.write_text('upstreams: {app: {servers_from: {dns: app.internal, port: 8080, refresh: 7s, '
                     'resolver: "127.0.0.1"}}}\n')

    def diff(to: Path, frm: Path) -> list[str]:
        out = subprocess.run([str(FULCRUM), "check", "-c", str(to), "--diff", str(frm)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [line.strip() for line in out.stdout.splitlines()[2:]]

    assert diff(new, old) == [
        '~ upstream app: servers_from none → {dns: "app.internal", type: "A", port: 8080, refresh: 5s, timeout: 2s, '
        'scheme: "http"}',
        "- server app 127.0.0.1:5001",
    ]
    assert diff(newer, new) == ["~ upstream app: servers_from.refresh 5s → 7s",
                                "~ upstream app: servers_from.resolver none → 127.0.0.1:53"]
