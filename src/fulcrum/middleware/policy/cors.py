"""Cross-origin resource sharing (the Fetch standard's CORS protocol): which origins may call, and the
headers that say so.

The request's Origin is echoed as sent (browsers compare it exactly), except
that a policy of only ``"*"`` without credentials answers ``*``. With
credentials, browsers take ``*`` in the allow headers literally, so a ``"*"``
of methods or headers is answered by echoing what the preflight asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\*\.)?(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
_LABELS = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
# Methods a browser never needs permission for (Fetch: CORS-safelisted methods).
_SAFELISTED_METHODS = frozenset({"GET", "HEAD", "POST"})
_VARY_ORIGIN = ("Vary", "Origin")
_VARY_PREFLIGHT = ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


def _normal_origin(origin: str) -> str:
    text = origin.strip().lower().rstrip("/")
    if text == "null":
        return text
    if not _ORIGIN.fullmatch(text):
        raise ValueError(
            "an allowed origin must be *, null or scheme://host[:port], with *. before the host to allow its "
            f"subdomains, got {origin!r}"
        )
    scheme = text.partition("://")[0]
    default = _DEFAULT_PORTS.get(scheme)
    return text[: -len(default)] if default and text.endswith(default) else text


class CorsPolicy:
    """One route's CORS settings, with the constant header values worked out once.

    Origins are ``"*"``, exact (``"https://app.example.com"``, matched without
    regard to case, a default port or a trailing slash in the config) or a
    subdomain wildcard (``"https://*.example.com"``: ``a.example.com`` and
    ``a.b.example.com``, not ``example.com``). ``"*"`` does not match the
    ``null`` origin (sandboxed documents, files) when credentials are allowed;
    list ``"null"`` to allow it. GET, HEAD and POST are always allowed, as
    browsers never ask permission for them.
    """

    __slots__ = (
        "_actual_tail", "_any_header", "_any_method", "_any_origin", "_exact", "_headers", "_headers_value",
        "_methods", "_methods_value", "_preflight_tail", "_star", "_wildcards", "allow_credentials",
    )  # fmt: skip

    def __init__(
        self,
        allow_origins: Sequence[str],
        allow_methods: Sequence[str],
        allow_headers: Sequence[str],
        allow_credentials: bool,
        max_age: int,
        expose_headers: Sequence[str] = (),
    ) -> None:
        if max_age < 0:
            raise ValueError(f"max_age must be 0 or more seconds, got {max_age!r}")
        for name in (*allow_methods, *allow_headers, *expose_headers):
            if name != "*" and not _TOKEN.fullmatch(name):
                raise ValueError(f"methods and header names must be tokens like X-Request-Id, got {name!r}")
        self.allow_credentials = allow_credentials
        self._any_origin = "*" in allow_origins
        self._star = list(allow_origins) == ["*"] and not allow_credentials
        exact: set[str] = set()
        wildcards: list[tuple[str, str]] = []
        for origin in allow_origins:
            if origin == "*":
                continue
            normal = _normal_origin(origin)
            if "://*." in normal:
                prefix, _, suffix = normal.partition("*")
                wildcards.append((prefix, suffix))
            else:
                exact.add(normal)
        self._exact = frozenset(exact)
        self._wildcards = tuple(wildcards)

        self._any_method = "*" in allow_methods
        methods = [m.upper() for m in allow_methods if m != "*"]
        self._methods = frozenset(methods) | _SAFELISTED_METHODS
        self._methods_value = ", ".join(methods)
        self._any_header = "*" in allow_headers
        headers = [h for h in allow_headers if h != "*"]
        self._headers = frozenset(h.lower() for h in headers)
        self._headers_value = ", ".join(headers)

        credentials = [("Access-Control-Allow-Credentials", "true")] if allow_credentials else []
        self._preflight_tail = credentials + ([("Access-Control-Max-Age", str(max_age))] if max_age > 0 else [])
        expose = [("Access-Control-Expose-Headers", ", ".join(expose_headers))] if expose_headers else []
        self._actual_tail = credentials + expose

    def origin_allowed(self, origin: str) -> bool:
        """Whether a request from ``origin`` (the Origin header as sent) may read the response."""
        text = origin.lower()
        if text == "null":
            return text in self._exact or (self._any_origin and not self.allow_credentials)
        if self._any_origin or text in self._exact:
            return True
        for prefix, suffix in self._wildcards:
            end = len(text) - len(suffix)
            if text.startswith(prefix) and text.endswith(suffix) and _LABELS.fullmatch(text, len(prefix), end):
                return True
        return False

    def preflight(self, origin: str, method: str, request_headers: str | None) -> list[tuple[str, str]] | None:
        """The headers of a 204 answer to a preflight; None when the origin, the method or a header is not allowed.

        ``method`` and ``request_headers`` are the Access-Control-Request-Method and
        -Headers values.
        """
        if not self.origin_allowed(origin) or not _TOKEN.fullmatch(method):
            return None
        if not self._any_method and method.upper() not in self._methods:
            return None
        asked = [h.strip().lower() for h in request_headers.split(",")] if request_headers else []
        asked = [h for h in asked if h]
        for name in asked:
            if not _TOKEN.fullmatch(name) or not (self._any_header or name in self._headers):
                return None
        answer = [("Access-Control-Allow-Origin", "*" if self._star else origin)]
        answer.append(("Access-Control-Allow-Methods", method if self._any_method else self._methods_value or method))
        allowed_headers = ", ".join(asked) if self._any_header else self._headers_value
        if allowed_headers:
            answer.append(("Access-Control-Allow-Headers", allowed_headers))
        answer += self._preflight_tail
        if not self._star:
            answer.append(_VARY_PREFLIGHT)
        return answer

    def actual(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers to add to a response to a (non-preflight) request; [] when there is no Origin or it is refused."""
        if origin is None or not self.origin_allowed(origin):
            return []
        if self._star:
            return [("Access-Control-Allow-Origin", "*"), *self._actual_tail]
        return [("Access-Control-Allow-Origin", origin), *self._actual_tail, _VARY_ORIGIN]

    @staticmethod
    def is_preflight(method: str, origin: str | None, acrm: str | None) -> bool:
        """Whether a request is a CORS preflight: OPTIONS with both Origin and Access-Control-Request-Method."""
        return method == "OPTIONS" and origin is not None and acrm is not None
