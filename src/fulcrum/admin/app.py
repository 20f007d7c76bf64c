"""The admin API (DESIGN 4, "Admin API") as a FastAPI application over a control plane.

Routing, validation and the OpenAPI document come from FastAPI; what each endpoint answers is
built by ``views``, ``explain`` and ``metrics`` from the running snapshot. Errors have one shape:
``{"error": "what is wrong", "field": "the field it is about, or null"}``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client.core import Metric
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fulcrum import __version__
from fulcrum.admin.explain import ExplainError, explain
from fulcrum.admin.metrics import CONTENT_TYPE, Counters, FulcrumCollector, metrics_text
from fulcrum.admin.views import Stats, group_view, server_view, status_view, upstreams_view
from fulcrum.state.changes import ChangeError, State
from fulcrum.state.server import Server
from fulcrum.state.snapshot import Snapshot
from fulcrum.state.tcp import TcpGroup

STATIC = Path(__file__).parent / "static"
#: Paths anyone may GET: they hold no data (the dashboard's shell asks for the token itself).
PUBLIC_PATHS = frozenset(("/healthz", "/", "/index.html"))

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class Plane(Protocol):
    """What the admin API needs of the control plane (``fulcrum.supervisor.control.Control``)."""

    started: float

    @property
    def snapshot(self) -> Snapshot: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def tcp_groups(self) -> Mapping[str, TcpGroup]: ...

    def server_state(self, group: str, server: Server) -> State: ...
    def discovered_ids(self, group: str) -> frozenset[str]: ...
    def find(self, group: str, sid: str) -> Server: ...
    def running_config(self) -> dict[str, Any]: ...
    def changes(self) -> dict[str, Any]: ...
    async def add_server(self, group: str, url: str, weight: int) -> Server: ...
    async def update_server(self, group: str, sid: str, weight: int | None, state: State | None) -> Server: ...
    async def remove_server(self, group: str, sid: str) -> Server: ...
    async def reload(self) -> list[str]: ...


class Workers(Protocol):
    """Worker processes' own figures, when there are several (``fulcrum.supervisor.workers.WorkerSet``)."""

    count: int

    def view(self) -> list[dict[str, Any]]: ...
    def memory_bytes(self) -> int: ...
    def collect(self) -> Iterator[Metric]: ...


# -- bodies and answers ---------------------------------------------------------------


