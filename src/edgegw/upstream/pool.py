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

A connection's codec says how many requests it carries at once (one on HTTP/1.1, the peer's
SETTINGS on HTTP/2): a connection is READY while it can take another, BUSY when full. Each
request opens a stream on it and hears its response through the ``ResponseReceiver`` calls.
The pool asks a connection whether it can take a request and whether it has been idle too
long; a connection released inside its codec's callback is given to a waiter only after that
callback has returned (a waiter taking it over mid-response once emptied a response's body).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, cast

from .. import log
from ..http.codec import ClientConnection, State
from ..http.sink import TransportSink
from ..tasks import Tasks
from .connect import ConnectError, Endpoint, connect

if TYPE_CHECKING:
    from .cluster_info import ClusterInfo

_log = log.get("upstream")
WARN_EVERY = 10.0


class PoolHost(Endpoint, Protocol):
    """What a pool needs of its host (a cluster's ``Host`` is one)."""

    cluster: ClusterInfo
    label: str
    cx_active: int
    cx_total: int
    cx_connect_fail: int


class PoolClient(Protocol):
    """What asks a pool for a connection: it hears exactly one of these three."""

    def pool_ready(self, conn: ClientConnection, reused: bool) -> None: ...
    def pool_overflow(self) -> None:
        """A circuit breaker is open (Envoy's ``UO``)."""
    def pool_failure(self, reason: str, detail: str) -> None:
        """Connecting failed (Envoy's purge of pending streams on a connect failure)."""


class Waiter:
    """A request waiting for a connection. ``fresh`` waiters take only a new connection."""

    __slots__ = ("client", "fresh", "overflowed")

    def __init__(self, client: PoolClient, fresh: bool) -> None:
        self.client = client
        self.fresh = fresh
        self.overflowed = False
        """Counted once in upstream_cx_overflow."""


Opener = Callable[[ClientConnection], Awaitable[ClientConnection | None]]
"""Opens the transport of a new connection and connects the connection to it, or raises
``ConnectError``; returns the connection when ALPN chose another codec. Unit tests pass
fakes."""


class Pool:
    """Connections to one host and the requests waiting for them."""

    def __init__(self, host: PoolHost, opener: Opener | None = None) -> None:
        self.host = host
        self.cluster: ClusterInfo = host.cluster
        self.open = opener or self._open_tcp
        self.idle: list[ClientConnection] = []
        """READY connections, most recently used last, so that the oldest age out from the
        front."""
        self.busy = 0
        self.connecting = 0
        self.opening = Tasks()
        self.expected = 0
        """Requests the connections being opened will take at once (one each on HTTP/1.1),
        so that no more are opened than the waiters need."""
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.assign_scheduled = False
        self.warned_at = -WARN_EVERY
        self.unwarned = 0
        self.closing = False
        """Set by ``close_all``: each connection closes once its last request is done."""

    @property
    def label(self) -> str:
        return self.host.label

    @property
    def secure(self) -> bool:
        return self.cluster.tls is not None

    @property
    def max_header_bytes(self) -> int:
        return self.cluster.max_response_header_bytes

    @property
    def max_headers(self) -> int:
        return self.cluster.max_response_headers

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

    def release(self, conn: ClientConnection) -> None:
        """A request on the connection is done and the connection may serve another."""
        conn.streams -= 1
        self.cluster.attached -= 1
        if conn.state is State.BUSY:
            self.busy -= 1
            self._to_idle(conn)
        elif conn.streams == 0:
            conn.idle_since = time.monotonic()
        if self.closing and conn.streams == 0:
            conn.close()
            return
        self._assign_soon()

    def _assign_soon(self) -> None:
        """Assigns on the loop's next turn: the connection was released (or grew) inside
        its codec's callback, and a waiter gets it only once that has returned."""
        if self.waiters and not self.assign_scheduled:
            self.assign_scheduled = True
            asyncio.get_running_loop().call_soon(self._assign_later)

    def _assign_later(self) -> None:
        self.assign_scheduled = False
        self.warned_at = -WARN_EVERY
        self.unwarned = 0
        self._assign()

    def capacity_changed(self, conn: ClientConnection) -> None:
        """An HTTP/2 server's SETTINGS changed how many requests the connection may carry."""
        if conn.state is State.READY and conn.streams >= conn.capacity:
            self.idle.remove(conn)
            conn.state = State.BUSY
            self.busy += 1
        elif conn.state is State.BUSY and conn.streams < conn.capacity:
            self.busy -= 1
            self._to_idle(conn)
            self._assign_soon()

    def closed(self, conn: ClientConnection, with_request: bool = False) -> None:
        """A connected connection is gone, closed by either side."""
        if conn.state is State.READY:
            self.idle.remove(conn)
        elif conn.state is State.BUSY:
            self.busy -= 1
        self.cluster.attached -= conn.streams
        conn.streams = 0
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
        for conn in [c for c in self.idle if c.expired(cutoff)]:
            self.cluster.stats.upstream_cx_idle_timeout.value += 1
            conn.close()

    def close_all(self) -> None:
        """The host left the cluster or the cluster stopped: idle connections go now, busy
        ones when their last request ends (an HTTP/2 connection that could take more is
        among the idle ones, but its streams under way finish first)."""
        self.closing = True
        for conn in list(self.idle):
            if conn.streams == 0:
                conn.close()

    # --- the decisions ----------------------------------------------------------------------

    def _take_idle(self) -> ClientConnection | None:
        """The most recently used ready connection that is still open."""
        while self.idle:
            conn = self.idle[-1]
            if conn.can_take():
                return conn
            conn.close()  # leaves the idle list through closed()
        return None

    def _to_idle(self, conn: ClientConnection) -> None:
        conn.state = State.READY
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
        while len(self.waiters) > self.expected:
            if cluster.connections >= cluster.limits.max_connections:
                waiter = self.waiters[self.expected]
                if not waiter.overflowed:
                    waiter.overflowed = True
                    cluster.stats.upstream_cx_overflow.value += 1
                if self.idle or self.busy or self.connecting:
                    break
            self._connect()

    def _unqueue(self, waiter: Waiter) -> None:
        self.waiters.remove(waiter)
        self.cluster.stats.upstream_rq_pending_active.value -= 1

    def _attach(self, client: PoolClient, conn: ClientConnection, reused: bool) -> None:
        """Puts a request on a connection; ``max_requests`` (requests on connections, summed
        over the cluster's hosts) is checked here, as Envoy does: an overflowing request
        leaves the connection in the pool."""
        cluster = self.cluster
        if cluster.attached >= cluster.limits.max_requests:
            cluster.stats.upstream_rq_active_overflow.value += 1
            if conn.state is State.CONNECTING:
                self._to_idle(conn)
            client.pool_overflow()
            return
        conn.streams += 1
        cluster.attached += 1
        if conn.streams >= conn.capacity:
            if conn.state is State.READY:
                self.idle.remove(conn)
            conn.state = State.BUSY
            self.busy += 1
        elif conn.state is State.CONNECTING:
            self._to_idle(conn)
        client.pool_ready(conn, reused)

    def _connect(self) -> None:
        host, cluster = self.host, self.cluster
        stats = cluster.stats
        stats.upstream_cx_total.value += 1
        if not cluster.auto:  # (under auto_config, counted once ALPN has chosen)
            (stats.upstream_cx_http2_total if cluster.http2 else
             stats.upstream_cx_http1_total).value += 1
        host.cx_total += 1
        cluster.connections += 1
        self.connecting += 1
        conn = cluster.client_codec(self)
        self.expected += conn.capacity
        self.opening.start(self._connecting(conn, conn.capacity))

    async def _connecting(self, conn: ClientConnection, expected: int) -> None:
        started = time.monotonic()
        try:
            conn = await self.open(conn) or conn
            if conn.state is State.CLOSED:
                raise ConnectError("remote connection failure", "closed while connecting")
        except (ConnectError, OSError, RuntimeError) as e:
            # Whatever went wrong, the waiters must hear it: a connect that dies unreported
            # would leave them (and every later request) waiting for nothing.
            self.connecting -= 1
            self.expected -= expected
            self._connect_failed(conn, e if isinstance(e, ConnectError) else ConnectError(
                "remote connection failure", str(e)))
            return
        self.connecting -= 1
        self.expected -= expected
        stats = self.cluster.stats
        if self.cluster.auto:
            (stats.upstream_cx_http2_total if conn.protocol == "HTTP/2" else
             stats.upstream_cx_http1_total).value += 1
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

    def _connect_failed(self, conn: ClientConnection, e: ConnectError) -> None:
        """Envoy fails every waiting request when a connect fails, so that each can decide
        (retry elsewhere, answer 503); requests that arrive meanwhile are not failed."""
        conn.close()
        host, cluster = self.host, self.cluster
        stats = cluster.stats
        cluster.connections -= 1
        stats.upstream_cx_connect_fail.value += 1
        stats.upstream_cx_destroy.value += 1
        if e.reason == "connection timeout":
            stats.upstream_cx_connect_timeout.value += 1
        host.cx_connect_fail += 1
        self._warn(e)
        purged = list(self.waiters)
        self.waiters.clear()
        stats.upstream_rq_pending_active.value -= len(purged)
        for w in purged:
            w.client.pool_failure(e.reason, e.detail)
        self._assign()

    def _warn(self, e: ConnectError) -> None:
        """A failed connect is logged once per ``WARN_EVERY`` seconds per host, with how many
        failed since (a dead backend under load would otherwise flood the log)."""
        now = time.monotonic()
        if now - self.warned_at < WARN_EVERY:
            self.unwarned += 1
            return
        more = f" ({self.unwarned} more failures since)" if self.unwarned else ""
        self.warned_at, self.unwarned = now, 0
        _log.warning("%s: cannot connect to %s: %s%s", self.cluster.label, self.host.label,
                     e.explain(), more)

    async def _open_tcp(self, conn: ClientConnection) -> ClientConnection | None:
        """The cluster's transport to the host (see connect); under auto_config, ALPN
        chooses the codec."""
        cluster = self.cluster
        wire = _Wire(None if cluster.auto else conn)
        transport = await connect(cluster, self.host, lambda: wire)
        if cluster.auto:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2" \
                    and cluster.http2_codec is not None:
                conn = cluster.http2_codec(self)
            wire.attach(conn)
            return conn
        return None


class _Wire(asyncio.Protocol):
    """The socket side of an upstream connection: gives its codec a sink and the bytes that
    arrive. Under auto_config, holds the first bytes until ALPN has chosen the codec."""

    def __init__(self, conn: ClientConnection | None) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.buffered: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.conn is not None:
            self.conn.connected(TransportSink(self.transport))

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            self.buffered.append(data)
        else:
            self.conn.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is None:
            self.lost = True
        else:
            self.conn.connection_lost()

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.write_blocked(True)

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.write_blocked(False)

    def attach(self, conn: ClientConnection) -> None:
        """The codec ALPN chose takes the connection over, and what already arrived."""
        assert self.transport is not None
        self.conn = conn
        conn.connected(TransportSink(self.transport))
        for data in self.buffered:
            conn.feed(data)
        self.buffered = []
        if self.lost:
            conn.connection_lost()
