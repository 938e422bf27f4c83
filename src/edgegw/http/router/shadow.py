"""request_mirror_policies: a copy of a request goes to another cluster and its answer is dropped.

Fire and forget, as in Envoy: the copy leaves once the original request is complete (its body
is kept up to the buffer limit; a larger body is not mirrored), with ``-shadow`` appended to
the host part of Host (``a.example.com:8443`` → ``a.example.com-shadow:8443``). Nothing the
shadow does (slow, failing, unreachable) touches the real request; its results count in the
shadow cluster's stats only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ... import log
from ...tasks import Tasks
from ...upstream.cluster import Cluster
from ...upstream.host import Host
from ...upstream.pool import Waiter
from ..codec import ClientConnection, Headers, RequestEncoder, RequestHead

_log = log.get("router")


def shadow_host(host: bytes) -> bytes:
    """Envoy's shadow authority: ``-shadow`` goes before the port."""
    if host.startswith(b"["):
        end = host.find(b"]")
        name, port = (host[: end + 1], host[end + 1:]) if end > 0 else (host, b"")
    else:
        name, sep, port = host.rpartition(b":")
        if not sep or not port.isdigit():
            name, port = host, b""
        else:
            port = b":" + port
    return name + b"-shadow" + port


def mirror(shadows: tuple[tuple[Cluster, bool], ...], body: bytes, hash_key: int | None,
           timeout: float, head_for: Callable[[Host], RequestHead]) -> None:
    """Sends a copy of the (complete) request to each shadow cluster (with ``-shadow`` on
    Host when asked), fire and forget."""
    for cluster, suffix in shadows:
        host = cluster.choose(hash_key)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            continue
        head = head_for(host)
        if suffix:
            head.headers[0] = (b"host", shadow_host(head.headers[0][1]))
        Shadow(cluster, host, head, body, timeout).start()


RUNNING = Tasks()
"""Mirrored requests under way: they outlive the stream that started them."""


class Shadow:
    """One mirrored request: connect, send, read the response to its end, keep nothing."""

    def __init__(self, cluster: Cluster, host: Host, head: RequestHead, body: bytes,
                 timeout: float) -> None:
        self.cluster = cluster
        self.host = host
        self.head = head
        self.body = body
        self.timeout = timeout
        self.done = asyncio.get_running_loop().create_future()
        self.status = 0
        self.waiter: Waiter | None = None
        self.encoder: RequestEncoder | None = None

    def start(self) -> None:
        RUNNING.start(self.run())

    async def run(self) -> None:
        cluster, host = self.cluster, self.host
        stats = cluster.stats
        stats.upstream_rq_active.value += 1
        host.rq_active += 1
        try:
            self.waiter = host.pool.request(self)
            await asyncio.wait_for(asyncio.shield(self.done), self.timeout or None)
        except TimeoutError:
            stats.upstream_rq_timeout.value += 1
            self._count(504)
            if self.waiter is not None:
                host.pool.cancel(self.waiter)
            if self.encoder is not None:
                self.encoder.reset()
        finally:
            stats.upstream_rq_active.value -= 1
            stats.upstream_rq_completed.value += 1
            host.rq_active -= 1

    def _count(self, code: int) -> None:
        self.cluster.stats.count_code(code)
        self.cluster.status_counter(code).value += 1
        if code >= 500:
            self.host.rq_error += 1

    # PoolClient: the pool applies the shadow cluster's circuit breakers to the copy too.

    def pool_ready(self, conn: ClientConnection, reused: bool) -> None:
        self.waiter = None
        self.cluster.stats.upstream_rq_total.value += 1
        self.host.rq_total += 1
        encoder = self.encoder = conn.new_stream(self)
        encoder.encode_headers(self.head, not self.body)
        if self.body:
            encoder.encode_data(self.body, True)

    def pool_overflow(self) -> None:
        self.waiter = None
        self._count(503)
        self._done()

    def pool_failure(self, reason: str, detail: str) -> None:
        self.waiter = None
        self._count(503)
        _log.debug("shadow to cluster '%s' failed: %s %s", self.cluster.name, reason, detail)
        self._done()

    # ResponseReceiver: the response is read and dropped.

    def upstream_headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.status = status
        self._count(status)
        if end_stream:
            self._done()

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self._done()

    def upstream_trailers(self, trailers: Headers) -> None:
        self._done()

    def _done(self) -> None:
        self.encoder = None
        if not self.done.done():
            self.done.set_result(None)

    def upstream_reset(self, reason: str, stale: bool) -> None:
        self.cluster.stats.upstream_rq_rx_reset.value += 1
        if not self.status:
            self._count(503)
        self._done()

    def flush(self) -> None:
        pass

    def upstream_write_blocked(self, blocked: bool) -> None:
        pass
