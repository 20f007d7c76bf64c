"""HTTP/2 from clients: one connection, many streams, each stream an ``Exchange`` on the HTTP/1.1 upstream pool.

``H2Connection`` is the asyncio protocol of one client connection that speaks HTTP/2. It is reached two
ways: a TLS listener hands it the connection once ALPN chose ``h2`` (``fulcrum.proxy.alpn``, at the end of
the handshake; its streams then forward ``proto=https``), and a plain listener with ``http2.h2c`` on hands over a
connection whose first bytes are the HTTP/2 connection preface (prior knowledge; ``ClientConnection``
notices it on its parser's error path, so HTTP/1.1 requests pay nothing). ``Upgrade: h2c`` is never
honoured (DESIGN 5).

Rules (RFC 9113) and where they are kept:

- Framing, HPACK, stream states, SETTINGS, PING and the accounting of flow-control windows: the h2
  library. A connection error it finds (a bad preface, DATA beyond a window, a header block over
  ``limits.max_header_bytes``, too many streams, ...) is answered with GOAWAY and the error code h2
  chose, logged in one line, and the connection is closed; every stream's upstream is dropped.
- A malformed request (pseudo-headers, connection-specific or upper-case header names, a bad value):
  RST_STREAM PROTOCOL_ERROR on that stream alone, nothing sent upstream (``request_fields``). Requests
  Fulcrum refuses under its HTTP/1.1 limits (413, 414, 400 without ``:authority``) get that answer on
  the stream; the connection goes on.
- Responses: the exchange writes HTTP/1.1 bytes, as for any client; they are parsed back (httptools,
  which knows every framing the exchange may write) into HEADERS and DATA frames. A response cut short
  upstream ends in RST_STREAM INTERNAL_ERROR after the bytes that came, never in a made-up END_STREAM.
- Flow control out: a stream's body waits for its own window and the connection's; past ``HIGH`` bytes
  waiting, the upstream connection of that stream alone stops being read, until it is under ``LOW``.
  A full socket buffer holds back every stream's DATA the same way.
- Flow control in: request body data gets its window credit back as soon as the exchange takes it,
  unless the exchange blocked reading (no upstream connection yet, upstream write buffer full); then
  the credit waits until it unblocks. The connection window is made large enough for every stream's
  window, so only the blocked stream waits.
- Graceful stop (``drain``): GOAWAY naming the last stream taken; those streams finish, later ones are
  refused (REFUSED_STREAM), and the connection closes once none is left.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque

import httptools
from h2.config import H2Configuration
from h2.connection import ConnectionState
from h2.connection import H2Connection as _H2
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from fulcrum.http.headers import is_trusted
from fulcrum.http.status import error_response
from fulcrum.proxy.context import ProxyContext
from fulcrum.proxy.exchange import BODY, Exchange
from fulcrum.proxy.h2stream import MALFORMED, H2Stream, request_fields

log = logging.getLogger("fulcrum.proxy")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Response bytes waiting for a stream's window beyond which its upstream connection stops being read.
HIGH = 64 * 1024
#: ... and under which it is read again.
LOW = 16 * 1024
_STREAM_WINDOW = 65535  # the protocol's default initial window, kept

_STATUS = {code: b"%d" % code for code in range(100, 600)}
# Response header fields that HTTP/2 has no place for (RFC 9113 8.2.2); the exchange may have added some.
_NOT_IN_H2 = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)


class _Stream:
    """One stream's response on its way out, and what its request still owes.

    It receives the httptools callbacks of the HTTP/1.1 bytes its exchange writes.
    """

    __slots__ = (
        "body_at",
        "broken",
        "complete",
        "conn",
        "end_sent",
        "ex",
        "ex_done",
        "head",
        "headers",
        "interim",
        "out",
        "out_len",
        "parser",
        "paused",
        "remote_ended",
        "sid",
        "skip",
        "stream",
        "unacked",
    )

    def __init__(self, conn: H2Connection, stream: H2Stream, ex: Exchange, remote_ended: bool) -> None:
        self.conn = conn
        self.sid = stream.stream_id
        self.stream = stream
        self.ex = ex
        self.parser: httptools.HttpResponseParser | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: list[tuple[bytes, bytes]] | None = None  # a final head not sent yet
        self.interim = False
        self.complete = False  # the whole HTTP/1.1 response was written
        self.skip = False  # the response to HEAD is complete with its head
        self.out: deque[bytes] = deque()
        self.out_len = 0
        self.end_sent = False  # END_STREAM or RST_STREAM went out
        self.ex_done = False
        self.broken = False  # the exchange ended before its response did
        self.paused: asyncio.Transport | None = None  # the upstream transport paused for this stream
        self.remote_ended = remote_ended
        self.unacked = 0  # request body bytes whose window credit waits for the exchange to read again
        self.body_at = 0.0

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in _NOT_IN_H2:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        fields = [(b":status", _STATUS.get(status) or b"%d" % status), *self.headers]
        self.headers = []
        if status < 200:
            self.interim = True
            self.conn.send_head(self, fields, False)
            return
        if self.ex.method_head:  # no body follows, whatever the head says
            self.complete = self.skip = True
            self.conn.send_head(self, fields, True)
            return
        self.head = fields

    def on_body(self, body: bytes) -> None:
        self.out.append(body)
        self.out_len += len(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True


class H2Connection(asyncio.Protocol):
    """The protocol of one HTTP/2 client connection."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.h2: _H2 | None = None
        self.streams: dict[int, _Stream] = {}
        self.client_ip = ""
        self.client_ip_b = b""
        self.trusted = False
        self.proto = b"http"  # what X-Forwarded-Proto and Forwarded say: https over TLS
        self.deadline = 0.0
        self.write_paused = False
        self.batching = False  # inside data_received: frames go out once, at its end
        self.started = False  # a request came
        self.last_stream = -1  # >= 0 once draining: the last stream id taken

    # -- lifecycle ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._begin(transport, counted=False)

    def take_over(self, transport: asyncio.BaseTransport, data: bytes = b"") -> None:
        """Serve a connection another protocol accepted (and counted), starting with the bytes it read."""
        self._begin(transport, counted=True)
        if data:
            self.data_received(data)

    def _begin(self, transport: asyncio.BaseTransport, counted: bool) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        ctx = self.ctx
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if transport.get_extra_info("ssl_object") is not None:
            self.proto = b"https"
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0])
            self.client_ip_b = self.client_ip.encode("ascii")
        snap = ctx.snapshot
        if snap.trusted_proxies:
            self.trusted = is_trusted(self.client_ip, snap.trusted_proxies)
        streams = snap.config.http2.max_concurrent_streams
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,  # checked by request_fields, so that a bad request resets its stream only
            validate_outbound_headers=False,  # what the exchange writes was checked as HTTP/1.1 already
            normalize_outbound_headers=False,
        )
        h2 = self.h2 = _H2(config=config)
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: snap.max_header_bytes,
                SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            },
        )
        h2.decoder.max_header_list_size = snap.max_header_bytes  # in force before the client acknowledges it
        h2.initiate_connection()
        if streams > 1:  # room for every stream's window: a stream whose upstream is slow blocks only itself
            h2.increment_flow_control_window((streams - 1) * _STREAM_WINDOW)
        self.deadline = ctx.now + snap.header_timeout
        ctx.timed.add(self)
        ctx.clients.add(self)
        if not counted:
            ctx.stats.connections_active += 1
            ctx.stats.connections_total += 1
        self._send()
        if ctx.draining:
            self.drain()

    def connection_lost(self, exc: Exception | None) -> None:
        ctx = self.ctx
        self.transport = None
        ctx.timed.discard(self)
        ctx.clients.discard(self)
        ctx.stats.connections_active -= 1
        self._drop_streams()

    def _drop_streams(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            st.end_sent = True
            ex = st.ex
            if not ex.finished:
                ex.abandon_upstream()
                ex.close_after = True
                ex.end()

    def on_timeout(self, now: float) -> None:
        """Idle too long, or a request body stopped arriving on a stream."""
        self.deadline = 0.0
        if not self.streams:
            self._close(ErrorCodes.NO_ERROR)
            return
        limit = self.ctx.snapshot.header_timeout
        for st in list(self.streams.values()):
            ex = st.ex
            if ex.phase == BODY and not ex.finished and st.body_at + limit <= now:
                self.stream_reject(st.stream, 408, "the request body stopped arriving", ex)
        self._arm()
        self._send()

    def _arm(self) -> None:
        """The next deadline: idle or preface time when no stream is open, else the first body that may stall."""
        ctx = self.ctx
        snap = ctx.snapshot
        if not self.streams:
            self.deadline = ctx.now + (snap.keepalive_timeout if self.started else snap.header_timeout)
            return
        soonest = 0.0
        for st in self.streams.values():
            if st.ex.phase == BODY and not st.ex.finished:
                at = st.body_at + snap.header_timeout
                if not soonest or at < soonest:
                    soonest = at
        self.deadline = soonest

    def drain(self) -> None:
        """Graceful stop: GOAWAY now, the open streams finish, the connection closes after the last."""
        h2 = self.h2
        if self.transport is None or h2 is None or self.last_stream >= 0:
            return
        self.last_stream = h2.highest_inbound_stream_id
        if not self.streams:
            self._close(ErrorCodes.NO_ERROR)
            return
        # h2 sends nothing more after its own GOAWAY, so this first one is written beside it
        self._send()
        frame = GoAwayFrame(stream_id=0, last_stream_id=self.last_stream, error_code=ErrorCodes.NO_ERROR)
        self.transport.write(frame.serialize())

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()

    def _close(self, code: ErrorCodes) -> None:
        """GOAWAY with ``code`` and close once it is written."""
        h2 = self.h2
        transport = self.transport
        if transport is None or h2 is None:
            return
        if h2.state_machine.state != ConnectionState.CLOSED:
            last = self.last_stream if self.last_stream >= 0 else h2.highest_inbound_stream_id
            h2.close_connection(error_code=code, last_stream_id=last)
        self.batching = False
        self._send()
        transport.close()

    # -- reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        h2 = self.h2
        if h2 is None or self.transport is None:
            return
        try:
            events = h2.receive_data(data)
        except ProtocolError as err:
            code = err.error_code if isinstance(err.error_code, ErrorCodes) else ErrorCodes.PROTOCOL_ERROR
            log.info("HTTP/2 connection from %s closed: %s (%s)", self.client_ip, str(err) or type(err).__name__,
                     code.name)
            self._drop_streams()
            self._close(code)
            return
        self.batching = True
        try:
            self._handle(events)
        except Exception:
            log.exception("error in the HTTP/2 connection from %s", self.client_ip)
            self._drop_streams()
            self._close(ErrorCodes.INTERNAL_ERROR)
            return
        finally:
            self.batching = False
        self._send()

    def _handle(self, events: list[Event]) -> None:
        for i, event in enumerate(events):
            kind = type(event)
            if kind is DataReceived:
                self._on_data(event)  # type: ignore[arg-type]
            elif kind is RequestReceived:
                self._on_request(event, events, i)  # type: ignore[arg-type]
            elif kind is StreamEnded:
                self._on_end(event.stream_id)  # type: ignore[attr-defined]
            elif kind is WindowUpdated:
                self._on_window(event.stream_id)  # type: ignore[attr-defined]
            elif kind is StreamReset:
                self._on_reset(event.stream_id)  # type: ignore[attr-defined]
            elif kind is RemoteSettingsChanged:
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:  # type: ignore[attr-defined]
                    self._on_window(0)
            elif kind is ConnectionTerminated:  # the client's GOAWAY: h2 sends nothing more, so stop here
                self._drop_streams()
                transport = self.transport
                if transport is not None:
                    transport.close()
                return
            # request trailers are not forwarded (StreamEnded follows them); PING and SETTINGS are h2's

    def _on_request(self, event: RequestReceived, events: list[Event], i: int) -> None:
        h2 = self.h2
        assert h2 is not None
        sid = event.stream_id
        assert sid is not None
        if 0 <= self.last_stream < sid:  # opened after our GOAWAY
            h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        ctx = self.ctx
        ended = event.stream_ended is not None
        stream = H2Stream(self, ctx, sid, self.client_ip, self.client_ip_b, self.trusted, self.proto)
        ex = Exchange(stream, ctx.snapshot)
        code, detail = request_fields(ex, event.headers or [], ended, -1 if ended else _whole_body(events, i, sid))
        if code == MALFORMED:
            log.debug("HTTP/2 stream %d from %s reset: %s", sid, self.client_ip, detail)
            h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        st = self.streams[sid] = _Stream(self, stream, ex, ended)
        stream.current = ex
        self.started = True
        if ex.phase == BODY:
            st.body_at = ctx.now
        self._arm()
        if code:
            ex.respond_error(code, detail)
        else:
            ex.start()

    def _on_data(self, event: DataReceived) -> None:
        h2 = self.h2
        assert h2 is not None
        sid = event.stream_id
        assert sid is not None
        credit = event.flow_controlled_length or 0
        st = self.streams.get(sid)
        if st is not None and not st.ex.finished:
            ex = st.ex
            data = event.data
            if data:
                st.body_at = self.ctx.now
                ex.request_body(data)
            if self.streams.get(sid) is st and not ex.finished:
                stream = st.stream
                if ex.upstream is None:  # held by the exchange until it has a connection, which unblocks it
                    stream.read_block |= stream.BLOCK_BUFFER
                if stream.read_block:
                    st.unacked += credit
                    return
        if credit:  # a body no exchange wants any more is read and dropped
            h2.acknowledge_received_data(credit, sid)

    def _on_end(self, sid: int | None) -> None:
        st = self.streams.get(sid or 0)
        if st is None:
            return
        st.remote_ended = True
        ex = st.ex
        if ex.phase == BODY and not ex.finished:
            ex.request_done()
            self._arm()
        self._settle(st)

    def _on_reset(self, sid: int | None) -> None:
        st = self.streams.pop(sid or 0, None)
        if st is None:
            return
        st.end_sent = True
        ex = st.ex
        if not ex.finished:
            ex.abandon_upstream()
            ex.close_after = True
            ex.end()
        self._arm()

    def _on_window(self, sid: int | None) -> None:
        if sid:
            st = self.streams.get(sid)
            if st is not None and st.out:
                self._pump(st)
            return
        for st in list(self.streams.values()):
            if st.out:
                self._pump(st)

    # -- what streams ask (StreamOwner) ------------------------------------------------------

    def stream_write(self, stream: H2Stream, data: bytes) -> None:
        st = self.streams.get(stream.stream_id)
        if st is None or st.skip or st.end_sent:
            return
        parser = st.parser
        if parser is None:
            parser = st.parser = httptools.HttpResponseParser(st)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as err:
            log.error("HTTP/2 stream %d: the response could not be framed (%s)", st.sid, err)
            st.complete = False
            st.broken = True
            st.out.clear()
            st.out_len = 0
        head = st.head
        if head is not None:
            st.head = None
            self.send_head(st, head, st.complete and not st.out)
        self._pump(st)
        self._send()

    def stream_done(self, stream: H2Stream, ex: Exchange, keep_alive: bool) -> None:
        st = self.streams.get(stream.stream_id)
        if st is None or st.ex is not ex:
            return
        st.ex_done = True
        self._resume_upstream(st)
        if not st.complete:  # cut short: the client gets what came, then a reset
            st.broken = True
        self._pump(st)
        self._send()

    def stream_reject(self, stream: H2Stream, status: int, detail: str, ex: Exchange | None) -> None:
        st = self.streams.get(stream.stream_id)
        if st is None:
            return
        current = st.ex
        if current.finished:
            return
        current.abandon_upstream()
        current.close_after = True
        if not current.resp_started:
            self.stream_write(stream, error_response(status, detail, current.rid, close=False))
            current.status = status
        current.end()

    def stream_unblocked(self, stream: H2Stream) -> None:
        st = self.streams.get(stream.stream_id)
        h2 = self.h2
        if st is None or h2 is None or not st.unacked:
            return
        credit, st.unacked = st.unacked, 0
        h2.acknowledge_received_data(credit, st.sid)
        self._send()

    # -- writing ---------------------------------------------------------------------------

    def send_head(self, st: _Stream, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        h2 = self.h2
        assert h2 is not None
        try:
            h2.send_headers(st.sid, fields, end_stream=end)
        except StreamClosedError:
            self._gone(st)
            return
        if end:
            st.end_sent = True

    def _pump(self, st: _Stream) -> None:
        """Send what the windows allow of a stream's body, then its end; pause or resume its upstream."""
        h2 = self.h2
        assert h2 is not None
        out = st.out
        sid = st.sid
        try:
            while out and not self.write_paused:
                room = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if room <= 0:
                    break
                chunk = out[0]
                if len(chunk) <= room:
                    out.popleft()
                else:
                    out[0] = chunk[room:]
                    chunk = chunk[:room]
                st.out_len -= len(chunk)
                end = not out and st.complete
                h2.send_data(sid, chunk, end_stream=end)
                if end:
                    st.end_sent = True
            if not out and not st.end_sent:
                if st.complete and st.head is None:
                    h2.end_stream(sid)
                    st.end_sent = True
                elif st.broken:
                    h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
                    st.end_sent = True
        except StreamClosedError:
            self._gone(st)
            return
        if st.paused is None:
            if st.out_len > HIGH and not st.ex_done:
                conn = st.ex.upstream
                transport = conn.transport if conn is not None else None
                if transport is not None:
                    transport.pause_reading()
                    st.paused = transport
        elif st.out_len <= LOW:
            self._resume_upstream(st)
        self._settle(st)

    def _settle(self, st: _Stream) -> None:
        """Forget a stream whose exchange is over and whose response went out whole (or was reset)."""
        if not (st.end_sent and st.ex_done) or self.streams.get(st.sid) is not st:
            return
        if not st.remote_ended:  # the answer came before the whole request: the rest is not needed
            h2 = self.h2
            assert h2 is not None
            try:
                h2.reset_stream(st.sid, ErrorCodes.NO_ERROR)
            except StreamClosedError:
                pass
        self._forget(st)

    def _gone(self, st: _Stream) -> None:
        """The stream closed under us (reset by the client in the same read): drop it."""
        st.end_sent = True
        st.out.clear()
        st.out_len = 0
        ex = st.ex
        if not ex.finished:
            ex.abandon_upstream()
            ex.close_after = True
            ex.end()
        self._resume_upstream(st)
        if self.streams.get(st.sid) is st:
            self._forget(st)

    def _forget(self, st: _Stream) -> None:
        del self.streams[st.sid]
        if st.unacked:  # the connection window must not shrink by what this stream held back
            h2 = self.h2
            assert h2 is not None
            h2.acknowledge_received_data(st.unacked, st.sid)
            st.unacked = 0
        if self.last_stream >= 0 and not self.streams:
            self._close(ErrorCodes.NO_ERROR)
            return
        self._arm()

    def _resume_upstream(self, st: _Stream) -> None:
        transport = st.paused
        if transport is not None:
            st.paused = None
            if not transport.is_closing():
                transport.resume_reading()

    def _send(self) -> None:
        if self.batching:
            return
        h2 = self.h2
        transport = self.transport
        if h2 is None or transport is None:
            return
        data = h2.data_to_send()
        if data:
            transport.write(data)

    def pause_writing(self) -> None:
        self.write_paused = True
        transport = self.transport
        if transport is not None:
            transport.pause_reading()  # nothing read can be answered meanwhile (PINGs included)

    def resume_writing(self) -> None:
        self.write_paused = False
        transport = self.transport
        if transport is not None:
            transport.resume_reading()
        for st in list(self.streams.values()):
            if st.out:
                self._pump(st)
        self._send()


def _whole_body(events: list[Event], i: int, sid: int) -> int:
    """The body's length when the events after a request's head already hold all of it, else -1."""
    total = 0
    for event in events[i + 1 :]:
        if getattr(event, "stream_id", None) != sid:
            continue
        kind = type(event)
        if kind is DataReceived:
            total += len(event.data or b"")  # type: ignore[attr-defined]
        elif kind is StreamEnded:
            return total
        else:  # trailers, a reset
            return -1
    return -1
