"""request_mirror_policies: a copy of a request goes to another cluster and its answer is dropped.

Fire and forget, as in Envoy: the copy leaves once the original request is complete (its body
is kept up to the buffer limit; a larger body is not mirrored), with ``-shadow`` appended to
the host part of Host (``a.example.com:8443`` → ``a.example.com-shadow:8443``). Nothing the
shadow does (slow, failing, unreachable) touches the real request; its results count in the
shadow cluster's stats only.
"""

from __future__ import annotations

import asyncio

from .. import log
from ..upstream.cluster import Cluster, Host
from ..upstream.pool import ConnectError, UpstreamConnection
from .codec import Headers

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


class Shadow:
    """One mirrored request: connect, send, read the response to its end, keep nothing."""

    def __init__(self, cluster: Cluster, host: Host, head: bytes, body: bytes,
                 timeout: float) -> None:
        self.cluster = cluster
        self.host = host
        self.data = head + body
        self.timeout = timeout
        self.done = asyncio.get_running_loop().create_future()
        self.status = 0

    async def run(self) -> None:
        cluster, host = self.cluster, self.host
        stats = cluster.stats
        stats.upstream_rq_active.value += 1
        host.rq_active += 1
        conn: UpstreamConnection | None = None
        try:
            conn = host.pool.acquire()
            if conn is None:
                conn = await host.pool.connect()
            stats.upstream_rq_total.value += 1
            host.rq_total += 1
            conn.send(self, self.data, False, complete=True)
            await asyncio.wait_for(asyncio.shield(self.done), self.timeout or None)
        except ConnectError as e:
            self._count(503)
            _log.debug("shadow to cluster '%s' failed: %s", cluster.name, e)
        except TimeoutError:
            stats.upstream_rq_timeout.value += 1
            self._count(504)
            self._drop(conn)
        finally:
            stats.upstream_rq_active.value -= 1
            stats.upstream_rq_completed.value += 1
            host.rq_active -= 1

    @staticmethod
    def _drop(conn: UpstreamConnection | None) -> None:
        if conn is not None:
            conn.detach()

    def _count(self, code: int) -> None:
        self.cluster.stats.count_code(code)
        self.cluster.status_counter(code).value += 1
        if code >= 500:
            self.host.rq_error += 1

    # ResponseSink: the response is read and dropped.

    def upstream_headers(self, status: int, headers: Headers,
                         keep_alive: bool) -> None:
        self.status = status
        self._count(status)

    def upstream_body(self, data: bytes) -> None:
        pass

    def upstream_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def upstream_reset(self, reason: str) -> None:
        self.cluster.stats.upstream_rq_rx_reset.value += 1
        if not self.status:
            self._count(503)
        self.upstream_complete()

    def flush(self) -> None:
        pass

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass
