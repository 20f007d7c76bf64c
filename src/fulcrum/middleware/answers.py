"""The response of a route that Fulcrum answers itself (``respond`` / ``redirect``)."""

from __future__ import annotations

from fulcrum.middleware.api import Response
from fulcrum.routing.rewrite import redirect_location
from fulcrum.routing.route import Answer


def answer_response(answer: Answer, host: bytes, target: bytes) -> Response:
    """A fresh ``Response`` for one request (middleware may change it), the redirect's Location filled in."""
    if answer.location is not None:
        location = redirect_location(answer, host, target)
        return Response(answer.status, b"", [("Location", location.decode("latin-1"))])
    headers = []
    for line in answer.headers:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return Response(answer.status, answer.body, headers)
