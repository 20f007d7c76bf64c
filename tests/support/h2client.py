"""A small blocking HTTP/2 client for tests, on h2's own client state machine over a real socket.

It gives the test full control of what goes on the wire: how much window credit each stream gets back
(``auto_ack``), raw bytes or frames of its own (``send_raw``), resets. Responses are gathered per stream.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes


@dataclass
class StreamResult:
    """What came back on one stream."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    interim: list[int] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    """One HTTP/2 connection (cleartext, prior knowledge) to 127.0.0.1:``port``."""

    def __init__(
        self, port: int, *, window: int | None = None, preface: bool = True, sock: socket.socket | None = None
    ) -> None:
        self.sock = sock if sock is not None else socket.create_connection(("127.0.0.1", port), timeout=10)
        # no checks of what is sent: tests send malformed requests on purpose
        config = H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                 normalize_outbound_headers=False)
        self.conn = H2Connection(config)
        self.results: dict[int, StreamResult] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = False
        self.auto_ack: set[int] | None = None  # None: every stream's data is acknowledged at once
        self.remote_max_streams: int | None = None
        if preface:
            self.conn.initiate_connection()
            if window is not None:
                self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        authority: str = "example.test",
        end: bool = True,
    ) -> int:
        """Open a stream with a request (its body sent as the windows allow, see ``send_body``); its id."""
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode())]
        if authority:
            fields.append((b":authority", authority.encode()))
        fields += [(k.encode(), v.encode()) for k, v in headers]
        self.results[sid] = StreamResult()
        self.conn.send_headers(sid, fields, end_stream=end and not body)
        if body:  # the head goes out with the first DATA frame, in one write
            self.send_body(sid, body, end=end)
        else:
            self.flush()
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True, timeout: float = 10) -> None:
        """Send ``body`` on stream ``sid``, waiting for window credit whenever it runs out."""
        view = memoryview(body)
        deadline = time.monotonic() + timeout
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(view))
            if room <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no window credit for stream {sid}")
                self._read_once(0.5)
                if self.closed or self.results[sid].done:
                    return
                continue
            self.conn.send_data(sid, bytes(view[:room]), end_stream=end and room == len(view))
            view = view[room:]
            self.flush()
        if end and not body:
            self.conn.end_stream(sid)
            self.flush()

    def reset(self, sid: int, code: int = 8) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    def ack(self, sid: int, n: int) -> None:
        self.conn.acknowledge_received_data(n, sid)
        self.flush()

    def _read_once(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            self.closed = True
            return True
        if not data:
            self.closed = True
            return True
        for event in self.conn.receive_data(data):
            sid = getattr(event, "stream_id", None)
            res = self.results.setdefault(sid, StreamResult()) if sid else None
            if isinstance(event, ResponseReceived) and res is not None:
                res.status = int(dict(event.headers or [])[b":status"])
                res.headers = [(k, v) for k, v in event.headers or [] if not k.startswith(b":")]
            elif isinstance(event, InformationalResponseReceived) and res is not None:
                res.interim.append(int(dict(event.headers or [])[b":status"]))
            elif isinstance(event, DataReceived) and res is not None:
                res.body += event.data or b""
                if event.flow_controlled_length and (self.auto_ack is None or sid in self.auto_ack):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, TrailersReceived):
                pass
            elif isinstance(event, StreamEnded) and res is not None:
                res.ended = True
            elif isinstance(event, StreamReset) and res is not None:
                res.reset = int(event.error_code) if event.error_code is not None else 0
            elif isinstance(event, ConnectionTerminated):
                self.goaway = event
        self.flush()
        return True

    def wait(self, until: Callable[[], bool], timeout: float = 10) -> None:
        """Read frames until ``until()`` holds; TimeoutError if it does not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the awaited HTTP/2 state did not come")
            if self.closed:
                if until():
                    return
                raise ConnectionError("the server closed the connection")
            self._read_once(min(left, 0.5))

    def response(self, sid: int, timeout: float = 10) -> StreamResult:
        """Wait for stream ``sid`` to end (or be reset) and return what came."""
        self.wait(lambda: self.results[sid].done, timeout)
        return self.results[sid]

    def wait_closed(self, timeout: float = 10) -> None:
        """Read until the server closes the connection."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not close the connection")
            self._read_once(0.5)

    def close(self) -> None:
        self.sock.close()
