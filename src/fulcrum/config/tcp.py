"""The TCP (L4) part of the schema: ``tcp_services``, each a listen address in front of ``host:port`` servers.

A TCP service forwards bytes, not requests: it has a balancing policy over its servers, connect and
idle timeouts and health checks by TCP connect. ``tcp_problems`` checks the addresses across the
whole config (a TCP service may not share its address with an HTTP listener, the admin listener or
another service); it reads the raw input, so those problems are reported alongside all others.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, PlainValidator, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from fulcrum.config.fields import HOSTNAME, MODEL
from fulcrum.config.messages import FULCRUM_ERROR
from fulcrum.config.units import parse_duration, short_repr

# (key path from the top of the config, message, offending value), as schema.Problem
Problem = tuple[tuple[str | int, ...], str, object]

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_WILDCARDS = frozenset(("0.0.0.0", "::", ""))

#: The policies a TCP service may use (the HTTP ones that need no request: no latency, no request key).
TcpBalance = Literal["round_robin", "weighted_round_robin", "least_conn", "random", "ip_hash"]


def _fail(title: str, problems: list[tuple[tuple[str | int, ...], str, object]]) -> ValidationError:
    """Several problems from inside a validator, each at its own key path (as ``schema.fail`` does)."""
    details: list[InitErrorDetails] = [
        {"type": PydanticCustomError(FULCRUM_ERROR, "{reason}", {"reason": message}), "loc": loc, "input": value}
        for loc, message, value in problems
    ]
    return ValidationError.from_exception_data(title, details)


# ---------------------------------------------------------------- addresses


def split_address(value: object, *, host_required: bool) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` as (host, port); without ``host_required`` also ``":port"`` and ``port``
    (every IPv4 interface, as a listen address means)."""
    form = "host:port or [ipv6]:port" if host_required else "host:port, :port or [ipv6]:port"
    problem = f"must be {form}, got {short_repr(value)}"
    if isinstance(value, int) and not isinstance(value, bool) and not host_required:
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError(problem)
    if "://" in text:
        raise ValueError(f"{problem} (a TCP address has no scheme)")
    if text.isdigit() and not host_required:
        host, port = "", text
    elif text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(problem)
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{problem} (the port is missing)")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, like [::1]:5432, got {short_repr(value)}")
    if not host and host_required:
        raise ValueError(f"{problem} (the host is missing)")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{problem} (the port must be a number from 0 to 65535)")
    if host and host != "*" and not _valid_host(host):
        raise ValueError(f"{problem} (bad host {host!r})")
    if host_required and int(port) == 0:
        raise ValueError(f"{problem} (port 0 cannot be connected to)")
    return ("0.0.0.0" if host in ("", "*") else host), int(port)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOSTNAME.fullmatch(host))


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpListen(BaseModel):
    """Where a TCP service accepts connections: ``":5433"`` means every IPv4 interface."""

    model_config = MODEL

    host: str = "0.0.0.0"
    port: int

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return data
        host, port = split_address(data, host_required=False)
        return {"host": host, "port": port}

    def __str__(self) -> str:
        return format_address(self.host, self.port)


# ---------------------------------------------------------------- numbers and durations


def _whole(low: int, high: int) -> PlainValidator:
    def validate(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"must be a whole number, got {short_repr(value)}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be a whole number, got {short_repr(value)}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {number}")
        return number

    return PlainValidator(validate)


