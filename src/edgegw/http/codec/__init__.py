"""The boundary between the protocol-neutral core and a codec per protocol (Envoy's codec.h).

A server codec turns a client's bytes into streams and their events, and the responses it is
given back into bytes; a client codec does the same for requests sent upstream. Above this
line nothing knows whether HTTP/1.1 or HTTP/2 is spoken: requests are a ``RequestHead`` (Host
stays a header, as HTTP/1.1 writes it; HTTP/2's ``:authority`` becomes it), then data,
trailers and an end, and responses are a status, headers, data and trailers.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

from .head import HOP_BY_HOP as HOP_BY_HOP
from .head import Headers as Headers
from .head import RequestHead as RequestHead
from .head import connection_tokens as connection_tokens

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


# --- the server side: a codec feeds streams, a stream answers through its encoder ---------


class ResponseEncoder(Protocol):
    """How a stream's response goes to the client. Writes are gathered until ``flush`` or
    the end of the response, so that a small response leaves in one record."""

    def encode_100_continue(self) -> None: ...
    def encode_headers(self, status: int, headers: Headers, end_stream: bool,
                       close: bool = False) -> None:
        """``close``: no further request may use this connection (HTTP/1.1 says so with
        ``connection: close``; HTTP/2 has nothing to close)."""
    def encode_data(self, data: bytes, end_stream: bool) -> None: ...
    def encode_trailers(self, trailers: Headers) -> None: ...
    def flush(self) -> None: ...
    def reset(self) -> None:
        """Abandons the response: the client must never take a cut one for a whole one."""
    def read_disable(self, reason: str, disable: bool) -> None:
        """Stops (or resumes) taking this stream's request body from the client."""


class StreamDecoder(Protocol):
    """What a codec tells a stream after its head (the stream is Envoy's ActiveStream)."""

    def decode_data(self, data: bytes) -> None: ...
    def decode_trailers(self, trailers: Headers) -> None: ...
    def decode_end(self) -> None: ...
    def decode_reset(self) -> None:
        """The client reset the stream or the connection is gone."""
    def write_blocked(self, blocked: bool) -> None:
        """The client is not reading this stream's response fast enough (or is again)."""
    def codec_error(self, status: int, body: bytes, details: str) -> None:
        """The rest of this request could not be parsed."""


class ServerCallbacks(Protocol):
    """What a server codec asks of the connection manager."""

    def new_stream(self, head: RequestHead, encoder: ResponseEncoder,
                   end_stream: bool) -> StreamDecoder: ...
    def protocol_error(self, details: str) -> None:
        """The client broke the protocol (counted once per connection)."""
    def reject(self, head: RequestHead, encoder: ResponseEncoder, status: int, body: bytes,
               details: str, flag: str) -> None:
        """Answers a request that never became a stream (unparsable, or its head timed out)
        and records it as a stream would be: counted and access-logged."""


class ServerCodec(Protocol):
    protocol: str
    head_started: float
    """When an incomplete request head began arriving (0 when none is): for
    request_headers_timeout."""

    def feed(self, data: bytes) -> None: ...
    def drain(self, close_idle: bool = True) -> None:
        """Let the streams under way finish and accept no new one (GOAWAY, or
        ``connection: close`` on the next response); an idle HTTP/1.1 connection closes now
        unless ``close_idle`` is false (a request may be on its way)."""
    def head_timed_out(self, body: bytes) -> None:
        """Answers 408 to a request whose head never completed in time, and closes."""
    def write_blocked(self, blocked: bool) -> None:
        """The connection's write buffer went above its high-water mark (or back below the
        low mark): the client is not reading what it asked for."""
    def connection_lost(self) -> None: ...


