"""Fixtures for gateway tests: an in-process proxy with routes and middleware, and plugin modules on disk."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write a module ``name`` with ``source`` into a directory on ``sys.path``; forgotten after the test."""
    names: list[str] = []
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def write(name: str, source: str) -> str:
        (folder / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        names.append(name)
        return str(folder)

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def curl() -> str:
    """The curl binary; tests that need it are skipped where it is not installed."""
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed")
    return path
