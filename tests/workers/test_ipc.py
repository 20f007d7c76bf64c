"""The main-to-worker channel: framing as pure bytes, then real socket pairs with sockets passed across."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from fulcrum.supervisor.ipc import HEADER, MAX_FRAME, Channel, Decoder, Message, ProtocolError, encode


def test_frames_come_out_whole_however_the_stream_is_cut() -> None:
    messages = [{"type": "config", "n": i, "text": "x" * (i * 97)} for i in range(20)]
    stream = b"".join(encode(m) for m in messages)
    for step in (1, 5, 6, 7, 1000, len(stream)):
        decoder = Decoder()
        got = []
        for i in range(0, len(stream), step):
            got += [m for m, _ in decoder.feed(stream[i:i + step])]
        assert got == messages


def test_descriptors_go_to_the_frame_that_counts_them() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        decoder = Decoder()
        first, second = encode({"n": 1}, nfds=1), encode({"n": 2}, nfds=1)
        # both descriptors arrive with the first bytes, before either frame is complete
        assert decoder.feed(first[:3], [r1, r2]) == []
        assert decoder.feed(first[3:] + second[:4]) == [({"n": 1}, [r1])]
        assert decoder.feed(second[4:]) == [({"n": 2}, [r2])]
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


@pytest.mark.parametrize(("data", "why"), [
    (HEADER.pack(MAX_FRAME + 1, 0), "announces"),
    (HEADER.pack(2, 0) + b"{x", "not JSON"),
    (HEADER.pack(2, 0) + b"[]", "not a JSON object"),
    (HEADER.pack(2, 3) + b"{}", "3 descriptors, 0 arrived"),
])
def test_what_is_not_a_frame_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        Decoder().feed(data)


async def test_a_channel_carries_big_messages_and_listening_sockets_both_ways() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got: asyncio.Queue[tuple[Message, list[int]]] = asyncio.Queue()
    closed = asyncio.Event()
    main = Channel(a, loop, lambda m, fds: None, closed.set)
    worker = Channel(b, loop, lambda m, fds: got.put_nowait((m, fds)), lambda: None)
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        big = {"type": "config", "config": {"blob": "y" * (3 * 1024 * 1024)}}  # far over a socket buffer
        main.send(big, [listener.fileno()])
        main.send({"type": "flags", "n": 2})
        assert main.pending > 0  # the rest waits for the reader
        message, fds = await asyncio.wait_for(got.get(), 30)
        assert message == big and len(fds) == 1
        received = socket.socket(fileno=fds[0])
        try:  # the same listening socket: a connection to the original is accepted on the copy
            assert received.getsockname() == listener.getsockname()
            with socket.create_connection(listener.getsockname()):
                conn, _ = received.accept()
                conn.close()
        finally:
            received.close()
        assert await asyncio.wait_for(got.get(), 30) == ({"type": "flags", "n": 2}, [])
        assert main.pending == 0
        worker.close()
        await asyncio.wait_for(closed.wait(), 30)  # the other end going away is heard
        assert main.closed
        main.send({"type": "late"})  # sending on a closed channel is a no-op
    finally:
        listener.close()
        main.close()
        worker.close()


async def test_what_a_peer_sent_before_it_went_away_can_still_be_read() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got: list[Message] = []
    closed: list[bool] = []
    reader = Channel(a, loop, lambda m, fds: got.append(m), lambda: closed.append(True))
    b.sendall(encode({"type": "report", "n": 1}) + encode({"type": "stopped"}))
    b.close()  # the worker exited; the loop has not run the reader yet
    reader.read_pending()
    assert got == [{"type": "report", "n": 1}, {"type": "stopped"}] and closed == [True] and reader.closed
