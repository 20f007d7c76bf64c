"""Middleware: the onion chain built once per route, the built-ins, and the API plugins are written against."""

from fulcrum.middleware.api import CallNext, Headers, Middleware, Request, Response

__all__ = ["CallNext", "Headers", "Middleware", "Request", "Response"]
