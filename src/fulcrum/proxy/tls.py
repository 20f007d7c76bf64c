"""The ssl contexts of one config: a listener's (one per certificate, picked by SNI) and each group's client side.

Contexts are built once per config (at start and on every reload), never per connection, so a
reload that points at a new certificate, or rewrites the file in place, serves it to the next
connection while established ones keep theirs. Files were checked when the config was validated;
a file that changed since and cannot be loaded fails the build with a ``ConfigError`` at its key path,
and the running config stays in force.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from fulcrum.config import ConfigError, ConfigIssue
from fulcrum.config.tls import ServerTLS, UpstreamTLS, certificate_names, load_certificates

log = logging.getLogger("fulcrum.proxy")

#: What a TLS listener offers in ALPN, in order of preference: HTTP/2 first, as browsers and nginx expect
#: (``fulcrum.proxy.alpn`` reads the outcome from ``negotiated_protocol``) ...
ALPN_PROTOCOLS: tuple[str, ...] = ("h2", "http/1.1")
#: ... and what one with ``http2: false`` offers.
ALPN_HTTP11: tuple[str, ...] = ("http/1.1",)
DEFAULT_ALPN = "http/1.1"  # a client that sent no ALPN speaks HTTP/1.1

#: TLS 1.2 suites: forward-secret AEAD only (TLS 1.3's own suites are all fine and left as OpenSSL has them).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"


def _hardened(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _server_context(cert: str, key: str, alpn: Sequence[str]) -> ssl.SSLContext:
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert, key, password=lambda: b"")
    context.set_alpn_protocols(list(alpn))
    return context


class ListenerTLS:
    """The certificates of one TLS listener: ``context`` goes to the accepting call; SNI picks among the rest.

    ``by_name`` maps exact names, ``by_suffix`` the part of ``*.example.com`` after the star; the
    first certificate listed answers any other name. A name claimed twice goes to the first that does.
    """

    __slots__ = ("by_name", "by_suffix", "context")

    def __init__(self, tls: ServerTLS, where: str, source: str = "config",
                 alpn: Sequence[str] = ALPN_PROTOCOLS) -> None:
        self.by_name: dict[str, ssl.SSLContext] = {}
        self.by_suffix: dict[str, ssl.SSLContext] = {}
        contexts: list[ssl.SSLContext] = []
        has_top = tls.cert is not None
        for i, pair in enumerate(tls.pairs()):
            path = f"{where}.tls" if has_top and i == 0 else f"{where}.tls.certificates[{i - has_top}]"
            try:
                context = _server_context(pair.cert, pair.key, alpn)
                with open(pair.cert, "rb") as f:
                    names = certificate_names(load_certificates(f.read())[0])
            except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
                raise ConfigError([ConfigIssue(source, path, f"cannot load {pair.cert} / {pair.key}: {err}")]) \
                    from None
            contexts.append(context)
            for name in names:
                table, key = (self.by_suffix, name[1:]) if name.startswith("*.") else (self.by_name, name)
                table.setdefault(key, context)
        self.context = contexts[0]
        if len(contexts) > 1:  # every handshake starts on the first context, whose callback may switch it
            self.context.sni_callback = self._choose

    def pick(self, server_name: str | None) -> ssl.SSLContext:
        """The context for an SNI name (the default one for None or a name no certificate holds)."""
        if server_name:
            name = server_name.lower().rstrip(".")
            found = self.by_name.get(name)
            if found is not None:
                return found
            dot = name.find(".")
            if dot > 0:
                found = self.by_suffix.get(name[dot:])
                if found is not None:
                    return found
        return self.context

    def _choose(self, sock: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        chosen = self.pick(server_name)
        if chosen is not context:
            sock.context = chosen


def negotiated_protocol(transport: object) -> str:
    """The ALPN protocol a TLS connection agreed on (``http/1.1`` when the client offered none)."""
    get_extra_info = getattr(transport, "get_extra_info", None)
    ssl_object = get_extra_info("ssl_object") if get_extra_info is not None else None
    chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    return chosen or DEFAULT_ALPN


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """How a group's connections to its https servers start: the context, and the name verified and sent as SNI
    (None: each server's own host)."""

    context: ssl.SSLContext
    server_name: str | None

    def hostname(self, host: str) -> str:
        return self.server_name or host


def client_tls(tls: UpstreamTLS | None, where: str, source: str = "config") -> ClientTLS:
    """The client side of a group's TLS: verified against the system's CAs or ``ca``, unless told not to."""
    spec = tls if tls is not None else UpstreamTLS()
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.set_alpn_protocols(["http/1.1"])  # the upstream side speaks HTTP/1.1
    try:
        if spec.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif spec.ca is not None:
            context.load_verify_locations(cafile=spec.ca)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if spec.cert is not None and spec.key is not None:
            context.load_cert_chain(spec.cert, spec.key, password=lambda: b"")
    except (OSError, ValueError) as err:
        raise ConfigError([ConfigIssue(source, f"{where}.tls", f"cannot load: {err}")]) from None
    return ClientTLS(context, spec.server_name)
