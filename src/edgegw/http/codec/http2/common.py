"""What both sides of the HTTP/2 codec share."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import h2.connection
from mypy_extensions import mypyc_attr

from .... import log
from ....config import model as m
from ....stats import Counter, Gauge, StatSet, Store
from .. import ConnectionOwner, Headers, RequestHead, ServerCallbacks, Sink, State

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


class Sender:
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


def clean_headers(headers: Headers) -> Headers:
    out: Headers = []
    for kv in headers:
        k = kv[0]
        if k in CONNECTION_SPECIFIC or (k == b"te" and kv[1].lower() != b"trailers"):
            continue
        out.append(kv)
    return out


def request_head(fields: Headers, max_headers: int) -> RequestHead | None:
    """A request's header fields as the core sees them: the pseudo-headers taken out,
    Cookie fields joined into one, ``:authority`` as Host; None past ``max_headers``."""
    method = path = b""
    authority: bytes | None = None
    headers: Headers = []
    cookies: list[bytes] = []
    for k, v in fields:
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
    if len(headers) > max_headers:
        return None
    return RequestHead(method, path, headers, "HTTP/2")


class OutboundFrames:
    """Envoy's outbound frame accounting: the frames (and control frames: RST_STREAM,
    SETTINGS, PING) in the connection's write buffer that the client has not taken yet. A
    client that asks faster than it reads ends with ``outbound_flood`` or
    ``outbound_control_flood`` instead of growing the buffer."""

    def __init__(self, opts: Options, stats: Http2Stats) -> None:
        self.opts = opts
        self.stats = stats
        self.frames = 0
        self.control = 0
        self.written = 0
        self.queued: collections.deque[tuple[int, int, int]] = collections.deque()
        """Each write still (partly) in the buffer: where it ends in the bytes written, and
        its frames and control frames."""

    def add(self, size: int, frames: int, control: int, buffered: int) -> Counter | None:
        """Counts one write (the buffer holding ``buffered`` bytes before it); the flood
        counter it passes, if any."""
        queued = self.queued
        if queued:
            taken = self.written - buffered
            while queued and queued[0][0] <= taken:
                _, f, c = queued.popleft()
                self.frames -= f
                self.control -= c
        self.written += size
        queued.append((self.written, frames, control))
        self.frames += frames
        self.control += control
        if self.control > self.opts.max_outbound_control_frames:
            return self.stats.outbound_control_flood
        if self.frames > self.opts.max_outbound_frames:
            return self.stats.outbound_flood
        return None


class ServerCodecBase:
    """What both HTTP/2 server codecs share: the streams of one client connection (each has
    ``sid``, ``decoder``, ``done`` and ``remote_ended``), Envoy's inbound flood limits,
    closing, and the end of the connection. A codec adds the framing."""

    protocol = "HTTP/2"
    head_started = 0.0

    def __init__(self, callbacks: ServerCallbacks, sink: Sink, opts: Options,
                 max_headers: int, stats: Http2Stats) -> None:
        self.callbacks = callbacks
        self.sink = sink
        self.opts = opts
        self.max_headers = max_headers
        self.stats = stats
        self.streams: dict[int, Any] = {}
        """Open until both their request and response are done."""
        self.closed = False
        self.draining = False
        self.goaway_at = 0
        """The last stream accepted once a GOAWAY went out (later ones are refused)."""
        self.opened = 0
        self.empty_frames = 0
        self.priority_frames = 0
        self.window_updates = 0
        self.data_frames_sent = 0
        self.outbound = OutboundFrames(opts, stats)
        self.flush_scheduled = False

    # --- Envoy's inbound flood limits ----------------------------------------------------

    def empty_frame(self) -> None:
        """A DATA frame with neither payload nor END_STREAM."""
        self.empty_frames += 1
        if self.empty_frames > self.opts.max_empty_frames:
            self._flood(self.stats.inbound_empty_frames_flood)

    def priority_frame(self) -> None:
        self.priority_frames += 1
        if self.priority_frames > self.opts.max_priority_per_stream * (1 + self.opened):
            self._flood(self.stats.inbound_priority_frames_flood)

    def window_update(self) -> None:
        self.window_updates += 1
        if self.window_updates > 5 + 2 * (self.opened + self.opts.max_window_updates_per_data
                                           * self.data_frames_sent):
            self._flood(self.stats.inbound_window_update_frames_flood)

    # --- streams ending ------------------------------------------------------------------

    def _remote_end(self, sid: int) -> None:
        r = self.streams.get(sid)
        if r is None or r.remote_ended:
            return
        r.remote_ended = True
        if r.decoder is not None and not r.done:
            r.decoder.decode_end()
        self._maybe_forget(r)

    def _maybe_forget(self, r: Any) -> None:
        if r.done and r.remote_ended and self.streams.pop(r.sid, None) is not None:
            self.stats.streams_active.value -= 1
            self._drop_pending(r)
            if self.draining and not self.streams:
                self._close()

    def _drop_pending(self, r: Any) -> None:
        """Forgets the response bytes still waiting for the client's window."""
        raise NotImplementedError

    # --- bytes out and the connection -----------------------------------------------------

    def flush(self) -> None:
        """Writes what the streams produced at the end of this turn of the event loop:
        responses that complete together leave in one TLS record and one syscall."""
        if not self.flush_scheduled and not self.closed:
            self.flush_scheduled = True
            self.sink.schedule(self.write_now)

    def write_now(self) -> None:
        raise NotImplementedError

    def _last_bytes(self) -> bytes:
        """What the framing still has to send, as the connection closes."""
        raise NotImplementedError

    def write_blocked(self, blocked: bool) -> None:
        """Nothing at the connection level: each stream hears it, and queued frames are
        counted as they are written."""

    def _flood(self, counter: Counter) -> None:
        counter.value += 1
        _log.debug("HTTP/2 flood from a client: closing its connection")
        self.closed = True
        self.callbacks.protocol_error("http2.flood")
        self.sink.abort()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            data = self._last_bytes()
            if data:
                self.sink.write(data)
            self.sink.close()

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


