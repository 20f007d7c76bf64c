"""The gateway part of the schema: route matching, rewrites, answers and the middleware list.

Regular expressions are compiled here once, so a bad one is reported under its key; the
compiled route table itself is built from these models by ``fulcrum.gateway``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from fulcrum.config.fields import HOSTNAME, MODEL, TOKEN, Network
from fulcrum.config.units import parse_duration, parse_rate, parse_size, short_repr

_MODEL = MODEL
_TOKEN = TOKEN
_HOSTNAME = HOSTNAME
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # header values: no CR, LF, NUL or other controls
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_GROUP_REF = re.compile(r"\\(\d+)|\\g<([^>]*)>")
#: Headers a route may not set: framing and connection management belong to Fulcrum.
_RESERVED = frozenset(
    ("host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
     "proxy-connection")
)
REDIRECT_FIELDS = ("{host}", "{path}", "{query}", "{uri}")


# ---------------------------------------------------------------- scalar checks


def _regex(value: object) -> re.Pattern[bytes]:
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a regular expression (a non-empty string), got {short_repr(value)}")
    try:
        return re.compile(value.encode("utf-8"))
    except re.error as err:
        raise ValueError(f"is not a valid regular expression ({err}): {short_repr(value)}") from None


Regex = Annotated[re.Pattern[bytes], PlainValidator(_regex), PlainSerializer(lambda p: p.pattern.decode())]


def header_name(name: str) -> str:
    """A header name as written, checked to be an RFC 9110 token."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"must be a header name (letters, digits and !#$%&'*+-.^_`|~), got {short_repr(name)}")
    return name


def header_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a header value (a string), got {short_repr(value)}")
    text = str(value)
    if _BAD_VALUE.search(text):
        raise ValueError(f"must not contain line breaks or control characters, got {short_repr(text)}")
    return text


def _path(value: str, what: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must start with /, got {short_repr(value)}")
    if re.search(r"[\x00-\x20\x7f]", value):
        raise ValueError(f"{what} must not contain spaces or control characters, got {short_repr(value)}")
    return value


def _seconds(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str | float):
        seconds = parse_duration(value)
    else:
        raise ValueError(f"must be a duration like 10m or a number of seconds, got {short_repr(value)}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {short_repr(value)}")
    return int(seconds)


Seconds = Annotated[int, PlainValidator(_seconds)]
def rate_text(per_second: float) -> str:
    """A rate as config text that reads back exactly: ``100/s`` (per day when a second would need an exponent)."""
    for value, unit in ((per_second, "s"), (per_second * 86400.0, "day")):
        for text in (f"{value:g}", repr(value)):  # the short form when it is exact
            if "e" not in text and float(text) == value:
                return f"{text}/{unit}"
    return f"{per_second!r}/s"


Rate = Annotated[float, PlainValidator(parse_rate), PlainSerializer(rate_text, when_used="json")]


def _positive_size(value: Any) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"must be larger than 0, got {short_repr(value)}")
    return size


Size = Annotated[int, PlainValidator(parse_size)]
PositiveSize = Annotated[int, PlainValidator(_positive_size)]


# ---------------------------------------------------------------- match


class HeaderRegex(BaseModel):
    """``{regex: "..."}``: the header's value must contain a match (anchor with ^ and $)."""

    model_config = _MODEL

    regex: Regex


class Match(BaseModel):
    """Which requests a route takes; every condition given must hold, and none given means every request."""

    model_config = _MODEL

    host: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    path_regex: Regex | None = None
    methods: tuple[str, ...] | None = None
    headers: dict[str, str | HeaderRegex] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _normal_host(cls, host: str | None) -> str | None:
        if host is None:
            return None
        text = host.strip().lower()
        if text == "*":
            return None
        if text.startswith("["):  # [v6] or [v6]:port
            end = text.find("]")
            if end < 0:
                raise ValueError(f"must be a host name like example.com or *.example.com, got {short_repr(host)}")
            literal = text[: end + 1]
            try:
                ipaddress.IPv6Address(literal[1:-1])
            except ValueError:
                raise ValueError(f"bad IPv6 address {short_repr(host)}") from None
            return literal
        name, _, port = text.partition(":")
        bare = name.removeprefix("*.")
        if (port and not port.isdigit()) or not bare or not _HOSTNAME.fullmatch(bare):
            raise ValueError(f"must be a host name like example.com or *.example.com, got {short_repr(host)}")
        return name

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str | None) -> str | None:
        return None if path is None else _path(path, "the path")

    @field_validator("path_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str | None) -> str | None:
        return None if prefix is None else _path(prefix, "the path prefix")

    @field_validator("methods", mode="before")
    @classmethod
    def _one_method(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, methods: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if methods is None:
            return None
        if not methods:
            raise ValueError("list at least one method (or leave methods out to take any)")
        out = []
        for method in methods:
            if not _TOKEN.fullmatch(method):
                raise ValueError(f"must be HTTP methods like GET or POST, got {short_repr(method)}")
            out.append(method.upper())
        return tuple(out)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str | HeaderRegex]) -> dict[str, str | HeaderRegex]:
        for name, value in headers.items():
            header_name(name)
            if isinstance(value, str):
                header_value(value)
        return headers


