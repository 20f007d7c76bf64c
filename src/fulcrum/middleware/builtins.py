"""The built-in middleware: thin hooks over the pure policies in ``fulcrum.middleware.policy``."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence

from fulcrum.middleware.api import CallNext, Request, Response
from fulcrum.middleware.chain import Builtin
from fulcrum.middleware.policy.accesslog import FORMATS, LogRecord, LogWriter
from fulcrum.middleware.policy.auth import BasicAuth
from fulcrum.middleware.policy.compress import DEFAULT_TYPES, available_encodings, compressible, negotiate, new_encoder
from fulcrum.middleware.policy.cors import CorsPolicy
from fulcrum.middleware.policy.ipfilter import IpFilter, Network, client_address
from fulcrum.middleware.policy.ratelimit import Buckets, TokenBuckets, retry_after_header
from fulcrum.middleware.policy.trace import new_parent_id, new_traceparent, valid_traceparent
from fulcrum.routing.rewrite import header_edits

_TEXT = "text/plain; charset=utf-8"
_HEX32 = re.compile(r"[0-9a-f]{32}")
_ZERO32 = "0" * 32


def _text(status: int, message: str, extra: Sequence[tuple[str, str]] = ()) -> Response:
    return Response(status, f"{status} {message}\n", [("Content-Type", _TEXT), *extra])


class RequestId(Builtin):
    """X-Request-ID is kept or made by the core for every request; this adds a W3C ``traceparent``
    when the request has none (or a malformed one), its trace id taken from the request id when that is
    32 hex digits, as Fulcrum's own are."""

    name = "request_id"

    def __init__(self, traceparent: bool) -> None:
        self.traceparent = traceparent
        self.has_request = traceparent

    def on_request(self, req: Request) -> Response | None:
        current = req.header("traceparent")
        if current is None or not valid_traceparent(current):
            if current is not None:
                req.headers.popall("traceparent", None)
            own = req.own_id
            rid = req.request_id
            if own is not None:
                req.add_line(b"traceparent: 00-" + own + b"-" + new_parent_id() + b"-01\r\n")
            elif len(rid) == 32 and _HEX32.fullmatch(rid) is not None and rid != _ZERO32:
                line = b"traceparent: 00-" + rid.encode("ascii") + b"-" + new_parent_id() + b"-01\r\n"
                req.add_line(line)
            else:
                req.add_header("traceparent", new_traceparent(None))
        return None


class AccessLog(Builtin):
    """One line per request (common, combined or JSON) to a file or stdout, written off the event loop."""

    name = "access_log"
    has_log = True

    def __init__(self, fmt: str, writer: LogWriter) -> None:
        self.format = FORMATS[fmt]
        self.fmt = fmt
        self.writer = writer

    def on_log(self, record: LogRecord) -> None:
        self.writer.write(self.format(record))

    def describe(self) -> str:
        return f"access_log({self.fmt})"


class RateLimit(Builtin):
    """A token bucket per client address, per route or per header value; 429 with Retry-After."""

    name = "rate_limit"
    has_request = True

    def __init__(self, rate: float, burst: int, key: str, route: str, trusted: Sequence[Network],
                 clock: Callable[[], float] = time.monotonic, buckets: Buckets | None = None) -> None:
        self.buckets: Buckets = buckets if buckets is not None else TokenBuckets(rate, burst)
        self.key = key
        self.header = key[7:] if key.startswith("header:") else ""
        self.route = route
        self.trusted = tuple(trusted)
        self.clock = clock
        self.rate = rate
        self.burst = burst

    def on_request(self, req: Request) -> Response | None:
        key = self.key
        if key == "ip":
            value = client_address(req.client_ip, req.forwarded_for, self.trusted) if self.trusted \
                else req.client_ip
        elif key == "route":
            value = self.route
        else:
            value = req.header(self.header) or ""
        wait = self.buckets.take(value, self.clock())
        if wait <= 0.0:
            return None
        return _text(429, "Too Many Requests: rate limit exceeded", [("Retry-After", retry_after_header(wait))])

    def describe(self) -> str:
        return f"rate_limit({self.rate:g}/s, burst {self.burst}, key {self.key})"


