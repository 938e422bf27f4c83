"""The codecs driven with bytes alone, no event loop: a sink that records what they write (and
can play a client that stops reading), the connection manager's side, and a runner that feeds
reads one by one. Shared by the fuzz properties, the codec tests and the pool's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edgegw.config import model as m
from edgegw.http.codec import Headers, RequestHead
from edgegw.http.codec.http1 import Http1ServerCodec
from edgegw.http.codec.http2 import Http2Stats, Options, ServerCodec
from edgegw.stats import Store


class Sink:
    """A codec's sink: records what the codec writes, and runs what it schedules when the
    test settles. Reading can be paused like a socket's; a client that stops reading
    (``reading = False``) leaves what is written from then on in the buffer."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False
        self.reasons: set[str] = set()
        self.scheduled: list[Callable[[], None]] = []
        self.reading = True
        self.unread = 0
        self.high = 0
        """Past this many unread bytes the codec hears ``write_blocked`` (0: never)."""
        self.codec: Any = None
        self.blocked = False

    @property
    def paused(self) -> bool:
        return bool(self.reasons)

    def write(self, data: bytes) -> None:
        self.out += data
        if not self.reading:
            self.unread += len(data)
            if self.high and self.unread > self.high and not self.blocked:
                self.blocked = True
                self.codec.write_blocked(True)

    def read(self, size: int) -> None:
        """The client takes ``size`` bytes of what waits for it (and keeps not reading)."""
        self.unread = max(0, self.unread - size)

    def read_all(self) -> None:
        """The client reads everything, and from now on reads as it comes."""
        self.reading = True
        self.unread = 0
        if self.blocked:
            self.blocked = False
            self.codec.write_blocked(False)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause(self, reason: str) -> None:
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        self.reasons.discard(reason)

    def schedule(self, callback: Callable[[], None]) -> None:
        self.scheduled.append(callback)

    def buffered(self) -> int:
        return self.unread

    def settle(self) -> None:
        """Runs what was scheduled, and what that schedules, until nothing is left (as the
        loop's next turns would)."""
        for _ in range(100_000):
            if not self.scheduled:
                return
            self.scheduled.pop(0)()
        raise AssertionError("the codec keeps scheduling work")


class Stream:
    """Answers 200 once its request has ended, as a proxied request is answered (with
    ``body``, or never when ``body`` is None)."""

    def __init__(self, events: list[tuple[Any, ...]], encoder: Any,
                 body: bytes | None = b"") -> None:
        self.events = events
        self.encoder = encoder
        self.body = body

    def answer(self) -> None:
        body = self.body
        if body is None:
            return
        self.encoder.encode_headers(200, [(b"content-length", b"%d" % len(body))], not body)
        if body:
            self.encoder.encode_data(body, True)

    def decode_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def decode_trailers(self, trailers: Headers) -> None:
        self.events.append(("trailers", tuple(trailers)))

    def decode_end(self) -> None:
        self.events.append(("end",))
        self.answer()

    def decode_reset(self) -> None:
        self.events.append(("reset",))

    def write_blocked(self, blocked: bool) -> None:
        pass

    def codec_error(self, status: int, body: bytes, details: str) -> None:
        self.events.append(("codec_error", status))


class Manager:
    """The connection manager's side: records each event, lets each stream answer (so that
    pipelined requests proceed), and answers refused ones as the real one does."""

    def __init__(self, body: bytes | None = b"") -> None:
        self.events: list[tuple[Any, ...]] = []
        self.body = body
        self.streams: list[Stream] = []

    def new_stream(self, head: RequestHead, encoder: Any, end_stream: bool) -> Stream:
        self.events.append(("head", head.method, head.path, tuple(head.headers), end_stream))
        stream = Stream(self.events, encoder, self.body)
        self.streams.append(stream)
        if end_stream:
            stream.answer()
        return stream

    def protocol_error(self, details: str) -> None:
        self.events.append(("protocol_error",))

    def reject(self, head: RequestHead, encoder: Any, status: int, body: bytes, details: str,
               flag: str) -> None:
        self.events.append(("reject", status))
        encoder.encode_headers(status, [(b"content-length", b"0")], True, close=True)


def merged(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Body pieces joined: how a body is cut into reads is not an event."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if e[0] == "data" and out and out[-1][0] == "data":
            out[-1] = ("data", out[-1][1] + e[1])
        elif e[0] != "data" or e[1]:
            out.append(e)
    return out


class Tracebacks(logging.Handler):
    """Every log record that carries an exception: there must be none."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen.append(record)


def h1_codec(mgr: Manager, sink: Sink) -> Http1ServerCodec:
    codec = Http1ServerCodec(mgr, sink, 60 * 1024, 100)
    sink.codec = codec
    return codec


def h2_codec(mgr: Manager, sink: Sink,
             cfg: m.Http2ProtocolOptions | None = None) -> Any:
    """The HTTP/2 codec this process runs (nghttp2 on the compiled build, h2 in the tree)."""
    codec = ServerCodec(mgr, sink, Options(cfg), 60 * 1024, 100,
                             Http2Stats(Store(), "http2."))
    sink.codec = codec
    return codec


def run_codec(kind: str, pieces: list[bytes]) -> tuple[list[tuple[Any, ...]], bytes]:
    """Feeds the pieces to a fresh codec, one read each, running what it scheduled between
    reads; an exception raised out of feed or a scheduled callback, or logged, fails."""
    tracebacks = Tracebacks()
    logging.getLogger().addHandler(tracebacks)
    try:
        mgr, sink = Manager(), Sink()
        codec: Any = h1_codec(mgr, sink) if kind == "h1" else h2_codec(mgr, sink)
        for p in pieces:
            if sink.closing:
                break
            codec.feed(p)
            sink.settle()
        sink.settle()
    finally:
        logging.getLogger().removeHandler(tracebacks)
    assert not tracebacks.seen, [r.getMessage() for r in tracebacks.seen]
    return merged(mgr.events), bytes(sink.out)
