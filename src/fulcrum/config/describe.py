"""A short human summary of a config, as ``fulcrum check`` prints it."""

from __future__ import annotations

from fulcrum.config.schema import Config, HealthCheck, Route, Upstream
from fulcrum.config.tcp import TcpService
from fulcrum.config.units import format_duration, format_size


def _route(route: Route) -> str:
    return route.display_name


def _target(route: Route) -> str:
    if route.respond is not None:
        return f"respond {route.respond.status}"
    if route.redirect is not None:
        return f"redirect {route.redirect.status} {route.redirect.url}"
    return f"-> {route.upstream}"


def _health(check: HealthCheck | None) -> str:
    if check is None:
        return "no health check (servers count as healthy)"
    text = (
        f"health: {check.method} {check.path} every {format_duration(check.interval)}"
        f" (timeout {format_duration(check.timeout)}), expect {check.expect_status}"
    )
    if check.expect_body is not None:
        text += f" with body containing {check.expect_body!r}"
    return f"{text}, rise {check.rise}, fall {check.fall}, start {check.initial}"


def _policy(upstream: Upstream) -> str:
    text: str = upstream.balance
    if upstream.balance == "consistent_hash":
        text += f" on {upstream.hash_key}"
    if upstream.sticky is not None:
        text += f", sticky cookie {upstream.sticky.cookie}"
    if upstream.slow_start:
        text += f", slow start {format_duration(upstream.slow_start)}"
    return text


def _tcp_service(name: str, service: TcpService) -> list[str]:
    count = len(service.servers)
    timeouts = service.timeouts
    idle = format_duration(timeouts.idle) if timeouts.idle else "none"
    lines = [f"  {name}: listen {service.listen}, {service.balance}, {count} server{'s' if count != 1 else ''},"
             f" connect timeout {format_duration(timeouts.connect)}, idle timeout {idle}"]
    lines += [f"    {s.address}  weight {s.weight}" for s in service.servers]
    check = service.health_check
    if check is None:
        lines.append("    no health check (servers count as healthy)")
    else:
        lines.append(f"    health: TCP connect every {format_duration(check.interval)}"
                     f" (timeout {format_duration(check.timeout)}), rise {check.rise}, fall {check.fall},"
                     f" start {check.initial}")
    return lines


def describe(config: Config) -> str:
    """Listeners, routes (match -> upstream) and each upstream with its policy, servers and health check."""
    limits = config.limits
    body = format_size(limits.max_body_bytes) if limits.max_body_bytes else "unlimited"
    lines = [
        f"listen: {', '.join(item.describe() for item in config.listen) or 'none (TCP services only)'}",
        f"limits: request line {format_size(limits.max_request_line)}, headers {format_size(limits.max_header_bytes)},"
        f" body {body}, header timeout {format_duration(limits.header_timeout)},"
        f" keep-alive {format_duration(limits.keepalive_timeout)}",
    ]
    if config.workers > 1:
        lines.append(f"workers: {config.workers} worker processes and a main process (admin API, health checks)")
    if config.http2.h2c:
        lines.append(f"http2: h2c (prior knowledge) on the plain listeners, up to "
                     f"{config.http2.max_concurrent_streams} streams per connection")
    if config.state.backend != "memory":
        lines.append(f"state: {config.state.describe()}: runtime changes and shared rate limits shared with the "
                     "instances using it")
    lines.append("routes:" if config.routes else "routes: none")
    width = max(len(_route(r)) for r in config.routes) if config.routes else 0
    lines += [f"  {_route(r):<{width}}  {_target(r)}" for r in config.routes]
    lines.append("upstreams:" if config.upstreams else "upstreams: none")
    for name, upstream in config.upstreams.items():
        count = len(upstream.servers)
        if upstream.servers_from is not None:
            lines.append(f"  {name}: {_policy(upstream)}, {upstream.servers_from.describe()}")
        else:
            lines.append(f"  {name}: {_policy(upstream)}, {count} server{'s' if count != 1 else ''}")
        lines += [f"    {s.url}  weight {s.weight}" for s in upstream.servers]
        lines.append(f"    {_health(upstream.health_check)}")
    if config.tcp_services:
        lines.append("tcp services:")
        for name, service in config.tcp_services.items():
            lines += _tcp_service(name, service)
    return "\n".join(lines)
