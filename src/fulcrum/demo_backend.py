"""The demo upstream behind ``fulcrum demo``: a tiny HTTP/1.1 server that says who it is.

    GET /            200 {"server": "demo-1", "path": "/", "time": "2025-01-01T12:00:00.000+00:00"}
    GET /health      200 {"status": "ok", "server": "demo-1"}
    GET /slow?ms=N   waits N ms (at most 10 s), then answers like /
    GET /status/NNN  answers with that status (200-599)

Any other path is answered like ``/``. Connections stay open between requests (HTTP/1.1 keep-alive) unless the
client sends ``Connection: close`` or speaks HTTP/1.0. Request bodies are read and ignored.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

MAX_SLOW_MS = 10_000
MAX_HEAD = 64 * 1024


class BadRequest(Exception):
    """The client sent something this small server does not understand."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless the client asks to close; HTTP/1.0 always closes here."""
        return self.version != "HTTP/1.0" and "close" not in self.headers.get("connection", "").lower()


async def serve_demo_backend(host: str, port: int, name: str) -> asyncio.Server:
    """Start a demo server named ``name`` on ``host:port`` (port 0 picks a free one) and return it."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, name)

    return await asyncio.start_server(on_connection, host, port, limit=MAX_HEAD)


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
    """Answer requests on one connection, in order, until either side closes it."""
    try:
        while (request := await read_request(reader)) is not None:
            status, body = await answer(request, name)
            writer.write(render(status, body, name, request.keep_alive, head_only=request.method == "HEAD"))
            await writer.drain()
            if not request.keep_alive:
                break
    except BadRequest as err:
        writer.write(render(400, {"error": str(err), "server": name}, name, keep_alive=False))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away
    except asyncio.CancelledError:
        pass  # shutting down: this task only serves this connection, so ending it quietly is the same thing
    finally:
        writer.close()


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request head and skip its body; None when the client closed the connection cleanly."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as err:
        if err.partial.strip():
            raise BadRequest("connection closed in the middle of a request") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    try:
        method, target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest(f"malformed request line: {request_line!r}") from None
    headers = {}
    for line in header_lines:
        field, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(f"malformed header line: {line!r}")
        headers[field.strip().lower()] = value.strip()
    await skip_body(reader, headers)
    return Request(method, target, version, headers)


async def skip_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    """Read and drop a request body, framed by Transfer-Encoding: chunked or Content-Length."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                raise BadRequest("bad chunk size") from None
            if size == 0:
                break
            await reader.readexactly(size + 2)  # the chunk and its CRLF
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailer fields
    elif length := headers.get("content-length"):
        if not length.isdigit():
            raise BadRequest("bad Content-Length")
        await reader.readexactly(int(length))


async def answer(request: Request, name: str) -> tuple[int, dict[str, object]]:
    """The status and JSON body for a request."""
    url = urlsplit(request.target)
    query = parse_qs(url.query)
    if url.path == "/health":
        return 200, {"status": "ok", "server": name}
    if url.path.startswith("/status/"):
        code = url.path.removeprefix("/status/")
        if not code.isdigit() or not 200 <= int(code) <= 599:
            return 400, {"error": "use /status/NNN with NNN from 200 to 599", "server": name}
        return int(code), {"server": name, "status": int(code)}
    if url.path == "/slow":
        ms = query.get("ms", ["1000"])[0]
        if not ms.isdigit():
            return 400, {"error": "use /slow?ms=N", "server": name}
        await asyncio.sleep(min(int(ms), MAX_SLOW_MS) / 1000)
    return 200, {"server": name, "path": request.target, "time": datetime.now(UTC).isoformat(timespec="milliseconds")}


def render(status: int, body: dict[str, object], name: str, keep_alive: bool, head_only: bool = False) -> bytes:
    """A complete response: status line, headers and (unless it must have none) a JSON body."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    has_body = status not in (204, 304)
    data = (json.dumps(body) + "\n").encode() if has_body else b""
    lines = [f"HTTP/1.1 {status} {reason}", f"X-Demo-Server: {name}"]
    if has_body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + data