class IpFilterMiddleware(Builtin):
    """Allow and deny lists of networks, judged on the client address (through trusted proxies); 403."""

    name = "ip_filter"
    has_request = True

    def __init__(self, allow: Sequence[Network], deny: Sequence[Network], trusted: Sequence[Network]) -> None:
        self.filter = IpFilter(allow, deny)
        self.trusted = tuple(trusted)

    def on_request(self, req: Request) -> Response | None:
        ip = client_address(req.client_ip, req.forwarded_for, self.trusted) if self.trusted \
            else req.client_ip
        if self.filter.allowed(ip):
            return None
        return _text(403, f"Forbidden: client address {ip} is not allowed")


class BasicAuthMiddleware(Builtin):
    """HTTP Basic authentication against bcrypt hashes; 401 with WWW-Authenticate.

    A credential already checked is answered from a cache; a new one is checked with bcrypt in a
    thread, so a slow hash never stalls the event loop (which is why this one runs as async middleware).
    """

    name = "basic_auth"
    needs_async = True

    def __init__(self, realm: str, users: dict[str, str]) -> None:
        self.auth = BasicAuth(realm, users)
        self.challenge = self.auth.challenge()

    def _refuse(self) -> Response:
        return _text(401, "Unauthorized", [("WWW-Authenticate", self.challenge)])

    async def __call__(self, req: Request, call_next: CallNext) -> Response:
        creds = BasicAuth.parse(req.header("authorization"))
        if creds is None:
            return self._refuse()
        user, password = creds
        ok = self.auth.check_cached(user, password)
        if ok is None:
            ok = await asyncio.get_running_loop().run_in_executor(None, self.auth.check_slow, user, password)
        if not ok:
            return self._refuse()
        req.state["user"] = user
        return await call_next(req)


class Cors(Builtin):
    """CORS: preflights answered here (204, or 403 for an origin, method or header not allowed);
    allowed origins get Access-Control-* headers on the real response."""

    name = "cors"
    has_request = True
    has_response = True

    def __init__(self, policy: CorsPolicy) -> None:
        self.policy = policy

    def on_request(self, req: Request) -> Response | None:
        if req.method != "OPTIONS":
            return None
        origin = req.header("origin")
        acrm = req.header("access-control-request-method")
        if origin is None or acrm is None:
            return None
        headers = self.policy.preflight(origin, acrm, req.header("access-control-request-headers"))
        if headers is None:
            return _text(403, "Forbidden: CORS preflight not allowed for this origin, method or headers")
        return Response(204, b"", headers)

    def on_response(self, req: Request, resp: Response) -> None:
        origin = req.header("origin")
        if origin is None:
            return
        for name, value in self.policy.actual(origin):
            if name == "Vary":
                vary = resp.header("vary")
                if vary is not None and "origin" not in vary.lower():
                    resp.set_header("Vary", f"{vary}, {value}")
                elif vary is None:
                    resp.add_header("Vary", value)
            else:
                resp.set_header(name, value)


class Compress(Builtin):
    """Compress upstream responses on the fly (br, zstd or gzip, as the client accepts), streamed."""

    name = "compress"
    has_response = True

    def __init__(self, types: Sequence[str] | None, min_bytes: int, encodings: Sequence[str]) -> None:
        self.types = tuple(types) if types is not None else DEFAULT_TYPES
        self.min_bytes = min_bytes
        usable = set(available_encodings())
        self.offered = tuple(e for e in encodings if e in usable)

    def on_response(self, req: Request, resp: Response) -> None:
        if not resp.from_upstream or resp.status != 200 or req.method == "HEAD" or not self.offered:
            return
        coding = negotiate(req.header("accept-encoding"), self.offered)
        if coding is None:
            return
        if resp.header("content-encoding") is not None or not compressible(resp.header("content-type"), self.types):
            return
        length = resp.header("content-length")
        if length is not None and (not length.isdigit() or int(length) < self.min_bytes):
            return
        control = resp.header("cache-control")
        if control is not None and "no-transform" in control.lower():
            return
        resp.remove_header("Content-Length")
        resp.set_header("Content-Encoding", coding)
        vary = resp.header("vary")
        if vary is None:
            resp.add_header("Vary", "Accept-Encoding")
        elif "accept-encoding" not in vary.lower() and vary.strip() != "*":
            resp.set_header("Vary", f"{vary}, Accept-Encoding")
        etag = resp.header("etag")
        if etag is not None and not etag.startswith("W/"):
            resp.set_header("ETag", "W/" + etag)
        resp.body_filter = new_encoder(coding)

    def describe(self) -> str:
        return f"compress({', '.join(self.offered) or 'none available'}, min {self.min_bytes} bytes)"


