"""What the installed build is: which modules run compiled (mypyc, see setup.py) and whether any is stale."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def stale_compiled_modules(package: Path = PACKAGE) -> list[tuple[Path, Path]]:
    """(compiled module, its source) pairs whose source changed after the build.

    Python imports a compiled module in preference to the ``.py`` beside it, so
    in a source checkout an edit takes effect only once the build runs again.
    """
    stale = []
    for built in sorted(package.rglob("*.so")):
        source = built.with_name(built.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            stale.append((built, source))
    return stale
