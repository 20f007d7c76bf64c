"""The config schema: frozen pydantic models whose field names are the contract other parts read.

Every model forbids unknown keys. Validators raise ``ValueError`` with a plain
phrase, or ``fail()`` with several problems at once, each at its own key path.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    PlainValidator,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from fulcrum.config.discovery import ServersFrom
from fulcrum.config.fields import HOSTNAME, MODEL, TOKEN, Network
from fulcrum.config.gateway import Match as Match
from fulcrum.config.gateway import Route as Route
from fulcrum.config.messages import FULCRUM_ERROR, humanize
from fulcrum.config.state import StateBackend
from fulcrum.config.tcp import TcpService, tcp_problems
from fulcrum.config.tls import RedirectToHttps, ServerTLS, UpstreamTLS
from fulcrum.config.units import StatusRanges, parse_duration, parse_size, short_repr

# A problem found by a validator: (key path relative to the model, message, offending value).
Problem = tuple[tuple[str | int, ...], str, object]

_MODEL = MODEL

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TOKEN = TOKEN
_HOSTNAME = HOSTNAME
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # whitespace and control characters


def issue(message: str) -> PydanticCustomError:
    """A pydantic error carrying a finished message (braces in it are left alone)."""
    return PydanticCustomError(FULCRUM_ERROR, "{reason}", {"reason": message})


def problems_error(problems: Iterable[Problem], title: str = "Config") -> ValidationError:
    """One ``ValidationError`` holding several problems, each at its own key path."""
    details: list[InitErrorDetails] = [{"type": issue(msg), "loc": loc, "input": value} for loc, msg, value in problems]
    return ValidationError.from_exception_data(title, details)


def fail(problems: Iterable[Problem]) -> NoReturn:
    """Report several problems from inside a validator."""
    raise problems_error(problems)


# ---------------------------------------------------------------- scalar types


def _whole_number(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueError(f"must be a whole number, got {short_repr(value)}")


def _count(low: int, high: int | None = None) -> PlainValidator:
    def validate(value: object) -> int:
        number = _whole_number(value)
        if high is not None and not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {number}")
        if number < low:
            raise ValueError(f"must be at least {low}, got {number}")
        return number

    return PlainValidator(validate)


def _duration(*, zero_ok: bool) -> PlainValidator:
    def validate(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds == 0 and not zero_ok:
            raise ValueError(f"must be longer than 0, got {short_repr(value)}")
        return seconds

    return PlainValidator(validate)


def _size(*, zero_ok: bool) -> PlainValidator:
    def validate(value: Any) -> int:
        size = parse_size(value)
        if size == 0 and not zero_ok:
            raise ValueError(f"must be larger than 0, got {short_repr(value)}")
        return size

    return PlainValidator(validate)


def _fraction(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    if isinstance(value, str):
        try:
            return _fraction(float(value))
        except ValueError:
            pass
    raise ValueError(f"must be a fraction from 0 to 1, got {short_repr(value)}")


Duration = Annotated[float, _duration(zero_ok=False)]
OptionalDuration = Annotated[float, _duration(zero_ok=True)]  # 0 = off / none
Size = Annotated[int, _size(zero_ok=False)]


def _clean_text(value: str, what: str) -> str:
    if _UNSAFE.search(value):
        raise ValueError(f"{what} must not contain spaces or control characters, got {short_repr(value)}")
    return value


# ---------------------------------------------------------------- listeners


def parse_listen(value: object) -> dict[str, object]:
    """``"host:port"``, ``":port"``, ``"[::1]:8080"``, ``"8080"`` or ``8080`` as ``{host, port}``."""
    problem = f"must be host:port, :port or [ipv6]:port, got {short_repr(value)}"
    if isinstance(value, int) and not isinstance(value, bool):
        return {"port": value}
    if not isinstance(value, str):
        raise ValueError(problem)
    text = value.strip()
    if text.isdigit():
        return {"port": text}
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(problem)
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{problem} (the port is missing)")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, like [::1]:8080, got {short_repr(value)}")
    if not port.isdigit():
        raise ValueError(problem)
    return {"host": host or "0.0.0.0", "port": port}


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host))


class Listen(BaseModel):
    """An address to accept client connections on; ``":8080"`` means every IPv4 interface."""

    model_config = _MODEL

    host: str = "0.0.0.0"
    port: Annotated[int, _count(0, 65535)]

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        return data if isinstance(data, Mapping) else parse_listen(data)

    @field_validator("host")
    @classmethod
    def _check_host(cls, host: str) -> str:
        host = host.strip()
        if host == "*":
            return "0.0.0.0"
        if not _valid_host(host):
            raise ValueError(f"must be an IP address or a host name, got {short_repr(host)}")
        return host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class ProxyListen(Listen):
    """A listen entry of the proxy: ``"host:port"``, or ``{address, tls}`` for HTTPS, or
    ``{address, redirect_to_https}`` for a listener that only redirects to HTTPS.

    An HTTPS listener offers HTTP/2 (ALPN ``h2``, before ``http/1.1``) unless ``http2: false``; the key
    belongs to TLS listeners only (cleartext HTTP/2 is the top-level ``http2.h2c``)."""

    tls: ServerTLS | None = None
    redirect_to_https: RedirectToHttps | None = None
    http2: bool | None = None  # None: on, for a TLS listener

    @model_validator(mode="before")
    @classmethod
    def _from_address(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "address" not in data:
            return data
        if "host" in data or "port" in data:
            fail([(("address",), "give either address or host and port, not both", data["address"])])
        rest = {k: v for k, v in data.items() if k != "address"}
        try:
            return {**parse_listen(data["address"]), **rest}
        except ValueError as err:
            fail([(("address",), str(err), data["address"])])

    @field_validator("redirect_to_https", mode="before")
    @classmethod
    def _redirect_off(cls, value: object) -> object:
        return None if value is False else value

    @model_validator(mode="after")
    def _one_kind(self) -> ProxyListen:
        if self.tls is not None and self.redirect_to_https is not None:
            fail([(("redirect_to_https",), "a redirect listener serves plain HTTP: give it its own address, "
                   "without tls", None)])
        if self.http2 is not None and self.tls is None:
            fail([(("http2",), "applies to TLS listeners only (HTTP/2 by ALPN); cleartext HTTP/2 with prior "
                   "knowledge is the top-level http2.h2c", self.http2)])
        return self

    @property
    def offers_h2(self) -> bool:
        """Whether this TLS listener offers ``h2`` in ALPN."""
        return self.tls is not None and self.http2 is not False

    def describe(self) -> str:
        """The address and what it serves, for ``fulcrum check``."""
        if self.tls is not None:
            count = len(self.tls.pairs())
            h2 = ", h2" if self.offers_h2 else ""
            return f"{self} (https{h2}, {count} certificate{'s' if count != 1 else ''})"
        if self.redirect_to_https is not None:
            return f"{self} (redirects to https)"
        return str(self)


# ---------------------------------------------------------------- top-level sections


class Limits(BaseModel):
    """What one client request may be, and how long a client may take."""

    model_config = _MODEL

    max_request_line: Size = 8 * 1024
    max_header_bytes: Size = 32 * 1024
    max_body_bytes: Annotated[int, _size(zero_ok=True)] = 0  # 0 = no limit; bodies stream
    header_timeout: Duration = 10.0
    keepalive_timeout: Duration = 75.0


class Http2(BaseModel):
    """HTTP/2 from clients. Over TLS it is chosen by ALPN, on unless a listen entry says ``http2: false``;
    ``h2c`` also takes cleartext HTTP/2 with prior knowledge (a connection that opens with the HTTP/2
    preface) on the plain listeners. ``Upgrade: h2c`` is never honoured. The limits here apply to both."""

    model_config = _MODEL

    h2c: bool = False
    max_concurrent_streams: Annotated[int, _count(1, 1000)] = 100


class Forwarding(BaseModel):
    """Which peers may pass on X-Forwarded-For / Forwarded, and which of those headers Fulcrum writes."""

    model_config = _MODEL

    trusted_proxies: tuple[Network, ...] = ()
    style: Literal["x-forwarded", "rfc7239", "both"] = "x-forwarded"


class Admin(BaseModel):
    """The admin listener (API, metrics, dashboard). ``listen: null`` turns it off.

    A listener reachable from other hosts must have a token: the API changes what the proxy does.
    """

    model_config = _MODEL

    listen: Listen | None = Listen(host="127.0.0.1", port=9090)
    token: str | None = None

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: str | None) -> str | None:
        if token is None or token == "":
            return None  # an empty ${FULCRUM_ADMIN_TOKEN} means no token
        if not all(0x21 <= ord(c) <= 0x7E for c in token):
            raise ValueError("must be visible ASCII characters without spaces")
        return token

    @model_validator(mode="after")
    def _token_off_loopback(self) -> Admin:
        listen = self.listen
        if listen is not None and self.token is None and not _loopback(listen.host):
            fail([(("token",), f"is required when admin.listen ({listen}) is not a loopback address: anyone who "
                   "reaches it could change the upstreams", None)])
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- upstreams


class Sticky(BaseModel):
    """Cookie stickiness: a client that carries the cookie goes back to the same server."""

    model_config = _MODEL

    cookie: str
    ttl: Duration | None = None

    @field_validator("cookie")
    @classmethod
    def _check_cookie(cls, name: str) -> str:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"must be a valid cookie name (letters, digits and !#$%&'*+-.^_`|~), got {name!r}")
        return name


def _check_server_url(value: str) -> str:
    problem = f"must be a URL like http://host:port or https://host:port, got {short_repr(value)}"
    text = value.strip()
    if "://" not in text:
        raise ValueError(problem)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        reason = str(err)
        raise ValueError(f"{problem} ({reason[:1].lower()}{reason[1:]})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    if parts.username is not None or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"must be just {scheme}://host:port, with no path, query or user, got {short_repr(value)}")
    host = parts.hostname
    if not _valid_host(host):
        raise ValueError(f"{problem} (bad host name {host!r})")
    port = (443 if scheme == "https" else 80) if port is None else port
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class ServerSpec(BaseModel):
    """One server of a group: a URL string or ``{url, weight}``, stored as ``http://host:port`` (or https)."""

    model_config = _MODEL

    url: str
    weight: Annotated[int, _count(1, 1000)] = 1

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        # A bare URL: its problems belong to the list item, not to a "url" key the user never wrote.
        return {"url": _check_server_url(data)} if isinstance(data, str) else data

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return _check_server_url(url)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``), the server's id within its group."""
        return self.url.partition("://")[2]


