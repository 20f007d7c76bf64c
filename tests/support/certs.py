"""Certificates for TLS tests: a throwaway CA (trustme) and the PEM files it issues, written to a directory."""

from __future__ import annotations

import datetime
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as files, and the leaf for building ssl contexts directly."""

    cert: Path
    key: Path
    leaf: trustme.LeafCert

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number

    @property
    def pair(self) -> dict[str, str]:
        """``{cert, key}`` as a config takes it."""
        return {"cert": str(self.cert), "key": str(self.key)}

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.leaf.configure_cert(context)
        return context


class Pki:
    """A CA of its own under ``directory``: ``issue()`` writes a certificate for some names, signed by it."""

    def __init__(self, directory: Path, name: str = "test") -> None:
        self.dir = directory
        self.name = name
        self.ca = trustme.CA(organization_name=f"Fulcrum {name} CA")
        self.ca_file = directory / f"{name}-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._count = 0

    def issue(self, *names: str, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None) -> Issued:
        """A certificate for ``names`` (DNS names or IP addresses) in new files ``<n>.pem`` and ``<n>.key``."""
        self._count += 1
        leaf = self.ca.issue_cert(*names, not_before=not_before, not_after=not_after)
        stem = self.dir / f"{self.name}-{self._count}"
        cert, key = stem.with_suffix(".pem"), stem.with_suffix(".key")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return Issued(cert, key, leaf)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def requiring_clients(self, issued: Issued) -> ssl.SSLContext:
        """A server context for ``issued`` that requires a client certificate signed by this CA."""
        context = issued.server_context()
        context.verify_mode = ssl.CERT_REQUIRED
        self.ca.configure_trust(context)
        return context


@dataclass
class TLSReply:
    """What a raw TLS exchange saw: the server's certificate, the negotiated ALPN and version, the response bytes."""

    cert: dict[str, Any]
    alpn: str | None
    version: str | None
    response: bytes

    @property
    def names(self) -> list[str]:
        return [value for kind, value in self.cert.get("subjectAltName", ()) if kind == "DNS"]

    @property
    def status(self) -> int:
        return int(self.response.split(b" ", 2)[1])


def tls_request(port: int, context: ssl.SSLContext, server_name: str | None, request: bytes = b"",
                alpn: list[str] | None = None) -> TLSReply:
    """Connect to 127.0.0.1:``port`` with SNI ``server_name``, send ``request`` and read until the server closes."""
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as sock:
        cert = sock.getpeercert() or {}
        data = b""
        if request:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                data += chunk
        return TLSReply(cert, sock.selected_alpn_protocol(), sock.version(), data)
