"""Reading a config: file → data (YAML or JSON) → ``${VAR}`` interpolation → seed style → validated ``Config``.

Each step collects every problem it finds; ``ConfigError`` reports them all
at once, each with the file, the key path and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fulcrum.config.errors import ConfigError, ConfigIssue, format_path
from fulcrum.config.messages import humanize
from fulcrum.config.schema import Config
from fulcrum.config.units import parse_duration, short_repr

Loc = tuple[str | int, ...]

# ---------------------------------------------------------------- reading files


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not a silent overwrite."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_issue(source: str, err: yaml.YAMLError) -> ConfigIssue:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = err.problem or err.context or "not valid YAML"
        return ConfigIssue(source, where, f"YAML syntax error: {what}")
    return ConfigIssue(source, "", f"YAML syntax error: {err}")


def parse_text(text: str, source: str, json_only: bool = False) -> object:
    """Data from config text: JSON when ``json_only`` (a .json file), otherwise YAML (which reads JSON too)."""
    if json_only or text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            if json_only:
                raise ConfigError(
                    [ConfigIssue(source, f"line {err.lineno}, column {err.colno}", f"JSON syntax error: {err.msg}")]
                ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError([_yaml_issue(source, err)]) from None


def read_config_data(path: str | os.PathLike[str]) -> object:
    """The data in a config file, before interpolation and validation. Raises ``ConfigError``."""
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(source, "", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue(source, "", "is a directory, not a config file")]) from None
    except OSError as err:
        raise ConfigError([ConfigIssue(source, "", f"cannot read the file: {err.strerror or err}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError([ConfigIssue(source, "", f"is not UTF-8 text (bad byte at offset {err.start})")]) from None
    return parse_text(text, source, json_only=source.lower().endswith(".json"))


# ---------------------------------------------------------------- ${VAR} interpolation

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _interpolate_text(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        if match.group(1) is None:
            problems.append("has ${ without a closing }")
            return ""
        ref = _VARIABLE.fullmatch(match.group(1))
        if ref is None:
            problems.append(f"bad variable reference {whole!r} (use ${{NAME}} or ${{NAME:-default}})")
            return ""
        name, default = ref.group(1), ref.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                problems.append(f"environment variable {name} is not set")
                return ""
            return default
        return value

    if "$" not in text:
        return text, problems
    return _REFERENCE.sub(replace, text), problems


def interpolate(data: object, env: Mapping[str, str], loc: Loc = ()) -> tuple[object, list[tuple[Loc, str]]]:
    """``data`` with ``${VAR}`` and ``${VAR:-default}`` replaced in every string value; ``$${`` is a literal ``${``.

    Returns the new data and the problems found, each at the path of its string.
    """
    problems: list[tuple[Loc, str]] = []
    if isinstance(data, str):
        text, messages = _interpolate_text(data, env)
        return text, [(loc, m) for m in messages]
    if isinstance(data, Mapping):
        out: dict[Any, Any] = {}
        for key, value in data.items():
            out[key], found = interpolate(value, env, (*loc, key if isinstance(key, str | int) else str(key)))
            problems += found
        return out, problems
    if isinstance(data, list | tuple):
        items: list[Any] = []
        for i, value in enumerate(data):
            item, found = interpolate(value, env, (*loc, i))
            items.append(item)
            problems += found
        return items, problems
    return data, problems


# ---------------------------------------------------------------- the seed style

SEED_KEYS = ("port", "healthCheckInterval", "servers")
SEED_UPSTREAM = "default"


def is_seed_style(data: Mapping[str, Any]) -> bool:
    """A mapping with ``servers`` and no ``upstreams``: the short form."""
    return "servers" in data and "upstreams" not in data


def _convert_seed(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[Loc, str]]]:
    problems: list[tuple[Loc, str]] = [
        (
            (key,),
            "unknown key in the short form, which takes only port, healthCheckInterval and servers "
            "(in the full form, servers go under upstreams.NAME.servers)",
        )
        for key in data
        if key not in SEED_KEYS
    ]
    interval: Any = data.get("healthCheckInterval", "2s")
    try:
        timeout = min(1.0, parse_duration(interval)) or 1.0
    except ValueError:
        timeout = 1.0  # the interval itself is reported
    health = {
        "method": "HEAD",
        "path": "/",
        "interval": interval,
        "timeout": timeout,
        "expect_status": "200",
        "rise": 1,
        "fall": 1,
    }
    config: dict[str, Any] = {
        "upstreams": {SEED_UPSTREAM: {"balance": "round_robin", "servers": data.get("servers"), "health_check": health}}
    }
    if "port" in data:
        config["listen"] = [data["port"]]
    return config, problems


def seed_to_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """The full-form equivalent of a seed-style mapping: one round-robin group ``default`` behind ``/``,
    health-checked with ``HEAD /`` every ``healthCheckInterval`` (2s when left out)."""
    config, problems = _convert_seed(data)
    if problems:
        raise ConfigError([ConfigIssue("<config>", format_path(loc), msg) for loc, msg in problems])
    return config


def _seed_loc(loc: Loc) -> Loc:
    """Where an error in the converted seed config came from in the seed mapping."""
    if loc[:1] == ("listen",):
        return ("port",)
    group = ("upstreams", SEED_UPSTREAM)
    if loc[:3] == (*group, "servers"):
        return ("servers", *loc[3:])
    if loc[:3] == (*group, "health_check"):
        return ("healthCheckInterval",)
    return loc


# ---------------------------------------------------------------- validation


def parse_config(data: object, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """A validated ``Config`` from already-parsed data (full or seed style). Raises ``ConfigError``."""
    if not isinstance(data, Mapping):
        what = "the file is empty" if data is None else f"must be a mapping of keys to values, got {short_repr(data)}"
        raise ConfigError([ConfigIssue(source, "", what)])
    interpolated: Any
    interpolated, env_problems = interpolate(data, os.environ if env is None else env)
    problems = list(env_problems)
    remap = None
    if is_seed_style(interpolated):
        interpolated, seed_problems = _convert_seed(interpolated)
        problems += seed_problems
        remap = _seed_loc
    try:
        config = Config.model_validate(interpolated)
    except ValidationError as err:
        broken = [loc for loc, _ in env_problems]
        for error in err.errors():
            loc: Loc = tuple(error["loc"])
            if remap is not None:
                loc = remap(loc)
            if any(loc[: len(b)] == b for b in broken):
                continue  # already reported: the variable it needed is missing
            problems.append((loc, humanize(error, Config)))
    else:
        if not problems:
            return config
    issues: list[ConfigIssue] = []
    for loc, message in problems:
        issue = ConfigIssue(source, format_path(loc), message)
        if issue not in issues:
            issues.append(issue)
    raise ConfigError(issues)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the config file at ``path``. Raises ``ConfigError`` with every problem."""
    return parse_config(read_config_data(path), source=os.fspath(path), env=env)
