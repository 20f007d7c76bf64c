"""Durations, sizes and status-code ranges as written in config files.

Pure functions: each parser raises ``ValueError`` whose text is a complete
phrase ("must be a duration like 2s or 500ms, got 'fast'"), so the schema can
report it under the key that held the value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(us|µs|ms|s|m|h|d)", re.IGNORECASE)
_DURATION = re.compile(rf"(?:{_NUMBER}\s*(?:us|µs|ms|s|m|h|d)\s*)+", re.IGNORECASE)
_BARE_NUMBER = re.compile(_NUMBER)

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(rf"({_NUMBER})\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def short_repr(value: object, limit: int = 60) -> str:
    """``repr`` of a config value, cut short so one error stays one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"2s"``, ``"500ms"``, ``"1m30s"``, ``"250us"`` or a bare number of seconds."""
    problem = f"must be a duration like 2s or 500ms, got {short_repr(value)}"
    if isinstance(value, bool):
        raise ValueError(problem)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _BARE_NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(problem)
    else:
        raise ValueError(problem)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(problem)
    return seconds


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def format_duration(seconds: float) -> str:
    """The shortest usual spelling, to the microsecond: 2s, 500ms, 1m30s, 250us."""
    if seconds == 0:
        return "0s"
    if seconds < 1e-3:
        return f"{_number(seconds * 1e6, 3)}us"
    if seconds < 1:
        return f"{_number(seconds * 1e3, 3)}ms"
    if seconds < 60 or seconds != int(seconds):
        return f"{_number(seconds, 6)}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)


def parse_size(value: str | int) -> int:
    """Bytes from ``"16k"``, ``"100m"``, ``"1g"``, ``"512b"`` (1024-based, any case) or a bare int."""
    problem = f"must be a size like 16k or 1m, got {short_repr(value)}"
    if isinstance(value, bool):
        raise ValueError(problem)
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(problem)
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    else:
        raise ValueError(problem)
    if size < 0:
        raise ValueError(problem)
    return size


def format_size(size: int) -> str:
    """``32768`` as ``32k``; sizes that are not a whole number of units stay in bytes."""
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


@dataclass(frozen=True, slots=True)
class StatusRanges:
    """Accepted HTTP status codes: ``"200"``, ``"200-399"``, ``"200,204,300-399"`` or ``"2xx"``.

    ``text`` keeps what the user wrote, for display.
    """

    text: str
    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, value: str | int) -> StatusRanges:
        problem = f'must be status codes like "200", "200-399" or "200,204", got {short_repr(value)}'
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(problem)
        text = str(value).strip()
        ranges: list[tuple[int, int]] = []
        for part in text.split(","):
            part = part.strip().lower()
            if re.fullmatch(r"[1-5]xx", part):
                low = int(part[0]) * 100
                ranges.append((low, low + 99))
                continue
            bounds = re.fullmatch(r"(\d{3})(?:\s*-\s*(\d{3}))?", part)
            if bounds is None:
                raise ValueError(problem)
            low = int(bounds.group(1))
            high = int(bounds.group(2) or low)
            if not 100 <= low <= high <= 599:
                raise ValueError(f"{problem} (codes run from 100 to 599, low to high)")
            ranges.append((low, high))
        return cls(text, tuple(ranges))

    def matches(self, code: int) -> bool:
        """Whether ``code`` is one of the accepted statuses."""
        return any(low <= code <= high for low, high in self.ranges)

    def __str__(self) -> str:
        return self.text

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def validate(value: Any) -> StatusRanges:
            return value if isinstance(value, StatusRanges) else cls.parse(value)

        return core_schema.no_info_plain_validator_function(
            validate, serialization=core_schema.plain_serializer_function_ser_schema(str)
        )


_RATE_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}
_RATE = re.compile(rf"({_NUMBER})\s*/\s*([a-z]+)", re.IGNORECASE)


def parse_rate(value: object) -> float:
    """Tokens per second from ``"100/s"``, ``"10/m"``, ``"10/min"``, ``"600/h"``, ``"5/hour"`` or ``"1/day"``."""
    problem = f"must be a rate like 100/s, 10/min or 600/h (more than zero), got {short_repr(value)}"
    if not isinstance(value, str):
        raise ValueError(problem)
    match = _RATE.fullmatch(value.strip())
    if match is None:
        raise ValueError(problem)
    per = _RATE_UNITS.get(match.group(2).lower())
    if per is None:
        raise ValueError(problem)
    rate = float(match.group(1)) / per
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(problem)
    return rate
