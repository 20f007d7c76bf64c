"""Process model: run the proxy, handle signals, stop gracefully."""

from fulcrum.supervisor.runner import run

__all__ = ["run"]
