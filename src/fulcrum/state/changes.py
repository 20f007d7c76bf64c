"""Runtime changes made through the admin API, kept as an overlay over the config file.

The file stays the base; the overlay says what an operator changed since: servers added, weights
set, servers disabled or draining, servers removed. Every new snapshot (a runtime change, or a reload
of the file) is built from ``overlay.effective(file_config)``, so a reload keeps the runtime changes
that still apply:

- a server added at run time stays, while its group exists; if the file now lists the same server,
  the file's entry is used and the addition is forgotten;
- a weight or state set at run time stays while the server exists;
- a server removed at run time stays removed, until it is added again through the API;
- everything about a group that the new file no longer has is forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from fulcrum.config import Config
from fulcrum.config.schema import ServerSpec

State = Literal["enabled", "disabled", "draining"]
STATES: tuple[State, ...] = ("enabled", "disabled", "draining")
Key = tuple[str, str]  # (group, server id)


def server_id(url: str) -> str:
    """The id of the server at ``url``, as ``Server.id`` makes it: ``host:port`` (``[v6]:port``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ChangeError(Exception):
    """A runtime change refused: ``status`` is the HTTP status to answer, ``field`` what was wrong."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass
class Overlay:
    """What the admin API changed; ``effective`` applies it to a config."""

    added: dict[Key, tuple[str, int]] = field(default_factory=dict)  # key -> (url, weight)
    weights: dict[Key, int] = field(default_factory=dict)
    states: dict[Key, State] = field(default_factory=dict)  # only disabled / draining are kept
    removing: set[Key] = field(default_factory=set)  # draining until their last request ends
    removed: set[Key] = field(default_factory=set)

    def add(self, group: str, url: str, weight: int) -> Key:
        key = (group, server_id(url))
        self.removed.discard(key)
        self.removing.discard(key)
        self.states.pop(key, None)
        self.weights.pop(key, None)
        self.added[key] = (url, weight)
        return key

    def set_weight(self, key: Key, weight: int) -> None:
        if key in self.added:
            self.added[key] = (self.added[key][0], weight)
        else:
            self.weights[key] = weight

    def set_state(self, key: Key, state: State) -> None:
        if state == "enabled":
            self.states.pop(key, None)
        else:
            self.states[key] = state

    def state(self, key: Key) -> State:
        return "draining" if key in self.removing else self.states.get(key, "enabled")

    def remove(self, key: Key) -> None:
        """Drain the server now; ``finish_removal`` takes it out once its requests are done."""
        self.removing.add(key)

    def finish_removal(self, key: Key) -> None:
        self.removing.discard(key)
        self.states.pop(key, None)
        self.weights.pop(key, None)
        if self.added.pop(key, None) is None:
            self.removed.add(key)  # a server of the file: keep it out across reloads

    def effective(self, config: Config) -> Config:
        """``config`` with the overlay applied; forgets what no longer applies to it (see the module doc)."""
        groups = set(config.upstreams)
        for table in (self.added, self.weights, self.states):
            for key in [k for k in table if k[0] not in groups]:
                del table[key]
        self.removing = {k for k in self.removing if k[0] in groups}
        self.removed = {k for k in self.removed if k[0] in groups}
        upstreams = {}
        for name, spec in config.upstreams.items():
            servers = []
            in_file = set()
            for s in spec.servers:
                key = (name, server_id(s.url))
                in_file.add(key)
                if key in self.removed:
                    continue
                weight = self.weights.get(key)
                servers.append(s if weight is None else s.model_copy(update={"weight": weight}))
            for key, (url, weight) in list(self.added.items()):
                if key[0] != name:
                    continue
                if key in in_file:
                    del self.added[key]  # the file has it now
                    continue
                servers.append(ServerSpec(url=url, weight=weight))
            same = len(servers) == len(spec.servers) and all(a is b for a, b in zip(servers, spec.servers, strict=True))
            upstreams[name] = spec if same else spec.model_copy(update={"servers": tuple(servers)})
        return config.model_copy(update={"upstreams": upstreams})

    def describe(self) -> dict[str, object]:
        """The overlay as JSON-ready data, for ``GET /api/v1/changes`` and the Redis state backend."""
        return {
            "added": [{"upstream": g, "id": i, "url": u, "weight": w} for (g, i), (u, w) in sorted(self.added.items())],
            "weights": [{"upstream": g, "id": i, "weight": w} for (g, i), w in sorted(self.weights.items())],
            "states": [{"upstream": g, "id": i, "state": s} for (g, i), s in sorted(self.states.items())],
            "removing": [{"upstream": g, "id": i} for g, i in sorted(self.removing)],
            "removed": [{"upstream": g, "id": i} for g, i in sorted(self.removed)],
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Overlay:
        """The overlay ``describe()`` gave (as another instance stored it); ``ValueError`` when it is not one."""
        try:
            overlay = cls(
                added={(str(e["upstream"]), str(e["id"])): (str(e["url"]), _weight(e["weight"]))
                       for e in data.get("added", ())},
                weights={(str(e["upstream"]), str(e["id"])): _weight(e["weight"]) for e in data.get("weights", ())},
                states={(str(e["upstream"]), str(e["id"])): _state(e["state"]) for e in data.get("states", ())},
                removing={(str(e["upstream"]), str(e["id"])) for e in data.get("removing", ())},
                removed={(str(e["upstream"]), str(e["id"])) for e in data.get("removed", ())},
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not an overlay of runtime changes: {type(err).__name__}: {err}") from None
        overlay.states = {k: v for k, v in overlay.states.items() if v != "enabled"}
        return overlay


def _weight(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
        return value
    raise ValueError(f"weight must be 1-1000, got {value!r}")


def _state(value: object) -> State:
    for state in STATES:
        if value == state:
            return state
    raise ValueError(f"state must be one of {', '.join(STATES)}, got {value!r}")
