"""HTTP/1 from one client connection (the server side)."""

from __future__ import annotations

import collections
import enum
import time

import httptools

from .... import log
from .. import (
    Headers,
    RequestHead,
    ServerCallbacks,
    Sink,
    StreamDecoder,
)
from .common import (
    CONTINUE,
    LAST_CHUNK,
    TooLarge,
    chunk,
    encode_headers,
    status_line,
)

_log = log.get("http")


class Phase(enum.Enum):
    """Where one client connection is; each change is made by ``_enter``."""

    READING = "reading"
    """Requests are parsed as they come (pipelined ones wait their turn)."""
    TUNNEL = "tunnel"
    """An upgrade's head was read: the bytes after it are its tunnel's, not HTTP/1."""
    REFUSED = "refused"
    """llhttp refused a request (or its head timed out): nothing more is read, and the
    refusal is answered once the responses owed before it are out."""
    CLOSED = "closed"


class _Refused(Exception):
    """A head llhttp took that Envoy's codec refuses: (status, body, details)."""


class _Response:
    """The encoder of one request's response (Envoy's ResponseEncoderImpl)."""

    __slots__ = ("chunked", "codec", "done", "head_only", "keep_alive", "out", "upgrade")

    def __init__(self, codec: Http1ServerCodec, head_only: bool, keep_alive: bool,
                 upgrade: bool) -> None:
        self.codec = codec
        self.head_only = head_only
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.chunked = False
        self.done = False
        self.out: list[bytes] = []

    def encode_100_continue(self) -> None:
        self.codec.write(CONTINUE)

    def encode_headers(self, status: int, headers: Headers, end_stream: bool,
                       close: bool = False) -> None:
        codec = self.codec
        if close or codec.draining or self.upgrade or status == 101:
            self.keep_alive = False  # (an upgrade's tunnel, or its refusal, ends the connection)
        extra: Headers = []
        if status != 101 and not (self.head_only or status in (204, 304)) and not any(
                k == b"content-length" for k, _ in headers):
            if end_stream:
                extra.append((b"content-length", b"0"))
            elif self.keep_alive:
                self.chunked = True
                extra.append((b"transfer-encoding", b"chunked"))
            else:
                pass  # HTTP/1.0 or closing: the body ends with the connection
        if not self.keep_alive and not (status == 101 and self.upgrade):
            extra.append((b"connection", b"close"))
        self.out.append(status_line(status) + encode_headers(headers) + encode_headers(extra)
                        + b"\r\n")
        if end_stream:
            self._end()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if data and not self.head_only:
            self.out.append(chunk(data) if self.chunked else data)
        if end_stream:
            if self.chunked:
                self.out.append(LAST_CHUNK)
            self._end()

    def encode_trailers(self, trailers: Headers) -> None:
        self.encode_data(b"", True)

    def flush(self) -> None:
        if self.out:
            out = self.out
            self.codec.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def reset(self) -> None:
        self.done = True
        self.codec.abort()

    def read_disable(self, reason: str, disable: bool) -> None:
        sink = self.codec.sink
        if disable:
            sink.pause(reason)
        else:
            sink.resume(reason)

    def _end(self) -> None:
        self.flush()
        self.done = True
        self.codec.response_done(self)


class _Waiting:
    """A pipelined request parsed while an earlier response is still going out: its events
    are kept until its turn."""

    __slots__ = ("end_stream", "events", "head", "keep_alive")

    def __init__(self, head: RequestHead, end_stream: bool, keep_alive: bool) -> None:
        self.head = head
        self.end_stream = end_stream
        self.keep_alive = keep_alive
        self.events: list[bytes | None] = []
        """Body pieces, then None for the end."""

    def decode_data(self, data: bytes) -> None:
        self.events.append(data)

    def decode_end(self) -> None:
        self.events.append(None)


