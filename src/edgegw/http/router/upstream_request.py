"""One attempt at sending a request upstream (Envoy's ``upstream_request.cc``).

The router decides where a request goes and whether to try again; an ``UpstreamRequest`` does
one try: it asks its host's pool for a connection (the pool decides which, and applies the
circuit breakers), opens a stream on it through the connection's codec, sends the head and the
body received so far, streams the rest, runs the per-try timeout, and hands the response back
to the router. ``release`` ends the try, whatever state it is in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ...upstream.host import Host
from ...upstream.pool import Waiter
from ..codec import ClientConnection, Headers, RequestEncoder, RequestHead

if TYPE_CHECKING:
    from ..filter import FilterCallbacks


class Router(Protocol):
    """What an attempt reports to the router filter that made it."""

    @property
    def cb(self) -> FilterCallbacks: ...
    def take_body(self) -> bytes: ...
    def request_sent(self) -> None: ...
    def overflow(self) -> None: ...
    def upstream_failed(self, reason: str, detail: str, connect: bool = False) -> None: ...
    def upstream_headers(self, req: UpstreamRequest, status: int, headers: Headers,
                         end_stream: bool) -> None: ...
    def upstream_data(self, req: UpstreamRequest, data: bytes, end_stream: bool) -> None: ...
    def upstream_trailers(self, req: UpstreamRequest, trailers: Headers) -> None: ...
    def upstream_reset(self, reason: str) -> None: ...

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class UpstreamRequest:
    def __init__(self, router: Router, host: Host, head: RequestHead) -> None:
        self.router = router
        self.cb = router.cb
        assert self.cb.info.cluster is not None
        self.cluster = self.cb.info.cluster
        self.host = host
        self.head = head
        self.encoder: RequestEncoder | None = None
        self.sent_at = 0.0
        self.waiter: Waiter | None = None
        """Our place in the host pool's queue while we wait for a connection."""
        self.stale_retried = False
        """The once-only retry after a stale keep-alive connection was used."""
        self.paused = False
        self.ended = False
        """The end of the request went upstream."""
        self.done = False
        self.try_timer: asyncio.TimerHandle | None = None
        host.rq_active += 1

    # --- getting a connection (PoolClient) --------------------------------------------------

    def start(self, fresh: bool = False) -> None:
        self.waiter = self.host.pool.request(self, fresh)

    def pool_ready(self, conn: ClientConnection, reused: bool) -> None:
        self.waiter = None
        if self.done or self.cb.conn.closed:
            self.host.pool.release(conn)
            return
        self._attach(conn)

    def pool_overflow(self) -> None:
        self.waiter = None
        if not self.done:
            self.router.overflow()

    def pool_failure(self, reason: str, detail: str) -> None:
        self.waiter = None
        if not self.done:
            self.router.upstream_failed(reason, detail, connect=True)

    # --- sending ----------------------------------------------------------------------------

    def _attach(self, conn: ClientConnection) -> None:
        """Sends the request on a connection (Envoy counts upstream_rq_total here)."""
        self.cluster.stats.upstream_rq_total.value += 1
        self.host.rq_total += 1
        self.sent_at = time.monotonic()
        encoder = self.encoder = conn.new_stream(self)
        body = self.router.take_body()
        end = self.cb.request_done
        self.ended = end
        encoder.encode_headers(self.head, end and not body)
        if body:
            encoder.encode_data(body, end)
        if end:
            self.router.request_sent()

    def write(self, data: bytes) -> bool:
        """Streams more request body; False while there is no stream yet."""
        if self.encoder is None:
            return False
        self.encoder.encode_data(data, False)
        return True

    def end_request(self) -> bool:
        """The request's end has arrived; False while there is no stream yet."""
        if self.encoder is None:
            return False
        if not self.ended:
            self.ended = True
            self.encoder.encode_data(b"", True)
        return True

    def arm_per_try(self, seconds: float, fired: Callable[[UpstreamRequest], None]) -> None:
        if self.try_timer is None and self.encoder is not None and not self.done:
            self.try_timer = self.cb.conn.loop.call_later(seconds, fired, self)

    def cancel_per_try(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def read_disable(self, disable: bool) -> None:
        if self.encoder is not None and self.paused != disable:
            self.paused = disable
            self.encoder.read_disable(disable)

    def release(self) -> None:
        """Ends this try: timers, queues and counts undone, and a stream still busy with its
        response reset (on HTTP/1.1 its connection is closed: it can never be reused)."""
        if self.done:
            return
        self.done = True
        self.cancel_per_try()
        if self.waiter is not None:
            self.host.pool.cancel(self.waiter)
            self.waiter = None
        self.host.rq_active -= 1
        encoder, self.encoder = self.encoder, None
        if encoder is not None:
            encoder.reset()

    # --- the response (ResponseReceiver) --------------------------------------------------------

    def upstream_headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        if end_stream:
            self.encoder = None  # the pool has the connection back (or closed it)
        if not self.done:
            self.router.upstream_headers(self, status, headers, end_stream)

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self.encoder = None
        if not self.done:
            self.router.upstream_data(self, data, end_stream)

    def upstream_trailers(self, trailers: Headers) -> None:
        self.encoder = None
        if not self.done:
            self.router.upstream_trailers(self, trailers)

    def upstream_reset(self, reason: str, stale: bool) -> None:
        self.encoder = None
        if self.done:
            return
        cb = self.cb
        if (stale and not self.stale_retried and not cb.response_started
                and cb.info.bytes_received == 0 and self.ended and cb.method in IDEMPOTENT):
            # A pooled keep-alive connection that the upstream had already closed: nothing of
            # this request reached a live server, so try once more on a new connection, through
            # the pool and its circuit breakers like any request (edgegw-only).
            self.stale_retried = True
            self.start(fresh=True)
            return
        self.router.upstream_reset(reason)

    def flush(self) -> None:
        self.cb.flush()

    def upstream_write_blocked(self, blocked: bool) -> None:
        self.cb.read_disable("upstream", blocked)
