"""HTTP/1 to one upstream host (the client side)."""

from __future__ import annotations

import httptools

from .... import log
from .. import (
    ConnectionOwner,
    Headers,
    RequestHead,
    ResponseReceiver,
    Sink,
    State,
)
from .common import FRAMING, LAST_CHUNK, TooLarge, chunk, encode_headers

_log = log.get("http")


class Http1Connection:
    """One HTTP/1.1 connection to a host: one request at a time, so the connection is also
    that request's encoder. Its bytes come through ``feed`` and go to its ``Sink``."""

    capacity = 1
    protocol = "HTTP/1.1"

    def __init__(self, pool: ConnectionOwner) -> None:
        self.pool = pool
        self.state = State.CONNECTING
        self.sink: Sink | None = None
        self.receiver: ResponseReceiver | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: Headers = []
        self.body: list[bytes] = []
        """The response body parsed from the current read: passed on once per read (and with
        the response's end when that is in the same read)."""
        self.head_only = False
        self.got_response = False
        self.framed = False
        """The response has a Content-Length or Transfer-Encoding; else it ends at close."""
        self.keep_alive = True
        self.request_sent = False
        """The whole request went out: only then may the connection serve another."""
        self.chunked = False
        self.upgrade = False
        self.raw = False
        self.requests = 0
        self.streams = 0
        self.response_bytes = 0
        """Bytes of the current request's response received so far."""
        self.header_bytes = 0
        self.idle_since = 0.0
        self.max_header_bytes = pool.max_header_bytes
        self.max_headers = pool.max_headers

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # what the pool asks

    def can_take(self) -> bool:
        """Open, and free for a request."""
        return self.sink is not None and not self.sink.is_closing() and self.streams == 0

    def expired(self, cutoff: float) -> bool:
        """Idle since before ``cutoff``."""
        return self.streams == 0 and self.idle_since < cutoff

    # the connection's side

    def connected(self, sink: Sink) -> None:
        self.sink = sink

    def connection_lost(self) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.CONNECTING:
            self.state = State.CLOSED
            return  # the opener reports the failure
        receiver = self.receiver
        self.keep_alive = False
        if receiver is not None and ((self.got_response and not self.framed) or self.raw):
            self.pool.closed(self)  # told while the state still says where the pool keeps it
            self.state = State.CLOSED
            self.receiver = None
            receiver.upstream_data(b"", True)  # a close-delimited body (or a tunnel) ends here
            return
        self.receiver = None
        self.pool.closed(self, with_request=receiver is not None)
        self.state = State.CLOSED
        if receiver is not None:
            receiver.upstream_reset("connection termination",
                                stale=self.requests > 1 and self.response_bytes == 0)

    def feed(self, data: bytes) -> None:
        self.response_bytes += len(data)
        receiver = self.receiver
        if self.raw:
            if receiver is not None:
                receiver.upstream_data(data, False)
                receiver.flush()
            return
        self._parse(data, receiver)

    def _parse(self, data: bytes, receiver: ResponseReceiver | None) -> None:
        # Apart from feed, for the same reason as the server codec's _parse.
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, TooLarge):
                _log.debug("response headers from %s over the limits", self.pool.label)
                self._fail("protocol error")
                return
            _log.error("internal error while relaying a response from %s: %r",
                       self.pool.label, e.__context__, exc_info=e.__context__)
            self._fail("internal error")
            return
        except httptools.HttpParserUpgrade as e:
            rest = data[e.args[0]:]
            if self.raw and rest and self.receiver is not None:
                self.receiver.upstream_data(rest, False)
        except httptools.HttpParserError as e:
            _log.debug("upstream protocol error from %s: %s", self.pool.label, e)
            self._fail("protocol error")
            return
        if receiver is not None:
            if self.body and self.receiver is receiver:
                receiver.upstream_data(self._take_body(), False)
            receiver.flush()

    def _fail(self, reason: str) -> None:
        receiver, self.receiver = self.receiver, None
        self.body = []
        self.close()
        if receiver is not None:
            receiver.upstream_reset(reason, stale=False)

    def write_blocked(self, blocked: bool) -> None:
        if self.receiver is not None:
            self.receiver.upstream_write_blocked(blocked)

    # httptools side

    def on_message_begin(self) -> None:
        self.headers = []
        self.header_bytes = 0
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.got_response:
            return  # a trailer
        name = name.lower()
        if name in FRAMING:
            self.framed = True
        headers = self.headers
        headers.append((name, value))
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.max_header_bytes or len(headers) > self.max_headers:
            raise TooLarge

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            return  # 100 Continue and friends: Envoy does not pass them on by default.
        self.got_response = True
        self.keep_alive = self.parser.should_keep_alive()
        if status == 101:
            self.keep_alive = False
            self.raw = self.upgrade  # unasked for, a 101 ends the response (and the connection)
        if self.head_only or status in (204, 304) or (status == 101 and not self.upgrade):
            self._finish(status)
        elif self.receiver is not None:
            self.receiver.upstream_headers(status, self.headers, False)

    def on_body(self, body: bytes) -> None:
        if self.receiver is not None:
            self.body.append(body)

    def _take_body(self) -> bytes:
        body = self.body
        if not body:
            return b""
        self.body = []
        return body[0] if len(body) == 1 else b"".join(body)

    def on_message_complete(self) -> None:
        if self.got_response and not self.head_only and not self.raw:
            self._finish(0)

    def _finish(self, status: int) -> None:
        """The response is complete (``status`` when it had headers only)."""
        self.got_response = False
        if self.head_only:
            # The parser still expects the body that a HEAD response announces but never sends.
            self.parser = httptools.HttpResponseParser(self)
        receiver, self.receiver = self.receiver, None
        body = self._take_body()  # (before the release: a waiting request may take over)
        if self.state is State.BUSY:
            if self.keep_alive and self.request_sent:
                self.pool.release(self)
            else:
                self.close()
        if receiver is not None:
            if status:
                receiver.upstream_headers(status, self.headers, True)
            else:
                receiver.upstream_data(body, True)

    # the request (RequestEncoder)

    def new_stream(self, receiver: ResponseReceiver) -> Http1Connection:
        self.receiver = receiver
        self.body = []
        self.got_response = False
        self.response_bytes = 0
        self.requests += 1
        return self

    def encode_headers(self, head: RequestHead, end_stream: bool) -> None:
        self.head_only = head.method == b"HEAD"
        self.upgrade = bool(head.upgrade)
        self.request_sent = end_stream
        headers = head.headers
        self.chunked = not end_stream and not self.upgrade and not any(
            k == b"content-length" for k, _ in headers)
        data = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (
            head.method, head.path, encode_headers(headers),
            b"transfer-encoding: chunked\r\n" if self.chunked else b"")
        assert self.sink is not None
        self.sink.write(data)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.sink is None or self.closed:
            return
        if data:
            self.sink.write(chunk(data) if self.chunked else data)
        if end_stream:
            if self.chunked:
                self.sink.write(LAST_CHUNK)
            self.request_sent = True

    def encode_trailers(self, trailers: Headers) -> None:
        self.encode_data(b"", True)

    def read_disable(self, disable: bool) -> None:
        if self.sink is not None and not self.closed:
            if disable:
                self.sink.pause("downstream")
            else:
                self.sink.resume("downstream")

    def reset(self) -> None:
        """The request gave up on this response (timeout, client gone): never reuse it."""
        self.receiver = None
        self.close()

    def close(self) -> None:
        self.keep_alive = False
        if self.state is State.CLOSED:
            return
        if self.state is not State.CONNECTING:
            self.pool.closed(self)
        self.state = State.CLOSED
        if self.sink is not None:
            self.sink.abort()
