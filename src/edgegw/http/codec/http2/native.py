"""HTTP/2 both ways on libnghttp2, Envoy's HTTP/2 codec for years (the ``_nghttp2`` binding,
built with the wheel where the library's headers are installed).

nghttp2 owns the framing, HPACK, flow-control windows and stream states, and keeps its own
protections on (the rapid-reset limit, CONTINUATION caps, SETTINGS and PING-ACK floods). On
top, as the h2 codec does: streams refused past ``max_concurrent_streams``, flood limits of
Envoy's ``http2_protocol_options``, back-pressure both ways, a graceful GOAWAY on drain, and
Envoy's ``http2.*`` stats. The binding reports what happened in a read or a write as a list of
events (see ``nghttp2_shim.c``), parsed here in one pass.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .... import log
from ....stats import Store
from .. import (
    ConnectionOwner,
    Headers,
    RequestHead,
    ResponseReceiver,
    ServerCallbacks,
    Sink,
    State,
    StreamDecoder,
)
from ._nghttp2 import ffi, lib
from .common import (
    WRITE_HIGH,
    ClientConnectionBase,
    Http2Stats,
    Options,
    ServerCodecBase,
    clean_headers,
    client_factory,
    request_head,
)

_log = log.get("http")
_HEAD = struct.Struct("<BBxxiI")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_GOAWAY = struct.Struct("<iI")

EV_HEADERS, EV_DATA, EV_END, EV_EMPTY, EV_RST, EV_WINDOW, EV_PRIORITY = 1, 2, 3, 4, 5, 6, 7
EV_GOAWAY, EV_CLOSE, EV_SETTINGS, EV_OVERFLOW, EV_SENT_END, EV_INVALID = 8, 9, 10, 11, 12, 13
_STREAM_ERRORS = (lib.NGHTTP2_ERR_HTTP_HEADER, lib.NGHTTP2_ERR_HTTP_MESSAGING)
"""Errors nghttp2 answers by resetting one stream (Envoy counts rx_messaging_error)."""

VERSION: str = ffi.string(lib.eg_version()).decode()


def _block(fields: Headers) -> bytes | None:
    """Header fields as the binding takes them; None where a value holds a NUL."""
    parts: list[bytes] = []
    for k, v in fields:
        parts.append(k)
        parts.append(v)
    block = b"\0".join(parts)
    return block if block.count(b"\0") == 2 * len(fields) - 1 else None


def _pairs(block: bytes) -> Headers:
    """A block from the binding as header fields (plain loops: compiled, they cost under
    half of slicing and ``zip``)."""
    if not block:
        return []
    f = block.split(b"\0")
    n = len(f)
    if n % 2:
        raise ValueError("a header block with a name and no value")
    return [(f[i], f[i + 1]) for i in range(0, n, 2)]


class _Session:
    """One nghttp2 session and the events it reports."""

    __slots__ = ("g",)

    def __init__(self, server: bool, opts: Options, max_header_bytes: int,
                 max_headers: int) -> None:
        g = lib.eg_new(1 if server else 0, max_header_bytes, max_headers,
                       opts.max_concurrent_streams, opts.stream_window, opts.connection_window,
                       opts.hpack_table_size)
        if g == ffi.NULL:
            raise MemoryError("nghttp2 session")
        self.g = ffi.gc(g, lib.eg_free)

    def events(self) -> bytes:
        g = self.g
        n = g.events.len
        if not n:
            return b""
        data: bytes = ffi.buffer(g.events.p, n)[:]
        g.events.len = 0
        return data

    def output(self) -> tuple[bytes, int, int, int]:
        """What to write, with its frames, control frames and resets; empty on a failure."""
        g = self.g
        if lib.eg_send(g) < 0:
            return b"", 0, 0, 0
        n = g.out.len
        data: bytes = ffi.buffer(g.out.p, n)[:] if n else b""
        g.out.len = 0
        counts = g.frames, g.control, g.resets
        g.frames = g.control = g.resets = 0
        return data, *counts

    def headers(self, sid: int, fields: Headers, end_stream: bool,
                informational: bool = False) -> int:
        block = _block(fields)
        if block is None:
            return -1
        rv: int = lib.eg_headers(self.g, sid, block, len(block), end_stream, informational)
        return rv

    def data(self, sid: int, data: bytes, end: bool) -> int:
        rv: int = lib.eg_data(self.g, sid, data, len(data), end)
        return rv

    def trailers(self, sid: int, fields: Headers) -> int:
        block = _block(fields) if fields else b""
        if block is None:
            return -1
        rv: int = lib.eg_trailers(self.g, sid, block, len(block))
        return rv

    def pending(self, sid: int) -> int:
        rv: int = lib.eg_pending(self.g, sid)
        return rv

    def consume(self, sid: int, n: int) -> None:
        lib.eg_consume(self.g, sid, n)

    def rst(self, sid: int, code: int) -> None:
        lib.eg_rst(self.g, sid, code)

    def alive(self) -> bool:
        return bool(lib.eg_alive(self.g))


# --- the server side ---------------------------------------------------------------------


class _Response:
    """The encoder of one stream's response."""

    __slots__ = ("blocked", "codec", "decoder", "done", "held", "pending", "reasons",
                 "remote_ended", "sid", "started")

    def __init__(self, codec: NativeServerCodec, sid: int) -> None:
        self.codec = codec
        self.sid = sid
        self.decoder: StreamDecoder | None = None
        self.done = False
        """The response went out whole, or the stream is reset."""
        self.remote_ended = False
        self.started = False
        self.reasons: set[str] = set()
        self.held = 0
        """Received bytes not yet credited back while reading is disabled."""
        self.pending = 0
        """Response bytes waiting for the client's window."""
        self.blocked = False

    def encode_100_continue(self) -> None:
        self.codec.session.headers(self.sid, [(b":status", b"100")], False, True)

    def encode_headers(self, status: int, headers: Headers, end_stream: bool,
                       close: bool = False) -> None:
        if self.done or self.started:
            return
        self.started = True
        codec = self.codec
        if codec.session.headers(self.sid, [(b":status", b"%d" % status),
                                            *clean_headers(headers)], end_stream) < 0:
            codec.reset(self, lib.NGHTTP2_INTERNAL_ERROR)
            return
        codec.flush()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.done or not self.started:
            return
        pending = self.codec.session.data(self.sid, data, end_stream)
        if pending >= 0:
            self.codec.waiting(self, pending)
            self.codec.flush()

    def encode_trailers(self, trailers: Headers) -> None:
        if self.done or not self.started:
            return
        if self.codec.session.trailers(self.sid, clean_headers(trailers)) < 0:
            self.codec.reset(self, lib.NGHTTP2_INTERNAL_ERROR)
            return
        self.codec.flush()

    def flush(self) -> None:
        self.codec.flush()

    def reset(self) -> None:
        if not self.done:
            self.codec.reset(self, lib.NGHTTP2_INTERNAL_ERROR)

    def read_disable(self, reason: str, disable: bool) -> None:
        if disable:
            self.reasons.add(reason)
        elif reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons and self.held:
                held, self.held = self.held, 0
                self.codec.session.consume(self.sid, held)
                self.codec.flush()