def _duration(*, zero_ok: bool) -> PlainValidator:
    def validate(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds == 0 and not zero_ok:
            raise ValueError(f"must be longer than 0, got {short_repr(value)}")
        return seconds

    return PlainValidator(validate)


def _fraction(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise ValueError(f"must be a fraction from 0 to 1, got {short_repr(value)}")


Duration = Annotated[float, _duration(zero_ok=False)]
OptionalDuration = Annotated[float, _duration(zero_ok=True)]  # 0 = none


# ---------------------------------------------------------------- a service


class TcpServerSpec(BaseModel):
    """One server of a TCP service: ``"host:port"`` or ``{address: "host:port", weight: 2}``."""

    model_config = MODEL

    address: str
    weight: Annotated[int, _whole(1, 1000)] = 1

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        # A bare address: its problems belong to the list item, not to an "address" key the user never wrote.
        return {"address": _server_address(data)} if isinstance(data, str) else data

    @field_validator("address", mode="before")
    @classmethod
    def _check_address(cls, address: object) -> str:
        return _server_address(address)

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


def _server_address(value: object) -> str:
    """The server's id: ``host:port`` (``[v6]:port``), as it is written in status and metrics."""
    host, port = split_address(value, host_required=True)
    return format_address(host, port)


class TcpHealthCheck(BaseModel):
    """Health checks by TCP connect: a connection every ``interval``; ``rise`` passes mark up, ``fall`` failures
    down. A server answering the connect within ``timeout`` passes."""

    model_config = MODEL

    interval: Duration = 2.0
    timeout: Duration = 1.0
    jitter: Annotated[float, PlainValidator(_fraction)] = 0.1
    rise: Annotated[int, _whole(1, 100)] = 2
    fall: Annotated[int, _whole(1, 100)] = 3
    initial: Literal["healthy", "unhealthy"] = "unhealthy"

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> TcpHealthCheck:
        if self.timeout > self.interval:
            message = f"must not be longer than the interval ({self.timeout:g}s > {self.interval:g}s)"
            raise _fail("TcpHealthCheck", [(("timeout",), message, self.timeout)])
        return self


class TcpTimeouts(BaseModel):
    """``connect``: to open a connection to a server; ``idle``: a connection silent both ways this long is closed
    (0 = never)."""

    model_config = MODEL

    connect: Duration = 2.0
    idle: OptionalDuration = 600.0


class TcpService(BaseModel):
    """A TCP (L4) service: connections accepted on ``listen`` are joined, byte for byte, to one of ``servers``."""

    model_config = MODEL

    listen: TcpListen
    servers: tuple[TcpServerSpec, ...]
    balance: TcpBalance = "round_robin"
    timeouts: TcpTimeouts = TcpTimeouts()
    health_check: TcpHealthCheck | None = None

    @field_validator("servers")
    @classmethod
    def _distinct_servers(cls, servers: tuple[TcpServerSpec, ...]) -> tuple[TcpServerSpec, ...]:
        if not servers:
            raise ValueError("list at least one server")
        seen: dict[str, int] = {}
        problems: list[tuple[tuple[str | int, ...], str, object]] = []
        for i, server in enumerate(servers):
            first = seen.setdefault(server.address, i)
            if first != i:
                problems.append(((i,), f"{server.address} is already listed at servers[{first}]", server.address))
        if problems:
            raise _fail("TcpService", problems)
        return servers


# ---------------------------------------------------------------- across the config


def _raw_addresses(value: object, loc: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str, int]]:
    """(key path, host, port) of each listen entry that parses; the others are reported by the schema itself."""
    items = value if isinstance(value, list | tuple) else [value]
    for i, item in enumerate(items):
        where = (*loc, i) if isinstance(value, list | tuple) else loc
        if isinstance(item, Mapping):
            item = item.get("address", f"{item.get('host', '')}:{item.get('port', '')}")
        try:
            host, port = split_address(item, host_required=False)
        except ValueError:
            continue
        yield where, host, port


def _overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Two listen addresses that cannot both be bound: the same port on the same host or on a wildcard."""
    if a[1] != b[1] or a[1] == 0:
        return False
    return a[0] == b[0] or a[0] in _WILDCARDS or b[0] in _WILDCARDS


def tcp_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Service names, and listen addresses shared with an HTTP listener, the admin listener or another service."""
    services = data.get("tcp_services")
    if not isinstance(services, Mapping):
        return []
    problems: list[Problem] = [
        (("tcp_services", name), "TCP service names may use only letters, digits, '_', '.' and '-'", name)
        for name in map(str, services)
        if not _NAME.fullmatch(name)
    ]
    taken: list[tuple[str, tuple[str, int]]] = []
    http = data.get("listen", ":8080")
    taken += [(f"HTTP listen address {format_address(h, p)}", (h, p)) for _, h, p in _raw_addresses(http, ())]
    admin = data.get("admin")
    admin_listen = admin.get("listen", "127.0.0.1:9090") if isinstance(admin, Mapping) else "127.0.0.1:9090"
    if admin_listen is not None:
        taken += [(f"admin listen address {format_address(h, p)}", (h, p))
                  for _, h, p in _raw_addresses(admin_listen, ())]
    for name, service in services.items():
        if not isinstance(service, Mapping) or "listen" not in service:
            continue
        for loc, host, port in _raw_addresses(service["listen"], ("tcp_services", str(name), "listen")):
            if isinstance(service["listen"], list | tuple):
                continue  # a list is the schema's error to report: one address per service
            for what, address in taken:
                if _overlap((host, port), address):
                    problems.append((loc, f"{format_address(host, port)} is also the {what}", str(service["listen"])))
                    break
            taken.append((f"listen address of TCP service {name}", (host, port)))
    return problems
