#!/usr/bin/env python3
"""The client processes of bench_clients.py, and the upstream that never answers.

Each runs as its own process on the load CPU, with non-blocking sockets and RLIMIT_NOFILE raised to
its hard limit, and is stopped with SIGTERM:

    clientload.py hold PORT COUNT HEX_BYTES [--answer]   # COUNT connections, each sent the bytes, then held
    clientload.py silent PORT[,PORT...]                  # accept, read, discard, never answer
    clientload.py slowloris PORT COUNT DRIBBLE_S         # never-ending heads, a byte every DRIBBLE_S each

``hold`` prints one JSON line (``held``, ``failed``) once every connection is set up; ``slowloris``
prints ``ready`` once its connections are open and a JSON line of its counts when stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import random
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

CONNECTING_AT_ONCE = 256  # connects in flight at once, so no listen backlog overflows
SETUP_S = 60.0  # what opening every connection may take


def hold(port: int, count: int, what: bytes, answer: bool) -> None:
    """Open ``count`` connections, send ``what`` on each (and read the whole answer when ``answer``), print
    how many are held, then keep them open until SIGTERM."""
    run.raise_fd_limit()
    sel = selectors.DefaultSelector()
    held: list[socket.socket] = []
    received: dict[socket.socket, bytes] = {}
    opened = failed = in_flight = 0
    deadline = time.monotonic() + SETUP_S
    while len(held) + failed < count and time.monotonic() < deadline:
        while opened < count and in_flight < CONNECTING_AT_ONCE:
            sock = socket.socket()
            sock.setblocking(False)
            opened += 1
            if sock.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                failed += 1
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_WRITE, "connect")
            in_flight += 1
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj  # type: ignore[assignment]  # only sockets are registered
            done = ok = False
            if key.data == "connect":
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    sock.send(what)  # a few dozen bytes: the socket's buffer takes them whole
                    if answer:
                        sel.modify(sock, selectors.EVENT_READ, "read")
                        received[sock] = b""
                    else:
                        done = ok = True
                else:
                    done = True
            else:
                data = sock.recv(65536)
                received[sock] += data
                done = not data or received[sock].endswith(run.EXPECTED_BODY)
                ok = bool(data)
            if done:
                sel.unregister(sock)
                in_flight -= 1
                if ok:
                    held.append(sock)
                else:
                    failed += 1
                    sock.close()
    print(json.dumps({"held": len(held), "failed": failed + count - opened}), flush=True)
    while True:
        signal.pause()


def silent(ports: Sequence[int]) -> None:
    """An upstream that accepts, reads and discards what it is sent, and never answers."""
    run.raise_fd_limit()
    sel = selectors.DefaultSelector()
    for port in ports:
        listener = socket.create_server(("127.0.0.1", port), backlog=4096)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, "accept")
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "accept":
                with contextlib.suppress(BlockingIOError):
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "read")
            elif not sock.recv(65536):
                sel.unregister(sock)
                sock.close()


def slowloris(port: int, count: int, dribble: float) -> None:
    """Keep ``count`` connections sending a never-ending request head, one byte per connection every ``dribble``
    seconds; reconnect those the proxy closes. Prints ``ready`` once all are open, its counts on SIGTERM."""
    run.raise_fd_limit()
    stop = False

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    pad = b"X-Pad: a\r\n"
    conns: dict[socket.socket, int] = {}  # socket -> bytes of padding sent
    due: list[tuple[float, socket.socket]] = []
    closed_by_proxy = sent = 0

    def connect() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        sock.send(head)
        conns[sock] = 0
        due.append((time.monotonic() + random.uniform(0, dribble), sock))  # spread evenly over the interval

    for _ in range(count):
        connect()
    print("ready", flush=True)
    while not stop:
        due.sort(key=lambda item: item[0])
        when, sock = due.pop(0)
        time.sleep(max(0.0, when - time.monotonic()))
        if stop:
            break
        try:
            i = conns[sock]
            sock.send(pad[i % len(pad) : i % len(pad) + 1])
            conns[sock] = i + 1
            sent += 1
            due.append((when + dribble, sock))
        except OSError:  # closed by the proxy (a header timeout, a 408): open another in its place
            closed_by_proxy += 1
            del conns[sock]
            sock.close()
            with contextlib.suppress(OSError):
                connect()
    print(json.dumps({"closed_by_proxy": closed_by_proxy, "bytes_sent": sent, "open_at_end": len(conns)}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/clientload.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("hold")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("send", help="the bytes to send on each connection, in hex")
    p.add_argument("--answer", action="store_true", help="read each answer whole before the connection counts")
    p = sub.add_parser("silent")
    p.add_argument("ports")
    p = sub.add_parser("slowloris")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("dribble", type=float)
    ns = ap.parse_args(argv)
    if ns.what == "hold":
        hold(ns.port, ns.count, bytes.fromhex(ns.send), ns.answer)
    elif ns.what == "silent":
        silent([int(port) for port in ns.ports.split(",")])
    else:
        slowloris(ns.port, ns.count, ns.dribble)
    return 0


if __name__ == "__main__":
    sys.exit(main())
