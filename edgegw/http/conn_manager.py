"""Envoy's http_connection_manager for HTTP/1.1: the downstream connection and its settings.

``HttpConnectionManager`` is built once per filter chain from the config; each accepted
connection gets a ``DownstreamConnection`` protocol whose ``data_received`` feeds httptools
directly. Requests are served one at a time in order; pipelined ones wait in a queue with
reading paused. Limits (header size and count) and timeouts (request headers, stream idle,
connection idle) are Envoy's, with Envoy's replies.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING

import httptools

from .. import log
from ..accesslog import AccessLogger
from ..config import model as m
from ..stats import Counter, Gauge, Histogram, StatSet, Store
from ..upstream.cluster import ClusterManager
from .codec import local_reply
from .fault import FaultFilter
from .headers import ForwardingPolicy
from .local_ratelimit import LocalRateLimitFilter, TokenBucket
from .router import compile_routes
from .stream import Stream

if TYPE_CHECKING:
    from ..listener.tls_inspector import ClientHello

_log = log.get("http")


class HcmStats(StatSet):
    """``http.<stat_prefix>.*``: Envoy's connection manager stats (a subset)."""

    downstream_cx_total: Counter
    downstream_cx_http1_total: Counter
    downstream_cx_ssl_total: Counter
    downstream_cx_destroy: Counter
    downstream_cx_protocol_error: Counter
    downstream_cx_idle_timeout: Counter
    downstream_rq_total: Counter
    downstream_rq_http1_total: Counter
    downstream_rq_completed: Counter
    downstream_rq_timeout: Counter
    downstream_rq_idle_timeout: Counter
    downstream_rq_header_timeout: Counter
    downstream_rq_rx_reset: Counter
    no_route: Counter
    no_cluster: Counter
    rq_total: Counter
    rq_direct_response: Counter
    rq_redirect: Counter
    downstream_cx_active: Gauge
    downstream_cx_ssl_active: Gauge
    downstream_rq_active: Gauge
    downstream_rq_time: Histogram


class HttpConnectionManager:
    """The compiled settings of one http_connection_manager filter."""

    def __init__(self, cfg: m.HttpConnectionManager, clusters: ClusterManager,
                 store: Store) -> None:
        self.stat_prefix = cfg.stat_prefix
        self.stats = HcmStats(store, f"http.{cfg.stat_prefix}.", code_classes="downstream_rq")
        self.routes = compile_routes(cfg.route_config)
        self.clusters = clusters
        self.server_name = (cfg.server_name or "edgegw").encode("latin-1")
        self.forwarding = ForwardingPolicy.from_config(cfg)
        self.max_header_bytes = cfg.max_request_headers_kb * 1024
        opts = cfg.common_http_protocol_options or m.HttpProtocolOptions()
        self.max_headers = opts.max_headers_count or 100
        self.idle_timeout = 3600.0 if opts.idle_timeout is None else opts.idle_timeout
        self.request_headers_timeout = cfg.request_headers_timeout or 0.0
        self.request_timeout = cfg.request_timeout or 0.0
        """Envoy's: the whole request must arrive within it (disarmed once a response
        starts); 0 disables it, the default."""
        self.stream_idle_timeout = (300.0 if cfg.stream_idle_timeout is None
                                    else cfg.stream_idle_timeout)
        self.access_logs = [AccessLogger(a) for a in cfg.access_log]
        router = cfg.http_filters[-1].typed_config if cfg.http_filters else None
        self.suppress_envoy_headers = isinstance(router, m.Router) and \
            router.suppress_envoy_headers
        self.filters: list[tuple[str, FaultFilter | LocalRateLimitFilter]] = []
        """The HTTP filters before the router, with the names per-route configs use."""
        for f in cfg.http_filters[:-1]:
            if isinstance(f.typed_config, m.HTTPFault):
                self.filters.append((f.name, FaultFilter(f.typed_config, store, cfg.stat_prefix)))
            elif isinstance(f.typed_config, m.LocalRateLimit):
                self.filters.append((f.name, LocalRateLimitFilter(f.typed_config, store)))

    def close(self) -> None:
        for a in self.access_logs:
            a.close()


