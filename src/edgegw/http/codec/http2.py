"""HTTP/2 both ways over the ``h2`` library (RFC 9113): many streams under one connection.

h2 owns the framing, HPACK and the state machines; this module maps its events to streams
and back, and does what a proxy adds on top:
- flow control that carries back-pressure: a stream whose reader is slow stops having its
  window credited, so the peer stops sending, and response data waits for the peer's window;
- Envoy's flood protections (``http2_protocol_options``): frames and control frames queued
  while the client does not read, empty DATA frames, PRIORITY and WINDOW_UPDATE floods, and
  streams past ``max_concurrent_streams`` refused one by one. h2 itself caps CONTINUATION
  chains and the header list size;
- a graceful GOAWAY on drain, written beside h2 (whose own GOAWAY ends the connection at once).
Codec stats are Envoy's ``http2.*`` (``cluster.<name>.http2.*`` upstream).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import _decode_headers
from h2.stream import StreamClosedBy
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
from mypy_extensions import mypyc_attr

from ... import log
from ...config import model as m
from ...stats import Counter, Gauge, StatSet, Store
from . import (
    ConnectionOwner,
    FlowControl,
    Headers,
    RequestHead,
    ResponseSink,
    ServerCallbacks,
    State,
    StreamDecoder,
)

_log = log.get("http")

CONNECTION_SPECIFIC = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"host", b"http2-settings"})
"""Never sent on HTTP/2 (RFC 9113 §8.2.2); Host becomes :authority."""
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WRITE_HIGH = 1024 * 1024
"""Response bytes a stream may have waiting for the peer's window before its upstream is
asked to pause (Envoy's per-stream buffer limit)."""
DEFAULT_WINDOW = 65535
CONTROL_FRAMES = frozenset((3, 4, 6))
"""RST_STREAM, SETTINGS and PING: the frames Envoy counts against max_outbound_control_frames."""


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class Http2Stats(StatSet):
    """Envoy's HTTP/2 codec stats (a subset)."""

    rx_reset: Counter
    tx_reset: Counter
    rx_messaging_error: Counter
    header_overflow: Counter
    goaway_sent: Counter
    outbound_flood: Counter
    outbound_control_flood: Counter
    inbound_empty_frames_flood: Counter
    inbound_priority_frames_flood: Counter
    inbound_window_update_frames_flood: Counter
    dropped_headers_with_underscores: Counter
    requests_rejected_with_underscores_in_headers: Counter
    streams_active: Gauge
    pending_send_data: Gauge


class Options:
    """``http2_protocol_options`` with Envoy's defaults."""

    def __init__(self, cfg: m.Http2ProtocolOptions | None) -> None:
        c = cfg or m.Http2ProtocolOptions()
        self.max_concurrent_streams = c.max_concurrent_streams
        self.stream_window = c.initial_stream_window_size
        self.connection_window = c.initial_connection_window_size
        self.hpack_table_size = c.hpack_table_size
        self.max_outbound_frames = c.max_outbound_frames
        self.max_outbound_control_frames = c.max_outbound_control_frames
        self.max_empty_frames = c.max_consecutive_inbound_frames_with_empty_payload
        self.max_priority_per_stream = c.max_inbound_priority_frames_per_stream
        self.max_window_updates_per_data = c.max_inbound_window_update_frames_per_data_frame_sent


def _config(client: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False)


def _setup(conn: h2.connection.H2Connection, opts: Options, max_header_bytes: int) -> None:
    """Our settings and windows, and the connection preface."""
    client = conn.config.client_side
    s = h2.settings.SettingCodes
    values = {s.INITIAL_WINDOW_SIZE: opts.stream_window, s.HEADER_TABLE_SIZE: opts.hpack_table_size,
              s.MAX_HEADER_LIST_SIZE: max_header_bytes}
    if client:
        values[s.ENABLE_PUSH] = 0
    else:
        values[s.MAX_CONCURRENT_STREAMS] = opts.max_concurrent_streams
    conn.local_settings = h2.settings.Settings(client=client, initial_values=values)
    conn.initiate_connection()
    if opts.connection_window > DEFAULT_WINDOW:
        conn.increment_flow_control_window(opts.connection_window - DEFAULT_WINDOW)
    conn.decoder.max_header_list_size = max_header_bytes


@mypyc_attr(native_class=False)  # a subclass of a Python class
class _ServerConnection(h2.connection.H2Connection):
    """h2's server side, changed where a flood of HEADERS hurts: a stream past
    max_concurrent_streams is refused alone (REFUSED_STREAM, as Envoy does; h2 would end the
    whole connection), and open streams are counted from the codec's own table instead of
    h2's walk over every stream at each new one (O(n²) under a flood)."""

    def __init__(self, active: dict[int, Any]) -> None:
        super().__init__(_config(False))
        self.active = active
        """The codec's streams: open until both their request and response are done."""
        self.opened_in_read = 0
        """Streams opened in the read being parsed (the codec hears of them after it)."""
        self.refused = 0
        self.prune_at = 64

    def receive_data(self, data: Any) -> list[h2.events.Event]:
        self.opened_in_read = 0
        if len(self.streams) > self.prune_at:
            self._open_streams(1)  # h2 forgets closed streams in that walk (now and then)
            self.prune_at = 2 * len(self.streams) + 64
        return super().receive_data(data)

    @property
    def open_inbound_streams(self) -> int:
        return len(self.active) + self.opened_in_read

    def _receive_headers_frame(self, frame: HeadersFrame
                               ) -> tuple[list[Frame], list[h2.events.Event]]:
        sid = frame.stream_id
        if sid in self.streams or sid <= self.highest_inbound_stream_id or not sid % 2:
            return super()._receive_headers_frame(frame)  # (h2 tells what is wrong)
        if self.open_inbound_streams < self.local_settings.max_concurrent_streams:
            result = super()._receive_headers_frame(frame)
            self.opened_in_read += 1
            return result
        _decode_headers(self.decoder, frame.data)  # HPACK's state moves on all the same
        self.highest_inbound_stream_id = sid
        self._closed_streams[sid] = StreamClosedBy.SEND_RST_STREAM
        self.refused += 1
        return [RstStreamFrame(sid, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)], []


def _client_connection(opts: Options, max_header_bytes: int) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(_config(True))
    _setup(conn, opts, max_header_bytes)
    return conn


class _Sender:
    """Data waiting for the peer's flow-control window, for one stream in one direction."""

    __slots__ = ("blocked", "end", "pending", "pending_bytes", "sent_end", "trailers")

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.end = False
        self.trailers: Headers | None = None
        self.sent_end = False
        self.blocked = False

    def push(self, conn: h2.connection.H2Connection, sid: int) -> int:
        """Sends what the windows allow; returns the DATA frames sent."""
        frames = 0
        while self.pending:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                return frames
            data = self.pending[0]
            if len(data) > window:
                self.pending[0] = data[window:]
                data = data[:window]
            else:
                self.pending.pop(0)
            self.pending_bytes -= len(data)
            last = not self.pending and self.end and self.trailers is None
            conn.send_data(sid, data, end_stream=last)
            frames += 1
            if last:
                self.sent_end = True
        if self.end and not self.sent_end:
            self.sent_end = True
            if self.trailers is not None:
                conn.send_headers(sid, self.trailers, end_stream=True)
            else:
                conn.end_stream(sid)
        return frames


def _clean(headers: Headers) -> Headers:
    out: Headers = []
    for kv in headers:
        k = kv[0]
        if k in CONNECTION_SPECIFIC or (k == b"te" and kv[1].lower() != b"trailers"):
            continue
        out.append(kv)
    return out


# --- the server side ------------------------------------------------------------------------


class _Response:
    """The encoder of one stream's response."""

    __slots__ = ("codec", "decoder", "done", "held", "out", "reasons", "remote_ended", "sid")

    def __init__(self, codec: Http2ServerCodec, sid: int) -> None:
        self.codec = codec
        self.sid = sid
        self.out = _Sender()
        self.decoder: StreamDecoder | None = None
        self.done = False
        self.remote_ended = False
        self.reasons: set[str] = set()
        self.held = 0
        """Received bytes not yet credited back while reading is disabled."""

    def encode_100_continue(self) -> None:
        self.codec.h2.send_headers(self.sid, [(b":status", b"100")])

    def encode_headers(self, status: int, headers: Headers, end_stream: bool,
                       close: bool = False) -> None:
        if self.done:
            return
        self.codec.h2.send_headers(self.sid, [(b":status", b"%d" % status), *_clean(headers)],
                                   end_stream=end_stream)
        if end_stream:
            self.out.sent_end = self.out.end = True
            self._end()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.done:
            return
        out = self.out
        if data:
            out.pending.append(data)
            out.pending_bytes += len(data)
            self.codec.stats.pending_send_data.value += len(data)
        out.end = end_stream
        self.codec.send(self)

    def encode_trailers(self, trailers: Headers) -> None:
        if self.done:
            return
        self.out.trailers = _clean(trailers)
        self.out.end = True
        self.codec.send(self)

    def flush(self) -> None:
        self.codec.flush()

    def reset(self) -> None:
        if not self.done:
            self.codec.reset(self, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def read_disable(self, reason: str, disable: bool) -> None:
        if disable:
            self.reasons.add(reason)
        elif reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons and self.held:
                held, self.held = self.held, 0
                self.codec.h2.acknowledge_received_data(held, self.sid)
                self.codec.flush()

    def _end(self) -> None:
        self.codec.stream_ended(self)


class Http2ServerCodec:
    """HTTP/2 from one client connection."""

    protocol = "HTTP/2"
    head_started = 0.0

    def __init__(self, callbacks: ServerCallbacks, transport: asyncio.Transport,
                 flow: FlowControl, opts: Options, max_header_bytes: int, max_headers: int,
                 stats: Http2Stats) -> None:
        self.callbacks = callbacks
        self.transport = transport
        self.flow = flow
        self.opts = opts
        self.max_headers = max_headers
        self.stats = stats
        self.streams: dict[int, _Response] = {}
        self.h2 = _ServerConnection(self.streams)
        _setup(self.h2, opts, max_header_bytes)
        self.closed = False
        self.draining = False
        self.goaway_at = 0
        """The last stream accepted once a GOAWAY went out (later ones are refused)."""
        self.opened = 0
        self.empty_frames = 0
        self.priority_frames = 0
        self.window_updates = 0
        self.data_frames_sent = 0
        self.queued_frames = 0
        self.queued_control = 0
        """Frames (and control frames among them) in the transport's buffer, not yet taken
        by the client: Envoy's outbound frame accounting."""
        self.written = 0
        self.queued: collections.deque[tuple[int, int, int]] = collections.deque()
        """Each write still (partly) in the buffer: where it ends in the bytes written,
        and its frames and control frames."""
        self.loop = asyncio.get_running_loop()
        self.flush_scheduled = False
        self.write_now()

    # --- bytes in -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not self.closed:
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        # Apart from feed, whose check would narrow self.closed for mypy: events close it.
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            _log.debug("HTTP/2 protocol error from client: %r", e)
            self.stats.rx_messaging_error.value += 1
            if isinstance(e, h2.exceptions.DenialOfServiceError):
                self.stats.header_overflow.value += 1
            self.callbacks.protocol_error("http2.codec_error")
            self._close()
            return
        if self.h2.refused:
            self.stats.tx_reset.value += self.h2.refused
            self.h2.refused = 0
        for ev in events:
            self._event(ev)
            if self.closed:
                return
        self.write_now()

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            assert ev.stream_id is not None and ev.data is not None
            r = self.streams.get(ev.stream_id)
            if not ev.data and ev.stream_ended is None:
                self.empty_frames += 1
                if self.empty_frames > self.opts.max_empty_frames:
                    self._flood(self.stats.inbound_empty_frames_flood)
                return
            self.empty_frames = 0
            size = ev.flow_controlled_length or 0
            if r is None or r.done and r.remote_ended:
                self.h2.acknowledge_received_data(size, ev.stream_id)
                return
            if r.reasons:
                r.held += size
            else:
                self.h2.acknowledge_received_data(size, ev.stream_id)
            if r.decoder is not None and ev.data:
                r.decoder.decode_data(ev.data)
        elif isinstance(ev, h2.events.RequestReceived):
            self._request(ev)
        elif isinstance(ev, h2.events.StreamEnded):
            assert ev.stream_id is not None
            self._remote_end(ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            r = self.streams.get(ev.stream_id or 0)
            if r is not None and r.decoder is not None and not r.remote_ended:
                r.remote_ended = True
                r.decoder.decode_trailers(list(ev.headers or []))
                self._maybe_forget(r)
        elif isinstance(ev, h2.events.StreamReset):
            self.stats.rx_reset.value += 1
            r = self.streams.pop(ev.stream_id or 0, None)
            if r is not None:
                self.stats.streams_active.value -= 1
                self._drop_pending(r)
                r.done = True
                if r.decoder is not None:
                    r.decoder.decode_reset()
        elif isinstance(ev, h2.events.WindowUpdated):
            self.window_updates += 1
            if self.window_updates > 5 + 2 * (self.opened + self.opts.max_window_updates_per_data
                                               * self.data_frames_sent):
                self._flood(self.stats.inbound_window_update_frames_flood)
                return
            if ev.stream_id:
                r = self.streams.get(ev.stream_id)
                if r is not None:
                    self.send(r)
            else:
                for r in list(self.streams.values()):
                    self.send(r)
        elif isinstance(ev, h2.events.PriorityUpdated):
            self.priority_frames += 1
            if self.priority_frames > self.opts.max_priority_per_stream * (1 + self.opened):
                self._flood(self.stats.inbound_priority_frames_flood)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.draining = True
            if not self.streams:
                self._close()

    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        assert sid is not None
        ended = ev.stream_ended is not None
        if self.draining and sid > self.goaway_at:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            self.stats.tx_reset.value += 1
            return
        self.opened += 1
        method = path = b""
        authority: bytes | None = None
        headers: Headers = []
        cookies: list[bytes] = []
        for k, v in ev.headers or []:
            k, v = bytes(k), bytes(v)  # noqa: PLW2901
            if k[:1] == b":":
                if k == b":method":
                    method = v
                elif k == b":path":
                    path = v
                elif k == b":authority":
                    authority = v
            elif k == b"cookie":
                cookies.append(v)
            else:
                headers.append((k, v))
        if cookies:
            headers.append((b"cookie", b"; ".join(cookies)))
        if authority is not None and not any(k == b"host" for k, _ in headers):
            headers.insert(0, (b"host", authority))
        r = _Response(self, sid)
        self.streams[sid] = r
        self.stats.streams_active.value += 1
        if len(headers) > self.max_headers:
            self.stats.header_overflow.value += 1
            self.reset(r, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        r.remote_ended = ended
        head = RequestHead(method, path, headers, "HTTP/2")
        decoder = self.callbacks.new_stream(head, r, ended)
        if not r.done:
            r.decoder = decoder

    def _remote_end(self, sid: int) -> None:
        r = self.streams.get(sid)
        if r is None or r.remote_ended:
            return
        r.remote_ended = True
        if r.decoder is not None and not r.done:
            r.decoder.decode_end()
        self._maybe_forget(r)

    # --- bytes out ----------------------------------------------------------------------

    def send(self, r: _Response) -> None:
        out = r.out
        was = out.pending_bytes
        try:
            self.data_frames_sent += out.push(self.h2, r.sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            r.done = r.remote_ended = True
            self._maybe_forget(r)
            return
        self.stats.pending_send_data.value += out.pending_bytes - was
        if out.pending_bytes > WRITE_HIGH and not out.blocked and r.decoder is not None:
            out.blocked = True
            r.decoder.write_blocked(True)
        elif out.blocked and out.pending_bytes < WRITE_HIGH // 2 and r.decoder is not None:
            out.blocked = False
            r.decoder.write_blocked(False)
        if out.sent_end and not r.done:
            r.done = True
            self.stream_ended(r)

    def stream_ended(self, r: _Response) -> None:
        """The response went out whole."""
        r.done = True
        if not r.remote_ended:
            # Envoy's answer to a request body still coming: the stream ends here.
            r.remote_ended = True
            self._rst(r, h2.errors.ErrorCodes.NO_ERROR)
        self._maybe_forget(r)
        self.flush()

    def _maybe_forget(self, r: _Response) -> None:
        if r.done and r.remote_ended and self.streams.pop(r.sid, None) is not None:
            self.stats.streams_active.value -= 1
            self._drop_pending(r)
            if self.draining and not self.streams:
                self._close()

    def _drop_pending(self, r: _Response) -> None:
        self.stats.pending_send_data.value -= r.out.pending_bytes
        r.out.pending.clear()
        r.out.pending_bytes = 0

    def reset(self, r: _Response, code: h2.errors.ErrorCodes) -> None:
        r.done = r.remote_ended = True
        self._rst(r, code)
        self._maybe_forget(r)
        self.flush()

    def _rst(self, r: _Response, code: h2.errors.ErrorCodes) -> None:
        try:
            self.h2.reset_stream(r.sid, code)
            self.stats.tx_reset.value += 1
        except h2.exceptions.StreamClosedError:
            pass

    def flush(self) -> None:
        """Writes what the streams produced at the end of this turn of the event loop:
        responses that complete together leave in one TLS record and one syscall."""
        if not self.flush_scheduled and not self.closed:
            self.flush_scheduled = True
            self.loop.call_soon(self.write_now)

    def write_now(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and not self.closed:
            if self._flooded(data):
                return
            self.transport.write(data)

    def _flooded(self, data: bytes) -> bool:
        """Counts the frames in the transport's buffer with this write's, as Envoy counts
        its outbound buffer (a read's answers are one write): a client that asks (PING,
        SETTINGS, streams refused or answered) faster than it reads ends with
        ``outbound_flood`` or ``outbound_control_flood`` instead of growing the buffer."""
        queued = self.queued
        if queued:
            taken = self.written - self.transport.get_write_buffer_size()
            while queued and queued[0][0] <= taken:
                _, frames, control = queued.popleft()
                self.queued_frames -= frames
                self.queued_control -= control
        frames = control = 0
        at, end = 0, len(data)
        while at + 9 <= end:
            frames += 1
            if data[at + 3] in CONTROL_FRAMES:
                control += 1
            at += 9 + int.from_bytes(data[at:at + 3], "big")
        self.written += len(data)
        queued.append((self.written, frames, control))
        self.queued_frames += frames
        self.queued_control += control
        if self.queued_control > self.opts.max_outbound_control_frames:
            self._flood(self.stats.outbound_control_flood)
        elif self.queued_frames > self.opts.max_outbound_frames:
            self._flood(self.stats.outbound_flood)
        else:
            return False
        return True

    def write_blocked(self, blocked: bool) -> None:
        """Nothing at the connection level: each stream hears it, and queued frames are
        counted as they are written."""

    def _flood(self, counter: Counter) -> None:
        counter.value += 1
        _log.debug("HTTP/2 flood from a client: closing its connection")
        self.closed = True
        self.callbacks.protocol_error("http2.flood")
        self.transport.abort()

    def _close(self) -> None:
        if not self.closed:
            self.write_now()
            self.transport.close()
        self.closed = True

    # --- the connection -----------------------------------------------------------------

    def drain(self) -> None:
        """A GOAWAY naming the last stream accepted; streams under way finish."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.goaway_at = self.h2.highest_inbound_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.goaway_at
        frame.error_code = 0
        self.write_now()
        data = frame.serialize()
        self.written += len(data)
        self.transport.write(data)
        self.stats.goaway_sent.value += 1
        if not self.streams:
            self._close()

    def head_timed_out(self, body: bytes) -> None:
        raise AssertionError("an HTTP/2 head arrives whole: head_started stays 0")

    def connection_lost(self) -> None:
        self.closed = True
        streams, self.streams = self.streams, {}
        self.stats.streams_active.value -= len(streams)
        for r in streams.values():
            self._drop_pending(r)
            r.done = True
            if r.decoder is not None:
                r.decoder.decode_reset()


# --- the client side ------------------------------------------------------------------------


class _Request:
    """One request on an upstream HTTP/2 connection (RequestEncoder)."""

    __slots__ = ("conn", "ended", "held", "out", "paused", "sid", "sink")

    def __init__(self, conn: Http2Connection, sink: ResponseSink) -> None:
        self.conn = conn
        self.sink: ResponseSink | None = sink
        self.sid = 0
        self.out = _Sender()
        self.ended = False
        """The response is over (or the stream reset): the pool has its slot back."""
        self.paused = False
        self.held = 0

    def encode_headers(self, head: RequestHead, end_stream: bool) -> None:
        conn = self.conn
        authority = b""
        for k, v in head.headers:
            if k == b"host":
                authority = v
                break
        try:
            self.sid = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(self.sid, [
                (b":method", head.method), (b":scheme", conn.scheme),
                (b":authority", authority), (b":path", head.path), *_clean(head.headers)],
                end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:  # e.g. past the server's stream limit
            _log.debug("cannot open a stream to %s: %r", conn.pool.label, e)
            sink, self.sink = self.sink, None
            self.ended = True
            conn.pool.release(conn)
            if sink is not None:
                sink.upstream_reset("remote refused stream reset", stale=False)
            return
        conn.active[self.sid] = self
        if end_stream:
            self.out.end = self.out.sent_end = True
        conn.flush()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.ended or self.out.sent_end:
            return
        if data:
            self.out.pending.append(data)
            self.out.pending_bytes += len(data)
        self.out.end = end_stream
        self.conn.send(self)

    def encode_trailers(self, trailers: Headers) -> None:
        if self.ended or self.out.sent_end:
            return
        self.out.trailers = _clean(trailers)
        self.out.end = True
        self.conn.send(self)

    def read_disable(self, disable: bool) -> None:
        self.paused = disable
        if not disable and self.held and not self.ended:
            held, self.held = self.held, 0
            self.conn.h2.acknowledge_received_data(held, self.sid)
            self.conn.flush()

    def reset(self) -> None:
        """The request gave up on its response."""
        if not self.ended:
            self.sink = None
            self.conn.finish(self, h2.errors.ErrorCodes.CANCEL)


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection to a host, carrying up to ``capacity`` requests at once."""

    protocol = "HTTP/2"

    def __init__(self, pool: ConnectionOwner, opts: Options, stats: Http2Stats) -> None:
        self.pool = pool
        self.opts = opts
        self.stats = stats
        self.state = State.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.h2 = _client_connection(opts, pool.max_header_bytes)
        self.configured = opts.max_concurrent_streams
        self.capacity = min(self.configured, 100)
        """Until the server's SETTINGS say otherwise, as Envoy assumes."""
        self.streams = 0
        self.requests = 0
        self.idle_since = 0.0
        self.active: dict[int, _Request] = {}
        self.goaway = False
        self.flush_scheduled = False
        self.scheme = b"https" if pool.secure else b"http"

    def usable(self) -> bool:
        return (self.transport is not None and not self.transport.is_closing()
                and not self.goaway)

    # asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.write_now()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.CONNECTING:
            self.state = State.CLOSED
            return
        active, self.active = self.active, {}
        self.pool.closed(self, with_request=bool(active))
        self.state = State.CLOSED
        for r in active.values():
            r.ended = True
            if r.sink is not None:
                r.sink.upstream_reset("connection termination", stale=False)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            _log.debug("HTTP/2 protocol error from %s: %r", self.pool.label, e)
            self.stats.rx_messaging_error.value += 1
            self._fail("protocol error")
            return
        touched: dict[int, _Request] = {}
        for ev in events:
            self._event(ev, touched)
        self.write_now()
        for r in touched.values():
            if r.sink is not None:
                r.sink.flush()
        if self.goaway and not self.active:
            self.close()

    def _event(self, ev: h2.events.Event, touched: dict[int, _Request]) -> None:
        if isinstance(ev, h2.events.ResponseReceived | h2.events.DataReceived
                      | h2.events.TrailersReceived | h2.events.StreamEnded):
            r = self.active.get(ev.stream_id or 0)
            if isinstance(ev, h2.events.DataReceived):
                size = ev.flow_controlled_length or 0
                if r is None or not r.paused:
                    self.h2.acknowledge_received_data(size, ev.stream_id or 0)
                else:
                    r.held += size
            if r is None or r.sink is None:
                return
            touched[r.sid] = r
            sink: ResponseSink = r.sink
            if isinstance(ev, h2.events.ResponseReceived):
                status = 0
                headers: Headers = []
                for k, v in ev.headers or []:
                    if k == b":status":
                        status = int(v)
                    elif k[:1] != b":":
                        headers.append((bytes(k), bytes(v)))
                end = ev.stream_ended is not None
                if end:
                    self.finish(r)
                sink.upstream_headers(status, headers, end)
            elif isinstance(ev, h2.events.DataReceived):
                end = ev.stream_ended is not None
                if end:
                    self.finish(r)
                sink.upstream_data(ev.data or b"", end)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.finish(r)
                sink.upstream_trailers([(bytes(k), bytes(v)) for k, v in ev.headers or []])
            else:  # a StreamEnded that no frame above carried
                self.finish(r)
                sink.upstream_data(b"", True)
        elif isinstance(ev, h2.events.StreamReset):
            self.stats.rx_reset.value += 1
            r = self.active.get(ev.stream_id or 0)
            if r is not None:
                reset_sink = r.sink
                self.finish(r)
                if reset_sink is not None:
                    refused = ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                    reset_sink.upstream_reset("remote refused stream reset" if refused
                                              else "remote reset", stale=False)
        elif isinstance(ev, h2.events.WindowUpdated):
            targets = [self.active[ev.stream_id]] if ev.stream_id in self.active else (
                list(self.active.values()) if not ev.stream_id else [])
            for r in targets:
                self.send(r)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            capacity = max(1, min(self.configured,
                                  self.h2.remote_settings.max_concurrent_streams))
            if capacity != self.capacity and self.state is not State.CONNECTING:
                self.capacity = capacity
                self.pool.capacity_changed(self)
            self.capacity = capacity
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = True
            last = ev.last_stream_id or 0
            for sid, r in list(self.active.items()):
                if sid > last:
                    refused_sink = r.sink
                    self.finish(r)
                    if refused_sink is not None:
                        refused_sink.upstream_reset("remote refused stream reset", stale=False)

    def send(self, r: _Request) -> None:
        try:
            r.out.push(self.h2, r.sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def flush(self) -> None:
        """Writes at the end of this turn of the event loop: requests opened together leave
        together."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.write_now)

    def write_now(self) -> None:
        self.flush_scheduled = False
        if self.transport is not None and self.state is not State.CLOSED:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    def finish(self, r: _Request, code: h2.errors.ErrorCodes | None = None) -> None:
        """The stream is over: its slot goes back to the pool."""
        if r.ended:
            return
        r.ended = True
        r.sink = None
        self.active.pop(r.sid, None)
        if code is not None or not r.out.sent_end:
            try:
                self.h2.reset_stream(r.sid, code or h2.errors.ErrorCodes.CANCEL)
                self.stats.tx_reset.value += 1
            except h2.exceptions.StreamClosedError:
                pass
            self.flush()
        if self.state is not State.CLOSED:
            self.pool.release(self)

    def _fail(self, reason: str) -> None:
        active, self.active = self.active, {}
        self.close()
        for r in active.values():
            r.ended = True
            if r.sink is not None:
                r.sink.upstream_reset(reason, stale=False)

    def pause_writing(self) -> None:
        for r in self.active.values():
            if r.sink is not None:
                r.sink.upstream_write_blocked(True)

    def resume_writing(self) -> None:
        for r in self.active.values():
            if r.sink is not None:
                r.sink.upstream_write_blocked(False)

    # the pool's side

    def new_stream(self, sink: ResponseSink) -> _Request:
        self.requests += 1
        return _Request(self, sink)

    def close(self) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is not State.CONNECTING:
            self.pool.closed(self, with_request=bool(self.active))
        self.state = State.CLOSED
        if self.transport is not None:
            self.transport.abort()


def client_codec(opts: Options, store: Store,
                 cluster_name: str) -> Callable[[ConnectionOwner], Http2Connection]:
    """The cluster's factory of HTTP/2 connections; ``cluster.<name>.http2.*`` is made with
    the first connection, as Envoy makes it."""
    made: list[Http2Stats] = []

    def connection(pool: ConnectionOwner) -> Http2Connection:
        if not made:
            made.append(Http2Stats(store, f"cluster.{cluster_name}.http2."))
        return Http2Connection(pool, opts, made[0])

    return connection
