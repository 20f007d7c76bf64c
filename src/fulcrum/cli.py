"""The ``fulcrum`` command: run, check (and what a reload would change), demo, demo-backend, proxy, simulate, top."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fulcrum import __version__
from fulcrum.config import Config, ConfigError, describe, load_config, parse_config

if TYPE_CHECKING:
    from fulcrum.gateway import Gateway

DEFAULT_CONFIG = "fulcrum.yaml"


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("FULCRUM_CONFIG") or DEFAULT_CONFIG


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as err:
        print(f"fulcrum: configuration is not valid ({len(err.errors)} error(s)):", file=sys.stderr)
        print(str(err), file=sys.stderr)
        return None


def _build_routes(config: Config, path: str) -> Gateway | None:
    """Build the route table as a snapshot would (plugins imported, log files opened); None on errors."""
    from fulcrum.gateway import build_gateway

    try:
        return build_gateway(config, path)
    except ConfigError as err:
        print(f"fulcrum: configuration is not valid ({len(err.errors)} error(s)):", file=sys.stderr)
        print(str(err), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    from fulcrum.gateway import describe_routes

    path = _config_path(args.config)
    config = _load(path)
    # Both sides are read before giving up, so every error of both is printed at once.
    compare = args.diff is not None or args.admin is not None
    old = None
    if args.diff is not None:
        old = _load(args.diff)
    elif args.admin is not None:
        old = _running_config(args.admin, _admin_token(args))
    if config is None or (compare and old is None):
        return 1
    gateway = _build_routes(config, path)
    if gateway is None:
        return 1
    try:
        print(f"{path}: configuration is valid")
        if old is None:
            print(describe(config))
            print("compiled route table (first match wins):")
            print(describe_routes(gateway.table))
        else:
            _print_diff(old, config, args, path)
    finally:
        gateway.close()
    return 0


def _admin_token(args: argparse.Namespace) -> str | None:
    from fulcrum.admin.client import TOKEN_ENV

    token: str | None = args.token or os.environ.get(TOKEN_ENV) or None
    return token


def _running_config(url: str, token: str | None) -> Config | None:
    """The config running at the admin API ``url`` (``GET /api/v1/config``); None, with a message, when unreadable."""
    from fulcrum.admin.client import AdminError, admin_base, get_json
    from fulcrum.config.diff import config_from_dump

    base = admin_base(url)
    try:
        data = get_json(base, "/api/v1/config", token)
    except AdminError as err:
        print(f"fulcrum: {err}", file=sys.stderr)
        return None
    if not isinstance(data, dict) or "upstreams" not in data:
        print(f"fulcrum: GET {base}/api/v1/config did not answer a config (is {base} Fulcrum's admin listener?)",
              file=sys.stderr)
        return None
    try:
        return config_from_dump(data, source=f"{base}/api/v1/config")
    except ConfigError as err:
        print(f"fulcrum: the running config does not validate here ({len(err.errors)} error(s)); is this fulcrum "
              f"({__version__}) older than the instance's?", file=sys.stderr)
        print(str(err), file=sys.stderr)
        return None


def _print_diff(old: Config, new: Config, args: argparse.Namespace, path: str) -> None:
    from fulcrum.config.diff import diff_configs, format_changes

    # The admin API never tells the token, so its change cannot be known (nor shown: it is a secret).
    ignore = ("admin.token",) if args.admin is not None else ()
    changes = diff_configs(old, new, ignore=ignore)
    where = args.diff if args.diff is not None else f"the config running at {args.admin}"
    if not changes:
        print(f"no changes from {where}")
        return
    print(f"a reload from {where} to {path} would make {len(changes)} change(s):")
    for line in format_changes(changes):
        print(f"  {line}")


def cmd_hash_password(args: argparse.Namespace) -> int:
    """A bcrypt hash for basic_auth's users, read from the terminal (or one line of stdin)."""
    import getpass

    import bcrypt

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("fulcrum: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("fulcrum: empty password", file=sys.stderr)
        return 1
    print(bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=args.rounds)).decode("ascii"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fulcrum.supervisor.runner import run, setup_logging

    path = _config_path(args.config)
    config = _load(path)
    if config is None:
        return 1
    if args.access_log and not config.access_log:
        config = config.model_copy(update={"access_log": True})
    setup_logging()
    return run(config, path=path, watch=1.0 if args.watch else 0.0)


def _quick_config(args: argparse.Namespace) -> dict[str, Any]:
    upstream: dict[str, Any] = {"balance": args.balance, "servers": list(args.to)}
    if args.health_path:
        upstream["health_check"] = {"path": args.health_path}
    return {
        "listen": [args.listen],
        "workers": args.workers,
        "access_log": args.access_log,
        "admin": {"listen": args.admin},  # off unless asked for: a quick start binds one port
        "upstreams": {"default": upstream},
    }


def cmd_proxy(args: argparse.Namespace) -> int:
    from fulcrum.supervisor.runner import run, setup_logging

    try:
        config = parse_config(_quick_config(args), source="command line")
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 1
    setup_logging()
    return run(config)


DEMO_NAMES = ("demo-1", "demo-2", "demo-3")


def cmd_demo(args: argparse.Namespace) -> int:
    from fulcrum.demo_backend import serve_demo_backend
    from fulcrum.proxy.server import ProxyServer
    from fulcrum.supervisor.runner import run, setup_logging

    setup_logging()
    backends: list[asyncio.Server] = []

    async def make_config() -> Config:
        # The backends bind first (ephemeral ports); the config names them.
        for name in DEMO_NAMES:
            backends.append(await serve_demo_backend("127.0.0.1", 0, name))
        servers = [f"http://127.0.0.1:{b.sockets[0].getsockname()[1]}" for b in backends]
        demo = {
            "balance": "round_robin",
            "servers": servers,
            "health_check": {"path": "/health", "interval": "2s", "timeout": "1s"},
        }
        return parse_config(
            {"listen": [f"127.0.0.1:{args.port}"], "access_log": True, "expose_upstream": True,
             "admin": {"listen": f"127.0.0.1:{args.admin_port}"}, "upstreams": {"demo": demo}},
            source="demo",
        )

    def announce(server: ProxyServer) -> None:
        url = f"http://127.0.0.1:{server.ports[0]}"
        ups = ", ".join(s.id for g in server.snapshot.groups.values() for s in g.servers)
        print(
            f"\nFulcrum demo: {url}/ balances over three demo servers ({ups}).\n"
            f"Try:\n"
            f"  curl -i {url}/                 # again and again: round robin (see X-Upstream-Server)\n"
            f"  curl -i {url}/slow?ms=200\n"
            f"  curl -i -H 'X-Request-ID: my-id-1' {url}/\n"
            f"Dashboard: http://127.0.0.1:{args.admin_port}/   metrics: http://127.0.0.1:{args.admin_port}/metrics\n"
            f"  curl -s 'http://127.0.0.1:{args.admin_port}/api/v1/explain?path=/'   # which server, and why\n"
            f"Stop with Ctrl-C.\n",
            flush=True,
        )

    return run(make_config, after_start=announce)


def cmd_demo_backend(args: argparse.Namespace) -> int:
    """One demo upstream server (the kind ``fulcrum demo`` starts three of), until SIGTERM or SIGINT."""
    import signal
    import socket

    from fulcrum.config.schema import parse_listen
    from fulcrum.demo_backend import serve_demo_backend
    from fulcrum.proxy.server import install_uvloop

    try:
        address = parse_listen(args.listen)
    except ValueError as err:
        print(f"fulcrum: --listen: {err}", file=sys.stderr)
        return 1
    host, port = str(address.get("host", "0.0.0.0")), int(str(address["port"]))
    name = args.name or socket.gethostname()

    async def serve() -> int:
        try:
            server = await serve_demo_backend(host, port, name)
        except OSError as err:
            print(f"fulcrum: cannot listen on {args.listen}: {err.strerror or err}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"demo backend {name} on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()
        server.close()
        await server.wait_closed()
        return 0

    with asyncio.Runner(loop_factory=install_uvloop()) as runner:
        return runner.run(serve())


def cmd_simulate(args: argparse.Namespace) -> int:
    from fulcrum.balancing.simulate import simulate_config

    config = _load(_config_path(args.config))
    if config is None:
        return 1
    print(simulate_config(config, requests=args.requests, keys=args.keys, seed=args.seed))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from fulcrum.admin.client import admin_base
    from fulcrum.top import run

    return run(admin_base(args.admin), _admin_token(args), interval=args.interval, once=args.once)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fulcrum", description="Fulcrum: load balancer and reverse proxy.")
    parser.add_argument("--version", action="version", version=f"fulcrum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run with a config file")
    p.add_argument("-c", "--config", help=f"config file (default: $FULCRUM_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--access-log", action="store_true", help="log one line per request to stdout")
    p.add_argument("--watch", action="store_true", help="reload when the config file changes (checked every second)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config file and print what it sets up (or what a reload to it "
                       "would change)")
    p.add_argument("-c", "--config", help=f"config file (default: $FULCRUM_CONFIG or {DEFAULT_CONFIG})")
    old = p.add_mutually_exclusive_group()
    old.add_argument("--diff", metavar="OLD", help="print what a reload from the config file OLD to this one would "
                     "change, instead of the whole config")
    old.add_argument("--admin", metavar="URL", help="the same, from the config running at this admin API "
                     "(e.g. http://127.0.0.1:9090)")
    p.add_argument("--token", help="admin API bearer token for --admin (default: $FULCRUM_ADMIN_TOKEN)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("hash-password", help="print a bcrypt hash for basic_auth (password read from the terminal)")
    p.add_argument("--rounds", type=int, default=12, help="bcrypt cost (default 12)")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("demo", help="three demo servers behind Fulcrum, no config needed")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--admin-port", type=int, default=9090, help="admin API and dashboard port on 127.0.0.1 "
                   "(default 9090)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-backend", help="one demo upstream server (says who it is; /health, /slow?ms=N)")
    p.add_argument("--listen", default=":5001", help="host:port or :port (default :5001)")
    p.add_argument("--name", help="the name it answers with (default: the host name)")
    p.set_defaults(func=cmd_demo_backend)

    p = sub.add_parser("proxy", help="one-line reverse proxy: --listen :8080 --to URL --to URL")
    p.add_argument("--listen", default=":8080", help="host:port or :port (default :8080)")
    p.add_argument("--to", action="append", required=True, metavar="URL", help="upstream server (repeat)")
    p.add_argument("--balance", default="round_robin", help="balancing policy (default round_robin)")
    p.add_argument("--health-path", help="check each server's health at this path")
    p.add_argument("--admin", metavar="ADDRESS", help="serve the admin API and dashboard here, e.g. 127.0.0.1:9090")
    p.add_argument("--access-log", action="store_true", help="log one line per request to stdout")
    p.add_argument("--workers", default="1", metavar="N", help="worker processes: a number or auto (default 1)")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("simulate", help="show how the configured policies spread synthetic traffic")
    p.add_argument("-c", "--config", help=f"config file (default: $FULCRUM_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--requests", type=int, default=10000, help="synthetic requests per group (default 10000)")
    p.add_argument("--keys", type=int, default=10000, help="distinct keys for hash policies (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("top", help="the dashboard's live table in a terminal, from a running instance's admin API")
    p.add_argument("--admin", metavar="URL", default="http://127.0.0.1:9090",
                   help="the admin API (default http://127.0.0.1:9090)")
    p.add_argument("--token", help="admin API bearer token (default: $FULCRUM_ADMIN_TOKEN)")
    p.add_argument("--interval", type=_seconds, default=1.0, metavar="S", help="seconds between polls (default 1)")
    p.add_argument("--once", action="store_true", help="print one picture (rates over one interval) and exit")
    p.set_defaults(func=cmd_top)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fulcrum.build import PACKAGE, stale_compiled_modules

    # Only a source checkout can hold a compiled module older than its edited source (an installed
    # wheel's file times say nothing about that), so installs pay nothing here.
    in_checkout = (PACKAGE.parents[1] / "setup.py").exists()
    for built, source in stale_compiled_modules() if in_checkout else ():
        print(f"fulcrum: warning: {source.name} changed after {built.name} was built; the old compiled code runs "
              "(rebuild: make test, or pip install -e .)", file=sys.stderr)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
