"""Fixtures of the control-plane tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.admin.harness import RunningInstance, write_config


@pytest.fixture
def make_instance(tmp_path: Path) -> Iterator[Callable[..., RunningInstance]]:
    """Start instances from config dicts (written to a file, so reload can read it); stopped after the test."""
    started: list[RunningInstance] = []

    def make(config: dict[str, Any], name: str = "fulcrum.json") -> RunningInstance:
        inst = RunningInstance(write_config(tmp_path / name, config)).start()
        started.append(inst)
        return inst

    yield make
    for inst in started:
        inst.stop()
