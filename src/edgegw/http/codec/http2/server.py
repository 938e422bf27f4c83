"""HTTP/2 from one client connection (the server side)."""

from __future__ import annotations

import h2.errors
import h2.events
import h2.exceptions
from hyperframe.frame import GoAwayFrame

from .... import log
from .. import (
    Headers,
    ServerCallbacks,
    Sink,
    StreamDecoder,
)
from .common import (
    CONTROL_FRAMES,
    WRITE_HIGH,
    Http2Stats,
    Options,
    Sender,
    ServerCodecBase,
    clean_headers,
    request_head,
)
from .connection import ServerConnection, setup_connection

_log = log.get("http")


class _Response:
    """The encoder of one stream's response."""

    __slots__ = ("codec", "decoder", "done", "held", "out", "reasons", "remote_ended", "sid")

    def __init__(self, codec: Http2ServerCodec, sid: int) -> None:
        self.codec = codec
        self.sid = sid
        self.out = Sender()
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
        self.codec.h2.send_headers(self.sid, [(b":status", b"%d" % status), *clean_headers(headers)],
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
        self.out.trailers = clean_headers(trailers)
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


class Http2ServerCodec(ServerCodecBase):
    """HTTP/2 from one client connection, on the h2 library."""

    def __init__(self, callbacks: ServerCallbacks, sink: Sink, opts: Options,
                 max_header_bytes: int, max_headers: int,
                 stats: Http2Stats) -> None:
        super().__init__(callbacks, sink, opts, max_headers, stats)
        self.h2 = ServerConnection(self.streams)
        setup_connection(self.h2, opts, max_header_bytes)
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
                self.empty_frame()
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
            self.window_update()
            if self.closed:
                return
            if ev.stream_id:
                r = self.streams.get(ev.stream_id)
                if r is not None:
                    self.send(r)
            else:
                for r in list(self.streams.values()):
                    self.send(r)
        elif isinstance(ev, h2.events.PriorityUpdated):
            self.priority_frame()
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
        head = request_head([(bytes(k), bytes(v)) for k, v in ev.headers or []],
                            self.max_headers)
        r = _Response(self, sid)
        self.streams[sid] = r
        self.stats.streams_active.value += 1
        if head is None:
            self.stats.header_overflow.value += 1
            self.reset(r, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        r.remote_ended = ended
        decoder = self.callbacks.new_stream(head, r, ended)
        if not r.done:
            r.decoder = decoder

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

    def _last_bytes(self) -> bytes:
        data: bytes = self.h2.data_to_send()
        return data

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

    def write_now(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and not self.closed:
            if self._flooded(data):
                return
            self.sink.write(data)

    def _flooded(self, data: bytes) -> bool:
        """Counts the frames in this write (a read's answers are one write) against what the
        client has not read yet."""
        frames = control = 0
        at, end = 0, len(data)
        while at + 9 <= end:
            frames += 1
            if data[at + 3] in CONTROL_FRAMES:
                control += 1
            at += 9 + int.from_bytes(data[at:at + 3], "big")
        flood = self.outbound.add(len(data), frames, control, self.sink.buffered())
        if flood is not None:
            self._flood(flood)
        return flood is not None

    # --- the connection -----------------------------------------------------------------

    def drain(self, close_idle: bool = True) -> None:
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
        self.outbound.add(len(data), 1, 0, self.sink.buffered())
        self.sink.write(data)
        self.stats.goaway_sent.value += 1
        if not self.streams:
            self._close()
