"""Connections to one upstream host: one state machine that owns every assignment and limit.

In the style of httpcore's connection pool and Envoy's ``conn_pool_base.cc``:
- each connection has an explicit ``State`` (connecting, idle, busy, closed);
- a request that cannot have a connection at once waits as data (a ``Waiter`` in a queue);
- ``Pool._assign`` is the one method that gives connections to waiters and opens new ones.

The circuit breakers are enforced here and nowhere else, for every kind of user (a routed
request, its stale-connection retry, a mirrored copy): ``max_pending_requests`` when a request
has to wait, ``max_connections`` when a connection would be opened, ``max_requests`` when a
request is put on a connection. The limits count per cluster while pools are per host, so, as
Envoy does, a host with no connection at all may always open one: otherwise its waiters could
wait forever behind the idle connections of other hosts.

A connection serves one request at a time; the request that owns it receives the parsed
response through the ``ResponseSink`` calls.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import httptools

from .. import log

if TYPE_CHECKING:
    from .cluster import Cluster, Host

_log = log.get("upstream")


class ResponseSink(Protocol):
    """What a pooled connection reports to the request that is using it."""

    def upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]],
                         keep_alive: bool) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_complete(self) -> None: ...
    def upstream_reset(self, reason: str, stale: bool) -> None:
        """``stale``: a reused keep-alive connection closed before any byte of a response,
        the one case where nothing of the request can have reached a live server."""
    def flush(self) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class PoolClient(Protocol):
    """What asks a pool for a connection: it hears exactly one of these three."""

    def pool_ready(self, conn: UpstreamConnection, reused: bool) -> None: ...
    def pool_overflow(self) -> None:
        """A circuit breaker is open (Envoy's ``UO``)."""
    def pool_failure(self, reason: str, detail: str) -> None:
        """Connecting failed (Envoy's purge of pending streams on a connect failure)."""


class ConnectError(Exception):
    """Opening a connection failed; ``reason`` is Envoy's reset reason text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class State(enum.Enum):
    CONNECTING = "connecting"
    IDLE = "idle"
    BUSY = "busy"
    CLOSED = "closed"


class Waiter:
    """A request waiting for a connection. ``fresh`` waiters take only a new connection."""

    __slots__ = ("client", "fresh", "overflowed")

    def __init__(self, client: PoolClient, fresh: bool) -> None:
        self.client = client
        self.fresh = fresh
        self.overflowed = False
        """Counted once in upstream_cx_overflow."""


Opener = Callable[["UpstreamConnection"], Awaitable[None]]
"""Opens the transport of a new connection (its protocol is the connection) or raises
``ConnectError``; unit tests pass fakes."""


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to a host; parses responses with httptools."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.state = State.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_only = False
        self.got_response = False
        self.framed = False
        """The response has a Content-Length or Transfer-Encoding; else it ends at close."""
        self.keep_alive = True
        self.request_sent = False
        """The whole request went out: only then may the connection serve another."""
        self.requests = 0
        self.response_bytes = 0
        """Bytes of the current request's response received so far."""
        self.idle_since = 0.0

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.CONNECTING:
            self.state = State.CLOSED
            return  # the opener reports the failure
        sink = self.sink
        self.keep_alive = False
        if sink is not None and self.got_response and not self.framed:
            self.pool.closed(self)  # told while the state still says where the pool keeps it
            self.state = State.CLOSED
            self._finish()  # a close-delimited body ends with the connection
            return
        self.sink = None
        self.pool.closed(self, with_request=sink is not None)
        self.state = State.CLOSED
        if sink is not None:
            sink.upstream_reset("connection termination",
                                stale=self.requests > 1 and self.response_bytes == 0)

    def data_received(self, data: bytes) -> None:
        self.response_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self.sink is not None:
                self.sink.flush()
        except httptools.HttpParserCallbackError as e:
            _log.error("internal error while relaying a response from %s: %r",
                       self.pool.host.label, e.__context__, exc_info=e.__context__)
            self._fail("internal error")
        except httptools.HttpParserError as e:
            _log.debug("upstream protocol error from %s: %s", self.pool.host.label, e)
            self._fail("protocol error")

    def _fail(self, reason: str) -> None:
        sink, self.sink = self.sink, None
        self.close()
        if sink is not None:
            sink.upstream_reset(reason, stale=False)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    # httptools side

    def on_message_begin(self) -> None:
        self.headers = []
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self.framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            return  # 100 Continue and friends: Envoy does not pass them on by default.
        self.got_response = True
        keep = self.parser.should_keep_alive()
        self.keep_alive = keep
        if self.sink is not None:
            self.sink.upstream_headers(status, self.headers, keep)
        if self.head_only or status in (204, 304):
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.got_response and not self.head_only:
            self._finish()

    def _finish(self) -> None:
        self.got_response = False
        if self.head_only:
            # The parser still expects the body that a HEAD response announces but never sends.
            self.parser = httptools.HttpResponseParser(self)
        sink, self.sink = self.sink, None
        if self.state is State.BUSY:
            if self.keep_alive and self.request_sent:
                self.pool.release(self)
            else:
                self.close()
        if sink is not None:
            sink.upstream_complete()

    # used by the request that holds the connection

    def send(self, sink: ResponseSink, data: bytes, head_only: bool, complete: bool) -> None:
        """Starts a request; ``complete`` when ``data`` holds all of it (else the request sets
        ``request_sent`` once the rest is written)."""
        self.sink = sink
        self.head_only = head_only
        self.request_sent = complete
        self.got_response = False
        self.response_bytes = 0
        self.requests += 1
        assert self.transport is not None
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def detach(self) -> None:
        """The request gave up on this response (timeout, client gone): never reuse it."""
        self.sink = None
        self.close()

    def close(self) -> None:
        self.keep_alive = False
        if self.state is State.CLOSED:
            return
        if self.state is not State.CONNECTING:
            self.pool.closed(self)
        self.state = State.CLOSED
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Connections to one host and the requests waiting for them."""

    def __init__(self, host: Host, opener: Opener | None = None) -> None:
        self.host = host
        self.cluster: Cluster = host.cluster
        self.open = opener or self._open_tcp
        self.idle: list[UpstreamConnection] = []
        """Most recently used last, so that the oldest age out from the front."""
        self.busy = 0
        self.connecting = 0
        self.waiters: collections.deque[Waiter] = collections.deque()

    # --- what requests call -----------------------------------------------------------------

    def request(self, client: PoolClient, fresh: bool = False) -> Waiter | None:
        """Asks for a connection. The client hears ``pool_ready``, ``pool_overflow`` or
        ``pool_failure``, maybe before this returns; the waiter returned (None when the
        answer was immediate) is what ``cancel`` takes."""
        if not fresh:
            conn = self._take_idle()
            if conn is not None:
                self._attach(client, conn, reused=True)
                return None
        stats, limits = self.cluster.stats, self.cluster.limits
        if stats.upstream_rq_pending_active.value >= limits.max_pending_requests:
            stats.upstream_rq_pending_overflow.value += 1
            client.pool_overflow()
            return None
        stats.upstream_rq_pending_total.value += 1
        stats.upstream_rq_pending_active.value += 1
        waiter = Waiter(client, fresh)
        self.waiters.append(waiter)
        self._assign()
        return waiter

    def cancel(self, waiter: Waiter) -> None:
        """The request left before it got a connection."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return
        self.cluster.stats.upstream_rq_pending_active.value -= 1

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished a request and may serve another."""
        self._unbusy()
        self._to_idle(conn)
        self._assign()

    def closed(self, conn: UpstreamConnection, with_request: bool = False) -> None:
        """A connected connection is gone, closed by either side."""
        if conn.state is State.IDLE:
            self.idle.remove(conn)
        elif conn.state is State.BUSY:
            self._unbusy()
        host, stats = self.host, self.cluster.stats
        stats.upstream_cx_active.value -= 1
        stats.upstream_cx_destroy.value += 1
        if with_request:
            stats.upstream_cx_destroy_remote_with_active_rq.value += 1
        host.cx_active -= 1
        self.cluster.connections -= 1
        self._assign()

    def expire(self, idle_timeout: float) -> None:
        """Closes connections idle for longer than idle_timeout."""
        cutoff = time.monotonic() - idle_timeout
        for conn in [c for c in self.idle if c.idle_since < cutoff]:
            self.cluster.stats.upstream_cx_idle_timeout.value += 1
            conn.close()

    def close_all(self) -> None:
        """The host left the cluster or the cluster stopped: idle connections go now, busy
        ones when their response ends."""
        for conn in list(self.idle):
            conn.close()

    # --- the decisions ----------------------------------------------------------------------

    def _take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still open."""
        while self.idle:
            conn = self.idle[-1]
            if conn.transport is not None and not conn.transport.is_closing():
                return self.idle.pop()
            conn.close()  # leaves the idle list through closed()
        return None

    def _to_idle(self, conn: UpstreamConnection) -> None:
        conn.state = State.IDLE
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def _assign(self) -> None:
        """Gives idle connections to waiters in order, then opens connections for the waiters
        that no connection in progress will serve, as far as ``max_connections`` allows."""
        if not self.waiters:
            return  # the common case, on every response: nobody waits
        while self.idle:
            waiter = next((w for w in self.waiters if not w.fresh), None)
            if waiter is None:
                break
            conn = self._take_idle()
            if conn is None:
                break
            self._unqueue(waiter)
            self._attach(waiter.client, conn, reused=True)
        cluster = self.cluster
        while len(self.waiters) > self.connecting:
            if cluster.connections >= cluster.limits.max_connections:
                waiter = self.waiters[self.connecting]
                if not waiter.overflowed:
                    waiter.overflowed = True
                    cluster.stats.upstream_cx_overflow.value += 1
                if self.idle or self.busy or self.connecting:
                    break
            self._connect()

    def _unqueue(self, waiter: Waiter) -> None:
        self.waiters.remove(waiter)
        self.cluster.stats.upstream_rq_pending_active.value -= 1

    def _attach(self, client: PoolClient, conn: UpstreamConnection, reused: bool) -> None:
        """Puts a request on a connection; ``max_requests`` (requests on connections, summed
        over the cluster's hosts) is checked here, as Envoy does: an overflowing request
        leaves the connection in the pool."""
        cluster = self.cluster
        if cluster.attached >= cluster.limits.max_requests:
            cluster.stats.upstream_rq_active_overflow.value += 1
            self._to_idle(conn)
            client.pool_overflow()
            return
        conn.state = State.BUSY
        self.busy += 1
        cluster.attached += 1
        client.pool_ready(conn, reused)

    def _unbusy(self) -> None:
        self.busy -= 1
        self.cluster.attached -= 1

    def _connect(self) -> None:
        host, cluster = self.host, self.cluster
        stats = cluster.stats
        stats.upstream_cx_total.value += 1
        stats.upstream_cx_http1_total.value += 1
        host.cx_total += 1
        cluster.connections += 1
        self.connecting += 1
        asyncio.ensure_future(self._connecting(UpstreamConnection(self)))

    async def _connecting(self, conn: UpstreamConnection) -> None:
        started = time.monotonic()
        try:
            await self.open(conn)
            if conn.state is State.CLOSED:
                raise ConnectError("remote connection failure", "closed while connecting")
        except ConnectError as e:
            self.connecting -= 1
            self._connect_failed(conn, e)
            return
        self.connecting -= 1
        stats = self.cluster.stats
        stats.upstream_cx_active.value += 1
        stats.upstream_cx_connect_ms.record((time.monotonic() - started) * 1000)
        self.host.cx_active += 1
        if self.waiters:
            waiter = self.waiters[0]
            self._unqueue(waiter)
            self._attach(waiter.client, conn, reused=False)
        else:
            self._to_idle(conn)
        self._assign()

    def _connect_failed(self, conn: UpstreamConnection, e: ConnectError) -> None:
        """Envoy fails every waiting request when a connect fails, so that each can decide
        (retry elsewhere, answer 503); requests that arrive meanwhile are not failed."""
        conn.state = State.CLOSED
        if conn.transport is not None:
            conn.transport.abort()
        host, cluster = self.host, self.cluster
        stats = cluster.stats
        cluster.connections -= 1
        stats.upstream_cx_connect_fail.value += 1
        stats.upstream_cx_destroy.value += 1
        if e.reason == "connection timeout":
            stats.upstream_cx_connect_timeout.value += 1
        host.cx_connect_fail += 1
        _log.debug("connect to %s failed: %s", host.label, e)
        purged = list(self.waiters)
        self.waiters.clear()
        stats.upstream_rq_pending_active.value -= len(purged)
        for w in purged:
            w.client.pool_failure(e.reason, e.detail)
        self._assign()

    async def _open_tcp(self, conn: UpstreamConnection) -> None:
        """TCP, and TLS with the cluster's SNI and peer checks, within connect_timeout."""
        cluster, host = self.cluster, self.host
        tls = cluster.tls
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn, host.address, host.port,
                    ssl=tls.ctx if tls else None,
                    server_hostname=(tls.sni or "") if tls else None,
                    ssl_handshake_timeout=cluster.connect_timeout if tls else None,
                ),
                cluster.connect_timeout,
            )
        except TimeoutError:
            raise ConnectError("connection timeout") from None
        except ssl.SSLCertVerificationError as e:
            cluster.ssl.fail_verify_error.value += 1  # type: ignore[union-attr]
            raise ConnectError("remote connection failure",
                               f"TLS_error:{e.reason or e.strerror}") from None
        except ssl.SSLError as e:
            cluster.ssl.connection_error.value += 1  # type: ignore[union-attr]
            raise ConnectError("remote connection failure",
                               f"TLS_error:{e.reason or e.strerror}") from None
        except OSError as e:
            raise ConnectError("remote connection failure",
                               f"delayed_connect_error: {e.strerror or e}") from None
        if tls is not None and cluster.ssl is not None:
            why = tls.check_peer(transport.get_extra_info("ssl_object")) \
                if tls.san_matchers else None
            if why:
                cluster.ssl.fail_verify_san.value += 1
                raise ConnectError("remote connection failure", why)
            cluster.ssl.handshake.value += 1
        transport.set_write_buffer_limits(high=cluster.buffer_limit)