# ---------------------------------------------------------------- what a route does


class Rewrite(BaseModel):
    """``{regex, replacement}``: the path (never the query) rewritten with ``re.sub``; ``\\1`` refers to groups."""

    model_config = _MODEL

    regex: Regex
    replacement: str

    @model_validator(mode="after")
    def _groups_exist(self) -> Rewrite:
        groups = self.regex.groups
        names = self.regex.groupindex
        for number, name in _GROUP_REF.findall(self.replacement):
            if number and int(number) > groups:
                raise ValueError(f"replacement refers to group \\{number} but the regex has {groups} group(s)")
            if name and not (name.isdigit() and int(name) <= groups) and name.encode() not in names:
                raise ValueError(f"replacement refers to group <{name}>, which the regex does not define")
        return self


def _header_map(value: object) -> object:
    if isinstance(value, Mapping):
        return {header_name(str(k)): header_value(v) for k, v in value.items()}
    return value


class HeaderEditSpec(BaseModel):
    """``set`` (replace), ``add`` (append another line) and ``remove`` header lines."""

    model_config = _MODEL

    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()

    @field_validator("set", "add", mode="before")
    @classmethod
    def _check_map(cls, value: object) -> object:
        return _header_map(value)

    @field_validator("remove", mode="before")
    @classmethod
    def _one_name(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("remove")
    @classmethod
    def _check_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            header_name(name)
        return names

    @model_validator(mode="after")
    def _not_reserved(self) -> HeaderEditSpec:
        for name in (*self.set, *self.add, *self.remove):
            if name.lower() in _RESERVED:
                hint = " (use upstream_host to send another Host)" if name.lower() == "host" else ""
                raise ValueError(f"{name} is managed by Fulcrum and cannot be set, added or removed here{hint}")
        return self


class Respond(BaseModel):
    """A route answered by Fulcrum: ``{status, body, headers}``."""

    model_config = _MODEL

    status: Annotated[int, Field(ge=200, le=599)] = 200
    body: str = ""
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers", mode="before")
    @classmethod
    def _check_map(cls, value: object) -> object:
        return _header_map(value)

    @model_validator(mode="after")
    def _not_reserved(self) -> Respond:
        for name in self.headers:
            if name.lower() in _RESERVED:
                raise ValueError(f"{name} is managed by Fulcrum and cannot be set in respond.headers")
        return self


class Redirect(BaseModel):
    """``{url, status}``: answer with a redirect; ``url`` may use {host}, {path}, {query} and {uri}."""

    model_config = _MODEL

    url: str
    status: Literal[301, 302, 303, 307, 308] = 302

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        header_value(url)
        if not url.strip():
            raise ValueError("must not be empty")
        rest = url
        for name in REDIRECT_FIELDS:
            rest = rest.replace(name, "")
        if "{" in rest or "}" in rest:
            raise ValueError(f"may use only the fields {', '.join(REDIRECT_FIELDS)}, got {short_repr(url)}")
        return url


class RouteForwarding(BaseModel):
    """Forwarding headers for one route; what is left out comes from the top-level ``forwarding``."""

    model_config = _MODEL

    trusted_proxies: tuple[Network, ...] | None = None
    style: Literal["x-forwarded", "rfc7239", "both"] | None = None


# ---------------------------------------------------------------- middleware


class RequestIdOptions(BaseModel):
    """``request_id``: X-Request-ID is always kept or made; this also creates a W3C ``traceparent``."""

    model_config = _MODEL

    traceparent: bool = True


class AccessLogOptions(BaseModel):
    """``access_log``: one line per request, in ``common``, ``combined`` or ``json`` form, to a file or ``-``."""

    model_config = _MODEL

    format: Literal["common", "combined", "json"] = "combined"
    path: str = "-"

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        if not path.strip():
            raise ValueError("must be a file path, or - for standard output")
        return path


class RateLimitOptions(BaseModel):
    """``rate_limit``: a token bucket per key; over the limit, 429 with Retry-After."""

    model_config = _MODEL

    rate: Rate
    burst: Annotated[int, Field(ge=1)] | None = None  # default: one second's worth, at least 1
    key: str = "ip"
    shared: bool = False

    @field_validator("key")
    @classmethod
    def _check_key(cls, key: str) -> str:
        if key in ("ip", "route"):
            return key
        if key.startswith("header:") and _TOKEN.fullmatch(key[7:]):
            return key
        raise ValueError(f"must be ip, route or header:NAME, got {short_repr(key)}")

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.rate + 0.999999))