class Http1ServerCodec:
    """HTTP/1.1 from one client connection."""

    protocol = "HTTP/1.1"

    def __init__(self, callbacks: ServerCallbacks, sink: Sink, max_header_bytes: int,
                 max_headers: int) -> None:
        self.callbacks = callbacks
        self.sink = sink
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.parser = httptools.HttpRequestParser(self)
        self.head_started = 0.0
        self.phase = Phase.READING
        self.refusal: tuple[int, bytes, str, str] = (0, b"", "", "")
        """In REFUSED: the status, body, details and response flag of its answer."""
        self.draining = False
        self.response: _Response | None = None
        """The response being written; None between requests."""
        self.decoder: StreamDecoder | None = None
        """The stream whose response is being written."""
        self.receiving: StreamDecoder | _Waiting | None = None
        """Where the body being parsed goes: the current stream, or a waiting request."""
        self.receiving_done = True
        self.current_complete = True
        """The request whose response is being written has been read to its end."""
        self.waiting: collections.deque[_Waiting] = collections.deque()
        self.h_url = b""
        self.h_headers: Headers = []
        self.h_bytes = 0
        self.h_length = False
        self.h_chunked = False
        self.in_trailers = False
        self.line_tail = b""
        """The end of a request line still without headers (HTTP/0.9 is told by it)."""
        self.write_full = False
        """The connection is above its write high-water mark (the client is not reading):
        no pipelined request starts until it is below the low mark again."""

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def _enter(self, phase: Phase, refusal: tuple[int, bytes, str, str] | None = None,
               stop_reading: bool = True, by: StreamDecoder | None = None) -> None:
        """The connection's one change of phase: READING → TUNNEL or REFUSED, any → CLOSED.
        A refusal is answered by the stream ``by`` (its own body was malformed), at once when
        no response is owed (reading stops first unless ``stop_reading`` is False), or after
        the responses owed (reading stops meanwhile)."""
        if self.phase is Phase.CLOSED or (phase is not Phase.CLOSED
                                          and self.phase is not Phase.READING):
            return
        self.phase = phase
        if phase is Phase.REFUSED:
            assert refusal is not None
            self.refusal = refusal
            if by is not None:
                by.codec_error(*refusal[:3])
            elif self.response is None:
                if stop_reading:
                    self.sink.pause("error")
                self._reject(*refusal)
            else:
                self.sink.pause("error")
        elif phase is Phase.CLOSED:
            decoder, self.decoder = self.decoder, None
            self.response = None
            self.waiting.clear()
            if decoder is not None:
                decoder.decode_reset()

    def feed(self, data: bytes) -> None:
        phase = self.phase
        if phase is Phase.READING:
            self._parse(data)
        elif phase is Phase.TUNNEL and self.receiving is not None:
            self.receiving.decode_data(data)

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, TooLarge):
                self._error(431, b"Request Header Fields Too Large", "header_overflow")
            elif isinstance(e.__context__, _Refused):
                self._error(*e.__context__.args)
            else:
                _log.error("internal error while handling a request: %r", e.__context__,
                           exc_info=e.__context__)
                self._error(500, b"", "internal_error")
        except httptools.HttpParserUpgrade as e:
            rest = data[e.args[0]:]
            if self.phase is Phase.READING:  # an h2c upgrade: llhttp parses no more, the
                self._enter(Phase.TUNNEL)    # connection ends with its response
            elif rest and self.receiving is not None:
                self.receiving.decode_data(rest)
        except httptools.HttpParserError as e:
            _log.debug("malformed request: %s", e)
            if self.head_started and not self.h_headers \
                    and self.parser.get_http_version() == "0.9":
                # A version-less line refused for what came after it: the same 426 as when
                # the line's end was the end of a read.
                self._http09()
                return
            self._error(400, b"Bad Request", "codec_error")
            return
        if self.phase is Phase.READING and self.head_started and not self.h_headers:
            # A request line without a version (HTTP/0.9) is one that ends right after its
            # URL; llhttp would hold it waiting for headers that never come. Envoy answers 426
            # and closes. (The line may have come in several reads; once a byte follows it,
            # llhttp calls it 0.9 itself.)
            self.line_tail = (self.line_tail + data)[-(len(self.h_url) + 3):]
            if self.h_url and self.line_tail == b" " + self.h_url + b"\r\n" \
                    or self.parser.get_http_version() == "0.9":
                self._http09()
        elif self.line_tail:
            self.line_tail = b""

    def _http09(self) -> None:
        self._enter(Phase.REFUSED, (426, b"Upgrade Required", "low_version", "-"))

    def drain(self, close_idle: bool = True) -> None:
        self.draining = True
        if close_idle and self.response is None and not self.head_started and not self.waiting:
            self.sink.close()

    def connection_lost(self) -> None:
        self._enter(Phase.CLOSED)

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.h_url = b""
        self.h_headers = []
        self.h_bytes = 0
        self.h_length = self.h_chunked = self.in_trailers = False
        self.head_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.h_url += url
        self.h_bytes += len(url)
        if self.h_bytes > self.max_header_bytes:
            raise TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers:
            return
        name = name.lower()
        self.h_bytes += len(name) + len(value)
        self.h_headers.append((name, value))
        if name == b"content-length":
            self.h_length = value.strip() != b"0"
        elif name == b"transfer-encoding":
            self.h_chunked = True
        if self.h_bytes > self.max_header_bytes or len(self.h_headers) > self.max_headers:
            raise TooLarge

    def on_headers_complete(self) -> None:
        self.head_started = 0.0
        self.in_trailers = True
        p = self.parser
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refused(426, b"Upgrade Required", "http1.codec_error")  # HTTP/1.2, /2.0
        if self.h_chunked:
            codings = [v for k, v in self.h_headers if k == b"transfer-encoding"]
            if len(codings) != 1 or codings[0].strip().lower() != b"chunked":
                # Envoy's rule: chunked alone, or 501 (a smuggler's favourite ambiguity)
                raise _Refused(501, b"Not Implemented", "http1.invalid_transfer_encoding")
        keep_alive = p.should_keep_alive()
        upgrade = b""
        if p.should_upgrade():
            keep_alive = False  # llhttp parses nothing after an upgrade head
            value = next((v for k, v in self.h_headers if k == b"upgrade"), b"")
            if value.lower() != b"h2c":  # Envoy ignores an h2c upgrade: serve it as HTTP/1.1
                upgrade = value
                self._enter(Phase.TUNNEL)
        head = RequestHead(p.get_method(), self.h_url, self.h_headers, f"HTTP/{version}",
                           upgrade)
        end_stream = not (self.h_length or self.h_chunked or upgrade)
        self.receiving_done = end_stream
        if self.response is None and not self.waiting and not self.write_full:
            decoder = self._start(head, end_stream, keep_alive)
            self.receiving = None if end_stream else decoder
        else:
            w = _Waiting(head, end_stream, keep_alive)
            self.waiting.append(w)
            self.receiving = w
            self.sink.pause("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving.decode_data(body)

    def on_message_complete(self) -> None:
        if self.phase is Phase.TUNNEL:
            return  # an upgraded request does not end here: its tunnel does
        target, self.receiving = self.receiving, None
        if not self.receiving_done:
            self.receiving_done = True
            if not isinstance(target, _Waiting):
                self.current_complete = True
            if target is not None:
                target.decode_end()

    # --- streams ------------------------------------------------------------------------

    def _start(self, head: RequestHead, end_stream: bool, keep_alive: bool) -> StreamDecoder:
        response = _Response(self, head.method == b"HEAD", keep_alive and not self.draining,
                             bool(head.upgrade))
        self.response = response
        self.current_complete = end_stream
        decoder = self.callbacks.new_stream(head, response, end_stream)
        if not response.done:
            self.decoder = decoder
        return decoder

    def response_done(self, response: _Response) -> None:
        if response is not self.response:
            return
        self.response = None
        self.decoder = None
        if self.closed:
            return
        if not response.keep_alive or self.draining or not self.current_complete:
            self.sink.close()  # (a request body still arriving cannot be skipped)
            return
        if (self.waiting or self.phase is Phase.REFUSED) and not self.write_full:
            # The next request starts on the next turn of the loop: the one that just ended
            # finishes (and is logged) first.
            self.sink.schedule(self._next)

    def write_blocked(self, blocked: bool) -> None:
        """The client stopped reading (or reads again). Above the high-water mark a client
        that pipelines without reading would otherwise have every response it asks for
        buffered here: stop reading its next requests and start none of those parsed."""
        self.write_full = blocked
        if blocked:
            if self.current_complete and self.phase is not Phase.TUNNEL:
                self.sink.pause("write")  # (a body still arriving keeps flowing upstream)
            return
        self.sink.resume("write")
        if self.response is None and (self.waiting or self.phase is Phase.REFUSED):
            self.sink.schedule(self._next)

    def _next(self) -> None:
        if self.closed or self.response is not None or self.write_full:
            return
        if not self.waiting and self.phase is Phase.REFUSED:
            self._reject(*self.refusal)
            return
        if self.waiting:
            w = self.waiting.popleft()
            if not self.waiting:
                self.sink.resume("pipeline")
            decoder = self._start(w.head, w.end_stream, w.keep_alive)
            if self.receiving is w:
                self.receiving = decoder
            for ev in w.events:
                if ev is None:
                    self.current_complete = True
                    decoder.decode_end()
                else:
                    decoder.decode_data(ev)

    # --- writing ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.sink.write(data)

    def abort(self) -> None:
        if not self.closed:
            self.sink.abort()

    def _error(self, code: int, body: bytes, details: str) -> None:
        """What llhttp refused: the request it was parsing gets the error, as Envoy gives it
        (response flag DPE, counted and logged); requests before it still get theirs."""
        self.callbacks.protocol_error(details)
        own = self.response is not None and not self.current_complete \
            and self.receiving is self.decoder
        self._enter(Phase.REFUSED, (code, body, details, "DPE"), stop_reading=False,
                    by=self.decoder if own else None)

    def _reject(self, code: int, body: bytes, details: str, flag: str) -> None:
        response = _Response(self, False, False, False)
        self.response = response
        self.current_complete = True
        try:
            method = self.parser.get_method() if self.h_url else b""
        except httptools.HttpParserError:
            method = b""
        self.callbacks.reject(RequestHead(method, self.h_url, self.h_headers, self.protocol),
                              response, code, body, details, flag)

    def head_timed_out(self, body: bytes) -> None:
        self._enter(Phase.REFUSED, (408, body, "request_header_timeout", "-"))
