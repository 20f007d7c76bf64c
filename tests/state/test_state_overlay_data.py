"""The overlay of runtime changes as plain data and as the entries stored in Redis, read back by another instance."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulcrum.state.changes import Overlay
from fulcrum.state.redis import overlay_data, overlay_entries


def test_an_overlay_reads_back_from_its_data() -> None:
    overlay = Overlay()
    overlay.add("app", "http://10.0.0.5:8080", 3)
    overlay.add("api", "https://[::1]:8443", 1)
    overlay.set_weight(("app", "10.0.0.1:80"), 7)
    overlay.set_state(("app", "10.0.0.2:80"), "disabled")
    overlay.set_state(("api", "10.0.0.3:80"), "draining")
    overlay.remove(("app", "10.0.0.4:80"))
    overlay.remove(("app", "10.0.0.6:80"))
    overlay.finish_removal(("app", "10.0.0.6:80"))
    data = json.loads(json.dumps(overlay.describe()))  # as it travels
    again = Overlay.from_data(data)
    assert again == overlay
    assert again.describe() == overlay.describe()


def test_an_empty_overlay_and_missing_parts() -> None:
    assert Overlay.from_data({}) == Overlay()
    assert Overlay.from_data(Overlay().describe()) == Overlay()


@pytest.mark.parametrize("data", [
    {"added": [{"upstream": "app", "id": "h:1", "url": "http://h:1"}]},
    {"weights": [{"upstream": "app", "id": "h:1", "weight": 0}]},
    {"weights": [{"upstream": "app", "id": "h:1", "weight": True}]},
    {"states": [{"upstream": "app", "id": "h:1", "state": "asleep"}]},
    {"removed": [{"upstream": "app"}]},
    {"removing": "app"},
    {"added": [7]},
])
def test_data_that_is_not_an_overlay_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Overlay.from_data(data)


_KEYS = st.tuples(st.sampled_from(["app", "api"]), st.sampled_from(["10.0.0.1:80", "10.0.0.2:80", "[::1]:8080"]))
_OPS = st.one_of(
    st.tuples(st.just("add"), _KEYS, st.integers(1, 1000)),
    st.tuples(st.just("weight"), _KEYS, st.integers(1, 1000)),
    st.tuples(st.just("state"), _KEYS, st.sampled_from(["enabled", "disabled", "draining"])),
    st.tuples(st.just("remove"), _KEYS, st.just(0)),
    st.tuples(st.just("finish"), _KEYS, st.just(0)),
)


@given(st.lists(_OPS, max_size=30))
def test_any_sequence_of_changes_reads_back_the_same(ops: list[tuple[str, tuple[str, str], Any]]) -> None:
    overlay = Overlay()
    for op, key, value in ops:
        if op == "add":
            host = key[1]
            overlay.add(key[0], f"http://{host}", value)
        elif op == "weight":
            overlay.set_weight(key, value)
        elif op == "state":
            overlay.set_state(key, value)
        elif op == "remove":
            overlay.remove(key)
        elif key in overlay.removing:
            overlay.finish_removal(key)
    again = Overlay.from_data(json.loads(json.dumps(overlay.describe())))
    assert again == overlay


@given(st.lists(_OPS, max_size=30))
def test_the_stored_entries_read_back_as_the_same_overlay(ops: list[tuple[str, tuple[str, str], Any]]) -> None:
    overlay = Overlay()
    for op, key, value in ops:
        if op == "add":
            overlay.add(key[0], f"http://{key[1]}", value)
        elif op == "weight":
            overlay.set_weight(key, value)
        elif op == "state":
            overlay.set_state(key, value)
        elif op == "remove":
            overlay.remove(key)
        elif key in overlay.removing:
            overlay.finish_removal(key)
    stored = overlay_entries(overlay.describe())
    assert Overlay.from_data(overlay_data(stored)) == overlay
