"""TLS settings: certificates a listener serves (chosen by SNI), a redirect to HTTPS, TLS to upstream servers.

The certificate and key files are read while the config is validated, so ``fulcrum check`` (and a
reload) reports a missing, unreadable, malformed, mismatched or expired one at its key path, e.g.
``listen[1].tls.certificates[0].key: does not match the certificate in api.pem``. Paths are taken
as given (relative ones from the working directory, as the access log's are). The ssl contexts
themselves are built by ``fulcrum.proxy.tls``, once per config.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ValidationError, ValidatorFunctionWrapHandler, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from fulcrum.config.fields import HOSTNAME, MODEL
from fulcrum.config.messages import FULCRUM_ERROR, humanize
from fulcrum.config.units import short_repr

# (key path relative to the model, message, offending value), as in fulcrum.config.schema.
Problem = tuple[tuple[str | int, ...], str, object]


def _fail(problems: list[Problem]) -> None:
    """Raise every problem at its own key path (nothing when there are none)."""
    if problems:
        details: list[InitErrorDetails] = [
            {"type": PydanticCustomError(FULCRUM_ERROR, "{reason}", {"reason": msg}), "loc": loc, "input": value}
            for loc, msg, value in problems
        ]
        raise ValidationError.from_exception_data("TLS", details)


# ---------------------------------------------------------------- reading certificate files


def _read(path: str) -> tuple[bytes | None, str]:
    """The bytes of a file, or None and why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(), ""
    except FileNotFoundError:
        return None, f"file not found: {path}"
    except IsADirectoryError:
        return None, f"is a directory, not a file: {path}"
    except OSError as err:
        return None, f"cannot read {path}: {err.strerror or err}"


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file (the leaf first, then its chain); ValueError when there are none."""
    return x509.load_pem_x509_certificates(data)


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for, lower-cased: its subjectAltName entries, else its common name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [n.lower().rstrip(".") for n in names if n]


def _validity_problem(cert: x509.Certificate, now: datetime.datetime) -> str:
    if cert.not_valid_after_utc <= now:
        return f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_before_utc > now:
        return f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return ""


def _no_passphrase() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    return b""


def check_pair(cert_path: str, key_path: str, loc: tuple[str | int, ...] = ()) -> list[Problem]:
    """What is wrong with a certificate file and its key file (nothing when they can be served)."""
    problems: list[Problem] = []
    cert_data, why = _read(cert_path)
    if cert_data is None:
        problems.append(((*loc, "cert"), why, cert_path))
    key_data, why = _read(key_path)
    if key_data is None:
        problems.append(((*loc, "key"), why, key_path))
    if cert_data is not None:
        try:
            certs = load_certificates(cert_data)
        except ValueError:
            problems.append(((*loc, "cert"), f"{cert_path} holds no PEM certificate", cert_path))
            cert_data = None
        else:
            expired = _validity_problem(certs[0], datetime.datetime.now(datetime.UTC))
            if expired:
                problems.append(((*loc, "cert"), f"{expired} ({cert_path})", cert_path))
    if cert_data is None or key_data is None:
        return problems
    if b"ENCRYPTED" in key_data:
        return [*problems, ((*loc, "key"), f"{key_path} is passphrase-protected; give the key unencrypted",
                            key_path)]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_passphrase)
    except ssl.SSLError as err:
        if "KEY_VALUES_MISMATCH" in str(err) or "key values mismatch" in str(err):
            problems.append(((*loc, "key"), f"{key_path} does not match the certificate in {cert_path}", key_path))
        else:
            problems.append(((*loc, "key"), f"{key_path} holds no usable PEM private key ({err.reason or err})",
                             key_path))
    except OSError as err:  # the file went away meanwhile
        problems.append(((*loc, "cert"), f"cannot load {cert_path}: {err.strerror or err}", cert_path))
    return problems


def check_ca(path: str, loc: tuple[str | int, ...]) -> list[Problem]:
    """What is wrong with a file of trusted CA certificates."""
    data, why = _read(path)
    if data is None:
        return [(loc, why, path)]
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        return [(loc, f"{path} holds no PEM CA certificate", path)]
    return []


# ---------------------------------------------------------------- listener TLS


class Certificate(BaseModel):
    """A certificate (chain) and its private key, both PEM files."""

    model_config = MODEL

    cert: str
    key: str


class ServerTLS(BaseModel):
    """TLS on a listener: ``{cert, key}`` for one certificate, or ``certificates: [{cert, key}, ...]``.

    With several, a client's SNI name picks the certificate whose names (subjectAltName, else the
    common name; ``*.example.com`` covers one label) hold it; the first is served to any other name
    and to clients that send none. Both forms may be combined: ``cert``/``key`` is then the first.
    """

    model_config = MODEL

    cert: str | None = None
    key: str | None = None
    certificates: tuple[Certificate, ...] = ()

    def pairs(self) -> list[Certificate]:
        """Every certificate served, the default first."""
        first = [Certificate(cert=self.cert, key=self.key)] if self.cert is not None and self.key is not None else []
        return [*first, *self.certificates]

    @model_validator(mode="wrap")
    @classmethod
    def _check_files(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> ServerTLS:
        return _with_file_checks(cls, data, handler, _server_files)  # type: ignore[return-value]


def _server_files(data: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    cert, key, listed = data.get("cert"), data.get("key"), data.get("certificates") or ()
    if (cert is None) != (key is None):
        missing = "key" if key is None else "cert"
        problems.append(((missing,), "missing: cert and key go together", None))
    elif isinstance(cert, str) and isinstance(key, str):
        problems += check_pair(cert, key)
    elif cert is None and not listed:
        problems.append(((), "give cert and key (or certificates: [{cert, key}, ...])", None))
    if isinstance(listed, list | tuple):
        for i, pair in enumerate(listed):
            values = _fields(pair)
            if isinstance(values.get("cert"), str) and isinstance(values.get("key"), str):
                problems += check_pair(values["cert"], values["key"], ("certificates", i))
    return problems


def _fields(data: object) -> Mapping[str, Any]:
    """A model's fields or raw input as a mapping (nothing for anything else)."""
    if isinstance(data, BaseModel):
        return dict(data)
    return data if isinstance(data, Mapping) else {}