class MaxBody(Builtin):
    """Request bodies over ``max_bytes``: 413 before anything goes upstream when Content-Length says so;
    a chunked body is cut off (413, upstream connection dropped) at the byte that passes the limit."""

    name = "max_body"
    has_request = True

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def on_request(self, req: Request) -> Response | None:
        if req.content_length > self.max_bytes:
            return _text(413, f"Content Too Large: request body larger than {self.max_bytes} bytes")
        req.body_limit = self.max_bytes
        return None

    def describe(self) -> str:
        return f"max_body({self.max_bytes})"


#: ``headers: {preset: secure}``: added to responses that do not set them already.
SECURE_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("X-XSS-Protection", "0"),
)
SECURE_REMOVE = ("X-Powered-By",)


class HeadersMiddleware(Builtin):
    """Response headers: a preset (``secure``: added when absent), plus ``set`` and ``remove``."""

    name = "headers"
    has_response = True

    def __init__(self, preset: str | None, set_: dict[str, str], remove: Sequence[str]) -> None:
        self.if_absent = SECURE_HEADERS if preset == "secure" else ()
        edits = header_edits(set_, {}, [*(SECURE_REMOVE if preset == "secure" else ()), *remove])
        self.pattern = edits.pattern if edits is not None else None
        self.append = edits.raw_append if edits is not None else b""
        self.cut_keys = edits.keys if edits is not None else ()
        self.cut: frozenset[bytes] = edits.cut if edits is not None else frozenset()
        self.preset = preset
        # the preset's lines, each with its lower-case name; a name the route sets or removes is left to that
        self.absent_lines: tuple[tuple[bytes, bytes], ...] = tuple(
            (k.lower().encode("latin-1"), f"\r\n{k}: {v}".encode("latin-1")) for k, v in self.if_absent
            if k.lower().encode("latin-1") not in self.cut
        )
        # what a response that has none of the names gets: the whole preset after the set lines
        self.append_all = self.append + b"".join(line for _, line in self.absent_lines)
        # one pass over the raw head finds which of the names it has (mostly none)
        names = sorted({*self.cut, *(name for name, _ in self.absent_lines)})
        self.finder: re.Pattern[bytes] | None = re.compile(
            rb"\r\n(" + b"|".join(re.escape(n) for n in names) + rb")[ \t]*:", re.IGNORECASE
        ) if names else None

    def on_response(self, req: Request, resp: Response) -> None:
        head = resp.raw_head()
        finder = self.finder
        if head is not None and finder is not None:
            found = finder.findall(head)
            if not found:
                resp.replace_raw(head + self.append_all)
                return
            present = {name.lower() for name in found}
            parts = [self.append]
            for pair in self.absent_lines:
                if pair[0] not in present:
                    parts.append(pair[1])
            pattern = self.pattern
            if pattern is not None and not self.cut.isdisjoint(present):
                head = pattern.sub(b"", head)
            resp.replace_raw(head + b"".join(parts))
            return
        # the mapping was built by another middleware (or nothing to look for)
        append = self.append
        if self.absent_lines:
            parts = [append]
            for pair in self.absent_lines:
                if resp.header(pair[0].decode("latin-1")) is None:
                    parts.append(pair[1])
            append = b"".join(parts)
        resp.edit_raw(self.pattern, append, self.cut_keys)

    def describe(self) -> str:
        return f"headers(preset {self.preset})" if self.preset else "headers"
