"""envoy.filters.http.router: the last HTTP filter, which answers locally or forwards upstream.

It sees its stream only through the filter callbacks, as Envoy's router does. It answers
redirects and direct responses, picks the cluster and host, builds the upstream request, and
makes attempts (``UpstreamRequest``), retrying under the route's retry policy; it runs the
route timeout and per-try timeouts and sends mirrored copies. Bytes move as they arrive in
both directions; nothing is buffered whole, except a body kept for a retry or a mirror.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from ... import log
from ...tls.acme import challenge_answer
from ...upstream.cluster import Cluster
from ...upstream.host import Host
from ..codec import Headers
from ..stream_info import ResponseFlag
from .config import RouterConfig
from .request_headers import upstream_head
from .response_headers import downstream_headers
from .retry import RETRY_BUFFER_LIMIT, Retry
from .shadow import mirror
from .table import Direct, Forward, Redirect, redirect_location
from .upstream_request import UpstreamRequest

if TYPE_CHECKING:
    from ..filter import FilterCallbacks

_log = log.get("router")

CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: "
_RESET_FLAGS = {"connection termination": ResponseFlag.UC, "protocol error": ResponseFlag.UPE,
                "connection timeout": ResponseFlag.UF, "remote connection failure": ResponseFlag.UF}
PENDING_BODY_LIMIT = 1024 * 1024


class Router:
    """The router filter of one stream (Envoy makes one per stream too)."""

    action: Forward | None = None
    retry: Retry | None = None
    timeout = 0.0
    attempt = 0
    retries_done = 0
    req: UpstreamRequest | None = None
    """The attempt under way."""
    pending_bytes = 0
    body_copy: list[bytes] | None = None
    """The request body kept for replay while a retry (or a mirror) may need it."""
    body_copy_bytes = 0
    tried: tuple[Host, ...] = ()
    retry_handle: asyncio.TimerHandle | None = None
    rq_counted = False
    """Counted in the cluster's upstream_rq_active (until the stream ends)."""
    hash: int | None = None
    """The route's hash_policy value, for RING_HASH and MAGLEV clusters."""
    shadows: tuple[tuple[Cluster, bool], ...] = ()
    """Mirror clusters waiting for the end of the request (cluster, -shadow suffix)."""
    service_time = b""
    sent = False
    """The route timeout has been armed (the request's end went upstream)."""

    def __init__(self, cb: FilterCallbacks, cfg: RouterConfig) -> None:
        self.cb = cb
        self.cfg = cfg
        self.pending: list[bytes] = []

    # --- the request ------------------------------------------------------------------------

    def decode_headers(self) -> None:
        cb = self.cb
        st = self.cfg.stats
        st.rq_total.value += 1
        vh, route = cb.info.vhost, cb.info.route
        if route is None:
            st.no_route.value += 1
            cb.info.add_flag(ResponseFlag.NR)
            cb.send_local_reply(404, b"", "route_not_found")
            return
        conn = cb.conn
        path = cb.path.decode("latin-1")
        if vh is not None and vh.require_tls != "NONE" and not conn.tls:
            cb.send_local_reply(301, b"", extra=[(b"location", (
                "https://" + cb.authority + path).encode("latin-1"))])
            return
        action = route.action
        if isinstance(action, Direct):
            st.rq_direct_response.value += 1
            answer = challenge_answer(action.webroot, cb.path) if action.webroot else None
            if answer is not None:
                cb.send_local_reply(200, answer, "edgegw.acme_challenge")
                return
            cb.send_local_reply(action.status, action.body, "direct_response", mutate=True)
            return
        if isinstance(action, Redirect):
            st.rq_direct_response.value += 1  # Envoy's rq_redirect is for internal redirects
            where = redirect_location(action, "https" if conn.tls else "http", cb.authority, path)
            cb.send_local_reply(action.status, b"", "direct_response",
                                extra=[(b"location", where.encode("latin-1"))], mutate=True)
            return
        assert isinstance(action, Forward)
        self.forward(action)

    def forward(self, action: Forward) -> None:
        cb = self.cb
        clusters = self.cfg.clusters
        cluster = clusters.get(action.pick_cluster())
        if cluster is None:
            self.cfg.stats.no_cluster.value += 1
            cb.info.add_flag(ResponseFlag.NC)
            cb.send_local_reply(action.not_found, b"")
            return
        cb.info.cluster = cluster
        if action.hash is not None:
            self.hash = action.hash(cb)
        host = cluster.choose(self.hash)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            cb.info.add_flag(ResponseFlag.UH)
            cb.send_local_reply(503, b"no healthy upstream", "no_healthy_upstream")
            return
        self.action = action
        self.timeout = action.timeout
        self.retry = action.retry
        if self.retry is not None and self.retry.num_retries:
            self.body_copy = []
        for name, fraction, suffix in action.mirrors:
            mirror = clusters.get(name)
            if mirror is not None and (fraction >= 1.0 or random.random() < fraction):
                self.shadows = (*self.shadows, (mirror, suffix))
                if self.body_copy is None:
                    self.body_copy = []
        cluster.stats.upstream_rq_active.value += 1
        self.rq_counted = True
        self._send_to(host)

    def decode_data(self, data: bytes) -> None:
        if self.body_copy is not None:
            self.body_copy.append(data)
            self.body_copy_bytes += len(data)
            if self.body_copy_bytes > RETRY_BUFFER_LIMIT:
                self.body_copy = None  # too large to replay: no retries for this request
        if self.req is None or not self.req.write(data):
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > PENDING_BODY_LIMIT:
                self.cb.read_disable("pending", True)

    def decode_trailers(self, trailers: Headers) -> None:
        self.decode_end()

    def decode_end(self) -> None:
        if self.shadows:
            self._send_shadows()
        if self.req is not None and self.req.end_request():
            self.request_sent()
        elif self.cb.info.cluster is not None:
            self.request_sent()

    def take_body(self) -> bytes:
        """The body received so far, for an attempt that just got its connection (a retry
        replays it all); the attempt streams the rest."""
        if self.attempt > 1 and self.body_copy:
            self.pending = list(self.body_copy)
        if not self.pending:
            return b""
        body = b"".join(self.pending)
        self.pending = []
        self.pending_bytes = 0
        self.cb.read_disable("pending", False)
        return body

    def request_sent(self) -> None:
        """The route timeout runs from the end of the request (Envoy's global timeout); a
        retry policy's per_try_timeout runs from the end of each attempt's request."""
        cb = self.cb
        if cb.response_done:
            return
        if self.timeout > 0 and not self.sent:
            self.sent = True
            cb.arm_deadline(self.timeout)
        if self.retry is not None and self.retry.per_try_timeout and self.req is not None:
            self.req.arm_per_try(self.retry.per_try_timeout, self._on_try_timeout)

    def _send_to(self, host: Host) -> None:
        """Starts an attempt on ``host`` (an ``UpstreamRequest`` gets it a connection)."""
        assert self.action is not None
        cb = self.cb
        cb.info.host = host
        self.attempt += 1
        head = upstream_head(cb, self.action, host, self._adds_timeout())
        self.req = UpstreamRequest(self, host, head)
        self.req.start()

    def _adds_timeout(self) -> bool:
        """Whether the upstream request carries x-envoy-expected-rq-timeout-ms."""
        return self.timeout > 0 and not self.cfg.suppress_envoy_headers

    def _send_shadows(self) -> None:
        shadows, self.shadows = self.shadows, ()
        action = self.action
        if self.body_copy is None or action is None:
            return  # the body outgrew the buffer: Envoy drops the shadow too
        mirror(shadows, b"".join(self.body_copy), self.hash, self.timeout,
               lambda host: upstream_head(self.cb, action, host, self._adds_timeout()))

    # --- what an attempt reports ------------------------------------------------------------

    def overflow(self) -> None:
        """A circuit breaker is open: Envoy's 503 with x-envoy-overloaded."""
        cb = self.cb
        cb.info.add_flag(ResponseFlag.UO)
        self._charge(503)
        cb.send_local_reply(503, CONNECT_FAILURE + b"overflow", "overflow",
                            extra=[(b"x-envoy-overloaded", b"true")])

    def upstream_headers(self, req: UpstreamRequest, status: int, headers: Headers,
                         end_stream: bool) -> None:
        cb = self.cb
        if cb.response_done or req is not self.req:
            return
        req.cancel_per_try()
        cluster = cb.info.cluster
        assert cluster is not None
        cluster.report(req.host, status)
        retry = self.retry
        if retry is not None and retry.retriable_response(status, headers):
            if self._can_retry():
                cluster.charge(req.host, status, retried=True)
                self._retry_attempt(retry.reset_interval(headers))
                return
            if self.retries_done or retry.num_retries == 0:
                cluster.stats.upstream_rq_retry_limit_exceeded.value += 1
                cb.info.add_flag(ResponseFlag.URX)
        elif self.retries_done:
            cluster.stats.upstream_rq_retry_success.value += 1
        self._charge(status)
        self.service_time = b"%d" % int((time.monotonic() - req.sent_at) * 1000)
        out = downstream_headers(cb, status, headers, self.service_time,
                                 self.cfg.suppress_envoy_headers, self.cfg.response_drop)
        cb.info.details = "via_upstream"
        if end_stream:
            self._complete(req)
        cb.encode_headers(status, out, end_stream)

    def upstream_data(self, req: UpstreamRequest, data: bytes, end_stream: bool) -> None:
        cb = self.cb
        if cb.response_done or req is not self.req:
            return
        if end_stream:
            self._complete(req)
        cb.encode_data(data, end_stream)

    def upstream_trailers(self, req: UpstreamRequest, trailers: Headers) -> None:
        cb = self.cb
        if cb.response_done or req is not self.req:
            return
        self._complete(req)
        cb.encode_trailers(trailers)

    def _complete(self, req: UpstreamRequest) -> None:
        assert self.cb.info.cluster is not None
        self.cb.info.cluster.record_rq_time((time.monotonic() - req.sent_at) * 1000)

    def flush(self) -> None:
        self.cb.flush()

    def upstream_reset(self, reason: str) -> None:
        """The connection failed after the request went out (before or during the response)."""
        cb = self.cb
        if cb.response_done:
            return
        if cb.response_started:
            assert cb.info.cluster is not None
            cb.info.cluster.stats.upstream_rq_rx_reset.value += 1
            cb.info.add_flag(_RESET_FLAGS.get(reason, ResponseFlag.UR))
            cb.reset_stream()
            return
        self.upstream_failed(reason, "")

    def upstream_failed(self, reason: str, detail: str, connect: bool = False) -> None:
        """No response: the connection could not be made or broke before one came."""
        cb = self.cb
        if cb.response_done:
            return
        if cb.response_started:
            cb.reset_stream()
            return
        if self.req is not None:
            self.req.cancel_per_try()
        cluster = cb.info.cluster
        if cb.info.host is not None and cluster is not None:
            cluster.report(cb.info.host, 503)
        if self.retry is not None and self.retry.retriable_failure(connect):
            if self._can_retry():
                self._retry_attempt()
                return
            assert cluster is not None
            cluster.stats.upstream_rq_retry_limit_exceeded.value += 1
        flag = _RESET_FLAGS.get(reason, ResponseFlag.UF)
        cb.info.add_flag(flag)
        if flag is ResponseFlag.UF and cluster is not None:
            cluster.stats.upstream_rq_pending_failure_eject.value += 1
        self._charge(502 if reason == "protocol error" else 503)
        cb.info.failure_reason = detail
        if detail:
            _log.debug("upstream %s: %s (%s)", cb.info.host.label if cb.info.host else "-",
                       reason, detail)
        body = CONNECT_FAILURE + reason.encode()
        status = 502 if reason == "protocol error" else 503  # Envoy's codes for each
        if self.retries_done:
            cb.info.add_flag(ResponseFlag.URX)
            body = body.replace(b"reset reason: ", b"retried and the latest reset reason: ")
        cb.send_local_reply(status, body, "upstream_reset_before_response_started{"
                            + reason.replace(" ", "_")
                            + ("|" + detail.replace(" ", "_") if detail else "") + "}")

    # --- timeouts and retries ---------------------------------------------------------------

    def _on_try_timeout(self, req: UpstreamRequest) -> None:
        req.try_timer = None
        cb = self.cb
        if req is not self.req or cb.response_done or cb.response_started:
            return
        assert cb.info.cluster is not None and self.retry is not None
        cb.info.cluster.stats.upstream_rq_per_try_timeout.value += 1
        cb.info.cluster.report(req.host, 504)
        if self.retry.retriable_failure(False):
            if self._can_retry():
                self._retry_attempt()
                return
            cb.info.cluster.stats.upstream_rq_retry_limit_exceeded.value += 1
        self.on_timeout(per_try=True)

    def on_timeout(self, per_try: bool = False) -> None:
        """The route timeout (or the last attempt's per_try_timeout) ran out."""
        cb = self.cb
        if cb.response_done:
            return
        assert cb.info.cluster is not None and cb.info.host is not None
        if not per_try:
            cb.info.cluster.stats.upstream_rq_timeout.value += 1
            cb.info.cluster.report(cb.info.host, 504)
        cb.info.host.rq_timeout += 1
        cb.info.add_flag(ResponseFlag.UT)
        self._end_attempt()
        if cb.response_started:
            cb.reset_stream()
        else:
            self._charge(504)
            cb.send_local_reply(504, b"upstream request timeout", "response_timeout")

    def _can_retry(self) -> bool:
        cb = self.cb
        if not (self.retry is not None and self.retries_done < self.retry.num_retries
                and self.body_copy is not None and not cb.response_started
                and not cb.response_done):
            return False
        cluster = cb.info.cluster
        assert cluster is not None
        if not self.retries_done and cluster.retrying >= cluster.limits.max_retries:
            cluster.stats.upstream_rq_retry_overflow.value += 1
            return False
        return True

    def _retry_attempt(self, asked: float | None = None) -> None:
        """Abandons this attempt and schedules the next after Envoy's back-off (or after what
        the upstream asked for, under rate_limited_retry_back_off)."""
        cb = self.cb
        assert self.retry is not None and cb.info.cluster is not None and cb.info.host is not None
        if not self.retries_done:
            cb.info.cluster.retrying += 1
        self.retries_done += 1
        stats = cb.info.cluster.stats
        stats.upstream_rq_retry.value += 1
        if asked is not None:
            stats.upstream_rq_retry_backoff_ratelimited.value += 1
            wait = self.retry.ratelimited_backoff(asked)
        else:
            stats.upstream_rq_retry_backoff_exponential.value += 1
            wait = self.retry.backoff(self.retries_done)
        self._end_attempt()
        self.tried = (*self.tried, cb.info.host)
        self.retry_handle = cb.conn.loop.call_later(wait, self._retry_now)

    def _retry_now(self) -> None:
        self.retry_handle = None
        cb = self.cb
        if cb.response_done:
            return
        assert cb.info.cluster is not None and self.retry is not None
        host = None
        for attempt in range(self.retry.host_attempts):
            host = cb.info.cluster.choose(self.hash, attempt)
            if host is None or not self.retry.previous_hosts or host not in self.tried:
                break
        if host is None:
            cb.info.host = None
            cb.info.add_flag(ResponseFlag.UH)
            cb.send_local_reply(503, b"no healthy upstream", "no_healthy_upstream")
            return
        self._send_to(host)

    def _end_attempt(self) -> None:
        req, self.req = self.req, None
        if req is not None:
            req.release()

    def _charge(self, code: int) -> None:
        """Counts a response code against the cluster (also replies made on the upstream's
        behalf, as Envoy does)."""
        info = self.cb.info
        if info.cluster is not None:
            info.cluster.charge(info.host, code)

    # --- the downstream side ----------------------------------------------------------------

    def downstream_write_blocked(self, blocked: bool) -> None:
        if self.req is not None:
            self.req.read_disable(blocked)

    def downstream_reset(self) -> None:
        cb = self.cb
        if cb.info.cluster is not None:
            cb.info.cluster.stats.upstream_rq_tx_reset.value += 1
        self._end_attempt()

    def on_local_reply(self) -> None:
        self._end_attempt()

    def on_destroy(self) -> None:
        """The stream ended: nothing of this request may linger."""
        self._end_attempt()
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        cb = self.cb
        cb.read_disable("upstream", False)
        cb.read_disable("pending", False)
        cluster = cb.info.cluster
        if self.retries_done and cluster is not None:
            cluster.retrying -= 1
        if self.rq_counted:
            assert cluster is not None
            cluster.stats.upstream_rq_active.value -= 1
            cluster.stats.upstream_rq_completed.value += 1
