"""A compiled module whose source changed after the build is reported, and the CLI warns about it."""

from __future__ import annotations

import os
from pathlib import Path

from fulcrum.build import stale_compiled_modules


def test_stale_compiled_module_is_reported(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    built = tmp_path / "sub" / "mod.cpython-311-x86_64-linux-gnu.so"
    source = tmp_path / "sub" / "mod.py"
    lone = tmp_path / "_group__mypyc.cpython-311-x86_64-linux-gnu.so"  # no source beside it: never stale
    for path in (built, source, lone):
        path.write_bytes(b"")
    os.utime(built, (1_000, 1_000))
    os.utime(source, (2_000, 2_000))
    assert stale_compiled_modules(tmp_path) == [(built, source)]
    os.utime(built, (3_000, 3_000))
    assert stale_compiled_modules(tmp_path) == []
