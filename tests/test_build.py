"""The build under test compiled the per-request modules that setup.py lists (unless a pure build was asked for)."""

from __future__ import annotations

import importlib
import os
import re
from importlib.machinery import ExtensionFileLoader
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def compiled_modules() -> list[str]:
    """The module names in setup.py's COMPILED list."""
    return [path[4:-3].replace("/", ".") for path in re.findall(r'"(src/fulcrum/[\w/]+\.py)"', SETUP.read_text())]


def test_setup_lists_the_data_plane() -> None:
    names = compiled_modules()
    assert {"fulcrum.proxy.downstream", "fulcrum.proxy.exchange", "fulcrum.proxy.upstream"} <= set(names)


@pytest.mark.skipif(bool(os.environ.get("FULCRUM_PURE")), reason="a pure-Python build was asked for")
@pytest.mark.parametrize("name", compiled_modules())
def test_per_request_module_is_compiled(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(module.__loader__, ExtensionFileLoader), f"{name} runs as plain Python: mypyc did not build it"
