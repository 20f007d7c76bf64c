"""fulcrum.health: active health checks (``active``) and the response parser they use (``response``)."""
