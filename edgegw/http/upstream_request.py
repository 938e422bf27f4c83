"""One attempt at sending a request upstream (Envoy's ``upstream_request.cc``).

The stream decides where a request goes and whether to try again; an ``UpstreamRequest`` does
one try: it asks its host's pool for a connection (the pool decides which, and applies the
circuit breakers), sends the head and the body received so far, streams the rest, runs the
per-try timeout, and hands the response back to the stream. ``release`` ends the try,
whatever state it is in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..upstream.cluster import Host
from ..upstream.pool import UpstreamConnection, Waiter
from .codec import LAST_CHUNK, chunk

if TYPE_CHECKING:
    from .stream import Headers, Stream

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class UpstreamRequest:
    def __init__(self, stream: Stream, host: Host, head: bytes) -> None:
        assert stream.cluster is not None
        self.stream = stream
        self.cluster = stream.cluster
        self.host = host
        self.head = head
        self.conn: UpstreamConnection | None = None
        self.sent_at = 0.0
        self.waiter: Waiter | None = None
        """Our place in the host pool's queue while we wait for a connection."""
        self.stale_retried = False
        """The once-only retry after a stale keep-alive connection was used."""
        self.paused = False
        self.done = False
        self.try_timer: asyncio.TimerHandle | None = None
        host.rq_active += 1

    # --- getting a connection (PoolClient) --------------------------------------------------

    def start(self, fresh: bool = False) -> None:
        self.waiter = self.host.pool.request(self, fresh)

    def pool_ready(self, conn: UpstreamConnection, reused: bool) -> None:
        self.waiter = None
        if self.done or self.stream.conn.closed:
            self.host.pool.release(conn)
            return
        self._attach(conn)

    def pool_overflow(self) -> None:
        self.waiter = None
        if not self.done:
            self.stream.overflow()

    def pool_failure(self, reason: str, detail: str) -> None:
        self.waiter = None
        if not self.done:
            self.stream.upstream_failed(reason, detail, connect=True)

    # --- sending ----------------------------------------------------------------------------

    def _attach(self, conn: UpstreamConnection) -> None:
        """Sends the request on a connection (Envoy counts upstream_rq_total here)."""
        cluster = self.cluster
        self.conn = conn
        cluster.stats.upstream_rq_total.value += 1
        self.host.rq_total += 1
        self.sent_at = time.monotonic()
        s = self.stream
        data = self.head
        body = s.take_body()
        if body:
            data += chunk(body) if s.chunk_in else body
        if s.request_done and s.chunk_in:
            data += LAST_CHUNK
        conn.send(self, data, s.method == b"HEAD", complete=s.request_done)
        if s.request_done:
            s.request_sent()

    def write(self, data: bytes) -> bool:
        """Streams more request body; False while there is no connection yet."""
        if self.conn is None:
            return False
        self.conn.write(chunk(data) if self.stream.chunk_in else data)
        return True

    def end_request(self) -> bool:
        """The request's end has arrived; False while there is no connection yet."""
        if self.conn is None:
            return False
        if self.stream.chunk_in:
            self.conn.write(LAST_CHUNK)
        self.conn.request_sent = True
        return True

    def arm_per_try(self, seconds: float, fired: Callable[[UpstreamRequest], None]) -> None:
        if self.try_timer is None and self.conn is not None and not self.done:
            self.try_timer = self.stream.conn.loop.call_later(seconds, fired, self)

    def cancel_per_try(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def pause_reading(self) -> None:
        if self.conn is not None and not self.paused:
            self.paused = True
            self.conn.pause_reading()

    def resume_reading(self) -> None:
        if self.conn is not None and self.paused:
            self.paused = False
            self.conn.resume_reading()

    def release(self) -> None:
        """Ends this try: timers, queues and counts undone, and a connection still busy with
        its response closed (it can never be reused)."""
        if self.done:
            return
        self.done = True
        self.cancel_per_try()
        if self.waiter is not None:
            self.host.pool.cancel(self.waiter)
            self.waiter = None
        self.host.rq_active -= 1
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach()

    # --- the response (ResponseSink) --------------------------------------------------------

    def upstream_headers(self, status: int, headers: Headers, keep_alive: bool) -> None:
        if not self.done:
            self.stream.upstream_headers(self, status, headers, keep_alive)

    def upstream_body(self, data: bytes) -> None:
        if not self.done:
            self.stream.upstream_body(data)

    def upstream_complete(self) -> None:
        self.conn = None  # the pool has it back (or closed it)
        if not self.done:
            self.stream.upstream_complete(self)

    def upstream_reset(self, reason: str, stale: bool) -> None:
        self.conn = None
        if self.done:
            return
        s = self.stream
        if (stale and not self.stale_retried and not s.response_started
                and s.bytes_received == 0 and not s.chunk_in and s.method in IDEMPOTENT):
            # A pooled keep-alive connection that the upstream had already closed: nothing of
            # this request reached a live server, so try once more on a new connection, through
            # the pool and its circuit breakers like any request (edgegw-only).
            self.stale_retried = True
            self.start(fresh=True)
            return
        s.upstream_reset(reason)

    def flush(self) -> None:
        self.stream.flush()

    def upstream_pause_writing(self) -> None:
        self.stream.conn.flow.pause("upstream")

    def upstream_resume_writing(self) -> None:
        self.stream.conn.flow.resume("upstream")