class IpFilterOptions(BaseModel):
    """``ip_filter``: ``deny`` wins; when ``allow`` is given, only those networks pass; 403 otherwise."""

    model_config = _MODEL

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @model_validator(mode="after")
    def _some_list(self) -> IpFilterOptions:
        if not self.allow and not self.deny:
            raise ValueError("give allow, deny or both (lists of CIDR networks)")
        return self


class BasicAuthOptions(BaseModel):
    """``basic_auth``: users and their bcrypt hashes (never plaintext); 401 with WWW-Authenticate."""

    model_config = _MODEL

    realm: str = "Restricted"
    users: dict[str, str]

    @field_validator("realm")
    @classmethod
    def _check_realm(cls, realm: str) -> str:
        return header_value(realm)

    @field_validator("users")
    @classmethod
    def _check_users(cls, users: dict[str, str]) -> dict[str, str]:
        if not users:
            raise ValueError("list at least one user")
        for name, hashed in users.items():
            if not name or ":" in name:
                raise ValueError(f"user names must be non-empty and contain no ':', got {short_repr(name)}")
            if not _BCRYPT.fullmatch(hashed.strip()):
                raise ValueError(
                    f"the password of {name!r} must be a bcrypt hash like $2b$12$..., not a plaintext password"
                    " (make one with: fulcrum hash-password)"
                )
        return {name: hashed.strip() for name, hashed in users.items()}