class HealthCheck(BaseModel):
    """Active health checks: a request every ``interval``; ``rise`` passes mark up, ``fall`` failures down."""

    model_config = _MODEL

    path: str = "/health"
    method: str = "GET"
    host: str | None = None
    interval: Duration = 2.0
    timeout: Duration = 1.0
    jitter: Annotated[float, PlainValidator(_fraction)] = 0.1
    expect_status: StatusRanges = StatusRanges.parse("200-399")
    expect_body: str | None = None
    rise: Annotated[int, _count(1)] = 2
    fall: Annotated[int, _count(1)] = 3
    initial: Literal["healthy", "unhealthy"] = "unhealthy"

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"must start with /, got {short_repr(path)}")
        return _clean_text(path, "the path")

    @field_validator("method")
    @classmethod
    def _check_method(cls, method: str) -> str:
        upper = method.strip().upper()
        if upper not in ("GET", "HEAD", "OPTIONS", "POST"):
            raise ValueError(f"must be one of GET, HEAD, OPTIONS, POST, got {short_repr(method)}")
        return upper

    @field_validator("host")
    @classmethod
    def _check_host(cls, host: str | None) -> str | None:
        if host is not None:
            if not host:
                raise ValueError("must not be empty (leave it out to send the server's own host:port)")
            _clean_text(host, "the host")
        return host

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheck:
        if self.timeout > self.interval:
            fail(
                [
                    (
                        ("timeout",),
                        f"must not be longer than the interval ({self.timeout:g}s > {self.interval:g}s)",
                        self.timeout,
                    )
                ]
            )
        return self


