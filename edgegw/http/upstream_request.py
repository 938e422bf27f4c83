"""One attempt at sending a request upstream (Envoy's ``upstream_request.cc``).

The stream decides where a request goes and whether to try again; an ``UpstreamRequest`` does
one try: it gets a connection to its host (an idle pooled one, a new one, or the next one freed
when ``max_connections`` is reached, with the circuit breakers checked on the way), sends the
head and the body received so far, streams the rest, runs the per-try timeout, and hands the
response back to the stream. ``release`` ends the try, whatever state it is in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..upstream.cluster import Host
from ..upstream.pool import ConnectError, UpstreamConnection
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
        self.reused = False
        """On a pooled keep-alive connection (which the upstream may have closed meanwhile)."""
        self.attached = False
        """Counted in the cluster's attached requests (what max_requests limits)."""
        self.pending = False
        """Counted in upstream_rq_pending_active: waiting for a connection."""
        self.waiting = False
        """In the host pool's queue of requests waiting for a freed connection."""
        self.paused = False
        self.done = False
        self.try_timer: asyncio.TimerHandle | None = None
        host.rq_active += 1

    # --- getting a connection ---------------------------------------------------------------

    def start(self) -> None:
        conn = self.host.pool.acquire()
        if conn is not None:
            self.reused = True
            self._attach(conn)
            return
        stats, limits = self.cluster.stats, self.cluster.limits
        if stats.upstream_rq_pending_active.value >= limits.max_pending_requests:
            stats.upstream_rq_pending_overflow.value += 1
            self.stream.overflow()
            return
        stats.upstream_rq_pending_total.value += 1
        stats.upstream_rq_pending_active.value += 1
        self.pending = True
        if self.cluster.connections < limits.max_connections:
            asyncio.ensure_future(self._connect())
        else:
            stats.upstream_cx_overflow.value += 1
            self.waiting = True
            self.host.pool.waiters.append(self)

    def take_connection(self, conn: UpstreamConnection) -> bool:
        """The pool hands a freed connection to this waiting request; False if it left."""
        if not self.waiting or self.done:
            return False
        self.waiting = False
        self._attach(conn)
        return True

    def open_connection(self) -> bool:
        """The pool lets this waiting request open a connection of its own."""
        if not self.waiting or self.done:
            return False
        self.waiting = False
        asyncio.ensure_future(self._connect())
        return True

    async def _connect(self) -> None:
        try:
            conn = await self.host.pool.connect()
        except ConnectError as e:
            if not self.done:
                self.stream.upstream_failed(e.reason, e.detail, connect=True)
            return
        if self.done or self.stream.conn.closed:
            self.host.pool.release(conn)
            return
        self._attach(conn)

    def _unpend(self) -> None:
        if self.pending:
            self.pending = False
            self.cluster.stats.upstream_rq_pending_active.value -= 1
        if self.waiting:
            self.waiting = False
            try:
                self.host.pool.waiters.remove(self)
            except ValueError:
                pass

    # --- sending ----------------------------------------------------------------------------

    def _attach(self, conn: UpstreamConnection) -> None:
        """Sends the request on a connection. Envoy counts upstream_rq_total here and checks
        max_requests here: an overflowing request leaves the connection to the pool."""
        self._unpend()
        cluster = self.cluster
        if cluster.attached >= cluster.limits.max_requests:
            cluster.stats.upstream_rq_active_overflow.value += 1
            self.host.pool.release(conn)
            self.stream.overflow()
            return
        cluster.attached += 1
        self.attached = True
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
        self._unpend()
        if self.attached:
            self.attached = False
            self.cluster.attached -= 1
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

    def upstream_reset(self, reason: str) -> None:
        self.conn = None
        if self.done:
            return
        s = self.stream
        if (not s.response_started and self.reused and s.bytes_received == 0
                and not s.chunk_in and s.method in IDEMPOTENT):
            # A pooled keep-alive connection that the upstream had already closed: nothing of
            # this request reached a live server, so try once more on a fresh connection.
            self.reused = False
            if self.attached:
                self.attached = False
                self.cluster.attached -= 1
            self.cluster.stats.upstream_rq_pending_total.value += 1
            asyncio.ensure_future(self._connect())
            return
        s.upstream_reset(reason)

    def flush(self) -> None:
        self.stream.flush()

    def upstream_pause_writing(self) -> None:
        self.stream.conn.flow.pause("upstream")

    def upstream_resume_writing(self) -> None:
        self.stream.conn.flow.resume("upstream")
