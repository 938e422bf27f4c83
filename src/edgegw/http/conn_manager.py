"""Envoy's http_connection_manager: one downstream connection and its streams.

Each accepted connection gets a ``DownstreamConnection`` under the chain's settings
(``settings.HttpConnectionManager``). It picks its codec (from ``codec_type`` and the ALPN the
TLS handshake chose) and from then on only handles streams: it never knows which protocol it
speaks. Timeouts (request headers, request, stream idle, connection idle) and the drain are
Envoy's, with Envoy's replies.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING

from .. import log
from ..config import model as m
from ..stats import Counter, Gauge
from .codec import RequestHead, ResponseEncoder, ServerCodec, http2
from .codec.http1 import Http1ServerCodec
from .filters.local_ratelimit import TokenBucket
from .settings import HttpConnectionManager
from .sink import TransportSink
from .stream import Stream
from .stream_info import ResponseFlag

if TYPE_CHECKING:
    from ..listener.tls_inspector import ClientHello

_log = log.get("http")

PREMATURE_RESET_LIFETIME = 1.0
PREMATURE_RESET_COUNT = 500
"""Envoy's overload.premature_reset_min_stream_lifetime_seconds and _total_stream_count."""


class DownstreamConnection(asyncio.Protocol):
    """One client connection, over TLS or not, whatever protocol its codec speaks."""

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
        self.host_names: tuple[frozenset[str], frozenset[str]] | None = None
        """Strict SNI/Host (edgegw-only): the names of the certificate SNI chose, exact and
        wildcard suffixes; a request for any other host gets 421. None: not strict."""
        self.buffer_limit = buffer_limit
        self.on_close = on_close
        self.codec: ServerCodec | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.sink: TransportSink = None  # type: ignore[assignment]
        self.remote_ip = ""
        self.remote_port = 0
        """The client's address: the PROXY header's when one came, else the peer's."""
        self.direct_remote_ip = ""
        self.direct_remote_port = 0
        self.proxied: tuple[str, int] | None = None
        self.admit: collections.abc.Callable[[object], bool] | None = None
        """envoy.filters.network.rbac's check, asked at the first bytes (as Envoy)."""
        self.local_address = ""
        self.streams: set[Stream] = set()
        self.closed = False
        self.draining = False
        self.drain_decision: collections.abc.Callable[[], bool] | None = None
        """The drain manager's word on each response while a drain is under way (set by the
        listener)."""
        self.last_activity = time.monotonic()
        self.watchdog: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.route_timer: asyncio.TimerHandle | None = None
        self.route_timer_at = 0.0
        self.buckets: dict[int, TokenBucket] = {}
        """Per-connection token buckets (local_rate_limit_per_downstream_connection)."""
        self.closed_streams = 0
        self.premature_resets = 0
        self.cx_protocol_active: Gauge | None = None
        self.rq_protocol_total: Counter | None = None
        """The protocol's own counters, chosen with the codec."""

    # --- asyncio side -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink = TransportSink(self.transport)
        self.transport.set_write_buffer_limits(high=self.buffer_limit)
        peer = transport.get_extra_info("peername")
        if peer:
            self.direct_remote_ip, self.direct_remote_port = peer[0], peer[1]
        self.remote_ip, self.remote_port = self.proxied or (self.direct_remote_ip,
                                                            self.direct_remote_port)
        local = transport.get_extra_info("sockname")
        if local:
            self.local_address = m.address_string(local[0], local[1])
        st = self.cx_stats
        st.downstream_cx_total.value += 1
        st.downstream_cx_active.value += 1
        if self.tls:
            st.downstream_cx_ssl_total.value += 1
            st.downstream_cx_ssl_active.value += 1
        self._arm_watchdog()

    def _make_codec(self, data: bytes) -> ServerCodec:
        """HTTP/2 when TLS chose ``h2`` by ALPN or ``codec_type`` says HTTP2; under AUTO on a
        plain connection, when the client opens with HTTP/2's preface (prior knowledge, as
        Envoy does); else HTTP/1.1."""
        hcm = self.hcm
        st = self.cx_stats
        kind = hcm.codec_type
        if kind == "AUTO":
            if self.tls:
                ssl_object = self.transport.get_extra_info("ssl_object")
                alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
                kind = "HTTP2" if alpn == "h2" else "HTTP1"
            else:
                kind = "HTTP2" if data.startswith(http2.PREFACE[:14]) else "HTTP1"
        if kind == "HTTP2":
            st.downstream_cx_http2_total.value += 1
            self.cx_protocol_active = st.downstream_cx_http2_active
            self.rq_protocol_total = st.downstream_rq_http2_total
            codec: ServerCodec = http2.ServerCodec(
                self, self.sink, hcm.http2, hcm.max_header_bytes, hcm.max_headers,
                hcm.http2_stats)
        else:
            st.downstream_cx_http1_total.value += 1
            self.cx_protocol_active = st.downstream_cx_http1_active
            self.rq_protocol_total = st.downstream_rq_http1_total
            codec = Http1ServerCodec(self, self.sink, hcm.max_header_bytes, hcm.max_headers)
        self.cx_protocol_active.value += 1
        return codec

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        st = self.cx_stats
        st.downstream_cx_active.value -= 1
        st.downstream_cx_destroy.value += 1
        if self.tls:
            st.downstream_cx_ssl_active.value -= 1
        if self.cx_protocol_active is not None:
            self.cx_protocol_active.value -= 1
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.route_timer is not None:
            self.route_timer.cancel()
        if self.codec is not None:
            self.codec.connection_lost()
        for s in list(self.streams):
            s.decode_reset()
        if self.on_close is not None:
            self.on_close(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.admit is not None:  # network RBAC, on the first byte as Envoy
            admit, self.admit = self.admit, None
            if not admit(self):
                self.transport.abort()
                return
        codec = self.codec
        if codec is None:
            codec = self.codec = self._make_codec(data)
        codec.feed(data)

    def pause_writing(self) -> None:
        if self.codec is not None:
            self.codec.write_blocked(True)
        for s in list(self.streams):
            s.write_blocked(True)

    def resume_writing(self) -> None:
        if self.codec is not None:
            self.codec.write_blocked(False)
        for s in list(self.streams):
            s.write_blocked(False)

    # --- what the codec calls (ServerCallbacks) --------------------------------------------

    def new_stream(self, head: RequestHead, encoder: ResponseEncoder,
                   end_stream: bool) -> Stream:
        s = Stream(self, head, encoder, end_stream)
        self.streams.add(s)
        s.start()
        return s

    def protocol_error(self, details: str) -> None:
        self.cx_stats.downstream_cx_protocol_error.value += 1

    def reject(self, head: RequestHead, encoder: ResponseEncoder, status: int, body: bytes,
               details: str, flag: str) -> None:
        s = Stream(self, head, encoder, True)
        self.streams.add(s)
        s.reject(status, body, details, flag)

    # --- what streams call --------------------------------------------------------------

    def count_request(self) -> None:
        if self.rq_protocol_total is not None:
            self.rq_protocol_total.value += 1

    def upgrade_started(self) -> None:
        self.cx_stats.downstream_cx_upgrades_total.value += 1
        self.cx_stats.downstream_cx_upgrades_active.value += 1

    def upgrade_ended(self) -> None:
        self.cx_stats.downstream_cx_upgrades_active.value -= 1

    def stream_done(self, s: Stream) -> None:
        self.streams.discard(s)
        now = self.last_activity = time.monotonic()
        self.closed_streams += 1
        if ResponseFlag.DC in s.info.flags and now - s.info.start_mono < PREMATURE_RESET_LIFETIME:
            self.premature_resets += 1
            self._check_premature_resets()

    def _check_premature_resets(self) -> None:
        """Envoy's defence against rapid reset (CVE-2023-44487): a connection whose streams
        are mostly reset by the client within a second of opening is closed."""
        closed, bad = self.closed_streams, self.premature_resets
        if (bad * 2 >= PREMATURE_RESET_COUNT if closed < PREMATURE_RESET_COUNT
                else bad * 2 >= closed) and not self.transport.is_closing():
            self.cx_stats.downstream_rq_too_many_premature_resets.value += 1
            _log.debug("closing a connection from %s: too many premature resets",
                       self.remote_ip)
            self.abort()

    def abort(self) -> None:
        """Resets the connection (the drain time is over, or the client abused it), and
        forgets it at once: the codec handles nothing more of the read under way."""
        if not self.closed:
            self.transport.abort()
            self.connection_lost(None)

    def drain_close(self) -> bool:
        """Whether the response being sent ends the connection: it was told to drain, or the
        drain under way says so for this response (which then tells it to)."""
        if self.draining:
            return True
        if self.drain_decision is not None and self.drain_decision():
            self.drain()
            return True
        return False

    def drain(self, close_idle: bool = True) -> None:
        """Envoy's drain: streams under way (upgraded ones too) finish; an idle connection
        closes now, or (not ``close_idle``, as Envoy's drain sequence has it) an idle
        HTTP/1.1 one after its next response, since a request may be on its way."""
        self.draining = True
        if self.closed:
            return
        if self.codec is None:
            if close_idle:
                self.transport.close()
        else:
            self.codec.drain(close_idle)

    # --- timeouts -----------------------------------------------------------------------

    def arm_deadline(self, timeout: float) -> float:
        """Returns a stream's route deadline, keeping one timer per connection: deadlines
        mostly only move forward, so a timer that fires early just re-arms itself for the
        nearest deadline instead of one timer per request."""
        deadline = self.loop.time() + timeout
        if self.route_timer is None or self.route_timer_at > deadline:
            if self.route_timer is not None:
                self.route_timer.cancel()
            self.route_timer = self.loop.call_at(deadline, self._route_timer_fired)
            self.route_timer_at = deadline
        return deadline

    def _route_timer_fired(self) -> None:
        self.route_timer = None
        now = self.loop.time()
        nearest = 0.0
        for s in list(self.streams):
            if not s.deadline or s.response_done:
                continue
            if now >= s.deadline:
                s.deadline_passed()
            elif not nearest or s.deadline < nearest:
                nearest = s.deadline
        if nearest and not self.closed:
            self.route_timer = self.loop.call_at(nearest, self._route_timer_fired)
            self.route_timer_at = nearest

    def _arm_watchdog(self) -> None:
        hcm = self.hcm
        periods = [t for t in (hcm.idle_timeout, hcm.stream_idle_timeout,
                               hcm.request_headers_timeout, hcm.request_timeout) if t > 0]
        if periods:
            delay = max(min(periods) / 4, 0.05)
            self.watchdog = self.loop.call_later(delay, self._check_timeouts)

    def _check_timeouts(self) -> None:
        """One timer per connection checks every deadline, instead of a timer per request."""
        self.watchdog = None
        if self.closed:
            return
        now = time.monotonic()
        hcm = self.hcm
        codec = self.codec
        head_started = codec.head_started if codec is not None else 0.0
        for limit, counter, body in (
                (hcm.request_headers_timeout, hcm.stats.downstream_rq_header_timeout,
                 b"request header timeout"),
                (hcm.request_timeout, hcm.stats.downstream_rq_timeout, b"request timeout")):
            if limit and head_started and now - head_started > limit and codec is not None:
                counter.value += 1  # the head is still incomplete: there is no stream yet
                codec.head_timed_out(body)
                return
        if not self.streams and not head_started:
            if hcm.idle_timeout and now - self.last_activity > hcm.idle_timeout:
                hcm.stats.downstream_cx_idle_timeout.value += 1
                self.transport.close()
                return
        for s in list(self.streams):
            if (hcm.request_timeout and not s.request_done and not s.response_started
                    and not s.upgraded and now - s.info.start_mono > hcm.request_timeout):
                hcm.stats.downstream_rq_timeout.value += 1
                s.send_local_reply(408, b"request timeout", "request_overall_timeout",
                                   close=True)
            elif hcm.stream_idle_timeout:
                last = max(self.last_activity, s.info.start_mono)
                if now - last > hcm.stream_idle_timeout and not s.response_done:
                    hcm.stats.downstream_rq_idle_timeout.value += 1
                    s.idle_timed_out()
        self._arm_watchdog()