class Timeouts(BaseModel):
    """Per upstream request: ``connect`` to open a connection, ``read`` between bytes, ``total`` overall;
    ``tunnel``: how long an upgraded connection (WebSocket) may carry no byte either way before it is closed."""

    model_config = _MODEL

    connect: Duration = 2.0
    read: Duration = 30.0
    total: OptionalDuration = 0.0  # 0 = none
    tunnel: OptionalDuration = 3600.0  # 0 = none


_PASSIVE_OUTCOMES = ("connect_error", "reset", "timeout", "5xx", "4xx")


class Passive(BaseModel):
    """Outlier detection: ``max_failures`` failures within ``window`` eject a server for ``eject_for``.

    Repeated ejections last longer (``eject_for`` times the streak, up to ``max_eject_for``); at most
    ``max_ejected_percent`` of a group is ejected at once, and never its last eligible server.
    """

    model_config = _MODEL

    max_failures: Annotated[int, _count(1)] = 5
    window: Duration = 10.0
    eject_for: Duration = 30.0
    max_eject_for: Duration = 300.0
    max_ejected_percent: Annotated[float, Field(ge=0, le=100)] = 50.0
    on: tuple[str, ...] = ("connect_error", "reset", "timeout", "5xx")

    @field_validator("on")
    @classmethod
    def _check_on(cls, on: tuple[str, ...]) -> tuple[str, ...]:
        bad = [o for o in on if o not in _PASSIVE_OUTCOMES]
        if bad:
            raise ValueError(f"unknown outcome {bad[0]!r} (known: {', '.join(_PASSIVE_OUTCOMES)})")
        return on

    @model_validator(mode="after")
    def _check_eject_times(self) -> Passive:
        if self.max_eject_for < self.eject_for:
            raise ValueError("max_eject_for must be at least eject_for")
        return self


