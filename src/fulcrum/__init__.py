"""Fulcrum: a load balancer, reverse proxy and API gateway in Python."""

__version__ = "0.1.0"
