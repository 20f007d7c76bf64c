"""A route's middleware, composed once per snapshot.

Two ways to run the same onion:

- **Hooks** (every middleware a built-in): each built-in has a request hook (may answer at once) and a
  response hook; the exchange calls ``on_request`` before it forwards and ``on_response`` on the upstream's
  head, in the exchange's own callbacks, with no task and no await. A middleware that answers sees its
  own answer untouched; the ones outside it get their response hooks, as in an onion.
- **Async** (a plugin, or a built-in that must await, is present): ``run(req, innermost)`` awaits
  ``mw(req, call_next)`` from the outside in; the innermost ``call_next`` is the exchange forwarding
  the request. Built-ins take part through their ``__call__``, which runs their hooks.

Response-side work of the route itself (``response_headers``) happens before any middleware sees the
response, and the route's request-side rewrites after the innermost middleware: the route is the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fulcrum.middleware.api import CallNext, Middleware, Request, Response


class Builtin:
    """Base of the built-in middleware: hooks, and an async ``__call__`` made of them."""

    name = "builtin"
    has_request = False
    has_response = False
    has_log = False
    needs_async = False

    def on_request(self, req: Request) -> Response | None:
        return None

    def on_response(self, req: Request, resp: Response) -> None:
        return None

    def on_log(self, record: Any) -> None:
        return None

    async def __call__(self, req: Request, call_next: CallNext) -> Response:
        if self.has_request:
            answer = self.on_request(req)
            if answer is not None:
                return answer
        resp = await call_next(req)
        if self.has_response:
            self.on_response(req, resp)
        return resp

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        return None


class _Next:
    """``call_next`` for the middleware at ``index``: calls the next one, or the innermost step."""

    __slots__ = ("chain", "index", "innermost")

    def __init__(self, chain: Chain, index: int, innermost: CallNext) -> None:
        self.chain = chain
        self.index = index
        self.innermost = innermost

    async def __call__(self, req: Request) -> Response:
        items = self.chain.items
        i = self.index
        if i >= len(items):
            return await self.innermost(req)
        resp = await items[i](req, _Next(self.chain, i + 1, self.innermost))
        if not isinstance(resp, Response):
            raise TypeError(f"middleware {self.chain.names[i]} returned {type(resp).__name__}, not a Response")
        return resp


class Chain:
    """The middleware of one route, in config order (outermost first)."""

    __slots__ = ("builtins", "items", "loggers", "names", "request_hooks", "response_hooks", "sync")

    def __init__(self, items: Sequence[Middleware], names: Sequence[str]) -> None:
        self.items: tuple[Middleware, ...] = tuple(items)
        self.names = tuple(names)
        self.builtins = tuple(mw for mw in items if isinstance(mw, Builtin))
        self.sync = len(self.builtins) == len(self.items) and not any(b.needs_async for b in self.builtins)
        self.request_hooks = tuple(i for i, b in enumerate(self.builtins) if b.has_request)
        self.response_hooks = tuple(b for b in reversed(self.builtins) if b.has_response)
        self.loggers = tuple(b for b in self.builtins if b.has_log)

    def on_request(self, req: Request) -> Response | None:
        """Hooks mode: the request hooks in order; an answer gets the response hooks of those outside it."""
        builtins = self.builtins
        for i in self.request_hooks:
            answer = builtins[i].on_request(req)
            if answer is not None:
                for outer in reversed(builtins[:i]):
                    if outer.has_response:
                        outer.on_response(req, answer)
                return answer
        return None

    def on_response(self, req: Request, resp: Response) -> None:
        """Hooks mode: the response hooks, innermost first (on the upstream's response, or on one Fulcrum made
        after the request hooks passed: 404, 502, 503, 504, an answer route)."""
        for mw in self.response_hooks:
            mw.on_response(req, resp)

    def log(self, record: Any) -> None:
        for mw in self.loggers:
            mw.on_log(record)

    async def run(self, req: Request, innermost: CallNext) -> Response:
        """Async mode: the whole onion around ``innermost``."""
        return await _Next(self, 0, innermost)(req)

    def describe(self) -> list[str]:
        return list(self.names)

    def close(self) -> None:
        for mw in self.builtins:
            mw.close()