class NewServer(BaseModel):
    """A server to add to a group."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="http://host:port or https://host:port")
    weight: int = Field(1, ge=1, le=1000)


class ServerChange(BaseModel):
    """A new weight or state for a server (at least one of the two)."""

    model_config = ConfigDict(extra="forbid")
    weight: int | None = Field(None, ge=1, le=1000)
    state: Literal["enabled", "disabled", "draining"] | None = None

    @model_validator(mode="after")
    def _something(self) -> ServerChange:
        if self.weight is None and self.state is None:
            raise ValueError("give weight or state")
        return self


class ServerOut(BaseModel):
    id: str
    url: str
    weight: int
    state: Literal["enabled", "disabled", "draining"]
    discovered: bool = Field(False, description="found by DNS discovery (the group's servers_from)")
    healthy: bool
    eligible: bool
    down: list[str] = Field(description="why it is not eligible: active_check, passive, breaker, draining, disabled")
    active: int
    requests: int = Field(description="attempts sent to this server (a retried request counts once per server)")
    errors: int = Field(description="attempts that failed (connect error, reset, timeout, broken response) "
                                    "or were answered with a 5xx")
    recent_requests: int = Field(description="requests that ended in the last minute")
    p50_ms: float | None = Field(description="median response time over the last minute (null: no requests)")
    p99_ms: float | None = Field(description="99th percentile response time over the last minute")
    bytes_per_s: float = Field(description="response bytes sent to clients per second over the last minute")
    new_connection_share: float | None = Field(
        description="share of the last minute's requests that opened a new upstream connection (0: all reused)")


class GroupOut(BaseModel):
    name: str
    balance: str
    servers_from: str | None = Field(None, description="where DNS discovery finds the servers (null: listed)")
    servers: list[ServerOut]


class UpstreamsOut(BaseModel):
    upstreams: list[GroupOut]


class TcpServerOut(BaseModel):
    id: str
    weight: int
    healthy: bool
    eligible: bool
    down: list[str] = Field(description="why it takes no new connections: active_check")
    active: int = Field(description="connections open (or being opened) through this server")
    connections: int = Field(description="connections established to this server")
    connect_failures: int = Field(description="connects refused or timed out")
    bytes_to_server: int
    bytes_to_client: int


class TcpServiceOut(BaseModel):
    name: str
    listen: str
    balance: str
    connections_active: int = Field(description="open client connections")
    connections_total: int = Field(description="client connections accepted")
    unserved: int = Field(description="client connections closed because no server could be connected")
    servers: list[TcpServerOut]


class WorkerOut(BaseModel):
    worker: int = Field(description="the worker's slot, 0 to workers - 1 (a replacement takes its slot)")
    pid: int | None
    up: bool
    restarts: int = Field(description="times this slot's process was replaced after it exited unasked")
    uptime_s: float
    requests_total: int = Field(description="requests its current process served")
    responses_5xx: int
    connections_active: int
    connections_total: int
    health_checks: int = Field(description="active health checkers it runs (0: the main process checks)")
    memory_bytes: int = Field(description="its resident memory")
    config_generation: int = Field(description="which config it serves: 1 at start, one more for each config "
                                               "the main process put in force (reloads, admin API changes)")
    down: dict[str, list[str]] = Field(description="servers it sends nothing to, as group/server: reasons")


class StatusOut(BaseModel):
    version: str
    uptime_s: float
    requests_total: int
    success_rate: float
    responses_5xx: int
    retries_total: int
    connections_active: int
    connections_total: int
    tunnels_active: int
    tunnels_total: int
    memory_bytes: int
    workers: int
    upstreams: list[GroupOut]
    tcp_services: list[TcpServiceOut] = []
    worker_processes: list[WorkerOut] = Field([], description="each worker's figures (empty with workers: 1)")


class ErrorOut(BaseModel):
    error: str
    field: str | None = None
    errors: list[str] | None = None


class ReloadOut(BaseModel):
    status: Literal["reloaded"]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut},
}


def error(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


# -- auth -----------------------------------------------------------------------------


class BearerAuth:
    """Every path but the public ones needs ``Authorization: Bearer <token>``, compared in constant time."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PATCH", "PUT"):
            scope = _as_json(scope)
        if self.token is None or scope["type"] != "http" or _public(scope):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token):
            await self.app(scope, receive, send)
            return
        why = "a bearer token is required" if not given else "the bearer token is wrong"
        response = JSONResponse({"error": f"unauthorized: {why} (Authorization: Bearer <admin.token>)",
                                 "field": None}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="fulcrum admin"'})
        await response(scope, receive, send)


def _as_json(scope: Scope) -> Scope:
    """The API speaks only JSON: a body is read as JSON whatever its Content-Type (``curl -d`` sends a form's)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    headers.append((b"content-type", b"application/json"))
    return {**scope, "headers": headers}


def _public(scope: Scope) -> bool:
    if scope["method"] not in ("GET", "HEAD"):
        return False
    path: str = scope["path"]
    return path in PUBLIC_PATHS or path.startswith("/static/")


# -- the application --------------------------------------------------------------------


def make_app(plane: Plane, token: str | None, workers: Workers | None = None) -> Any:
    """The admin ASGI application for ``plane``; ``token`` None means no auth (a loopback listener).

    ``workers``: the worker processes, when there are several (their figures join status and metrics).
    """
    app = FastAPI(title="Fulcrum admin API", version=__version__, openapi_url="/api/v1/openapi.json",
                  docs_url=None, redoc_url=None)
    collector = FulcrumCollector(lambda: plane.snapshot, lambda: plane.stats, lambda: plane.counters,
                                 lambda: plane.tcp_groups, workers.collect if workers is not None else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return error(400, f"malformed JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", "body")
        field = ".".join(loc) or None
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            message = "unknown field"
        elif first.get("type") == "missing":
            message = "is required"
        return error(400, f"{field}: {message}" if field else message, field)

    @app.exception_handler(ChangeError)
    async def _refused(request: Request, exc: ChangeError) -> JSONResponse:
        return error(exc.status, exc.message, exc.field)

    def state_of(group: str, server: Server) -> State:
        return plane.server_state(group, server)

    def one_server(group: str, server: Server) -> dict[str, Any]:
        return server_view(server, plane.server_state(group, server), server.id in plane.discovered_ids(group))

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="200 while the process serves (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus text format", response_class=Response)
    async def metrics() -> Response:
        return Response(metrics_text(collector), media_type=CONTENT_TYPE)

    @app.get("/api/v1/status", response_model=StatusOut, responses=ERRORS)
    async def status() -> dict[str, Any]:
        if workers is None:
            return status_view(plane.snapshot, plane.stats, plane.started, state_of, tcp=plane.tcp_groups,
                               discovered_of=plane.discovered_ids)
        view = status_view(plane.snapshot, plane.stats, plane.started, state_of, workers.count, plane.tcp_groups,
                           discovered_of=plane.discovered_ids)
        view["worker_processes"] = workers.view()
        view["memory_bytes"] += workers.memory_bytes()  # the main process's and every worker's
        return view

    @app.get("/api/v1/upstreams", response_model=UpstreamsOut, responses=ERRORS)
    async def upstreams() -> dict[str, Any]:
        return {"upstreams": upstreams_view(plane.snapshot, state_of, plane.discovered_ids)}

    @app.get("/api/v1/upstreams/{group}", response_model=GroupOut, responses=ERRORS)
    async def upstream(group: str) -> Any:
        g = plane.snapshot.groups.get(group)
        if g is None:
            return error(404, f"no upstream group {group!r}", "group")
        return group_view(g, state_of, plane.discovered_ids)

    @app.post("/api/v1/upstreams/{group}/servers", status_code=201, response_model=ServerOut, responses=ERRORS)
    async def add_server(group: str, body: NewServer) -> dict[str, Any]:
        server = await plane.add_server(group, body.url, body.weight)
        return one_server(group, server)

    @app.patch("/api/v1/upstreams/{group}/servers/{server_id}", response_model=ServerOut, responses=ERRORS)
    async def change_server(group: str, server_id: str, body: ServerChange) -> dict[str, Any]:
        server = await plane.update_server(group, server_id, body.weight, body.state)
        return one_server(group, server)

    @app.delete("/api/v1/upstreams/{group}/servers/{server_id}", status_code=202, response_model=ServerOut,
                responses=ERRORS, summary="drain the server now; it is removed when its requests in flight end")
    async def remove_server(group: str, server_id: str) -> dict[str, Any]:
        server = await plane.remove_server(group, server_id)
        return one_server(group, server)

    @app.post("/api/v1/reload", response_model=ReloadOut, responses=ERRORS,
              summary="read the config file again; a bad file changes nothing and answers 400 with every error")
    async def reload() -> Any:
        errors = await plane.reload()
        if errors:
            return error(400, f"the config was refused ({len(errors)} error(s)); the running config stays",
                         None, errors=errors)
        return {"status": "reloaded"}

    @app.get("/api/v1/config", responses=ERRORS, summary="the running config file's content (admin token left out)")
    async def running_config() -> dict[str, Any]:
        return plane.running_config()

    @app.get("/api/v1/changes", responses=ERRORS, summary="runtime changes kept over the config file")
    async def changes() -> dict[str, Any]:
        return plane.changes()

    @app.get("/api/v1/explain", responses=ERRORS,
             summary="which route and server a request would get, and why; sends nothing, moves nothing")
    async def explain_request(
        method: str = "GET",
        path: str = "/",
        host: str = "",
        header: Annotated[list[str] | None, Query(description="Name:value, repeatable")] = None,
        client_ip: str = "127.0.0.1",
    ) -> Any:
        if not path.startswith("/"):
            return error(400, "path must start with /", "path")
        try:
            return explain(plane.snapshot, state_of, method=method, path=path, host=host,
                           headers=header or (), client_ip=client_ip)
        except (ExplainError, UnicodeEncodeError) as err:
            return error(400, str(err), "header")

    return BearerAuth(app, token)
