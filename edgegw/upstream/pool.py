"""Keep-alive connections to one upstream host, and the protocol that reads its responses.

A pool is a stack of idle connections (the most recently used first, so that idle ones age out
at the bottom) and a way to open a new one. A connection serves one request at a time; the
request that owns it (an ``UpstreamRequest``, or a shadow) receives the parsed response through
four calls: ``upstream_headers``, ``upstream_body``, ``upstream_complete`` and
``upstream_reset``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import TYPE_CHECKING, Any, Protocol

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
    def upstream_reset(self, reason: str) -> None: ...
    def flush(self) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class ConnectError(Exception):
    """Opening a connection failed; ``reason`` is Envoy's reset reason text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to a host; parses responses with httptools."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
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
        self.closed = False
        self.requests = 0
        self.idle_since = 0.0

    # asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.host.cluster.stats.upstream_cx_active.value += 1
        self.pool.host.cx_active += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        stats = self.pool.host.cluster.stats
        stats.upstream_cx_active.value -= 1
        stats.upstream_cx_destroy.value += 1
        self.pool.host.cx_active -= 1
        self.pool.host.cluster.connections -= 1
        self.pool.forget(self)
        self.pool.wake()
        if self.sink is not None and self.got_response and not self.framed:
            self.keep_alive = False
            self._finish()  # a close-delimited body ends with the connection
            return
        sink, self.sink = self.sink, None
        if sink is not None:
            stats.upstream_cx_destroy_remote_with_active_rq.value += 1
            sink.upstream_reset("connection termination")

    def data_received(self, data: bytes) -> None:
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
        self.keep_alive = False
        sink, self.sink = self.sink, None
        self.close()
        if sink is not None:
            sink.upstream_reset(reason)

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
        if self.keep_alive and self.request_sent:
            self.pool.release(self)
        else:
            self.close()
        if sink is not None:
            sink.upstream_complete()

    # used by the stream

    def send(self, sink: ResponseSink, data: bytes, head_only: bool, complete: bool) -> None:
        """Starts a request; ``complete`` when ``data`` holds all of it (else the stream sets
        ``request_sent`` once the rest is written)."""
        self.sink = sink
        self.head_only = head_only
        self.request_sent = complete
        self.got_response = False
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
        """The stream gave up on this response (timeout, client gone): never reuse it."""
        self.sink = None
        self.close()

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.abort()
        else:
            self.closed = True


class Pool:
    """Idle keep-alive connections to one host, most recently used first."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.idle: list[UpstreamConnection] = []
        self.waiters: collections.deque[Any] = collections.deque()
        """Streams waiting for a connection because max_connections is reached."""

    def acquire(self) -> UpstreamConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        """A connection is free: the first waiting stream gets it, else it goes idle."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.take_connection(conn):
                return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def wake(self) -> None:
        """A connection went away: a waiting stream may open a new one now."""
        cluster = self.host.cluster
        while self.waiters and cluster.connections < cluster.limits.max_connections:
            if self.waiters.popleft().open_connection():
                return

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def expire(self, idle_timeout: float) -> None:
        """Closes connections idle for longer than idle_timeout (oldest are at the bottom)."""
        cutoff = time.monotonic() - idle_timeout
        while self.idle and self.idle[0].idle_since < cutoff:
            conn = self.idle.pop(0)
            self.host.cluster.stats.upstream_cx_idle_timeout.value += 1
            conn.close()

    def close_all(self) -> None:
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()

    def _failed(self, e: ConnectError) -> ConnectError:
        self.host.cluster.connections -= 1
        self.wake()
        stats = self.host.cluster.stats
        stats.upstream_cx_connect_fail.value += 1
        stats.upstream_cx_destroy.value += 1
        self.host.cx_connect_fail += 1
        _log.debug("connect to %s failed: %s", self.host.label, e)
        return e

    async def connect(self) -> UpstreamConnection:
        host = self.host
        cluster: Cluster = host.cluster
        stats = cluster.stats
        stats.upstream_cx_total.value += 1
        stats.upstream_cx_http1_total.value += 1
        host.cx_total += 1
        cluster.connections += 1
        loop = asyncio.get_running_loop()
        tls = cluster.tls
        started = time.monotonic()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(self), host.address, host.port,
                    ssl=tls.ctx if tls else None,
                    server_hostname=(tls.sni or "") if tls else None,
                    ssl_handshake_timeout=cluster.connect_timeout if tls else None,
                ),
                cluster.connect_timeout,
            )
            why = tls.check_peer(conn.transport.get_extra_info("ssl_object")) \
                if tls is not None and tls.san_matchers and conn.transport else None
            if why:
                conn.close()
                raise ConnectError("remote connection failure", why)
        except TimeoutError:
            stats.upstream_cx_connect_timeout.value += 1
            raise self._failed(ConnectError("connection timeout")) from None
        except ssl.SSLError as e:
            raise self._failed(ConnectError("remote connection failure",
                                            f"TLS_error:{e.reason or e.strerror}")) from None
        except OSError as e:
            raise self._failed(ConnectError("remote connection failure",
                                            f"delayed_connect_error: {e.strerror or e}")) from None
        except ConnectError as e:
            raise self._failed(e) from None
        assert conn.transport is not None
        conn.transport.set_write_buffer_limits(high=cluster.buffer_limit)
        stats.upstream_cx_connect_ms.record((time.monotonic() - started) * 1000)
        return conn