class CircuitBreaker(BaseModel):
    """Per server: opens when the failure ratio over at least ``min_requests`` in ``window`` passes
    ``failure_ratio``; after ``open_for`` lets ``half_open_max`` probes through and closes on their success."""

    model_config = _MODEL

    failure_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    min_requests: Annotated[int, _count(1)] = 20
    window: Duration = 10.0
    open_for: Duration = 10.0
    half_open_max: Annotated[int, _count(1)] = 1


_RETRY_FAILURES = ("connect_error", "reset", "timeout")


class Retries(BaseModel):
    """Retries after the first try, on another server each time.

    Only for failures listed in ``when`` (connect_error, reset, timeout, a status like ``"503"`` or a
    class like ``"5xx"``), only idempotent methods unless nothing was sent, only bodies up to
    ``max_body``, never once a response byte reached the client, and within ``budget``: retries
    stay below that share of requests (plus ``budget_min_per_second``) over 10 seconds.
    """

    model_config = _MODEL

    max: Annotated[int, _count(0, 10)] = 2
    when: tuple[str, ...] = ("connect_error", "502", "503")
    budget: Annotated[float, PlainValidator(lambda v: _percent_or_fraction(v))] = 0.2
    budget_min_per_second: Annotated[float, Field(ge=0)] = 3.0
    max_body: Annotated[int, _size(zero_ok=True)] = 64 * 1024

    @field_validator("when")
    @classmethod
    def _check_when(cls, when: tuple[str, ...]) -> tuple[str, ...]:
        for item in when:
            item = item.strip()
            if item in _RETRY_FAILURES:
                continue
            if len(item) == 3 and item[0] in "12345" and (item[1:] == "xx" or item[1:].isdigit()):
                continue
            raise ValueError(f"must be connect_error, reset, timeout, a status like 503 or a class like 5xx, "
                             f"got {short_repr(item)}")
        return tuple(item.strip() for item in when)


