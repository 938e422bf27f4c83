"""The upstream pool's state machine, driven with fake connections: no sockets.

Each test builds a real Cluster (its stats, limits and hosts) and replaces how its pools open a
connection, so that the test decides when a connect succeeds or fails and what a backend sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from edgegw.config import model as m
from edgegw.http.codec import RequestHead
from edgegw.http.codec.http1 import Http1Connection as UpstreamConnection
from edgegw.stats import Store
from edgegw.upstream.cluster import Cluster
from edgegw.upstream.host import Host
from edgegw.upstream.pool import ConnectError, State

from .codec_harness import Sink

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class FakeSink(Sink):
    """The harness's sink, on an upstream connection: aborting it loses the connection, as a
    socket's does."""

    def __init__(self, conn: UpstreamConnection) -> None:
        super().__init__()
        self.conn = conn

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.conn.connection_lost)

    def respond(self, data: bytes = OK) -> None:
        self.conn.feed(data)

    def remote_close(self) -> None:
        self.closing = True
        self.conn.connection_lost()


class Backend:
    """Opens fake connections: each connect waits until the test settles it."""

    def __init__(self) -> None:
        self.connects: list[tuple[UpstreamConnection, asyncio.Future[None]]] = []
        self.sinks: list[FakeSink] = []

    async def open(self, conn: UpstreamConnection) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connects.append((conn, fut))
        await fut
        t = FakeSink(conn)
        self.sinks.append(t)
        conn.connected(t)

    def accept(self, i: int = -1) -> None:
        self.connects[i][1].set_result(None)

    def refuse(self, i: int = -1) -> None:
        self.connects[i][1].set_exception(
            ConnectError("remote connection failure", "delayed_connect_error: refused"))


class Client:
    """A request asking a pool for a connection; records what it hears."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.heard: list[str] = []
        self.conn: UpstreamConnection | None = None
        self.reused: bool | None = None
        self.body = b""
        self.waiter = host.pool.request(self)

    def pool_ready(self, conn: UpstreamConnection, reused: bool) -> None:
        self.heard.append("ready")
        self.conn, self.reused = conn, reused
        conn.new_stream(self).encode_headers(
            RequestHead(b"GET", b"/", [(b"host", b"x")], "HTTP/1.1"), True)

    def pool_overflow(self) -> None:
        self.heard.append("overflow")

    def pool_failure(self, reason: str, detail: str) -> None:
        self.heard.append(f"failure: {reason}")

    # ResponseReceiver
    def upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]],
                         end_stream: bool) -> None:
        self.heard.append(f"status {status}")
        if end_stream:
            self.heard.append("complete")

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        self.body += data
        if end_stream:
            self.heard.append("complete")

    def upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.heard.append("complete")

    def upstream_reset(self, reason: str, stale: bool) -> None:
        self.heard.append(f"reset: {reason}{' (stale)' if stale else ''}")

    def flush(self) -> None:
        pass

    def upstream_write_blocked(self, blocked: bool) -> None:
        pass


def make_cluster(n_hosts: int = 1, **limits: int) -> tuple[Cluster, Backend]:
    cfg: dict[str, Any] = {"name": "c", "load_assignment": {"endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": f"127.0.0.{20 + i}",
                                                     "port_value": 80}}}}
        for i in range(n_hosts)]}]}}
    if limits:
        cfg["circuit_breakers"] = {"thresholds": [{"priority": "DEFAULT", **limits}]}
    cluster = Cluster(m.Cluster.model_validate(cfg), Store())
    backend = Backend()
    for h in cluster.hosts:
        h.pool.open = backend.open
    return cluster, backend


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def served(host: Host, backend: Backend) -> Client:
    """A request that opened a new connection, got its response and left it idle."""
    client = Client(host)
    await settle()
    backend.accept()
    await settle()
    backend.sinks[-1].respond()
    return client


def run(test: Callable[[], Any]) -> None:
    asyncio.run(test())


def stat(cluster: Cluster, name: str) -> int:
    return cluster.stats._store.values()[f"cluster.c.{name}"]


def test_a_released_connection_is_reused_by_the_next_request() -> None:
    async def t() -> None:
        c, be = make_cluster()
        host = c.hosts[0]
        first = Client(host)
        await settle()
        be.accept()
        await settle()
        assert first.heard == ["ready"] and first.reused is False
        be.sinks[0].respond()
        assert first.heard == ["ready", "status 200", "complete"]
        assert host.pool.idle == [first.conn] and first.conn.state is State.READY
        second = Client(host)
        assert second.heard == ["ready"] and second.reused is True
        assert second.conn is first.conn and len(be.connects) == 1
        assert stat(c, "upstream_cx_total") == 1 and stat(c, "upstream_rq_pending_total") == 1
    run(t)


def test_max_connections_queues_requests_until_a_connection_is_freed() -> None:
    async def t() -> None:
        c, be = make_cluster(max_connections=1)
        host = c.hosts[0]
        first, second = Client(host), Client(host)
        await settle()
        assert len(be.connects) == 1  # the second waits: no new connection past the limit
        assert stat(c, "upstream_cx_overflow") == 1
        assert stat(c, "upstream_rq_pending_active") == 2
        be.accept()
        await settle()
        assert first.heard == ["ready"] and second.heard == []
        be.sinks[0].respond()
        # The waiter gets the connection once the codec's callback has returned, never
        # inside it: the response it was delivering ends whole.
        assert first.heard[-1] == "complete" and first.body == b"ok"
        assert second.heard == []
        await settle()
        assert second.heard == ["ready"] and second.reused is True
        assert stat(c, "upstream_rq_pending_active") == 0
        assert stat(c, "upstream_cx_overflow") == 1  # counted once per waiting request
    run(t)


def test_a_host_with_no_connection_may_open_one_past_the_cluster_limit() -> None:
    """The starvation Envoy avoids: max_connections is per cluster, pools are per host. With
    host A's idle connection holding the only slot, host B still opens its own."""
    async def t() -> None:
        c, be = make_cluster(n_hosts=2, max_connections=1)
        a, b = c.hosts
        ca = Client(a)
        await settle()
        be.accept()
        await settle()
        be.sinks[0].respond()
        assert a.pool.idle and c.connections == 1
        cb = Client(b)
        await settle()
        assert len(be.connects) == 2 and be.connects[1][0].pool is b.pool
        be.accept()
        await settle()
        assert cb.heard == ["ready"] and c.connections == 2
        assert stat(c, "upstream_cx_overflow") == 1
        # With a connection of its own, B's next requests queue behind it.
        be.sinks[1].respond()
        more = [Client(b), Client(b)]
        await settle()
        assert more[0].heard == ["ready"] and more[1].heard == [] and len(be.connects) == 2
        be.sinks[1].respond()
        await settle()
        assert more[1].heard == ["ready"]
        assert ca.heard[-1] == "complete"
    run(t)


