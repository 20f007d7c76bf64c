"""Pieces both halves of the schema use: the model settings, name patterns and the network type."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import ConfigDict, PlainSerializer, PlainValidator

from fulcrum.config.units import short_repr

MODEL = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: header and cookie names, methods
HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")


def network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR network; host bits are allowed (``10.0.0.1/8`` means ``10.0.0.0/8``)."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            pass
    raise ValueError(f"must be an IP address or a CIDR network like 10.0.0.0/8, got {short_repr(value)}")


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, PlainValidator(network), PlainSerializer(str)]
