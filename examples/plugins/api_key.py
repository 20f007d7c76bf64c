"""A Fulcrum plugin: API keys checked at the edge.

Requests must carry a known key in a header (``X-API-Key`` unless ``header`` says otherwise). The key
itself is not sent upstream; the upstream gets ``X-Client: <name>`` instead, and so does the client's
response, with how long the upstream took to answer.

Use it in a route::

    middleware:
      - plugin: "api_key:factory"          # examples/plugins on PYTHONPATH
        options:
          header: X-API-Key
          keys: {"k-123": "billing", "k-456": "reports"}
"""

from __future__ import annotations

import time
from typing import Any

from fulcrum.middleware import CallNext, Request, Response


def factory(options: dict[str, Any]) -> Any:
    """Called once per config load with the route's ``options``; returns the middleware."""
    keys = options.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise ValueError("options.keys must map API keys to client names")
    header = str(options.get("header", "X-API-Key"))
    clients = {str(k): str(v) for k, v in keys.items()}

    async def api_key(req: Request, call_next: CallNext) -> Response:
        client = clients.get(req.headers.get(header, ""))
        if client is None:
            return Response(401, "missing or unknown API key\n", {"Content-Type": "text/plain"})
        del req.headers[header]
        req.headers["X-Client"] = client
        started = time.perf_counter()
        resp = await call_next(req)
        resp.headers["X-Client"] = client
        resp.headers["X-Upstream-Time-Ms"] = f"{(time.perf_counter() - started) * 1000:.1f}"
        return resp

    return api_key
