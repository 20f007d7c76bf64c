"""The ``servers_from`` part of an upstream group: its servers discovered in DNS instead of listed.

``servers_from: {dns: app.internal, type: A, port: 8080}`` makes one server per address of the
name; ``type: SRV`` takes the port (and the weight) from each record. The lookups themselves are in
``fulcrum.state.resolve``, the set logic in ``fulcrum.state.discovery``; this module only says what a
valid entry is.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, PlainValidator, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fulcrum.config.fields import HOSTNAME, MODEL
from fulcrum.config.messages import FULCRUM_ERROR
from fulcrum.config.units import parse_duration, short_repr

#: The shortest refresh accepted, and the floor under a record's TTL (a TTL of 0 must not mean a busy loop).
MIN_REFRESH = 1.0
DNS_PORT = 53

RecordType = Literal["A", "AAAA", "SRV"]


def _seconds(low: float) -> PlainValidator:
    def validate(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < low:
            raise ValueError(f"must be at least {low:g}s, got {short_repr(value)}")
        return seconds

    return PlainValidator(validate)


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise ValueError(f"must be a port number from 1 to 65535, got {short_repr(value)}")
    port = int(str(value).strip())
    if not 1 <= port <= 65535:
        raise ValueError(f"must be a port number from 1 to 65535, got {port}")
    return port


def parse_resolver(value: str) -> tuple[str, int]:
    """``"10.0.0.2"``, ``"10.0.0.2:5353"``, ``"::1"`` or ``"[::1]:5353"`` as (ip, port)."""
    problem = f"must be an IP address with an optional port, like 127.0.0.1:53 or [::1]:53, got {short_repr(value)}"
    text = value.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        if port and not port.startswith(":"):
            raise ValueError(problem)
        port = port[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""  # an IPv4 address, or an IPv6 one without a port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(problem) from None
    if not port:
        return host, DNS_PORT
    try:
        return host, _port(port)
    except ValueError:
        raise ValueError(problem) from None


class ServersFrom(BaseModel):
    """Where a group's servers come from: the records of ``dns``, looked up every ``refresh`` (or sooner, when
    the records' TTL is shorter, but never more often than every ``MIN_REFRESH``).

    ``port`` is the servers' port for A and AAAA records (SRV records carry their own, so it is not used
    there); ``resolver`` is the DNS server to ask (default, or empty: the system's, from /etc/resolv.conf);
    ``timeout`` bounds one lookup; ``scheme`` is how the servers are spoken to.
    """

    model_config = MODEL

    dns: str
    type: RecordType = "A"
    port: Annotated[int, PlainValidator(_port)] | None = None
    refresh: Annotated[float, _seconds(MIN_REFRESH)] = 10.0
    timeout: Annotated[float, _seconds(0.001)] = 2.0
    resolver: str | None = None
    scheme: Literal["http", "https"] = "http"

    @field_validator("dns")
    @classmethod
    def _check_name(cls, name: str) -> str:
        name = name.strip()
        if not HOSTNAME.fullmatch(name) or len(name.rstrip(".")) > 253:
            raise ValueError(f"must be a DNS name like app.internal or _http._tcp.app.internal, got {short_repr(name)}")
        return name

    @field_validator("type", mode="before")
    @classmethod
    def _upper_type(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("resolver")
    @classmethod
    def _check_resolver(cls, resolver: str | None) -> str | None:
        if resolver is None or not resolver.strip():
            return None  # the system's; an empty ${VAR} means that too
        host, port = parse_resolver(resolver)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @model_validator(mode="after")
    def _port_for_addresses(self) -> ServersFrom:
        if self.type != "SRV" and self.port is None:
            message = (f"is required with type {self.type} (A and AAAA records carry addresses only; "
                       "SRV records carry their own port)")
            raise ValidationError.from_exception_data("ServersFrom", [{
                "type": PydanticCustomError(FULCRUM_ERROR, "{reason}", {"reason": message}), "loc": ("port",),
                "input": None}])
        return self

    @property
    def nameserver(self) -> tuple[str, int] | None:
        """The resolver to ask as (ip, port); None for the system's."""
        return parse_resolver(self.resolver) if self.resolver is not None else None

    @property
    def target(self) -> tuple[str, str, int | None, str, str | None]:
        """What the lookup asks and how its answer becomes servers: a change of ``refresh`` or ``timeout`` only
        keeps the servers found, a change of this starts over."""
        return (self.dns.rstrip(".").lower(), self.type, self.port if self.type != "SRV" else None, self.scheme,
                self.resolver)

    def describe(self) -> str:
        """One line for ``fulcrum check``."""
        port = "" if self.type == "SRV" else f" port {self.port}"
        where = f" via {self.resolver}" if self.resolver else " via the system resolver"
        return f"servers from DNS {self.type} {self.dns}{port}{where}, every {self.refresh:g}s (or the TTL)"