class Sink(Protocol):
    """Where a codec's bytes go, and the I/O it asks of its connection. Codecs do none
    themselves (as hypercorn's): bytes in through ``feed``, bytes out through ``write``, so
    bytes alone test them."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None:
        """Ends the connection once what was written has gone."""
    def abort(self) -> None:
        """Ends the connection now, dropping what waits to be written."""
    def pause(self, reason: str) -> None:
        """Stops reading, for this reason."""
    def resume(self, reason: str) -> None:
        """Reading resumes once no reason is left."""
    def schedule(self, callback: Callable[[], None]) -> None:
        """Runs the callback on the event loop's next turn, after what runs now."""
    def buffered(self) -> int:
        """Bytes written that the peer has not taken yet."""
    def is_closing(self) -> bool:
        """The connection is ending, by either side."""


# --- the client side: a pooled connection takes requests, a receiver hears the response ---


class State(enum.Enum):
    """A pooled connection's state, as the pool sees it."""

    CONNECTING = "connecting"
    READY = "ready"
    """Open, and able to take another request."""
    BUSY = "busy"
    """Carrying as many requests as it can."""
    CLOSED = "closed"


class ConnectionOwner(Protocol):
    """What a client codec tells the pool its connection belongs to."""

    @property
    def label(self) -> str:
        """The upstream host, for log lines."""
    @property
    def secure(self) -> bool:
        """The connection runs over TLS (HTTP/2's ``:scheme``)."""
    @property
    def max_header_bytes(self) -> int:
        """The response header limits (max_response_headers_kb, max_headers_count)."""
    @property
    def max_headers(self) -> int: ...
    def release(self, conn: Any) -> None:
        """A request on the connection is over; it may take another."""
    def closed(self, conn: Any, with_request: bool = False) -> None: ...
    def capacity_changed(self, conn: Any) -> None:
        """The peer changed how many requests the connection may carry."""


class ResponseReceiver(Protocol):
    """What an upstream connection reports to the request that is using it."""

    def upstream_headers(self, status: int, headers: Headers, end_stream: bool) -> None: ...
    def upstream_data(self, data: bytes, end_stream: bool) -> None: ...
    def upstream_trailers(self, trailers: Headers) -> None: ...
    def upstream_reset(self, reason: str, stale: bool) -> None:
        """``stale``: a reused keep-alive connection closed before any byte of a response,
        the one case where nothing of the request can have reached a live server."""
    def flush(self) -> None:
        """The connection's last read is processed: pass on what it produced."""
    def upstream_write_blocked(self, blocked: bool) -> None: ...


class RequestEncoder(Protocol):
    """One request on an upstream connection."""

    def encode_headers(self, head: RequestHead, end_stream: bool) -> None: ...
    def encode_data(self, data: bytes, end_stream: bool) -> None: ...
    def encode_trailers(self, trailers: Headers) -> None: ...
    def read_disable(self, disable: bool) -> None: ...
    def reset(self) -> None:
        """The request gave up on its response (timeout, client gone)."""


# --- shared helpers --------------------------------------------------------------------------


class _DateCache:
    """The Date header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


http_date = _DateCache().get


class ClientConnection(Protocol):
    """What the pool needs of a connection; a client codec (HTTP/1.1 or HTTP/2) is one. Its
    bytes come through ``feed``, and it writes to the ``Sink`` it was ``connected`` to."""

    state: State
    capacity: int
    """How many requests it may carry at once (1 on HTTP/1.1)."""
    streams: int
    requests: int
    idle_since: float
    protocol: str

    def can_take(self) -> bool:
        """Open, and free for one more request."""
    def expired(self, cutoff: float) -> bool:
        """Idle since before ``cutoff``."""
    def new_stream(self, receiver: ResponseReceiver) -> RequestEncoder: ...
    def close(self) -> None: ...
    def connected(self, sink: Sink) -> None: ...
    def feed(self, data: bytes) -> None: ...
    def write_blocked(self, blocked: bool) -> None: ...
    def connection_lost(self) -> None: ...


ClientCodec = Callable[[ConnectionOwner], ClientConnection]
"""Makes a new connection's codec: the cluster chooses it from its protocol options."""