class ClientConnectionBase:
    """What both HTTP/2 client codecs share: one connection to a host as the pool sees it,
    carrying up to ``capacity`` requests at once; its bytes come through ``feed`` and go to
    its ``Sink``. A codec adds the framing (``feed``, ``write_now``, ``finish``) and its
    requests (``new_stream``)."""

    protocol = "HTTP/2"

    def __init__(self, pool: ConnectionOwner, opts: Options, stats: Http2Stats) -> None:
        self.pool = pool
        self.opts = opts
        self.stats = stats
        self.state = State.CONNECTING
        self.sink: Sink | None = None
        self.configured = opts.max_concurrent_streams
        self.capacity = min(self.configured, 100)
        """Until the server's SETTINGS say otherwise, as Envoy assumes."""
        self.streams = 0
        self.requests = 0
        self.idle_since = 0.0
        self.active: dict[int, Any] = {}
        """The requests under way, by stream id (each has ``ended`` and ``receiver``)."""
        self.goaway = False
        self.flush_scheduled = False
        self.scheme = b"https" if pool.secure else b"http"

    def can_take(self) -> bool:
        """Open, not going away, and with a stream to spare."""
        return (self.sink is not None and not self.sink.is_closing() and not self.goaway
                and self.streams < self.capacity)

    def expired(self, cutoff: float) -> bool:
        """Idle since before ``cutoff``."""
        return self.streams == 0 and self.idle_since < cutoff

    def connected(self, sink: Sink) -> None:
        self.sink = sink
        self.write_now()

    def write_now(self) -> None:
        raise NotImplementedError

    def connection_lost(self) -> None:
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
            if r.receiver is not None:
                r.receiver.upstream_reset("connection termination", stale=False)

    def flush(self) -> None:
        """Writes at the end of this turn of the event loop: requests opened together leave
        together."""
        if not self.flush_scheduled and self.sink is not None:
            self.flush_scheduled = True
            self.sink.schedule(self.write_now)

    def fail(self, reason: str) -> None:
        """Ends the connection and every request on it."""
        active, self.active = self.active, {}
        self.close()
        for r in active.values():
            r.ended = True
            if r.receiver is not None:
                r.receiver.upstream_reset(reason, stale=False)

    def write_blocked(self, blocked: bool) -> None:
        for r in self.active.values():
            if r.receiver is not None:
                r.receiver.upstream_write_blocked(blocked)

    def close(self) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is not State.CONNECTING:
            self.pool.closed(self, with_request=bool(self.active))
        self.state = State.CLOSED
        if self.sink is not None:
            self.sink.abort()


def client_factory(make: Callable[[ConnectionOwner, Options, Http2Stats], Any], opts: Options,
                   store: Store, cluster_name: str) -> Callable[[ConnectionOwner], Any]:
    """A cluster's factory of HTTP/2 connections; ``cluster.<name>.http2.*`` is made with
    the first connection, as Envoy makes it."""
    made: list[Http2Stats] = []

    def connection(pool: ConnectionOwner) -> Any:
        if not made:
            made.append(Http2Stats(store, f"cluster.{cluster_name}.http2."))
        return make(pool, opts, made[0])

    return connection
