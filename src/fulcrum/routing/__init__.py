"""Route table: a request's host, path, method, headers and query to the route that serves it."""

from fulcrum.routing.route import Answer, HeaderEdits, HeaderMatch, PathRewrite, Route
from fulcrum.routing.table import RouteTable, mismatch, target_path

__all__ = ["Answer", "HeaderEdits", "HeaderMatch", "PathRewrite", "Route", "RouteTable", "mismatch", "target_path"]
