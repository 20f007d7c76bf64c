"""Process model: run the proxy (one process, or a main process and its workers), handle signals, stop gracefully.

``run`` is imported on first use: a worker process (``fulcrum.supervisor.worker``) loads this package
too, and needs none of the admin API that the runner brings in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fulcrum.supervisor.runner import run

__all__ = ["run"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from fulcrum.supervisor.runner import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