def test_max_pending_requests_overflows_at_once() -> None:
    async def t() -> None:
        c, be = make_cluster(max_pending_requests=1)
        host = c.hosts[0]
        first, second = Client(host), Client(host)
        assert second.heard == ["overflow"] and second.waiter is None
        assert stat(c, "upstream_rq_pending_overflow") == 1
        await settle()
        be.accept()
        await settle()
        assert first.heard == ["ready"]
    run(t)


def test_max_requests_is_checked_when_a_request_gets_its_connection() -> None:
    async def t() -> None:
        c, be = make_cluster(max_requests=1)
        host = c.hosts[0]
        first = Client(host)
        await settle()
        be.accept()
        await settle()
        second = Client(host)
        await settle()
        be.accept()
        await settle()
        assert second.heard == ["overflow"]
        assert stat(c, "upstream_rq_active_overflow") == 1
        assert be.connects[1][0] in host.pool.idle  # the connection stays pooled
        be.sinks[0].respond()
        assert c.attached == 0 and len(host.pool.idle) == 2
        assert first.heard[-1] == "complete"
    run(t)


def test_a_connect_failure_fails_every_waiting_request_once() -> None:
    async def t() -> None:
        c, be = make_cluster(max_connections=1)
        host = c.hosts[0]
        clients = [Client(host) for _ in range(3)]
        await settle()
        be.refuse()
        await settle()
        for cl in clients:
            assert cl.heard == ["failure: remote connection failure"]
        assert stat(c, "upstream_cx_connect_fail") == 1
        assert stat(c, "upstream_rq_pending_active") == 0 and c.connections == 0
        assert not host.pool.waiters
    run(t)


