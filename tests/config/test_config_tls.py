"""TLS in the config: listen entries with certificates or a redirect, https server URLs and a group's ``tls``, and
`fulcrum check` naming the key path of every bad certificate at once."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.certs import Pki

from fulcrum.config import ConfigError, describe, parse_config
from fulcrum.config.diff import config_from_dump

FULCRUM = Path(sys.executable).with_name("fulcrum")
UPSTREAMS = {"app": {"servers": ["http://127.0.0.1:5001"]}}


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="t.yaml")
    return [f"{e.path}: {e.message}" for e in caught.value.errors]


def test_listen_entries_as_strings_or_with_tls_or_a_redirect(pki: Pki) -> None:
    a, b = pki.issue("a.test"), pki.issue("b.test")
    config = parse_config({"listen": [":8080", {"address": "127.0.0.1:8443", "tls": a.pair},
                                      {"host": "::1", "port": 8444, "tls": {"certificates": [a.pair, b.pair]}},
                                      {"address": ":80", "redirect_to_https": True},
                                      {"address": ":81", "redirect_to_https": 8443},
                                      {"address": ":82", "redirect_to_https": {"status": 301}},
                                      {"address": ":83", "redirect_to_https": False}],
                           "upstreams": UPSTREAMS})
    plain, one, two, r1, r2, r3, off = config.listen
    assert (str(plain), plain.tls, plain.redirect_to_https) == ("0.0.0.0:8080", None, None)
    assert str(one) == "127.0.0.1:8443" and [p.cert for p in one.tls.pairs()] == [str(a.cert)]  # type: ignore[union-attr]
    assert str(two) == "[::1]:8444" and [p.cert for p in two.tls.pairs()] == [str(a.cert), str(b.cert)]  # type: ignore[union-attr]
    assert [(r.redirect_to_https.port, r.redirect_to_https.status) for r in (r1, r2, r3)] == [  # type: ignore[union-attr]
        (443, 308), (8443, 308), (443, 301)]
    assert off.redirect_to_https is None
    text = describe(config).splitlines()[0]
    assert text == ("listen: 0.0.0.0:8080, 127.0.0.1:8443 (https, h2, 1 certificate),"
                    " [::1]:8444 (https, h2, 2 certificates), 0.0.0.0:80 (redirects to https),"
                    " 0.0.0.0:81 (redirects to https), 0.0.0.0:82 (redirects to https), 0.0.0.0:83")
    # What the admin API dumps reads back as the same listeners.
    assert config_from_dump(config.model_dump(mode="json"), "dump").listen == config.listen


def test_https_servers_default_to_port_443_and_keep_host_port_ids(pki: Pki) -> None:
    config = parse_config({"upstreams": {"app": {
        "servers": ["https://api.internal", "https://10.0.0.1:8443", "http://10.0.0.2"],
        "tls": {"ca": str(pki.ca_file), "server_name": "api.internal"}}}})
    servers = config.upstreams["app"].servers
    assert [s.url for s in servers] == ["https://api.internal:443", "https://10.0.0.1:8443", "http://10.0.0.2:80"]
    assert [(s.address, s.port, s.tls) for s in servers] == [
        ("api.internal:443", 443, True), ("10.0.0.1:8443", 8443, True), ("10.0.0.2:80", 80, False)]
    assert errors_of({"upstreams": {"app": {"servers": ["https://h:1", "http://h:1"]}}}) == [
        "upstreams.app.servers[1]: h:1 is already listed at servers[0]"]


def test_listen_and_upstream_tls_mistakes_are_named_by_key_path(pki: Pki, tmp_path: Path) -> None:
    a = pki.issue("a.test")
    errors = errors_of({
        "listen": [{"address": ":8443", "host": "127.0.0.1", "tls": a.pair},
                   {"address": "nowhere", "tls": a.pair},
                   {"address": ":8444", "tls": {"cert": str(a.cert)}},
                   {"address": ":8445", "tls": {}},
                   {"address": ":8446", "tls": a.pair, "redirect_to_https": True},
                   {"address": ":8447", "redirect_to_https": {"status": 200}},
                   {"address": ":8448", "tls": {**a.pair, "ciphers": "ALL"}}],
        "upstreams": {"app": {"servers": ["https://h"], "tls": {
            "insecure_skip_verify": True, "ca": str(pki.ca_file), "key": str(a.key), "server_name": "not a name"}}}})
    assert errors == [
        "listen[0].address: give either address or host and port, not both",
        "listen[1].address: must be host:port, :port or [ipv6]:port, got 'nowhere' (the port is missing)",
        "listen[2].tls.key: missing: cert and key go together",
        "listen[3].tls: give cert and key (or certificates: [{cert, key}, ...])",
        "listen[4].redirect_to_https: a redirect listener serves plain HTTP: give it its own address, without tls",
        "listen[5].redirect_to_https.status: must be 301, 302, 307 or 308, got 200",
        "listen[6].tls.ciphers: unknown key (known here: cert, certificates, key)",
        "upstreams.app.tls.server_name: must be a host name, got 'not a name'",
        "upstreams.app.tls.ca: is not used with insecure_skip_verify: true (nothing is verified); remove one of them",
        "upstreams.app.tls.cert: missing: a client certificate needs both cert and key",
    ]


def test_fulcrum_check_reports_every_bad_certificate_at_once(pki: Pki, tmp_path: Path) -> None:
    good, other = pki.issue("good.test"), pki.issue("other.test")
    expired = pki.issue("old.test", not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2021, 1, 1))
    client = pki.issue("client.test")
    unreadable = tmp_path / "unreadable.key"
    unreadable.mkdir()
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello\n")
    config = tmp_path / "fulcrum.json"
    config.write_text(json.dumps({
        "listen": [
            {"address": ":8443", "tls": {"certificates": [good.pair, {"cert": str(good.cert), "key": str(other.key)},
                                                          expired.pair]}},
            {"address": ":8444", "tls": {"cert": str(tmp_path / "missing.pem"), "key": str(unreadable)}},
            {"address": ":8445", "tls": {"cert": str(not_pem), "key": str(good.key)}},
        ],
        "upstreams": {"app": {"servers": ["https://127.0.0.1:9443"],
                              "tls": {"ca": str(tmp_path / "no-ca.pem"), "cert": str(client.cert),
                                      "key": str(expired.key)}}},
    }))
    out = subprocess.run([str(FULCRUM), "check", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout
    assert out.stderr.splitlines() == [
        "fulcrum: configuration is not valid (7 error(s)):",
        f"{config}: listen[0].tls.certificates[1].key: {other.key} does not match the certificate in {good.cert}",
        f"{config}: listen[0].tls.certificates[2].cert: the certificate expired on 2021-01-01 00:00 UTC "
        f"({expired.cert})",
        f"{config}: listen[1].tls.cert: file not found: {tmp_path / 'missing.pem'}",
        f"{config}: listen[1].tls.key: is a directory, not a file: {unreadable}",
        f"{config}: listen[2].tls.cert: {not_pem} holds no PEM certificate",
        f"{config}: upstreams.app.tls.ca: file not found: {tmp_path / 'no-ca.pem'}",
        f"{config}: upstreams.app.tls.key: {expired.key} does not match the certificate in {client.cert}",
    ]


def test_fulcrum_check_prints_the_listeners_of_a_good_config(pki: Pki, tmp_path: Path) -> None:
    a, b = pki.issue("a.test"), pki.issue("b.test")
    config = tmp_path / "fulcrum.json"
    config.write_text(json.dumps({"listen": [{"address": ":8443", "tls": {"certificates": [a.pair, b.pair]}},
                                             {"address": ":8080", "redirect_to_https": 8443}],
                                  "upstreams": {"app": {"servers": ["https://127.0.0.1:9443"],
                                                        "tls": {"ca": str(pki.ca_file)}}}}))
    out = subprocess.run([str(FULCRUM), "check", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "listen: 0.0.0.0:8443 (https, h2, 2 certificates), 0.0.0.0:8080 (redirects to https)" in out.stdout
    assert "https://127.0.0.1:9443  weight 1" in out.stdout


def test_a_passphrase_protected_key_is_refused_without_prompting(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    site = pki.issue("a.test")
    key = serialization.load_pem_private_key(site.key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    assert errors_of({"listen": [{"address": ":8443", "tls": {"cert": str(site.cert), "key": str(locked)}}],
                      "upstreams": UPSTREAMS}) == [
        f"listen[0].tls.key: {locked} is passphrase-protected; give the key unencrypted"]
