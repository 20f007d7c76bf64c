"""TLS at both ends, with real clients and certificates made by the test: HTTPS listeners (SNI, ALPN, versions and
ciphers, X-Forwarded-Proto), clients that send garbage or stall, https upstreams (verification, a wrong CA,
server_name, mTLS, pooling) and health checks over TLS."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.proxy.harness import RunningProxy, echo, header_values
from tests.support.certs import Issued, Pki, tls_request
from tests.support.upstream import UpstreamServer

Make = Callable[[dict[str, Any]], RunningProxy]
MakeUpstream = Callable[..., UpstreamServer]
REQUEST = b"GET /echo HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
# A refused handshake ends with an alert, or (uvloop closes the transport as it writes one) without it.
CLOSED = "UNEXPECTED_EOF"


def https_listen(*issued: Issued) -> dict[str, Any]:
    """A listen entry on an ephemeral port serving ``issued`` (the first is the default)."""
    return {"address": "127.0.0.1:0", "tls": {"certificates": [i.pair for i in issued]}}


def https(proxy: RunningProxy, pki: Pki, index: int = 0) -> httpx.Client:
    """An httpx client of the proxy's ``index``-th listener over https, trusting only ``pki``'s CA."""
    return httpx.Client(base_url=f"https://127.0.0.1:{proxy.server.ports[index]}", verify=pki.client_context(),
                        trust_env=False, timeout=10)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- termination -------------------------------------------------------------------------------------------


def test_https_listener_forwards_with_proto_https_and_plain_one_stays_http(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("127.0.0.1", "localhost")
    proxy = make_proxy({"listen": ["127.0.0.1:0", https_listen(site)], "forwarding": {"style": "both"},
                        "upstreams": {"app": {"servers": [upstream.url]}}})
    with https(proxy, pki, 1) as client:
        doc = echo(client.get("/echo", headers={"X-Forwarded-Proto": "http"}))  # an untrusted client's is replaced
    assert header_values(doc, "X-Forwarded-Proto") == ["https"]
    port = proxy.server.ports[1]
    assert header_values(doc, "Forwarded") == [f'for=127.0.0.1;host="127.0.0.1:{port}";proto=https']
    plain = echo(httpx.get(f"{proxy.url}/echo", trust_env=False))
    assert header_values(plain, "X-Forwarded-Proto") == ["http"]
    assert header_values(plain, "Forwarded")[0].endswith(";proto=http")


def test_alpn_offers_h2_then_http11_and_an_http11_connection_knows_what_it_negotiated(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    site = pki.issue("127.0.0.1")
    proxy = make_proxy({"listen": [https_listen(site)], "upstreams": {"app": {"servers": [upstream.url]}}})
    port = proxy.port
    assert tls_request(port, pki.client_context(), "127.0.0.1", alpn=["h2", "http/1.1"]).alpn == "h2"
    reply = tls_request(port, pki.client_context(), "127.0.0.1", REQUEST, alpn=["http/1.1"])
    assert reply.alpn == "http/1.1" and reply.status == 200
    # HTTP/2 over TLS itself: tests/proxy/test_http2_tls.py
    offering = pki.client_context()
    offering.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            offering.wrap_socket(raw, server_hostname="127.0.0.1") as held:
        assert held.selected_alpn_protocol() == "http/1.1"
        assert wait_for(lambda: bool(proxy.call(lambda: len(proxy.server.ctx.clients))))
        seen = proxy.call(lambda: [(c.proto, c.alpn) for c in proxy.server.ctx.clients])  # type: ignore[attr-defined]
    assert seen == [(b"https", "http/1.1")]


def test_sni_picks_the_certificate_of_each_name_and_the_first_answers_the_rest(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    first = pki.issue("a.test", "127.0.0.1")
    second = pki.issue("b.test", "*.b.test")
    proxy = make_proxy({"listen": [https_listen(first, second)], "upstreams": {"app": {"servers": [upstream.url]}}})
    verified = pki.client_context()  # checks the chain and that the certificate is for the name asked
    for name, names in [("a.test", ["a.test"]), ("b.test", ["b.test", "*.b.test"]),
                        ("deep.b.test", ["b.test", "*.b.test"]), ("B.TEST", ["b.test", "*.b.test"])]:
        reply = tls_request(proxy.port, verified, name, REQUEST)
        assert reply.names == names, name
        assert reply.status == 200 and reply.alpn is None
    unchecked = pki.client_context()
    unchecked.check_hostname = False
    for name in ("c.test", "x.y.b.test", None):  # a name no certificate holds, two labels under *.b.test, no SNI
        assert tls_request(proxy.port, unchecked, name).names == ["a.test"], name
    assert len(upstream.requests) == 4


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_resolve_gets_the_certificate_of_the_name_it_asks_for(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki) -> None:
    first, second = pki.issue("a.test"), pki.issue("b.test")
    proxy = make_proxy({"listen": [https_listen(first, second)], "upstreams": {"app": {"servers": [upstream.url]}}})
    for name in ("a.test", "b.test"):
        out = subprocess.run(["curl", "-sS", "--noproxy", "*", "--cacert", str(pki.ca_file), "--resolve",
                              f"{name}:{proxy.port}:127.0.0.1", "-w", "\\n%{http_code} %{http_version}",
                              f"https://{name}:{proxy.port}/echo"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr  # curl checked the certificate against the name
        body, _, status = out.stdout.rpartition("\n")
        assert status == "200 2"  # curl offers h2 first; the context SNI chose offers it too
        assert '["X-Forwarded-Proto", "https"]' in body


def test_only_tls12_and_up_with_forward_secret_aead_ciphers(make_proxy: Make, upstream: UpstreamServer,
                                                            pki: Pki) -> None:
    proxy = make_proxy({"listen": [https_listen(pki.issue("127.0.0.1"))],
                        "upstreams": {"app": {"servers": [upstream.url]}}})
    assert tls_request(proxy.port, pki.client_context(), "127.0.0.1").version == "TLSv1.3"
    tls12 = pki.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw, \
            tls12.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        name, version, _ = sock.cipher()  # type: ignore[misc]
    assert version == "TLSv1.2" and name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # naming TLS 1.1 is deprecated, which is the point
        old = pki.client_context()
        old.set_ciphers("ALL:@SECLEVEL=0")
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match=f"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|{CLOSED}"):
        tls_request(proxy.port, old, "127.0.0.1")
    weak = pki.client_context()
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA")  # CBC with SHA-1: not offered by Fulcrum
    with pytest.raises(ssl.SSLError, match=f"HANDSHAKE_FAILURE|NO_SHARED_CIPHER|{CLOSED}"):
        tls_request(proxy.port, weak, "127.0.0.1")
    assert upstream.connections_accepted == 0


# -- bad input ------------------------------------------------------------------------------------------------


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_garbage_and_stalled_handshakes_are_closed_quietly_with_nothing_sent_upstream(
        make_proxy: Make, upstream: UpstreamServer, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = make_proxy({"listen": [https_listen(pki.issue("127.0.0.1"))], "limits": {"header_timeout": "1s"},
                        "upstreams": {"app": {"servers": [upstream.url]}}})
    caplog.clear()
    inputs = [
        b"\x00\xffgarbage that is no TLS record\r\n\r\n" * 20,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP to the TLS port
        b"\x16\x03\x01\x40\x00" + b"\x01" * 200,  # a handshake record header with a body that is not a ClientHello
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # the start of a ClientHello, then nothing: stalls
        b"",  # nothing at all: stalls
    ]
    started = time.monotonic()
    for data in inputs:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            if data:
                sock.sendall(data)
            assert not read_until_closed(sock).startswith(b"HTTP")  # closed, with a TLS alert at most
    assert time.monotonic() - started < 10  # the stalled ones were closed after the handshake timeout (1s)
    assert wait_for(lambda: proxy.call(lambda: len(proxy.server._accepting) == 0))  # no task left behind
    # The proxy goes on serving, and the upstream never heard of any of it.
    assert tls_request(proxy.port, pki.client_context(), "127.0.0.1", REQUEST).status == 200
    assert upstream.connections_accepted == 1 and [r.path for r in upstream.requests] == ["/echo"]
    # At most one line per bad connection, and no traceback.
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text
    lines = [r for r in caplog.records if r.name.startswith("fulcrum")]
    assert len(lines) <= len(inputs), caplog.text


# -- upstreams over TLS ---------------------------------------------------------------------------------------


def test_https_upstream_verified_against_its_ca_and_pooled(make_proxy: Make, make_upstream: MakeUpstream,
                                                           pki: Pki) -> None:
    backend = make_upstream(name="tls", ssl=pki.issue("127.0.0.1").server_context())
    assert backend.url.startswith("https://")
    proxy = make_proxy({"upstreams": {"app": {"servers": [backend.url], "tls": {"ca": str(pki.ca_file)}}}})
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as client:
        docs = [echo(client.get("/echo")) for _ in range(3)]
        assert client.post("/echo", content=b"x" * 100_000).json()["body_len"] == 100_000
    assert {d["server"] for d in docs} == {"tls"}
    assert backend.connections_accepted == 1  # one TLS connection, kept alive in the pool and reused
    assert proxy.call(lambda: proxy.server.snapshot.groups["app"].servers[0].id) == backend.id


def test_verification_is_on_by_default_and_a_wrong_ca_gets_502(make_proxy: Make, make_upstream: MakeUpstream,
                                                                pki: Pki, tmp_path: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    backend = make_upstream(name="tls", ssl=pki.issue("127.0.0.1").server_context())
    other = Pki(tmp_path, "other")
    by_default = make_proxy({"upstreams": {"app": {"servers": [backend.url]}}})  # the system's CAs only
    wrong_ca = make_proxy({"upstreams": {"app": {"servers": [backend.url], "tls": {"ca": str(other.ca_file)}}}})
    skip = make_proxy({"upstreams": {"app": {"servers": [backend.url], "tls": {"insecure_skip_verify": True}}}})
    for proxy in (by_default, wrong_ca):
        for _ in range(2):
            r = httpx.get(f"{proxy.url}/echo", trust_env=False, timeout=10)
            assert r.status_code == 502, r.text
    assert backend.requests == []
    failures = [r.getMessage() for r in caplog.records if "TLS to upstream server" in r.getMessage()]
    assert len(failures) == 2 and all("CERTIFICATE_VERIFY_FAILED" in f for f in failures)  # once per pool
    assert echo(httpx.get(f"{skip.url}/echo", trust_env=False, timeout=10))["server"] == "tls"


def test_server_name_is_verified_and_sent_instead_of_the_url_host(make_proxy: Make, make_upstream: MakeUpstream,
                                                                  pki: Pki) -> None:
    seen: list[str | None] = []
    context = pki.issue("backend.internal").server_context()
    context.sni_callback = lambda sock, name, ctx: seen.append(name)  # type: ignore[assignment,misc,return-value]
    backend = make_upstream(name="named", ssl=context)
    tls = {"ca": str(pki.ca_file)}
    by_host = make_proxy({"upstreams": {"app": {"servers": [backend.url], "tls": tls}}})
    assert httpx.get(f"{by_host.url}/", trust_env=False, timeout=10).status_code == 502  # 127.0.0.1 is not its name
    named = make_proxy({"upstreams": {"app": {"servers": [backend.url],
                                              "tls": {**tls, "server_name": "backend.internal"}}}})
    assert httpx.get(f"{named.url}/", trust_env=False, timeout=10).text == "ok named\n"
    assert seen == [None, "backend.internal"]  # no SNI for an IP address; the server_name when given


def test_mtls_upstream_requires_the_client_certificate(make_proxy: Make, make_upstream: MakeUpstream,
                                                        pki: Pki) -> None:
    backend = make_upstream(name="mtls", ssl=pki.requiring_clients(pki.issue("127.0.0.1")))
    client_cert = pki.issue("fulcrum-client.test")
    tls = {"ca": str(pki.ca_file)}
    without = make_proxy({"upstreams": {"app": {"servers": [backend.url], "tls": tls}}})
    assert httpx.get(f"{without.url}/echo", trust_env=False, timeout=10).status_code == 502
    assert backend.requests == []
    with_cert = make_proxy({"upstreams": {"app": {"servers": [backend.url], "tls": {**tls, **client_cert.pair}}}})
    assert echo(httpx.get(f"{with_cert.url}/echo", trust_env=False, timeout=10))["server"] == "mtls"
    # The connection without a certificate never got past the server's handshake; the other one presented it.
    [presented] = backend.peer_certs
    assert presented is not None and ("DNS", "fulcrum-client.test") in presented["subjectAltName"]


def test_health_checks_go_over_tls_and_are_verified(make_proxy: Make, make_upstream: MakeUpstream, pki: Pki,
                                                    tmp_path: Any) -> None:
    site = pki.issue("127.0.0.1")
    good, sick = make_upstream(name="good", ssl=site.server_context()), make_upstream(name="sick",
                                                                                      ssl=site.server_context())
    sick.healthy = False
    check = {"path": "/health", "interval": "1h", "timeout": "2s"}
    proxy = make_proxy({"upstreams": {"app": {"servers": [good.url, sick.url], "health_check": check,
                                              "tls": {"ca": str(pki.ca_file)}}}})
    statuses = proxy.call(lambda: proxy.server.checkers["app"].statuses())
    assert statuses[good.id].healthy and statuses[good.id].last_status == 200
    assert not statuses[sick.id].healthy and statuses[sick.id].last_status == 503
    assert [r.header("User-Agent") for r in good.requests] == ["fulcrum-health"]  # the check reached it over TLS
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as client:
        assert {client.get("/").text for _ in range(4)} == {"ok good\n"}
    # Checked against another CA, the same server fails its check with the TLS error as the reason.
    other = Pki(tmp_path, "other")
    wrong = make_proxy({"upstreams": {"app": {"servers": [good.url], "health_check": check,
                                              "tls": {"ca": str(other.ca_file)}}}})
    status = wrong.call(lambda: wrong.server.checkers["app"].status(good.id))
    assert not status.healthy and status.last_failure is not None and "CERTIFICATE_VERIFY_FAILED" in \
        status.last_failure
    assert httpx.get(f"{wrong.url}/", trust_env=False, timeout=10).status_code == 503


# -- the redirect listener -----------------------------------------------------------------------------------


def test_redirect_listener_sends_to_https_with_path_and_query_kept(make_proxy: Make, upstream: UpstreamServer) -> None:
    proxy = make_proxy({"listen": [{"address": "127.0.0.1:0", "redirect_to_https": True},
                                   {"address": "127.0.0.1:0", "redirect_to_https": {"port": 8443, "status": 301}}],
                        "upstreams": {"app": {"servers": [upstream.url]}}})
    default, custom = (f"http://127.0.0.1:{p}" for p in proxy.server.ports)
    r = httpx.get(f"{default}/a/b%20c?x=1&y=%2F", headers={"Host": "Shop.Example:8080"}, trust_env=False)
    assert r.status_code == 308 and r.headers["location"] == "https://shop.example/a/b%20c?x=1&y=%2F"
    assert r.headers["connection"] == "close"
    r = httpx.post(f"{default}/form", content=b"a=1", headers={"Host": "shop.example"}, trust_env=False)
    assert r.status_code == 308 and r.headers["location"] == "https://shop.example/form"  # 308: POST stays POST
    r = httpx.get(f"{custom}/?q", headers={"Host": "[::1]:80"}, trust_env=False)
    assert r.status_code == 301 and r.headers["location"] == "https://[::1]:8443/?q"
    head = httpx.head(f"{custom}/x", headers={"Host": "shop.example"}, trust_env=False)
    assert head.status_code == 301 and head.headers["location"] == "https://shop.example:8443/x"
    for bad in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                b"\x16\x03\x01garbage\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", proxy.server.ports[0])) as sock:
            sock.sendall(bad)
            assert read_until_closed(sock).startswith(b"HTTP/1.1 400 "), bad
    assert upstream.connections_accepted == 0