def test_a_connect_that_dies_of_anything_still_fails_its_waiters() -> None:
    """A backend that closes between the connect and our first use of the transport: the
    waiters hear a failure, and a later request opens a connection again."""
    async def t() -> None:
        c, be = make_cluster()
        host = c.hosts[0]
        first = Client(host)
        await settle()
        be.connects[-1][1].set_exception(RuntimeError("the handler is closed"))
        await settle()
        assert first.heard == ["failure: remote connection failure"]
        assert host.pool.connecting == 0 and host.pool.expected == 0 and c.connections == 0
        second = Client(host)
        await settle()
        be.accept()
        await settle()
        assert second.heard == ["ready"]
    run(t)


def test_a_cancelled_waiter_leaves_the_queue_and_the_connection_serves_the_next() -> None:
    async def t() -> None:
        c, be = make_cluster(max_connections=1)
        host = c.hosts[0]
        first, second, third = Client(host), Client(host), Client(host)
        assert second.waiter is not None
        host.pool.cancel(second.waiter)
        assert stat(c, "upstream_rq_pending_active") == 2
        await settle()
        be.accept()
        await settle()
        be.sinks[0].respond()
        await settle()
        assert second.heard == [] and third.heard == ["ready"]
        assert first.heard[-1] == "complete"
    run(t)


def test_idle_connections_expire_oldest_first() -> None:
    async def t() -> None:
        c, be = make_cluster()
        host = c.hosts[0]
        a, b = Client(host), Client(host)
        await settle()
        be.accept(0)
        be.accept(1)
        await settle()
        be.sinks[0].respond()
        be.sinks[1].respond()
        assert a.conn is not None and b.conn is not None
        a.conn.idle_since -= 100
        host.pool.expire(50)
        await settle()
        assert host.pool.idle == [b.conn] and a.conn.state is State.CLOSED
        assert stat(c, "upstream_cx_idle_timeout") == 1
        assert stat(c, "upstream_cx_destroy") == 1 and c.connections == 1
    run(t)


def test_a_stale_keep_alive_close_is_reported_as_stale_only_before_any_response_byte() -> None:
    async def t() -> None:
        c, be = make_cluster()
        host = c.hosts[0]
        first = await served(host, be)
        reused = Client(host)
        be.sinks[0].remote_close()
        assert reused.heard == ["ready", "reset: connection termination (stale)"]
        assert stat(c, "upstream_cx_destroy_remote_with_active_rq") == 1
        # A malformed response is a protocol error, never a reason to send the request again.
        again = Client(host)
        await settle()
        be.accept()
        await settle()
        be.sinks[1].respond()
        bad = Client(host)
        be.sinks[1].respond(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n")
        assert bad.heard == ["ready", "reset: protocol error"]
        assert first.heard[-1] == again.heard[-1] == "complete"
    run(t)


def test_a_connection_closed_by_the_backend_frees_its_slot_for_a_waiter() -> None:
    async def t() -> None:
        c, be = make_cluster(max_connections=1)
        host = c.hosts[0]
        first, second = Client(host), Client(host)
        await settle()
        be.accept()
        await settle()
        be.sinks[0].respond(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0"
                                 b"\r\n\r\n")
        await settle()
        assert first.heard == ["ready", "status 200", "complete"]
        assert len(be.connects) == 2  # the closed connection's slot went to the waiter
        be.accept()
        await settle()
        assert second.heard == ["ready"] and second.reused is False
    run(t)


@pytest.mark.parametrize("fresh", [True, False])
def test_a_fresh_request_never_takes_an_idle_connection(fresh: bool) -> None:
    async def t() -> None:
        c, be = make_cluster()
        host = c.hosts[0]
        first = await served(host, be)
        cl = Client.__new__(Client)
        cl.host, cl.heard, cl.conn, cl.reused = host, [], None, None
        cl.waiter = host.pool.request(cl, fresh=fresh)
        await settle()
        assert len(be.connects) == (2 if fresh else 1)
        assert first.heard[-1] == "complete"
    run(t)


def test_an_idle_connection_closed_by_the_backend_leaves_the_pool() -> None:
    async def t() -> None:
        c, be = make_cluster()
        host = c.hosts[0]
        first = await served(host, be)
        assert first.conn is not None and host.pool.idle == [first.conn]
        be.sinks[0].remote_close()
        assert host.pool.idle == [] and c.connections == 0
        assert first.conn.state is State.CLOSED
        assert stat(c, "upstream_cx_active") == 0 and stat(c, "upstream_cx_destroy") == 1
        host.pool.close_all()  # nothing left to close: returns at once
        again = Client(host)
        await settle()
        assert len(be.connects) == 2 and again.heard == []
    run(t)

