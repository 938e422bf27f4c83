"""One request of the gateway's own to a cluster (Envoy's async client): an authorization
check (ext_authz), a token exchange (oauth2). It goes through the cluster's pool like any
upstream request, and ends in exactly one of ``done`` (a whole response) or ``failed`` (no
cluster, no host, a connect failure, a reset or the timeout)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .codec import ClientConnection, Headers, RequestEncoder, RequestHead

if TYPE_CHECKING:
    import asyncio

    from ..upstream.cluster import ClusterManager
    from ..upstream.host import Host


class ServiceCall:
    """The call, its pool client and the sink of its response (the body's first
    ``max_body`` bytes are kept)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, head: RequestHead,
                 body: bytes | None, done: Callable[[ServiceCall], None],
                 failed: Callable[[], None], max_body: int = 64 * 1024) -> None:
        self.head = head
        self.request_body = body
        self.on_done = done
        self.on_failed = failed
        self.max_body = max_body
        self.status = 0
        self.headers: Headers = []
        self.body = b""
        self.done = False
        self.encoder: RequestEncoder | None = None
        self.host: Host | None = None
        self.timer = loop.call_later(timeout, self._fail)

    def start(self, clusters: ClusterManager, cluster_name: str) -> None:
        cluster = clusters.get(cluster_name)
        host = cluster.choose() if cluster is not None else None
        if host is None:
            self._fail()
            return
        self.host = host
        host.pool.request(self)

    # PoolClient
    def pool_ready(self, conn: ClientConnection, reused: bool) -> None:
        if self.done:
            assert self.host is not None
            self.host.pool.release(conn)
            return
        self.encoder = conn.new_stream(self)
        if self.request_body:
            self.encoder.encode_headers(self.head, False)
            self.encoder.encode_data(self.request_body, True)
        else:
            self.encoder.encode_headers(self.head, True)

    def pool_overflow(self) -> None:
        self._fail()

    def pool_failure(self, reason: str, detail: str) -> None:
        self._fail()

    # ResponseReceiver
    def upstream_headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.status, self.headers = status, headers
        if end_stream:
            self._finish()

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        if len(self.body) < self.max_body:
            self.body += data[: self.max_body - len(self.body)]
        if end_stream:
            self._finish()

    def upstream_trailers(self, trailers: Headers) -> None:
        self._finish()

    def upstream_reset(self, reason: str, stale: bool) -> None:
        self._fail()

    def flush(self) -> None:
        pass

    def upstream_write_blocked(self, blocked: bool) -> None:
        pass

    def _finish(self) -> None:
        self.encoder = None
        if not self.done:
            self.done = True
            self.timer.cancel()
            self.on_done(self)

    def _fail(self) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        encoder, self.encoder = self.encoder, None
        if encoder is not None:
            encoder.reset()
        self.on_failed()
