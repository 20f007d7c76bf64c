"""DNS lookups for ``servers_from``, with dnspython's asyncio resolver; the answers become ``Lookup`` results.

One ``DnsLookup`` per discovered group. It asks the configured resolver (or the system's, read from
/etc/resolv.conf once, when the lookup is made) with the group's timeout as the lookup's whole
lifetime, and keeps no cache: every lookup asks the DNS server, so the TTLs seen are the zone's.
Errors never escape: each is a ``Lookup`` of kind ``failed`` (no answer: timeout, SERVFAIL, refused,
no resolver) or ``empty`` (an answer with no server: NXDOMAIN, no records, targets without addresses).
"""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.message
import dns.rdatatype
import dns.resolver

from fulcrum.config.discovery import ServersFrom
from fulcrum.state.discovery import Lookup, SrvRecord, found, from_addresses, from_srv, normal_name

#: The UDP answer size offered (EDNS0): the size DNS Flag Day 2020 settled on, safe from IP fragmentation.
EDNS_PAYLOAD = 1232


class DnsLookup:
    """Looks up one ``servers_from`` entry."""

    def __init__(self, spec: ServersFrom) -> None:
        self.spec = spec
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _make_resolver(self) -> dns.asyncresolver.Resolver:
        spec = self.spec
        nameserver = spec.nameserver
        if nameserver is None:
            resolver = dns.asyncresolver.Resolver()  # the system's: /etc/resolv.conf
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [nameserver[0]]
            resolver.port = nameserver[1]
        resolver.timeout = spec.timeout
        resolver.lifetime = spec.timeout
        resolver.cache = None
        resolver.use_edns(0, 0, EDNS_PAYLOAD)  # room for many records over UDP (a truncated answer is asked over TCP)
        return resolver

    async def lookup(self) -> Lookup:
        """Ask once; never raises (a failure is a ``Lookup`` saying why)."""
        try:
            if self._resolver is None:
                self._resolver = self._make_resolver()
            if self.spec.type == "SRV":
                return await self._srv(self._resolver)
            port = self.spec.port if self.spec.port is not None else 0
            addresses, ttl = await self._addresses(self._resolver, self.spec.dns, self.spec.type)
            return found(from_addresses(addresses, port, self.spec.scheme), ttl, f"no {self.spec.type} records")
        except dns.resolver.NXDOMAIN:
            return Lookup("empty", reason="no such name (NXDOMAIN)")
        except dns.resolver.NoResolverConfiguration:
            return Lookup("failed", reason="no resolver configured (no nameserver in /etc/resolv.conf)")
        except dns.exception.Timeout:
            return Lookup("failed", reason=f"no answer within {self.spec.timeout:g}s")
        except dns.resolver.NoNameservers as err:
            return Lookup("failed", reason=_short(err))
        except (dns.exception.DNSException, OSError) as err:
            return Lookup("failed", reason=_short(err))
        except ValueError as err:  # a record that makes no server URL (pydantic's errors are ValueErrors)
            return Lookup("failed", reason=f"unusable record: {_short(err)}")

    async def _addresses(self, resolver: dns.asyncresolver.Resolver, name: str,
                         rdtype: str) -> tuple[list[str], float | None]:
        answer = await resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        if answer.rrset is None:
            return [], None
        return [rdata.to_text() for rdata in answer.rrset], float(answer.rrset.ttl)

    async def _srv(self, resolver: dns.asyncresolver.Resolver) -> Lookup:
        answer = await resolver.resolve(self.spec.dns, "SRV", search=False, raise_on_no_answer=False)
        if answer.rrset is None:
            return Lookup("empty", reason="no SRV records")
        ttls = [float(answer.rrset.ttl)]
        records = [SrvRecord(r.priority, r.weight, r.port, r.target.to_text()) for r in answer.rrset]
        best = min(r.priority for r in records)
        extra = _additional(answer.response)
        addresses: dict[str, list[str]] = {}
        for record in records:
            target = normal_name(record.target)
            if record.priority != best or not target or target in addresses:
                continue
            if target in extra:
                addresses[target], ttl = extra[target]
            else:  # not in the additional section: ask, A first, AAAA when there is no A record
                try:
                    addresses[target], ttl = await self._addresses(resolver, record.target, "A")
                    if not addresses[target]:
                        addresses[target], ttl = await self._addresses(resolver, record.target, "AAAA")
                except dns.resolver.NXDOMAIN:
                    addresses[target], ttl = [], None
            if ttl is not None:
                ttls.append(ttl)
        return found(from_srv(records, addresses, self.spec.scheme), min(ttls), "no address for any SRV target")


def _additional(response: dns.message.Message) -> dict[str, tuple[list[str], float | None]]:
    """The A (else AAAA) records of the additional section, by owner name."""
    found_a: dict[str, tuple[list[str], float | None]] = {}
    found_aaaa: dict[str, tuple[list[str], float | None]] = {}
    for rrset in response.additional:
        table = found_a if rrset.rdtype == dns.rdatatype.A else found_aaaa if rrset.rdtype == dns.rdatatype.AAAA \
            else None
        if table is not None:
            table[normal_name(rrset.name.to_text())] = ([r.to_text() for r in rrset], float(rrset.ttl))
    return {**found_aaaa, **found_a}


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
