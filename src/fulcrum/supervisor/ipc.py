"""The pipe between the main process and one worker: length-prefixed JSON messages, sockets passed alongside.

A frame is a 6-byte header (payload length, 4 bytes; number of file descriptors, 2 bytes; both big-endian)
followed by the payload, one JSON object of plain data. File descriptors (the listening sockets a worker
serves) travel as ``SCM_RIGHTS`` ancillary data attached to the first bytes of their frame; the reader
queues the descriptors it receives and gives each frame the ones its header counts, so they stay paired
however the kernel splits the stream.

Both ends run on an event loop: reads and writes never block, and a frame that does not fit in the
socket buffer waits in a queue until it does. Nothing here knows what the messages mean.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("fulcrum.workers")

HEADER = struct.Struct("!IH")
#: A frame larger than this is garbage (a config is a few kilobytes to a few megabytes).
MAX_FRAME = 256 * 1024 * 1024
#: The most descriptors one frame may carry (listening sockets of one config).
MAX_FDS = 1024
_READ = 1 << 16
_FD_SIZE = array.array("i").itemsize

Message = dict[str, Any]


class ProtocolError(Exception):
    """The other end sent something that is not a frame."""


def encode(message: Message, nfds: int = 0) -> bytes:
    """One frame's bytes: the header and ``message`` as compact JSON."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME or nfds > MAX_FDS:
        raise ValueError(f"message too large to send ({len(payload)} bytes, {nfds} descriptors)")
    return HEADER.pack(len(payload), nfds) + payload


class Decoder:
    """Frames out of a byte stream and a stream of received descriptors; pure, no I/O."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fds: deque[int] = deque()

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> list[tuple[Message, list[int]]]:
        """Add what one read got; the frames now complete, each with its descriptors."""
        self._buffer += data
        self._fds.extend(fds)
        frames: list[tuple[Message, list[int]]] = []
        buffer = self._buffer
        while len(buffer) >= HEADER.size:
            length, nfds = HEADER.unpack_from(buffer)
            if length > MAX_FRAME or nfds > MAX_FDS:
                raise ProtocolError(f"frame header announces {length} bytes and {nfds} descriptors")
            end = HEADER.size + length
            if len(buffer) < end:
                break
            if nfds > len(self._fds):
                raise ProtocolError(f"frame announces {nfds} descriptors, {len(self._fds)} arrived")
            try:
                message = json.loads(bytes(buffer[HEADER.size:end]))
            except ValueError as err:
                raise ProtocolError(f"frame is not JSON: {err}") from None
            if not isinstance(message, dict):
                raise ProtocolError("frame is not a JSON object")
            del buffer[:end]
            frames.append((message, [self._fds.popleft() for _ in range(nfds)]))
        return frames

    def close(self) -> None:
        """Close descriptors received for frames that never completed."""
        while self._fds:
            os.close(self._fds.popleft())


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD_SIZE
            fds.extend(array.array("i", data[:usable]))
    return fds


class Channel:
    """One end of the pipe on an event loop: ``send`` queues a frame, ``on_message`` hears each one received.

    ``on_close`` is called once, when the other end has gone (end of file, a broken pipe) or the stream
    was not frames; the channel is closed by then. Descriptors received belong to the receiver.
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Message, list[int]], None],
        on_close: Callable[[], None],
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop
        self._on_message = on_message
        self._on_close = on_close
        self._decoder = Decoder()
        self._queue: deque[tuple[memoryview, list[int]]] = deque()
        self._writing = False
        self.closed = False
        loop.add_reader(sock.fileno(), self._read)

    def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        """Queue one message (and the descriptors it carries: they are duplicated, the caller keeps its own)."""
        if self.closed:
            return
        self._queue.append((memoryview(encode(message, len(fds))), list(fds)))
        if not self._writing:
            self._flush()

    @property
    def pending(self) -> int:
        """Bytes queued and not yet written."""
        return sum(len(data) for data, _ in self._queue)

    def _flush(self) -> None:
        queue = self._queue
        while queue:
            data, fds = queue[0]
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                sent = self.sock.sendmsg([data], ancillary)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                log.debug("channel write failed: %s", err)
                self._lost()
                return
            if sent < len(data):
                queue[0] = (data[sent:], [])  # the descriptors went with the first bytes
                break
            queue.popleft()
        if queue and not self._writing:
            self._writing = True
            self.loop.add_writer(self.sock.fileno(), self._flush)
        elif not queue and self._writing:
            self._writing = False
            self.loop.remove_writer(self.sock.fileno())

    def read_pending(self) -> None:
        """Take in whatever the other end sent that has not been read yet (it may have exited since)."""
        while not self.closed and self._read():
            pass

    def _read(self) -> bool:
        """One read; True when it got data (more may follow)."""
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(_READ, socket.CMSG_SPACE(MAX_FDS * _FD_SIZE))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            log.debug("channel read failed: %s", err)
            self._lost()
            return False
        fds = _received_fds(ancillary)
        if flags & socket.MSG_CTRUNC:
            log.error("channel: descriptors were cut off in transit")
        if not data:
            for fd in fds:
                os.close(fd)
            self._lost()
            return False
        try:
            frames = self._decoder.feed(data, fds)
        except ProtocolError as err:
            log.error("channel: %s", err)
            self._lost()
            return False
        for message, got in frames:
            if self.closed:
                for fd in got:
                    os.close(fd)
                continue
            self._on_message(message, got)
        return True

    def _lost(self) -> None:
        if self.closed:
            return
        self.close()
        self._on_close()

    def close(self) -> None:
        """Stop reading and writing; frames still queued are dropped."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        fileno = self.sock.fileno()
        if fileno >= 0:
            self.loop.remove_reader(fileno)
            if self._writing:
                self.loop.remove_writer(fileno)
        self._writing = False
        self._decoder.close()
        self.sock.close()
