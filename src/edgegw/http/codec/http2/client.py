"""HTTP/2 to one upstream host (the client side)."""

from __future__ import annotations

from collections.abc import Callable

import h2.errors
import h2.events
import h2.exceptions

from .... import log
from ....stats import Store
from .. import (
    ConnectionOwner,
    Headers,
    RequestHead,
    ResponseReceiver,
    State,
)
from .common import (
    ClientConnectionBase,
    Http2Stats,
    Options,
    Sender,
    clean_headers,
    client_factory,
)
from .connection import client_connection

_log = log.get("http")


class _Request:
    """One request on an upstream HTTP/2 connection (RequestEncoder)."""

    __slots__ = ("conn", "ended", "held", "out", "paused", "sid", "receiver")

    def __init__(self, conn: Http2Connection, receiver: ResponseReceiver) -> None:
        self.conn = conn
        self.receiver: ResponseReceiver | None = receiver
        self.sid = 0
        self.out = Sender()
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
                (b":authority", authority), (b":path", head.path), *clean_headers(head.headers)],
                end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:  # e.g. past the server's stream limit
            _log.debug("cannot open a stream to %s: %r", conn.pool.label, e)
            receiver, self.receiver = self.receiver, None
            self.ended = True
            conn.pool.release(conn)
            if receiver is not None:
                receiver.upstream_reset("remote refused stream reset", stale=False)
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
        self.out.trailers = clean_headers(trailers)
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
            self.receiver = None
            self.conn.finish(self, h2.errors.ErrorCodes.CANCEL)


class Http2Connection(ClientConnectionBase):
    """One HTTP/2 connection to a host on the h2 library."""

    def __init__(self, pool: ConnectionOwner, opts: Options, stats: Http2Stats) -> None:
        super().__init__(pool, opts, stats)
        self.h2 = client_connection(opts, pool.max_header_bytes)

    def feed(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            _log.debug("HTTP/2 protocol error from %s: %r", self.pool.label, e)
            self.stats.rx_messaging_error.value += 1
            self.fail("protocol error")
            return
        touched: dict[int, _Request] = {}
        for ev in events:
            self._event(ev, touched)
        self.write_now()
        for r in touched.values():
            if r.receiver is not None:
                r.receiver.flush()
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
            if r is None or r.receiver is None:
                return
            touched[r.sid] = r
            receiver: ResponseReceiver = r.receiver
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
                receiver.upstream_headers(status, headers, end)
            elif isinstance(ev, h2.events.DataReceived):
                end = ev.stream_ended is not None
                if end:
                    self.finish(r)
                receiver.upstream_data(ev.data or b"", end)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.finish(r)
                receiver.upstream_trailers([(bytes(k), bytes(v)) for k, v in ev.headers or []])
            else:  # a StreamEnded that no frame above carried
                self.finish(r)
                receiver.upstream_data(b"", True)
        elif isinstance(ev, h2.events.StreamReset):
            self.stats.rx_reset.value += 1
            r = self.active.get(ev.stream_id or 0)
            if r is not None:
                reset_receiver = r.receiver
                self.finish(r)
                if reset_receiver is not None:
                    refused = ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                    reset_receiver.upstream_reset("remote refused stream reset" if refused
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
                    refused_by = r.receiver
                    self.finish(r)
                    if refused_by is not None:
                        refused_by.upstream_reset("remote refused stream reset", stale=False)

    def send(self, r: _Request) -> None:
        try:
            r.out.push(self.h2, r.sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def write_now(self) -> None:
        self.flush_scheduled = False
        if self.sink is not None and self.state is not State.CLOSED:
            data = self.h2.data_to_send()
            if data:
                self.sink.write(data)

    def finish(self, r: _Request, code: h2.errors.ErrorCodes | None = None) -> None:
        """The stream is over: its slot goes back to the pool."""
        if r.ended:
            return
        r.ended = True
        r.receiver = None
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

    def new_stream(self, receiver: ResponseReceiver) -> _Request:
        self.requests += 1
        return _Request(self, receiver)


def client_codec(opts: Options, store: Store,
                 cluster_name: str) -> Callable[[ConnectionOwner], Http2Connection]:
    """The cluster's factory of HTTP/2 connections on h2."""
    return client_factory(Http2Connection, opts, store, cluster_name)