def _with_file_checks(
    model: type[BaseModel],
    data: Any,
    handler: ValidatorFunctionWrapHandler,
    files: Callable[[Mapping[str, Any]], list[Problem]],
) -> BaseModel:
    """Validate ``data``, and check the files it names even when other keys are wrong: every problem at once."""
    try:
        result: BaseModel = handler(data)
    except ValidationError as err:
        own: list[Problem] = [(tuple(e["loc"]), humanize(e, model), e.get("input")) for e in err.errors()]
        _fail(own + files(_fields(data)))
        raise
    _fail(files(_fields(result)))
    return result


class RedirectToHttps(BaseModel):
    """A listener that answers every request with a redirect to the same host, path and query over https."""

    model_config = MODEL

    port: int = 443  # the https port in the Location (left out when 443)
    status: int = 308  # 308 keeps the method and body (a POST stays a POST); 301 is the older, common one

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data is True:
            return {}
        if isinstance(data, int) and not isinstance(data, bool):
            return {"port": data}
        return data

    @field_validator("port")
    @classmethod
    def _check_port(cls, port: int) -> int:
        if not 1 <= port <= 65535:
            raise ValueError(f"must be between 1 and 65535, got {port}")
        return port

    @field_validator("status")
    @classmethod
    def _check_status(cls, status: int) -> int:
        if status not in (301, 302, 307, 308):
            raise ValueError(f"must be 301, 302, 307 or 308, got {status}")
        return status


# ---------------------------------------------------------------- TLS to upstream servers


class UpstreamTLS(BaseModel):
    """How a group talks TLS to its ``https://`` servers.

    Certificates are verified by default, against the system's CA store or only against ``ca``
    when given, for ``server_name`` (default: the server URL's host; also sent as SNI).
    ``insecure_skip_verify: true`` turns verification off. ``cert``/``key`` is a client
    certificate for servers that require one (mutual TLS).
    """

    model_config = MODEL

    ca: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    cert: str | None = None
    key: str | None = None

    @field_validator("server_name")
    @classmethod
    def _check_server_name(cls, name: str | None) -> str | None:
        if name is not None and not HOSTNAME.fullmatch(name):
            raise ValueError(f"must be a host name, got {short_repr(name)}")
        return name

    @model_validator(mode="wrap")
    @classmethod
    def _check_files(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> UpstreamTLS:
        return _with_file_checks(cls, data, handler, _upstream_files)  # type: ignore[return-value]


def _upstream_files(data: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    ca, cert, key = data.get("ca"), data.get("cert"), data.get("key")
    if isinstance(ca, str):
        if data.get("insecure_skip_verify") is True:
            problems.append((("ca",), "is not used with insecure_skip_verify: true (nothing is verified); "
                             "remove one of them", ca))
        else:
            problems += check_ca(ca, ("ca",))
    if (cert is None) != (key is None):
        missing = "key" if key is None else "cert"
        problems.append(((missing,), "missing: a client certificate needs both cert and key", None))
    elif isinstance(cert, str) and isinstance(key, str):
        problems += check_pair(cert, key)
    return problems
