"""A small client of the admin API for the command line (``fulcrum top``, ``fulcrum check --admin``).

Standard library only: the CLI needs no HTTP package at run time. Every failure is an ``AdminError``
whose text is one line for the user.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from typing import Any

#: Where the CLI takes the admin token from when ``--token`` is not given.
TOKEN_ENV = "FULCRUM_ADMIN_TOKEN"
TIMEOUT = 5.0

# An admin listener is usually on loopback; a proxy from the environment would only get in the way.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AdminError(Exception):
    """A failed admin API call; ``str()`` is one line for the user."""


class AdminAuthError(AdminError):
    """The admin API answered 401: the token is missing or wrong."""


def admin_base(url: str) -> str:
    """``127.0.0.1:9090`` or ``http://127.0.0.1:9090/`` as ``http://127.0.0.1:9090``."""
    text = url.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


def get_json(base: str, path: str, token: str | None, timeout: float = TIMEOUT) -> Any:
    """GET ``base + path`` with the bearer token (when given) and decode its JSON. Raises ``AdminError``."""
    url = base + path
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        if err.code == 401:
            if token:
                raise AdminAuthError(f"the admin API at {base} refused the token (HTTP 401): check --token or "
                                     f"${TOKEN_ENV}") from None
            raise AdminAuthError(f"the admin API at {base} needs a token (HTTP 401): pass --token or set "
                                 f"${TOKEN_ENV}") from None
        raise AdminError(f"GET {url} answered HTTP {err.code}{_error_text(err)}") from None
    except urllib.error.URLError as err:
        raise AdminError(f"cannot reach the admin API at {base}: {_why(err.reason, timeout)}") from None
    except (OSError, http.client.HTTPException) as err:  # a reset or timeout mid-answer, a non-HTTP peer
        raise AdminError(f"cannot read from the admin API at {base}: {_why(err, timeout)}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise AdminError(f"GET {url} did not answer JSON (is {base} Fulcrum's admin listener?)") from None


def _why(reason: object, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def _error_text(err: urllib.error.HTTPError) -> str:
    """``: <message>`` from the admin API's error shape ``{"error": ...}``, when the body has one."""
    try:
        message = json.loads(err.read()).get("error")
    except (ValueError, AttributeError, OSError):
        return ""
    return f": {message}" if isinstance(message, str) else ""
