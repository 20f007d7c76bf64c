"""Fulcrum's configuration: the schema, loading YAML/JSON files, ``${VAR}`` interpolation and error reporting."""

from fulcrum.config.describe import describe
from fulcrum.config.errors import ConfigError, ConfigIssue
from fulcrum.config.loader import load_config, parse_config, seed_to_config
from fulcrum.config.schema import (
    Config,
    Forwarding,
    HealthCheck,
    Http2,
    Limits,
    Listen,
    Match,
    Pool,
    ProxyListen,
    Route,
    ServerSpec,
    Sticky,
    Timeouts,
    Upstream,
)
from fulcrum.config.units import StatusRanges, format_duration, format_size, parse_duration, parse_size

__all__ = [
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Forwarding",
    "HealthCheck",
    "Http2",
    "Limits",
    "Listen",
    "Match",
    "Pool",
    "ProxyListen",
    "Route",
    "ServerSpec",
    "StatusRanges",
    "Sticky",
    "Timeouts",
    "Upstream",
    "describe",
    "format_duration",
    "format_size",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "seed_to_config",
]