class NativeServerCodec(ServerCodecBase):
    """HTTP/2 from one client connection, on nghttp2."""

    def __init__(self, callbacks: ServerCallbacks, sink: Sink, opts: Options,
                 max_header_bytes: int, max_headers: int, stats: Http2Stats) -> None:
        super().__init__(callbacks, sink, opts, max_headers, stats)
        self.session = _Session(True, opts, max_header_bytes, max_headers)
        self.slow: dict[int, _Response] = {}
        """Streams whose response waits for the client's window."""
        self.write_now()

    # --- bytes in -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        if self.flush_scheduled:  # what was answered goes first: its streams close
            self.write_now()
        rv = lib.eg_recv(self.session.g, data, len(data))
        if rv == lib.NGHTTP2_ERR_FLOODED:  # more SETTINGS and PING to acknowledge than it takes
            self._flood(self.stats.outbound_control_flood)
            return
        if rv < 0:
            self._codec_error()
            return
        self._events(self.session.events())
        if not self.closed:
            self.write_now()

    def _codec_error(self) -> None:
        _log.debug("HTTP/2 protocol error from client")
        self.stats.rx_messaging_error.value += 1
        self.callbacks.protocol_error("http2.codec_error")
        self._close()

    def _events(self, buf: bytes) -> None:
        at, end = 0, len(buf)
        unpack = _HEAD.unpack_from
        streams = self.streams
        while at < end and not self.closed:
            typ, flags, sid, size = unpack(buf, at)
            at += 12
            payload = buf[at:at + size]
            at += size
            if typ == EV_DATA:
                self.empty_frames = 0
                r = streams.get(sid)
                if r is None or r.done and r.remote_ended:
                    self.session.consume(sid, size)
                    continue
                if r.reasons:
                    r.held += size
                else:
                    self.session.consume(sid, size)
                if r.decoder is not None:
                    r.decoder.decode_data(payload)
            elif typ == EV_HEADERS:
                r = streams.get(sid)
                if r is None:
                    self._request(sid, payload, bool(flags & 1))
                elif r.decoder is not None and not r.remote_ended:
                    r.remote_ended = True
                    r.decoder.decode_trailers(_pairs(payload))
                    self._maybe_forget(r)
            elif typ == EV_END:
                self._remote_end(sid)
            elif typ == EV_SENT_END:
                r = streams.get(sid)
                if r is not None:
                    self.stream_ended(r)
            elif typ == EV_CLOSE:
                r = streams.pop(sid, None)
                if r is not None:
                    self._gone(r)
            elif typ == EV_RST:
                self.stats.rx_reset.value += 1
                r = streams.pop(sid, None)
                if r is not None:
                    self._gone(r)
            elif typ == EV_EMPTY:
                self.empty_frame()
            elif typ == EV_WINDOW:
                self.window_update()
            elif typ == EV_PRIORITY:
                self.priority_frame()
            elif typ == EV_OVERFLOW:
                self.stats.header_overflow.value += 1
            elif typ == EV_INVALID:
                if _I32.unpack(payload)[0] in _STREAM_ERRORS:
                    self.stats.rx_messaging_error.value += 1
            elif typ == EV_GOAWAY:
                self.draining = True
                if not streams:
                    self._close()

    def _request(self, sid: int, block: bytes, ended: bool) -> None:
        if self.draining and sid > self.goaway_at:
            self.session.rst(sid, lib.NGHTTP2_REFUSED_STREAM)
            return
        self.opened += 1
        head = request_head(_pairs(block), self.max_headers)
        r = _Response(self, sid)
        self.streams[sid] = r
        self.stats.streams_active.value += 1
        if head is None:
            self.stats.header_overflow.value += 1
            self.reset(r, lib.NGHTTP2_PROTOCOL_ERROR)
            return
        r.remote_ended = ended
        decoder = self.callbacks.new_stream(head, r, ended)
        if not r.done:
            r.decoder = decoder

    def _gone(self, r: _Response) -> None:
        """The stream closed before both its ends were done: reset by the client or by
        nghttp2 (a stream error)."""
        self.stats.streams_active.value -= 1
        self._drop_pending(r)
        r.done = r.remote_ended = True
        if r.decoder is not None:
            r.decoder.decode_reset()
        if self.draining and not self.streams:
            self._close()

    # --- bytes out ----------------------------------------------------------------------

    def waiting(self, r: _Response, pending: int) -> None:
        """The response has ``pending`` bytes waiting for the client's window."""
        self.stats.pending_send_data.value += pending - r.pending
        r.pending = pending
        if pending:
            self.slow[r.sid] = r
        else:
            self.slow.pop(r.sid, None)
        decoder = r.decoder
        if decoder is None:
            return
        if pending > WRITE_HIGH and not r.blocked:
            r.blocked = True
            decoder.write_blocked(True)
        elif r.blocked and pending < WRITE_HIGH // 2:
            r.blocked = False
            decoder.write_blocked(False)

    def stream_ended(self, r: _Response) -> None:
        """The response went out whole."""
        r.done = True
        if not r.remote_ended:
            # Envoy's answer to a request body still coming: the stream ends here.
            r.remote_ended = True
            self.session.rst(r.sid, lib.NGHTTP2_NO_ERROR)
            self.flush()
        self._maybe_forget(r)

    def _last_bytes(self) -> bytes:
        return self.session.output()[0]

    def _drop_pending(self, r: _Response) -> None:
        self.stats.pending_send_data.value -= r.pending
        r.pending = 0
        self.slow.pop(r.sid, None)

    def reset(self, r: _Response, code: int) -> None:
        r.done = r.remote_ended = True
        self.session.rst(r.sid, code)
        self._maybe_forget(r)
        self.flush()

    def write_now(self) -> None:
        self.flush_scheduled = False
        if self.closed:
            return
        data, frames, control, resets = self.session.output()
        self.stats.tx_reset.value += resets
        if data:
            flood = self.outbound.add(len(data), frames, control, self.sink.buffered())
            if flood is not None:
                self._flood(flood)
                return
            self.data_frames_sent += frames
            self.sink.write(data)
        self._events(self.session.events())
        for r in list(self.slow.values()):
            self.waiting(r, self.session.pending(r.sid))
        if not self.closed and not self.session.alive():
            if not self.draining:  # nghttp2 ended it: the client broke the protocol
                self.stats.rx_messaging_error.value += 1
                self.callbacks.protocol_error("http2.codec_error")
            self._close()

    # --- the connection -----------------------------------------------------------------

    def drain(self, close_idle: bool = True) -> None:
        """A GOAWAY naming the last stream accepted; streams under way finish."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.goaway_at = lib.eg_goaway(self.session.g)
        self.stats.goaway_sent.value += 1
        self.write_now()
        if not self.streams:
            self._close()


# --- the client side ---------------------------------------------------------------------


class _Request:
    """One request on an upstream HTTP/2 connection (RequestEncoder)."""

    __slots__ = ("conn", "ended", "held", "paused", "receiver", "sent_end", "sid")

    def __init__(self, conn: NativeConnection, receiver: ResponseReceiver) -> None:
        self.conn = conn
        self.receiver: ResponseReceiver | None = receiver
        self.sid = 0
        self.ended = False
        """The response is over (or the stream reset): the pool has its slot back."""
        self.sent_end = False
        self.paused = False
        self.held = 0

    def encode_headers(self, head: RequestHead, end_stream: bool) -> None:
        conn = self.conn
        authority = b""
        for k, v in head.headers:
            if k == b"host":
                authority = v
                break
        sid = conn.session.headers(0, [
            (b":method", head.method), (b":scheme", conn.scheme), (b":authority", authority),
            (b":path", head.path), *clean_headers(head.headers)], end_stream)
        if sid <= 0:  # out of stream ids, or a field nghttp2 cannot send
            _log.debug("cannot open a stream to %s: %d", conn.pool.label, sid)
            receiver, self.receiver = self.receiver, None
            self.ended = True
            conn.pool.release(conn)
            if receiver is not None:
                receiver.upstream_reset("remote refused stream reset", stale=False)
            return
        self.sid = sid
        conn.active[sid] = self
        self.sent_end = end_stream
        conn.flush()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.ended or self.sent_end:
            return
        self.sent_end = end_stream
        if self.conn.session.data(self.sid, data, end_stream) >= 0:
            self.conn.flush()

    def encode_trailers(self, trailers: Headers) -> None:
        if self.ended or self.sent_end:
            return
        self.sent_end = True
        self.conn.session.trailers(self.sid, clean_headers(trailers))
        self.conn.flush()

    def read_disable(self, disable: bool) -> None:
        self.paused = disable
        if not disable and self.held and not self.ended:
            held, self.held = self.held, 0
            self.conn.session.consume(self.sid, held)
            self.conn.flush()

    def reset(self) -> None:
        """The request gave up on its response."""
        if not self.ended:
            self.receiver = None
            self.conn.finish(self, lib.NGHTTP2_CANCEL)


class NativeConnection(ClientConnectionBase):
    """One HTTP/2 connection to a host on nghttp2."""

    def __init__(self, pool: ConnectionOwner, opts: Options, stats: Http2Stats) -> None:
        super().__init__(pool, opts, stats)
        self.session = _Session(False, opts, pool.max_header_bytes, pool.max_headers)

    def feed(self, data: bytes) -> None:
        if lib.eg_recv(self.session.g, data, len(data)) < 0:
            _log.debug("HTTP/2 protocol error from %s", self.pool.label)
            self.stats.rx_messaging_error.value += 1
            self.fail("protocol error")
            return
        touched: dict[int, _Request] = {}
        self._events(self.session.events(), touched)
        self.write_now()
        for r in touched.values():
            if r.receiver is not None:
                r.receiver.flush()
        if self.goaway and not self.active:
            self.close()

    def _events(self, buf: bytes, touched: dict[int, _Request]) -> None:
        at, end = 0, len(buf)
        unpack = _HEAD.unpack_from
        while at < end:
            typ, flags, sid, size = unpack(buf, at)
            at += 12
            payload = buf[at:at + size]
            at += size
            if typ <= EV_END:
                r = self.active.get(sid)
                if typ == EV_DATA:
                    if r is None or not r.paused:
                        self.session.consume(sid, size)
                    else:
                        r.held += size
                if r is None or r.receiver is None:
                    continue
                touched[sid] = r
                receiver: ResponseReceiver = r.receiver
                if typ == EV_DATA:
                    receiver.upstream_data(payload, False)
                elif typ == EV_END:
                    self.finish(r)
                    receiver.upstream_data(b"", True)
                else:
                    self._headers(r, receiver, payload, bool(flags & 1))
            elif typ == EV_RST or typ == EV_CLOSE:
                if typ == EV_RST:
                    self.stats.rx_reset.value += 1
                r = self.active.get(sid)
                if r is not None:
                    reset_receiver = r.receiver
                    self.finish(r)
                    if reset_receiver is not None:
                        refused = _U32.unpack(payload)[0] == lib.NGHTTP2_REFUSED_STREAM
                        reset_receiver.upstream_reset("remote refused stream reset" if refused
                                                      else "remote reset", stale=False)
            elif typ == EV_SENT_END:
                r = self.active.get(sid)
                if r is not None:
                    r.sent_end = True
            elif typ == EV_SETTINGS:
                capacity = max(1, min(self.configured, lib.eg_peer_max_streams(self.session.g)))
                if capacity != self.capacity and self.state is not State.CONNECTING:
                    self.capacity = capacity
                    self.pool.capacity_changed(self)
                self.capacity = capacity
            elif typ == EV_GOAWAY:
                self.goaway = True
                last = _GOAWAY.unpack(payload)[0]
                for other, r in list(self.active.items()):
                    if other > last:
                        refused_by = r.receiver
                        self.finish(r)
                        if refused_by is not None:
                            refused_by.upstream_reset("remote refused stream reset",
                                                      stale=False)
            elif typ == EV_INVALID:
                if _I32.unpack(payload)[0] in _STREAM_ERRORS:
                    self.stats.rx_messaging_error.value += 1
            elif typ == EV_OVERFLOW:
                self.stats.header_overflow.value += 1

    def _headers(self, r: _Request, receiver: ResponseReceiver, block: bytes, end: bool) -> None:
        status = 0
        headers: Headers = []
        for k, v in _pairs(block):
            if k == b":status":
                status = int(v)
            elif k[:1] != b":":
                headers.append((k, v))
        if not status:  # trailers
            self.finish(r)
            receiver.upstream_trailers(headers)
            return
        if 100 <= status < 200 and status != 101:
            return  # an interim response: the final one follows
        if end:
            self.finish(r)
        receiver.upstream_headers(status, headers, end)

    def write_now(self) -> None:
        self.flush_scheduled = False
        if self.sink is not None and self.state is not State.CLOSED:
            data, _, _, resets = self.session.output()
            self.stats.tx_reset.value += resets
            if data:
                self.sink.write(data)
            self._events(self.session.events(), {})
            if not self.session.alive() and self.state is not State.CLOSED:
                self.fail("protocol error")

    def finish(self, r: _Request, code: int | None = None) -> None:
        """The stream is over: its slot goes back to the pool."""
        if r.ended:
            return
        r.ended = True
        r.receiver = None
        self.active.pop(r.sid, None)
        if code is not None or not r.sent_end:
            self.session.rst(r.sid, code if code is not None else lib.NGHTTP2_CANCEL)
            self.flush()
        if self.state is not State.CLOSED:
            self.pool.release(self)

    def new_stream(self, receiver: ResponseReceiver) -> _Request:
        self.requests += 1
        return _Request(self, receiver)


def client_codec(opts: Options, store: Store,
                 cluster_name: str) -> Callable[[ConnectionOwner], NativeConnection]:
    """The cluster's factory of HTTP/2 connections on nghttp2."""
    return client_factory(NativeConnection, opts, store, cluster_name)