class CorsOptions(BaseModel):
    """``cors``: preflights answered by Fulcrum; allowed origins get Access-Control-* headers."""

    model_config = _MODEL

    allow_origins: tuple[str, ...] = ("*",)
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    allow_headers: tuple[str, ...] = ("*",)
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: Seconds = 600

    @field_validator("allow_origins")
    @classmethod
    def _check_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        if not origins:
            raise ValueError("list at least one origin, or *")
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://(\*\.)?[^/*\s]+", origin):
                raise ValueError(f"must be * or origins like https://app.example.com, got {short_repr(origin)}")
        return origins

    @field_validator("allow_methods", "allow_headers", "expose_headers")
    @classmethod
    def _check_tokens(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if name != "*" and not _TOKEN.fullmatch(name):
                raise ValueError(f"must be names like GET or X-Token, or *, got {short_repr(name)}")
        return names


class CompressOptions(BaseModel):
    """``compress``: gzip, br or zstd for compressible types over ``min_bytes``, streamed."""

    model_config = _MODEL

    types: tuple[str, ...] | None = None  # None: the built-in list of text-like types
    min_bytes: Size = 1024
    encodings: tuple[Literal["br", "zstd", "gzip"], ...] = ("br", "zstd", "gzip")

    @field_validator("types")
    @classmethod
    def _check_types(cls, types: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for item in types or ():
            if not re.fullmatch(r"[a-zA-Z0-9!#$&^_.+-]+/(\*|[a-zA-Z0-9!#$&^_.+-]+)", item):
                raise ValueError(f"must be media types like text/html or text/*, got {short_repr(item)}")
        return types


class MaxBodyOptions(BaseModel):
    """``max_body``: request bodies over ``max_bytes`` get 413 before anything goes upstream."""

    model_config = _MODEL

    max_bytes: PositiveSize


class HeadersOptions(BaseModel):
    """``headers``: response headers; ``preset: secure`` adds the usual security headers when absent."""

    model_config = _MODEL

    preset: Literal["secure"] | None = None
    set: dict[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()

    @field_validator("set", mode="before")
    @classmethod
    def _check_map(cls, value: object) -> object:
        return _header_map(value)

    @field_validator("remove")
    @classmethod
    def _check_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            header_name(name)
        return names


BUILTIN_NAMES = (
    "request_id", "access_log", "rate_limit", "ip_filter", "basic_auth", "cors", "compress", "max_body", "headers"
)


class MiddlewareEntry(BaseModel):
    """One item of a route's ``middleware`` list: ``{name: {options}}`` or ``{plugin: "mod:factory", options}``."""

    model_config = _MODEL

    request_id: RequestIdOptions | None = None
    access_log: AccessLogOptions | None = None
    rate_limit: RateLimitOptions | None = None
    ip_filter: IpFilterOptions | None = None
    basic_auth: BasicAuthOptions | None = None
    cors: CorsOptions | None = None
    compress: CompressOptions | None = None
    max_body: MaxBodyOptions | None = None
    headers: HeadersOptions | None = None
    plugin: str | None = None
    options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if isinstance(data, str):  # "request_id" alone: the built-in with its defaults
            data = {data: {}}
        if not isinstance(data, Mapping):
            raise ValueError(f"must be {{name: {{options}}}} or {{plugin: module:factory}}, got {short_repr(data)}")
        keys = [k for k in data if k != "options"]
        unknown = [k for k in keys if k not in BUILTIN_NAMES and k != "plugin"]
        if unknown:
            raise ValueError(f"unknown middleware {unknown[0]!r} (built-ins: {', '.join(BUILTIN_NAMES)};"
                             " or {plugin: \"module:factory\", options: {...}} for your own)")
        if len(keys) != 1:
            raise ValueError(f"give exactly one middleware per list item, got {', '.join(map(str, keys)) or 'none'}")
        if "options" in data and keys != ["plugin"]:
            raise ValueError("options belong to plugins; a built-in takes its options as {name: {options}}")
        return {k: ({} if v is None and k in BUILTIN_NAMES else v) for k, v in data.items()}

    @model_serializer(mode="wrap")
    def _only_its_kind(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dumped as it is written, ``{name: {options}}``: the kinds it is not are left out."""
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}

    @field_validator("plugin")
    @classmethod
    def _check_plugin(cls, ref: str | None) -> str | None:
        if ref is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref.strip()):
            raise ValueError(f"must be module.path:factory, got {short_repr(ref)}")
        return None if ref is None else ref.strip()

    @property
    def kind(self) -> str:
        """The built-in's name, or ``plugin``."""
        for name in BUILTIN_NAMES:
            if getattr(self, name) is not None:
                return name
        return "plugin"

    @property
    def spec(self) -> Any:
        """The options model of a built-in; the options dict of a plugin."""
        kind = self.kind
        return (self.options or {}) if kind == "plugin" else getattr(self, kind)


# ---------------------------------------------------------------- the route


class Route(BaseModel):
    """Requests that ``match`` go to ``upstream``, or are answered with ``respond`` or ``redirect``."""

    model_config = _MODEL

    name: str | None = None
    match: Match = Match()
    upstream: str | None = None
    strip_prefix: str | None = None
    add_prefix: str | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderEditSpec | None = None
    response_headers: HeaderEditSpec | None = None
    upstream_host: str | None = None
    respond: Respond | None = None
    redirect: Redirect | None = None
    forwarding: RouteForwarding | None = None
    expose_upstream: bool | None = None
    middleware: tuple[MiddlewareEntry, ...] = ()

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9_.:/-]+", name):
            raise ValueError(f"route names may use letters, digits and _ . : / -, got {short_repr(name)}")
        return name

    @field_validator("strip_prefix", "add_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str | None) -> str | None:
        return None if prefix is None else _path(prefix, "the prefix")

    @field_validator("upstream_host")
    @classmethod
    def _check_upstream_host(cls, host: str | None) -> str | None:
        if host is not None:
            name, _, port = host.strip().rpartition(":") if not host.strip().startswith("[") else (host, "", "")
            bare = name if port.isdigit() else host.strip()
            if not bare or not (_HOSTNAME.fullmatch(bare) or bare.startswith("[")):
                raise ValueError(f"must be a host name, optionally with :port, got {short_repr(host)}")
            return host.strip()
        return host

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        targets = [k for k in ("upstream", "respond", "redirect") if getattr(self, k) is not None]
        if len(targets) != 1:
            given = ", ".join(targets) if targets else "none"
            raise ValueError(f"a route needs exactly one of upstream, respond or redirect (given: {given})")
        if self.upstream is None:
            upstream_only = [k for k in ("strip_prefix", "add_prefix", "rewrite", "request_headers", "upstream_host",
                                         "forwarding", "expose_upstream") if getattr(self, k) is not None]
            if upstream_only:
                raise ValueError(f"{', '.join(upstream_only)} only apply to routes with an upstream")
        return self

    @property
    def display_name(self) -> str:
        """The given name, or one made from the match: ``host/prefix`` style."""
        if self.name:
            return self.name
        m = self.match
        host = m.host or "*"
        if m.path is not None:
            where = m.path
        elif m.path_prefix is not None:
            where = m.path_prefix + ("*" if not m.path_prefix.endswith("/") else "")
        elif m.path_regex is not None:
            where = "~" + m.path_regex.pattern.decode()
        else:
            where = "/"
        return f"{host}{where}"
