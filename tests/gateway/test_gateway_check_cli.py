"""`fulcrum check` on gateway configs, run as a user runs it: every error at once with its file and key path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bcrypt

FULCRUM = Path(sys.executable).with_name("fulcrum")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"

PLUGIN = '''
async def _passthrough(req, call_next):
    return await call_next(req)


def good(options):
    return _passthrough


def boom(options):
    raise RuntimeError("refusing to start: " + str(options.get("why")))


not_callable = 42


def sync_mw(options):
    def mw(req, call_next):
        return call_next(req)
    return mw
'''


def check(config: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(FULCRUM), "check", "-c", str(config)], capture_output=True, text=True, timeout=60,
                          env=env)


def write(path: Path, config: dict[str, object]) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


UPSTREAMS = {"app": {"servers": ["http://127.0.0.1:5001"]}}


def test_every_gateway_error_at_once(tmp_path: Path) -> None:
    config = write(tmp_path / "bad-gateway.json", {
        "upstreams": UPSTREAMS,
        "routes": [
            {"match": {"path_regex": "([unclosed"}, "upstream": "app"},
            {"match": {"path_prefix": "/b"}, "upstream": "app", "middleware": [{"request_id": {}}, {"nosuch": {}}]},
            {"match": {"path_prefix": "/c"}, "upstream": "app", "middleware": [{"rate_limit": {"rate": "ten/s"}}]},
            {"match": {"path_prefix": "/d"}, "upstream": "app",
             "middleware": [{"ip_filter": {"allow": ["10.0.0.0/8", "10.0.0.0/33"]}}]},
            {"match": {"path_prefix": "/e"}, "upstream": "app",
             "middleware": [{"basic_auth": {"users": {"bob": "hunter2"}}}]},
            {"match": {"path_prefix": "/f"}, "upstream": "nope"},
        ],
    })
    out = check(config)
    assert out.returncode == 1, out.stdout
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith(f"{config}: ")]
    expected = {
        "routes[0].match.path_regex": "regular expression",
        "routes[1].middleware[1]": "nosuch",
        "routes[2].middleware[0].rate_limit.rate": "ten/s",
        "routes[3].middleware[0].ip_filter.allow[1]": "10.0.0.0/33",
        "routes[4].middleware[0].basic_auth.users": "bcrypt",
        "routes[5].upstream": "nope",
    }
    for key, detail in expected.items():
        hits = [ln for ln in lines if ln.startswith(f"{config}: {key}:")]
        assert len(hits) == 1, (key, out.stderr)
        assert detail in hits[0], hits[0]
    assert len(lines) == len(expected), out.stderr
    assert "6 error(s)" in out.stderr
    assert "hunter2" not in out.stderr  # a password is never echoed
    assert "Traceback" not in out.stderr


def test_plugin_errors_name_their_key(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "gw_check_plugins.py").write_text(PLUGIN)
    config = write(tmp_path / "plugins.json", {
        "upstreams": UPSTREAMS,
        "routes": [
            {"match": {"path_prefix": "/a"}, "upstream": "app",
             "middleware": [{"plugin": "gw_no_such_module:factory"}]},
            {"match": {"path_prefix": "/b"}, "upstream": "app",
             "middleware": [{"request_id": {}}, {"plugin": "gw_check_plugins:missing"}]},
            {"match": {"path_prefix": "/c"}, "upstream": "app",
             "middleware": [{"plugin": "gw_check_plugins:boom", "options": {"why": "because"}}]},
            {"match": {"path_prefix": "/d"}, "upstream": "app", "middleware": [{"plugin": "gw_check_plugins:good"}]},
            {"match": {"path_prefix": "/e"}, "upstream": "app",
             "middleware": [{"plugin": "gw_check_plugins:not_callable"}, {"plugin": "gw_check_plugins:sync_mw"}]},
        ],
    })
    out = check(config, pythonpath=plugins)
    assert out.returncode == 1, out.stdout
    err = out.stderr
    assert f"{config}: routes[0].middleware[0].plugin: " in err and "gw_no_such_module" in err
    assert f"{config}: routes[1].middleware[1].plugin: " in err and "'missing'" in err
    assert f"{config}: routes[2].middleware[0].plugin: " in err and "refusing to start: because" in err
    assert f"{config}: routes[4].middleware[0].plugin: " in err
    assert f"{config}: routes[4].middleware[1].plugin: " in err and "async" in err
    assert "routes[3]" not in err  # the good plugin loaded
    assert "Traceback" not in err


def test_a_plugin_module_not_on_the_path_is_an_error(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "gw_check_plugins.py").write_text(PLUGIN)
    config = write(tmp_path / "path.json", {
        "upstreams": UPSTREAMS,
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app",
                    "middleware": [{"plugin": "gw_check_plugins:good"}]}],
    })
    assert check(config, pythonpath=plugins).returncode == 0
    out = check(config)  # the same file without PYTHONPATH
    assert out.returncode == 1
    assert "routes[0].middleware[0].plugin" in out.stderr and "Python path" in out.stderr


def test_a_valid_gateway_config_prints_the_compiled_route_table(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
upstreams:
  app:
    servers: ["http://127.0.0.1:5001"]
routes:
  - name: api
    match: {{host: "*.example.com", path_prefix: /api/, methods: [GET, POST], headers: {{X-Canary: "1"}}}}
    upstream: app
    strip_prefix: /api
    request_headers: {{set: {{X-Env: prod}}, remove: [X-Debug]}}
    middleware:
      - request_id: {{}}
      - rate_limit: {{rate: 10/s, burst: 20}}
      - basic_auth: {{users: {{alice: "{hashed}"}}}}
      - plugin: "api_key:factory"
        options: {{keys: {{k-1: billing}}}}
  - match: {{path: /old}}
    redirect: {{url: "https://example.com{{uri}}", status: 301}}
  - match: {{path_regex: "\\\\.json$", query: {{v: "2"}}}}
    respond: {{status: 200, body: "{{}}"}}
  - match: {{path_prefix: /}}
    upstream: app
    rewrite: {{regex: "^/v1/(.*)$", replacement: "/\\\\1"}}
    middleware: [{{compress: {{}}}}, {{headers: {{preset: secure}}}}]
""")
    out = check(config, pythonpath=EXAMPLES)
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("compiled route table", 1)[1]
    rows = [ln for ln in table.splitlines() if ln.startswith("  [")]
    assert len(rows) == 4, table
    assert rows[0].startswith("  [0] api: ")
    for part in ("host *.example.com", "path /api/*", "method GET|POST", "header x-canary: 1", "-> app",
                 "strip /api"):
        assert part in rows[0], rows[0]
    assert "request_id > rate_limit(10/s, burst 20, key ip) > basic_auth > api_key:factory" in table
    assert rows[1].startswith("  [1] ") and "path = /old" in rows[1] and "redirect 301" in rows[1]
    assert "path ~ \\.json$" in rows[2] and "query v=2" in rows[2] and "respond 200" in rows[2]
    assert "-> app" in rows[3] and "rewrite ^/v1/(.*)$ => /\\1" in rows[3]
    assert "headers(preset secure)" in table