def _percent_or_fraction(value: object) -> float:
    """``20%`` or ``0.2``."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            number = -1.0
        if 0 <= number <= 100:
            return number / 100
        raise ValueError(f"must be a percentage from 0% to 100% or a fraction from 0 to 1, got {short_repr(value)}")
    return _fraction(value)


class Queue(BaseModel):
    """Requests waiting for a server at ``pool.max_connections``: at most ``size``, each for up to ``timeout``."""

    model_config = _MODEL

    size: Annotated[int, _count(0)] = 0
    timeout: Duration = 10.0


class Pool(BaseModel):
    """Keep-alive connections to each server of the group."""

    model_config = _MODEL

    # Idle connections kept per server. High enough that a burst of concurrent requests finds its
    # connections again instead of reopening them (64 churned ~100 new connections per 1,000 requests
    # at 400 concurrent clients); idle_timeout trims what a burst leaves behind.
    max_idle: Annotated[int, _count(0)] = 1024
    idle_timeout: Duration = 60.0
    max_connections: Annotated[int, _count(0)] = 0  # 0 = unlimited


Balance = Literal[
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "random",
    "p2c",
    "least_time",
    "ip_hash",
    "consistent_hash",
]


class Upstream(BaseModel):
    """A group of servers, the policy that picks among them, and how their health is judged.

    The servers are listed (``servers``) or discovered in DNS (``servers_from``, ``fulcrum.config.discovery``);
    a discovered group's ``servers`` is empty in the file's config and filled in the running one.
    """

    model_config = _MODEL

    balance: Balance = "round_robin"
    hash_key: str = "ip"
    sticky: Sticky | None = None
    slow_start: OptionalDuration = 0.0  # 0 = off
    servers: tuple[ServerSpec, ...] = ()
    servers_from: ServersFrom | None = None
    health_check: HealthCheck | None = None
    timeouts: Timeouts = Timeouts()
    pool: Pool = Pool()
    passive: Passive | None = None
    circuit_breaker: CircuitBreaker | None = None
    retries: Retries | None = None
    queue: Queue = Queue()
    tls: UpstreamTLS | None = None  # for the group's https:// servers

    @field_validator("hash_key")
    @classmethod
    def _check_hash_key(cls, key: str) -> str:
        key = key.strip()
        if key in ("ip", "path"):
            return key
        kind, sep, name = key.partition(":")
        if sep and kind in ("header", "cookie") and _TOKEN.fullmatch(name):
            return key
        raise ValueError(f"must be ip, path, header:NAME or cookie:NAME, got {short_repr(key)}")

    @field_validator("servers")
    @classmethod
    def _no_duplicates(cls, servers: tuple[ServerSpec, ...]) -> tuple[ServerSpec, ...]:
        if not servers:
            raise ValueError("list at least one server")
        seen: dict[str, int] = {}
        problems: list[Problem] = []
        for i, server in enumerate(servers):
            first = seen.setdefault(server.address, i)
            if first != i:
                problems.append(((i,), f"{server.address} is already listed at servers[{first}]", server.url))
        if problems:
            fail(problems)
        return servers

    @model_validator(mode="before")
    @classmethod
    def _listed_or_discovered(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        if data.get("servers_from") is None:
            if "servers" not in data:
                fail([(("servers",), "missing (required): list the servers, or discover them with servers_from",
                       None)])
            return data
        if "servers" in data and data["servers"] in ((), []):
            return {k: v for k, v in data.items() if k != "servers"}  # a dump of a discovered group
        if "servers" in data:
            fail([(("servers_from",), "give either servers or servers_from, not both", None)])
        return data


# ---------------------------------------------------------------- routes: see fulcrum.config.gateway


# ---------------------------------------------------------------- the whole config


#: The most worker processes a config may ask for.
MAX_WORKERS = 256


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, so ``taskset`` is respected), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity masks
        return max(1, os.cpu_count() or 1)


def _check_workers(value: object) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return cpu_count()
    if isinstance(value, int | str) and not isinstance(value, bool) and str(value).strip().isdigit():
        n = int(str(value).strip())
        if 1 <= n <= MAX_WORKERS:
            return n
    raise ValueError(f"must be a number of worker processes from 1 to {MAX_WORKERS}, or auto (one per CPU), "
                     f"got {value!r}")


def _listen_list(value: object) -> object:
    return [value] if isinstance(value, str | int | Mapping) and not isinstance(value, bool) else value


def _defined(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def _empty(value: object) -> bool:
    return isinstance(value, list | tuple | Mapping) and not value


def _http_side_problems(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Problem]]:
    """What the HTTP side serves: a config needs upstreams or routes, unless it has only ``tcp_services``.

    A config of TCP services alone (no upstreams, no routes) opens no HTTP listener: ``listen`` defaults
    to none there, and addresses given would have nothing to serve. Otherwise the HTTP side needs at
    least one listen address and one route, and an upstream when ``routes`` is left out.
    """
    upstreams = data.get("upstreams")
    services = data.get("tcp_services")
    no_upstreams = upstreams is None or _empty(upstreams)
    if no_upstreams and _empty(data.get("routes", ())) and isinstance(services, Mapping) and services:
        if not _empty(data.get("listen", ())):
            return data, [(("listen",), "a config of tcp_services alone has nothing to serve over HTTP: leave "
                           "listen out, or give routes or upstreams", None)]
        return {**data, "listen": [], "routes": []}, []
    problems: list[Problem] = []
    if "routes" in data and _empty(data["routes"]):
        problems.append((("routes",), "list at least one route (or leave routes out to send everything to the only "
                         "upstream)", None))
    elif no_upstreams and "routes" not in data:
        what = "missing (required): define" if upstreams is None else "define"
        problems.append((("upstreams",), f"{what} at least one upstream (or tcp_services alone, for a config of "
                         "TCP services only)", None))
    if "listen" in data and _empty(data["listen"]):
        problems.append((("listen",), "list at least one address", None))
    return data, problems


def _cross_problems(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Problem]]:
    """Fill in the default route (or, for a config of TCP services only, no HTTP side), check upstream names,
    that every route names a defined upstream, and the TCP services' names and addresses.

    This looks at the raw input, so these problems are reported alongside any others.
    """
    data, problems = _http_side_problems(data)
    upstreams = data.get("upstreams", {})
    if not isinstance(upstreams, Mapping):
        return data, problems + tcp_problems(data)
    names = [str(n) for n in upstreams]
    bad_names: list[Problem] = [
        (("upstreams", name), "upstream names may use only letters, digits, '_', '.' and '-'", name)
        for name in names
        if not _NAME.fullmatch(name)
    ]
    data, route_problems = _route_problems(data, names)
    return data, problems + bad_names + route_problems + tcp_problems(data)


def _route_problems(data: Mapping[str, Any], names: list[str]) -> tuple[Mapping[str, Any], list[Problem]]:
    if "routes" not in data:
        if len(names) == 1:
            return {**data, "routes": [{"match": {"path_prefix": "/"}, "upstream": names[0]}]}, []
        if len(names) > 1:
            problem = f"needed when there are several upstreams (defined: {_defined(names)})"
            return data, [(("routes",), problem, None)]
        return data, []
    routes = data["routes"]
    problems: list[Problem] = []
    if isinstance(routes, list | tuple):
        for i, route in enumerate(routes):
            target = route.get("upstream") if isinstance(route, Mapping) else None
            if isinstance(target, str) and target not in names:
                problem = f"unknown upstream {target!r} (defined: {_defined(names)})"
                problems.append((("routes", i, "upstream"), problem, target))
    return data, problems


class Config(BaseModel):
    """A whole Fulcrum config. Build it with ``parse_config`` or ``load_config``."""

    model_config = _MODEL

    listen: tuple[ProxyListen, ...] = (ProxyListen(port=8080),)
    workers: Annotated[int, PlainValidator(_check_workers)] = 1
    limits: Limits = Limits()
    expose_upstream: bool = False
    access_log: bool = False
    forwarding: Forwarding = Forwarding()
    http2: Http2 = Http2()
    admin: Admin = Admin()
    upstreams: dict[str, Upstream] = {}  # none only in a config of tcp_services alone, or of routes that answer
    routes: tuple[Route, ...] = ()  # when omitted, filled in by _cross_check (none for tcp_services alone)
    shutdown_grace: OptionalDuration = 30.0
    tcp_services: dict[str, TcpService] = {}  # fulcrum.config.tcp
    state: StateBackend = StateBackend()  # fulcrum.config.state

    @field_validator("listen", mode="before")
    @classmethod
    def _single_listen(cls, value: object) -> object:
        return _listen_list(value)

    @field_validator("listen")
    @classmethod
    def _distinct_listen(cls, listen: tuple[ProxyListen, ...]) -> tuple[ProxyListen, ...]:
        # none at all is allowed for a config of TCP services only (_http_side_problems)
        seen: dict[tuple[str, int], int] = {}
        problems: list[Problem] = []
        for i, item in enumerate(listen):
            first = seen.setdefault((item.host, item.port), i)
            if first != i and item.port != 0:
                problems.append(((i,), f"{item} is already listed at listen[{first}]", str(item)))
        if problems:
            fail(problems)
        return listen

    @model_validator(mode="wrap")
    @classmethod
    def _cross_check(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Config:
        if not isinstance(data, Mapping):
            config: Config = handler(data)
            return config
        data, problems = _cross_problems(data)
        try:
            config = handler(data)
        except ValidationError as err:
            if not problems:
                raise
            raise merge_errors(err, problems) from None
        if config.workers > 1 and config.tcp_services:
            problems.append((("tcp_services",), f"TCP services run in a single process for now: they need workers: 1 "
                                                f"(workers is {config.workers})", None))
        if problems:
            raise problems_error(problems)
        return config


def merge_errors(err: ValidationError, problems: Iterable[Problem]) -> ValidationError:
    """``err``'s errors (as finished messages) followed by ``problems``."""
    own: list[Problem] = [(tuple(e["loc"]), humanize(e, Config), e.get("input")) for e in err.errors()]
    return problems_error([*own, *problems])
