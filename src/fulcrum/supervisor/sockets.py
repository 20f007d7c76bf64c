"""The listening sockets of several workers, held by the main process: one SO_REUSEPORT socket per worker.

For each listen address the main process binds one socket per worker slot, all on the same port with
``SO_REUSEPORT``, and hands slot ``i``'s sockets to worker ``i``. The kernel spreads new connections
over the sockets (by a hash of the connection's addresses), so each worker accepts from its own queue:
no worker is woken for a connection another takes.

The main process keeps its copy of every socket. A worker that dies leaves its socket open and
listening, so the connections waiting in its queue are accepted by its replacement instead of being
refused, and the replacement needs no bind (which a busy port could refuse). A reload that adds an
address binds all its sockets in the main process first: a port that cannot be bound refuses the
reload there, before any worker hears of it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from fulcrum.config import Config

Address = tuple[str, int]
#: The sockets of one listen entry, one per worker slot.
Entry = list[socket.socket]


def bind_shared(address: Address, count: int) -> Entry:
    """``count`` non-blocking sockets listening on ``address`` with SO_REUSEPORT (port 0: the first one's port)."""
    host, port = address
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, bound = infos[0]
    entry: Entry = []
    try:
        for _ in range(count):
            sock = socket.socket(family, type_, proto)
            entry.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(bound)
            if not bound[1]:  # port 0: the others join the port the kernel gave the first
                bound = (bound[0], sock.getsockname()[1], *bound[2:])
            sock.listen(4096)
            sock.setblocking(False)
    except OSError:
        for sock in entry:
            sock.close()
        raise
    return entry


@dataclass
class Pending:
    """A config's sockets, bound but not yet in force: ``commit`` or ``cancel`` it."""

    held: dict[Address, list[Entry]]
    opened: list[Entry] = field(default_factory=list)
    leftover: list[Entry] = field(default_factory=list)


class ListenSockets:
    """Every listen entry's sockets, ``count`` each, following the config's ``listen`` list across reloads."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.held: dict[Address, list[Entry]] = {}

    def prepare(self, config: Config) -> Pending:
        """Bind what ``config`` lists and is not held yet; ``OSError`` (naming the entry): nothing changed."""
        current = {address: list(entries) for address, entries in self.held.items()}
        pending = Pending({})
        try:
            for i, listen in enumerate(config.listen):
                address = (listen.host, listen.port)
                kept = current.get(address)
                if kept:
                    entry = kept.pop(0)
                else:
                    try:
                        entry = bind_shared(address, self.count)
                    except OSError as err:
                        raise OSError(err.errno, f"listen[{i}] {listen}: {err.strerror or err}") from err
                    pending.opened.append(entry)
                pending.held.setdefault(address, []).append(entry)
        except OSError:
            self.cancel(pending)
            raise
        pending.leftover = [entry for entries in current.values() for entry in entries]
        return pending

    def commit(self, pending: Pending) -> None:
        """Put ``pending`` in force; the main's copies of sockets no longer listed are closed (the workers close
        theirs when they apply the config)."""
        self.held = pending.held
        for entry in pending.leftover:
            for sock in entry:
                sock.close()

    def cancel(self, pending: Pending) -> None:
        for entry in pending.opened:
            for sock in entry:
                sock.close()
        pending.opened = []

    def for_slot(self, config: Config, slot: int) -> tuple[list[Address], list[int]]:
        """The addresses of ``config.listen`` in order and, for each, the descriptor of worker ``slot``'s socket."""
        seen: dict[Address, int] = {}
        addresses: list[Address] = []
        fds: list[int] = []
        for listen in config.listen:
            address = (listen.host, listen.port)
            k = seen.get(address, 0)
            seen[address] = k + 1
            addresses.append(address)
            fds.append(self.held[address][k][slot].fileno())
        return addresses, fds

    def ports(self, config: Config) -> list[int]:
        """The ports bound, in the order of ``config.listen``."""
        seen: dict[Address, int] = {}
        ports: list[int] = []
        for listen in config.listen:
            address = (listen.host, listen.port)
            k = seen.get(address, 0)
            seen[address] = k + 1
            entries = self.held.get(address)
            if entries is not None and k < len(entries):
                ports.append(entries[k][0].getsockname()[1])
        return ports

    def close(self) -> None:
        for entries in self.held.values():
            for entry in entries:
                for sock in entry:
                    sock.close()
        self.held = {}
