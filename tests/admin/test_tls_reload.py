"""Certificates reload with the config: a new connection sees the new certificate, an open one keeps working, and a
reload to a broken certificate is refused with the key path named while the running one stays."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.admin.harness import RunningInstance
from tests.admin.test_reload import free_port, reload
from tests.support.certs import Pki, tls_request
from tests.support.upstream import UpstreamServer

Make = Callable[..., RunningInstance]


def serial(port: int, pki: Pki) -> int:
    """The serial number of the certificate a new connection to ``port`` gets."""
    return int(tls_request(port, pki.client_context(), "127.0.0.1").cert["serialNumber"], 16)


def served_serial(resp: httpx.Response) -> int:
    """The serial number of the certificate of the connection ``resp`` came on."""
    ssl_object = resp.extensions["network_stream"].get_extra_info("ssl_object")
    return int(ssl_object.getpeercert()["serialNumber"], 16)


def test_reload_swaps_the_certificate_for_new_connections(make_instance: Make, upstream_server: UpstreamServer,
                                                          pki: Pki, tmp_path: Path) -> None:
    old, new = pki.issue("127.0.0.1"), pki.issue("127.0.0.1")
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    shutil.copy(old.cert, cert)
    shutil.copy(old.key, key)
    port = free_port()
    config: dict[str, Any] = {"listen": [{"address": f"127.0.0.1:{port}", "tls": {"cert": str(cert), "key": str(key)}}],
                              "upstreams": {"app": {"servers": [upstream_server.url]}}}
    inst = make_instance(config)
    assert serial(port, pki) == old.serial
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=pki.client_context(), trust_env=False) as kept:
        assert served_serial(kept.get("/echo")) == old.serial
        # The same paths, new contents (a renewed certificate): a reload serves it to the next connection.
        shutil.copy(new.cert, cert)
        shutil.copy(new.key, key)
        r = reload(inst, config)
        assert r.status_code == 200, r.text
        assert serial(port, pki) == new.serial
        assert served_serial(kept.get("/echo")) == old.serial  # the connection made before the reload serves on
        # A broken certificate is refused with its key path; the running one stays.
        missing = {**config, "listen": [{"address": f"127.0.0.1:{port}",
                                         "tls": {"cert": str(tmp_path / "gone.pem"), "key": str(key)}}]}
        r = reload(inst, missing)
        assert r.status_code == 400
        assert any("listen[0].tls.cert: file not found: " in e for e in r.json()["errors"]), r.text
        assert serial(port, pki) == new.serial
        assert served_serial(kept.get("/echo")) == old.serial


def test_reload_turns_a_plain_listener_into_https_on_the_same_port(make_instance: Make,
                                                                   upstream_server: UpstreamServer,
                                                                   pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    port = free_port()
    ups = {"upstreams": {"app": {"servers": [upstream_server.url]}}}
    inst = make_instance({**ups, "listen": [f"127.0.0.1:{port}"]})
    assert httpx.get(f"http://127.0.0.1:{port}/", trust_env=False).status_code == 200
    r = reload(inst, {**ups, "listen": [{"address": f"127.0.0.1:{port}", "tls": site.pair}]})
    assert r.status_code == 200, r.text
    doc = httpx.get(f"https://127.0.0.1:{port}/echo", verify=pki.client_context(), trust_env=False).json()
    assert ["X-Forwarded-Proto", "https"] in doc["headers"]
    r = reload(inst, {**ups, "listen": [f"127.0.0.1:{port}"]})
    assert r.status_code == 200, r.text
    assert httpx.get(f"http://127.0.0.1:{port}/", trust_env=False).status_code == 200