class FlowControl:
    """Why reading from the client is paused; it resumes when no reason is left."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self.reasons:
            self.transport.pause_reading()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()


class _TooLarge(Exception):
    pass


class DownstreamConnection(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (over TLS or not)."""

    def __init__(self, hcm: HttpConnectionManager, tls: bool, sni: str | None,
                 buffer_limit: int,
                 on_close: collections.abc.Callable[[DownstreamConnection], None] | None = None
                 ) -> None:
        self.hcm = hcm
        """The settings for the next request; a config reload may point it at new ones."""
        self.cx_stats = hcm.stats
        """Where this connection's own gauges and counters live (fixed at accept)."""
        self.hello: ClientHello | None = None
        """What the filter chain was chosen by, to choose again after a reload."""
        self.tls = tls
        self.sni = sni
        self.buffer_limit = buffer_limit
        self.on_close = on_close
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.remote_ip = ""
        self.remote_port = 0
        self.local_address = ""
        self.active: Stream | None = None
        self.receiving: Stream | None = None
        self.queue: collections.deque[Stream] = collections.deque()
        self.closed = False
        self.draining = False
        self.h_url = b""
        self.h_headers: list[tuple[bytes, bytes]] = []
        self.h_bytes = 0
        self.last_activity = time.monotonic()
        self.head_started = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.route_timer: asyncio.TimerHandle | None = None
        self.route_timer_at = 0.0
        self.buckets: dict[int, TokenBucket] = {}
        """Per-connection token buckets (local_rate_limit_per_downstream_connection)."""

    # --- asyncio side -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(self.transport)
        self.transport.set_write_buffer_limits(high=self.buffer_limit)
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote_ip, self.remote_port = peer[0], peer[1]
        local = transport.get_extra_info("sockname")
        if local:
            self.local_address = m.address_string(local[0], local[1])
        st = self.cx_stats
        st.downstream_cx_total.value += 1
        st.downstream_cx_http1_total.value += 1
        st.downstream_cx_active.value += 1
        if self.tls:
            st.downstream_cx_ssl_total.value += 1
            st.downstream_cx_ssl_active.value += 1
        self._arm_watchdog()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        st = self.cx_stats
        st.downstream_cx_active.value -= 1
        st.downstream_cx_destroy.value += 1
        if self.tls:
            st.downstream_cx_ssl_active.value -= 1
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.route_timer is not None:
            self.route_timer.cancel()
        if self.active is not None and not self.active.response_done:
            st.downstream_rq_rx_reset.value += 1
            self.active.downstream_reset()
        for s in self.queue:
            s.downstream_reset()
        self.queue.clear()
        if self.on_close is not None:
            self.on_close(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _TooLarge):
                self._protocol_error(431, b"Request Header Fields Too Large")
            else:
                _log.error("internal error while handling a request: %r", e.__context__,
                           exc_info=e.__context__)
                self._protocol_error(500, b"")
        except httptools.HttpParserUpgrade:
            pass  # answered when the head completed; nothing after it is read
        except httptools.HttpParserError as e:
            _log.debug("malformed request from %s: %s", self.remote_ip, e)
            self._protocol_error(400, b"Bad Request")

    def pause_writing(self) -> None:
        if self.active is not None:
            self.active.pause_upstream()

    def resume_writing(self) -> None:
        if self.active is not None:
            self.active.resume_upstream()

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.h_url = b""
        self.h_headers = []
        self.h_bytes = 0
        self.head_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.h_url += url
        self.h_bytes += len(url)
        if self.h_bytes > self.hcm.max_header_bytes:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.h_bytes += len(name) + len(value)
        self.h_headers.append((name.lower(), value))
        if self.h_bytes > self.hcm.max_header_bytes or len(self.h_headers) > self.hcm.max_headers:
            raise _TooLarge

    def on_headers_complete(self) -> None:
        self.head_started = 0.0
        p = self.parser
        s = Stream(self, p.get_method(), self.h_url, self.h_headers,
                   p.get_http_version() == "1.1", p.should_keep_alive())
        self.receiving = s
        if p.should_upgrade():
            s.upgrade = next((v for k, v in s.headers if k == b"upgrade"), b"")
            s.keep_alive = False  # httptools stops parsing at an upgrade
        if self.active is None:
            self.active = s
            s.start()
        else:
            self.queue.append(s)
            self.flow.pause("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving.request_body(body)

    def on_message_complete(self) -> None:
        s, self.receiving = self.receiving, None
        if s is not None:
            s.request_complete()

    # --- used by streams ----------------------------------------------------------------

    def transport_write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        """Resets the connection: the client must never take a cut response for a whole one."""
        if not self.closed:
            self.transport.abort()

    def stream_done(self, s: Stream) -> None:
        if s is not self.active:
            return
        self.active = None
        self.last_activity = time.monotonic()
        if self.closed:
            return
        if not s.keep_alive or (not s.request_done and self.receiving is s) or self.draining:
            self.transport.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self.flow.resume("pipeline")
            self.active = nxt
            nxt.start()
            return

    def drain(self) -> None:
        self.draining = True
        if self.active is None and not self.closed:
            self.transport.close()

    def _protocol_error(self, code: int, body: bytes) -> None:
        self.hcm.stats.downstream_cx_protocol_error.value += 1
        if self.active is not None and self.active.response_started:
            self.abort()
            return
        self.transport.write(local_reply(code, body, self.hcm.server_name, close=True))
        self.transport.close()

    # --- timeouts -----------------------------------------------------------------------

    def arm_deadline(self, timeout: float) -> float:
        """Returns the active stream's route deadline, keeping one timer per connection:
        on keep-alive connections deadlines only move forward, so a timer that fires early
        just re-arms itself for the current stream instead of one timer per request."""
        deadline = self.loop.time() + timeout
        if self.route_timer is None or self.route_timer_at > deadline:
            if self.route_timer is not None:
                self.route_timer.cancel()
            self.route_timer = self.loop.call_at(deadline, self._route_timer_fired)
            self.route_timer_at = deadline
        return deadline

    def _route_timer_fired(self) -> None:
        self.route_timer = None
        s = self.active
        if s is None or not s.deadline or s.response_done:
            return
        if self.loop.time() >= s.deadline:
            s.on_timeout()
        else:
            self.route_timer = self.loop.call_at(s.deadline, self._route_timer_fired)
            self.route_timer_at = s.deadline

    def _arm_watchdog(self) -> None:
        hcm = self.hcm
        periods = [t for t in (hcm.idle_timeout, hcm.stream_idle_timeout,
                               hcm.request_headers_timeout, hcm.request_timeout) if t > 0]
        if periods:
            delay = max(min(periods) / 4, 0.05)
            self.watchdog = asyncio.get_running_loop().call_later(delay, self._check_timeouts)

    def _check_timeouts(self) -> None:
        """One timer per connection checks every deadline, instead of a timer per request."""
        self.watchdog = None
        if self.closed:
            return
        now = time.monotonic()
        hcm = self.hcm
        s = self.active
        for limit, counter, body in (
                (hcm.request_headers_timeout, hcm.stats.downstream_rq_header_timeout,
                 b"request header timeout"),
                (hcm.request_timeout, hcm.stats.downstream_rq_timeout, b"request timeout")):
            if limit and self.head_started and now - self.head_started > limit:
                counter.value += 1  # the head is still incomplete: there is no stream yet
                self.transport.write(local_reply(408, body, hcm.server_name, close=True))
                self.transport.close()
                return
        if s is None and not self.head_started:
            if hcm.idle_timeout and now - self.last_activity > hcm.idle_timeout:
                hcm.stats.downstream_cx_idle_timeout.value += 1
                self.transport.close()
                return
        elif (s is not None and hcm.request_timeout and not s.request_done
              and not s.response_started and now - s.start_mono > hcm.request_timeout):
            hcm.stats.downstream_rq_timeout.value += 1
            s.details = "request_overall_timeout"
            s.keep_alive = False
            s.local(408, b"request timeout", close=True)
        elif s is not None and hcm.stream_idle_timeout:
            last = max(self.last_activity, s.start_mono)
            if now - last > hcm.stream_idle_timeout and not s.response_done:
                hcm.stats.downstream_rq_idle_timeout.value += 1
                s.flags = "SI"
                s.keep_alive = False
                s.local(408, b"stream timeout", close=True)
        self._arm_watchdog()
