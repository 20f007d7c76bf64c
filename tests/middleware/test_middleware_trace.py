"""traceparent checking and making."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulcrum.middleware.policy.trace import new_traceparent, valid_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-00",
        f"00-{TRACE}-{PARENT}-ff",
        f"01-{TRACE}-{PARENT}-01",  # a later version is read as far as we understand it
        f"cc-{TRACE}-{PARENT}-09-what-the-future-holds",
        f"fe-{TRACE}-{PARENT}-01",
    ],
)
def test_valid(value: str) -> None:
    assert valid_traceparent(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"ff-{TRACE}-{PARENT}-01",  # ff is forbidden
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has nothing after the flags
        f"00-{TRACE}-{PARENT}-01 ",
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"0A-{TRACE}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}0-01",
        f"00-{TRACE}-{PARENT}-1",
        f"00-{TRACE}-{PARENT}-0g",
        f"00_{TRACE}_{PARENT}_01",
        f"01-{TRACE}-{PARENT}-01x",  # a later version still needs "-" after the flags
        f"00-{TRACE}-{PARENT}-01\n",
    ],
)
def test_invalid(value: str) -> None:
    assert not valid_traceparent(value)


def test_new_traceparent_is_valid_and_random() -> None:
    values = {new_traceparent() for _ in range(100)}
    assert len(values) == 100
    assert all(valid_traceparent(v) and v.startswith("00-") and v.endswith("-01") for v in values)
    assert len({v[3:35] for v in values}) == 100


def test_new_traceparent_continues_a_trace() -> None:
    value = new_traceparent(TRACE)
    assert value.startswith(f"00-{TRACE}-") and valid_traceparent(value)
    assert value[36:52] != new_traceparent(TRACE)[36:52]


@pytest.mark.parametrize("bad", ["", TRACE.upper(), TRACE[:-1], TRACE + "0", "0" * 32, "z" * 32])
def test_new_traceparent_replaces_a_bad_trace_id(bad: str) -> None:
    value = new_traceparent(bad)
    assert valid_traceparent(value)
    assert value[3:35] != bad


@given(st.text(max_size=80))
def test_any_text_is_judged_without_error(value: str) -> None:
    if valid_traceparent(value):
        assert len(value) >= 55 and value[2] == "-" and value[35] == "-" and value[52] == "-"
