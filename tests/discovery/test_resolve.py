"""DnsLookup against a real DNS server: what each kind of answer becomes (found, empty, failed)."""

from __future__ import annotations

from fulcrum.config.discovery import ServersFrom
from fulcrum.state.resolve import DnsLookup
from tests.support.dnsserver import DnsServer


def spec(server: DnsServer, **fields: object) -> ServersFrom:
    return ServersFrom.model_validate({"resolver": server.address, "timeout": "500ms", **fields})


async def test_aaaa_records_become_bracketed_servers_with_the_ttl(dns: DnsServer) -> None:
    dns.zone.set_aaaa("v6.test", ["::1", "fd00::2"], ttl=7)
    found = await DnsLookup(spec(dns, dns="v6.test", type="AAAA", port=8443, scheme="https")).lookup()
    assert found.kind == "found" and found.ttl == 7.0
    assert [s.url for s in found.servers] == ["https://[::1]:8443", "https://[fd00::2]:8443"]


async def test_srv_targets_fall_back_to_aaaa_and_the_smallest_ttl_wins(dns: DnsServer) -> None:
    dns.zone.set_srv("_x._tcp.test", [(0, 2, 9001, "v4.test."), (0, 1, 9002, "v6.test.")], ttl=60)
    dns.zone.set_a("v4.test", ["127.0.0.9"], ttl=30)
    dns.zone.set_aaaa("v6.test", ["::1"], ttl=4)
    found = await DnsLookup(spec(dns, dns="_x._tcp.test", type="SRV")).lookup()
    assert [(s.url, s.weight) for s in found.servers] == [("http://127.0.0.9:9001", 2), ("http://[::1]:9002", 1)]
    assert found.ttl == 4.0


async def test_answers_without_servers_are_empty(dns: DnsServer) -> None:
    dns.zone.set_a("only-a.test", ["127.0.0.9"])
    nxdomain = await DnsLookup(spec(dns, dns="missing.test", port=80)).lookup()
    assert (nxdomain.kind, nxdomain.reason) == ("empty", "no such name (NXDOMAIN)")
    no_aaaa = await DnsLookup(spec(dns, dns="only-a.test", type="AAAA", port=80)).lookup()
    assert (no_aaaa.kind, no_aaaa.reason) == ("empty", "no AAAA records")
    no_srv = await DnsLookup(spec(dns, dns="only-a.test", type="SRV")).lookup()
    assert (no_srv.kind, no_srv.reason) == ("empty", "no SRV records")
    dns.zone.set_srv("_y._tcp.test", [(0, 1, 80, "missing.test.")])
    no_target = await DnsLookup(spec(dns, dns="_y._tcp.test", type="SRV")).lookup()
    assert (no_target.kind, no_target.reason) == ("empty", "no address for any SRV target")


async def test_a_silent_server_is_a_failure_after_the_timeout(dns: DnsServer) -> None:
    dns.silent = True
    failed = await DnsLookup(spec(dns, dns="any.test", port=80, timeout="200ms")).lookup()
    assert (failed.kind, failed.reason) == ("failed", "no answer within 0.2s")
    assert dns.dropped >= 1
