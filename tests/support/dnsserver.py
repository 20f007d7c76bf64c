"""A real DNS server on 127.0.0.1 for tests (dnslib's), answering from a zone the test changes as it runs.

``DnsServer().start()`` listens on UDP on an ephemeral port (the tests' answers are small, so never truncated):
``.address`` is ``"127.0.0.1:PORT"`` for a ``resolver:`` key. ``zone.set_a(name, [ips], ttl)``,
``zone.set_srv(name, [(priority, weight, port, target)], ttl)``, ``zone.remove(name)`` change the
answers at once; a name the zone lacks gets NXDOMAIN. ``silent = True`` makes the server read
queries and never answer (a resolver that times out; ``dropped`` counts them); ``stop()`` closes it.
``queries(name, type)`` counts the questions answered.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


def _key(name: str) -> str:
    return name.rstrip(".").lower()


@dataclass
class Zone:
    """Records by (name, type), changed from any thread; the server reads them per query."""

    records: dict[tuple[str, str], tuple[int, list[Any]]] = field(default_factory=dict)
    additional: bool = False  # SRV answers carry their targets' A records in the additional section
    lock: threading.Lock = field(default_factory=threading.Lock)
    asked: Counter[tuple[str, str]] = field(default_factory=Counter)

    def set_a(self, name: str, addresses: list[str], ttl: int = 1) -> None:
        with self.lock:
            self.records[(_key(name), "A")] = (ttl, [A(a) for a in addresses])

    def set_aaaa(self, name: str, addresses: list[str], ttl: int = 1) -> None:
        with self.lock:
            self.records[(_key(name), "AAAA")] = (ttl, [AAAA(a) for a in addresses])

    def set_srv(self, name: str, records: list[tuple[int, int, int, str]], ttl: int = 1) -> None:
        """SRV records as (priority, weight, port, target)."""
        with self.lock:
            self.records[(_key(name), "SRV")] = (ttl, [SRV(p, w, port, DNSLabel(t)) for p, w, port, t in records])

    def remove(self, name: str) -> None:
        with self.lock:
            for key in [k for k in self.records if k[0] == _key(name)]:
                del self.records[key]

    def answer(self, request: DNSRecord) -> DNSRecord:
        reply = request.reply()
        name = _key(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.asked[(name, qtype)] += 1
            if not any(k[0] == name for k in self.records):
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            ttl, rdatas = self.records.get((name, qtype), (0, []))  # the name without this type: NOERROR, empty
            for rdata in rdatas:
                reply.add_answer(RR(request.q.qname, QTYPE.reverse[qtype], rdata=rdata, ttl=ttl))
                if self.additional and isinstance(rdata, SRV):
                    target = _key(str(rdata.target))
                    a_ttl, addresses = self.records.get((target, "A"), (0, []))
                    for address in addresses:
                        reply.add_ar(RR(rdata.target, QTYPE.A, rdata=address, ttl=a_ttl))
        return reply


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, server: DnsServer) -> None:
        self.server = server

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        return self.server.zone.answer(request)


class _Handler(DNSHandler):  # type: ignore[misc]
    def handle(self) -> None:
        owner: DnsServer = self.server.fulcrum_test_owner
        if owner.silent:
            with owner.zone.lock:
                owner.dropped += 1
            return  # read, never answered
        super().handle()


class DnsServer:
    """dnslib's server on 127.0.0.1 over a ``Zone``; see the module docstring."""

    def __init__(self, zone: Zone | None = None) -> None:
        self.zone = zone or Zone()
        self.silent = False
        self.dropped = 0  # queries read while silent
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        resolver = _Resolver(self)
        self._udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=quiet, handler=_Handler)
        self.port: int = self._udp.server.server_address[1]
        self._udp.server.fulcrum_test_owner = self
        self._running = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queries(self, name: str, qtype: str) -> int:
        with self.zone.lock:
            return self.zone.asked[(_key(name), qtype)]

    def start(self) -> DnsServer:
        self._udp.start_thread()
        self._running = True
        return self

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._udp.server.shutdown()
        self._udp.server.server_close()
