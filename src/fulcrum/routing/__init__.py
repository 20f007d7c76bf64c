"""Route table: a request's host and path to the route that serves it."""

from fulcrum.routing.table import Route, RouteTable, target_path

__all__ = ["Route", "RouteTable", "target_path"]
