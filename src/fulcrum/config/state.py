"""The ``state`` part of the schema: where runtime changes and shared rate limits live.

``memory`` (the default) keeps them in this instance. ``redis`` keeps them in one Redis shared by
several instances (DESIGN 6): admin API changes made on any instance reach every other one, and
``rate_limit`` entries with ``shared: true`` count requests across all of them. The URL is checked
here, without any I/O: a Redis that is down at start is not a config error, only a log line.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from fulcrum.config.fields import MODEL
from fulcrum.config.messages import FULCRUM_ERROR
from fulcrum.config.units import short_repr

_SCHEMES = ("redis", "rediss", "unix")
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_redis_url(url: str) -> str:
    """``url`` when it is a Redis URL Fulcrum can use (``redis://``, ``rediss://`` or ``unix://``), else ValueError."""
    text = url.strip()
    example = 'e.g. "redis://127.0.0.1:6379/0"'
    if "://" not in text:
        raise ValueError(f"must be a Redis URL, {example}, got {short_repr(url)}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"is not a valid URL ({err}), got {short_repr(url)}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"must start with redis://, rediss:// or unix://, got {short_repr(url)}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"must name the socket's path, e.g. unix:///run/redis.sock, got {short_repr(url)}")
        return text
    if not parts.hostname:
        raise ValueError(f"must name a host, {example}, got {short_repr(url)}")
    if port == 0:
        raise ValueError(f"port must be 1-65535, got {short_repr(url)}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the path must be a database number (/0, /1, ...), got {short_repr(url)}")
    return text


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for logs and listings."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _problem(key: str, message: str, value: object) -> ValidationError:
    """A problem at ``state.<key>`` raised from the model's own validator (as ``schema.fail`` does)."""
    details: list[InitErrorDetails] = [
        {"type": PydanticCustomError(FULCRUM_ERROR, "{reason}", {"reason": message}), "loc": (key,), "input": value}]
    return ValidationError.from_exception_data("StateBackend", details)


class StateBackend(BaseModel):
    """``state: {backend: memory}`` or ``{backend: redis, url: "redis://host:6379/0", prefix: fulcrum}``.

    ``prefix`` starts every Redis key and channel name, so several Fulcrum clusters can share one
    Redis; instances that should see each other's changes use the same one.
    """

    model_config = MODEL

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None
    prefix: str = "fulcrum"

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        return None if url is None else check_redis_url(url)

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"must be 1-64 letters, digits, '_', '.', ':' or '-', got {short_repr(prefix)}")
        return prefix

    @model_validator(mode="after")
    def _url_with_redis(self) -> StateBackend:
        if self.backend == "redis" and self.url is None:
            raise _problem("url", 'is required with backend: redis, e.g. url: "redis://127.0.0.1:6379/0"', None)
        if self.backend == "memory" and self.url is not None:
            raise _problem("url", "is used only with backend: redis (add backend: redis, or remove url)", self.url)
        return self

    def describe(self) -> str:
        if self.backend == "memory" or self.url is None:
            return "memory"
        return f"redis {redact_url(self.url)} (prefix {self.prefix})"
