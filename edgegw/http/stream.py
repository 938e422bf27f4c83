"""One request/response exchange: routing, forwarding upstream and relaying the response.

This is Envoy's router filter plus the response encoder for HTTP/1.1; each attempt upstream
(retries make several) is an ``UpstreamRequest``. Bytes move as they arrive in both
directions; nothing is buffered whole. Local replies (404, 503, 504 …) have Envoy's statuses,
bodies and response flags.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import log
from ..matchers import first_header
from ..upstream.cluster import Cluster, Host
from .codec import (
    HOP_BY_HOP,
    LAST_CHUNK,
    chunk,
    encode_headers,
    http_date,
    local_reply,
    status_line,
)
from .retry import RETRY_BUFFER_LIMIT, Retry
from .router import (
    Direct,
    Forward,
    Headers,
    Redirect,
    Route,
    VirtualHost,
    redirect_location,
)
from .shadow import Shadow, shadow_host
from .upstream_request import UpstreamRequest

if TYPE_CHECKING:
    from .conn_manager import DownstreamConnection

_log = log.get("router")

CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: "
_RESET_FLAGS = {"connection termination": "UC", "protocol error": "UPE",
                "connection timeout": "UF", "remote connection failure": "UF"}
PENDING_BODY_LIMIT = 1024 * 1024
REQUEST_DROP = HOP_BY_HOP | {b"host"}
"""Set aside while copying a request head: hop-by-hop headers, and Host (written first)."""
REQUEST_DROP_WITH_TIMEOUT = REQUEST_DROP | {b"x-envoy-expected-rq-timeout-ms"}
RESPONSE_DROP = HOP_BY_HOP | {b"server"}


class Stream:
    """A request on a downstream connection, from its head to the end of its response.

    Defaults live on the class and only what changes is set on the instance: a stream is made
    per request, and most of its fields keep their defaults on the common path.
    """

    request_done = False
    response_started = False
    response_done = False
    chunk_in = False
    chunk_out = False
    pending_bytes = 0
    bytes_received = 0
    bytes_sent = 0
    code = 0
    flags = "-"
    route: Route | None = None
    vhost: VirtualHost | None = None
    cluster: Cluster | None = None
    host: Host | None = None
    """The host of the latest attempt (what access logs and counters name)."""
    req: UpstreamRequest | None = None
    """The attempt under way."""
    service_time = b""
    deadline = 0.0
    timeout = 0.0
    authority = ""
    upgrade = b""
    details = ""
    """Envoy's RESPONSE_CODE_DETAILS: why the response is what it is."""
    failure_reason = ""
    resp_headers: Headers = []  # noqa: RUF012 (replaced, never mutated in place)
    action: Forward | None = None
    retry: Retry | None = None
    attempt = 0
    retries_done = 0
    body_copy: list[bytes] | None = None
    """The request body kept for replay while a retry (or a mirror) may need it."""
    body_copy_bytes = 0
    tried: tuple[Host, ...] = ()
    retry_handle: asyncio.TimerHandle | None = None
    rq_counted = False
    """Counted in the cluster's upstream_rq_active (until finish)."""
    hash: int | None = None
    """The route's hash_policy value, for RING_HASH and MAGLEV clusters."""
    filter_index = 0
    pause_handle: asyncio.TimerHandle | None = None
    pause_abandoned: Callable[[], None] | None = None
    response_hooks: tuple[Callable[[Headers], None], ...] = ()
    """Filters' additions to the response headers (e.g. x-ratelimit-*)."""
    shadows: tuple[tuple[Cluster, bool], ...] = ()
    """Mirror clusters waiting for the end of the request (cluster, -shadow suffix)."""

    def __init__(self, conn: DownstreamConnection, method: bytes, url: bytes, headers: Headers,
                 http11: bool, keep_alive: bool) -> None:
        self.conn = conn
        self.hcm = conn.hcm
        """The settings this request runs under to its end, even if a reload swaps them."""
        self.method = method
        self.url = url
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.start_time = time.time()
        self.start_mono = time.monotonic()
        self.pending: list[bytes] = []
        self.out: list[bytes] = []

    def add_response_hook(self, hook: Callable[[Headers], None]) -> None:
        self.response_hooks = (*self.response_hooks, hook)

    # --- request side -------------------------------------------------------------------

    def start(self) -> None:
        conn = self.conn
        hcm = self.hcm
        st = hcm.stats
        st.downstream_rq_total.value += 1
        st.downstream_rq_http1_total.value += 1
        st.downstream_rq_active.value += 1
        if not self.http11:
            self.details = "low_version"
            self.local(426, b"Upgrade Required", close=True)
            return
        if self.upgrade and self.upgrade.lower() != b"h2c":
            # Envoy answers an upgrade that has no upgrade_configs with 403 (WebSocket: later).
            self.details = "upgrade_failed"
            self.local(403, b"", close=True)
            return
        url = self.url
        host = first_header(self.headers, b"host")
        if url[:1] != b"/" and b"://" in url[:8]:
            rest = url.split(b"://", 1)[1]
            slash = rest.find(b"/")
            authority, url = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            host = authority
            self.headers = [h for h in self.headers if h[0] != b"host"] + [(b"host", host)]
            self.url = url
        if not host:
            self.details = "missing_host_header"
            self.local(400, b"", close=True)
            return
        self.authority = host.decode("latin-1")
        expect = first_header(self.headers, b"expect")
        if expect is not None:
            if expect.lower() == b"100-continue":
                conn.transport_write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.headers = [h for h in self.headers if h[0] != b"expect"]
        hcm.forwarding.apply(self.headers, conn.remote_ip, conn.tls)
        st.rq_total.value += 1
        path = self.url.decode("latin-1")
        self.vhost, self.route = hcm.routes.route(self.authority, path, self.headers)
        self.continue_filters()

    def continue_filters(self) -> None:
        """Runs the HTTP filters before the router, in order; one may reply or pause."""
        filters = self.hcm.filters
        while self.filter_index < len(filters):
            name, f = filters[self.filter_index]
            self.filter_index += 1
            cfg = self.route.filter_configs.get(name) if self.route is not None else None
            if not f.on_request(self, cfg):
                return
        self._route()

    def pause_for(self, delay: float, then: Callable[[], bool],
                  abandoned: Callable[[], None]) -> None:
        """A filter holds the request for ``delay`` seconds, then ``then`` says go on or not;
        ``abandoned`` runs instead if the stream ends first (the client left)."""
        def wake() -> None:
            self.pause_handle = self.pause_abandoned = None
            if then():
                self.continue_filters()
        self.pause_handle = self.conn.loop.call_later(delay, wake)
        self.pause_abandoned = abandoned

    def add_flag(self, flag: str) -> None:
        self.flags = flag if self.flags == "-" else f"{self.flags},{flag}"

    def _route(self) -> None:
        """The router filter: local answers, redirects, or forwarding upstream."""
        conn = self.conn
        hcm = self.hcm
        st = hcm.stats
        path = self.url.decode("latin-1")
        vh, route = self.vhost, self.route
        if route is None:
            st.no_route.value += 1
            self.flags = "NR"
            self.details = "route_not_found"
            self.local(404, b"")
            return
        if vh is not None and vh.require_tls != "NONE" and not conn.tls:
            self.local(301, b"", extra=[(b"location", (
                "https://" + self.authority + path).encode("latin-1"))])
            return
        action = route.action
        if isinstance(action, Direct):
            st.rq_direct_response.value += 1
            self.details = "direct_response"
            self.local(action.status, action.body, mutate=True)
            return
        if isinstance(action, Redirect):
            st.rq_direct_response.value += 1  # Envoy's rq_redirect is for internal redirects
            self.details = "direct_response"
            where = redirect_location(action, "https" if conn.tls else "http", self.authority, path)
            self.local(action.status, b"", extra=[(b"location", where.encode("latin-1"))],
                       mutate=True)
            return
        assert isinstance(action, Forward)
        self.forward(action)

    def forward(self, action: Forward) -> None:
        hcm = self.hcm
        cluster = hcm.clusters.get(action.pick_cluster())
        if cluster is None:
            hcm.stats.no_cluster.value += 1
            self.flags = "NC"
            self.local(503, b"")
            return
        self.cluster = cluster
        if action.hash is not None:
            self.hash = action.hash(self)
        host = cluster.choose(self.hash)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            self.flags = "UH"
            self.details = "no_healthy_upstream"
            self.local(503, b"no healthy upstream")
            return
        self.action = action
        self.timeout = action.timeout
        self.retry = action.retry
        if self.retry is not None and self.retry.num_retries:
            self.body_copy = []
        for name, fraction, suffix in action.mirrors:
            mirror = hcm.clusters.get(name)
            if mirror is not None and (fraction >= 1.0 or random.random() < fraction):
                self.shadows = (*self.shadows, (mirror, suffix))
                if self.body_copy is None:
                    self.body_copy = []
        cluster.stats.upstream_rq_active.value += 1
        self.rq_counted = True
        self._send_to(host)
        if self.request_done:
            self._send_shadows()

    def _send_shadows(self) -> None:
        """Mirrors the (complete) request to each shadow cluster, fire and forget."""
        shadows, self.shadows = self.shadows, ()
        if self.body_copy is None or self.action is None:
            return  # the body outgrew the buffer: Envoy drops the shadow too
        body = b"".join(self.body_copy)
        if self.chunk_in:
            body = (chunk(body) if body else b"") + LAST_CHUNK
        for cluster, suffix in shadows:
            host = cluster.choose(self.hash)
            if host is None:
                cluster.stats.upstream_cx_none_healthy.value += 1
                continue
            head = self._upstream_head(self.action, host)
            if suffix:
                line, _, rest = head.partition(b"\r\nhost: ")
                value, _, rest = rest.partition(b"\r\n")
                head = line + b"\r\nhost: " + shadow_host(value) + b"\r\n" + rest
            shadow = Shadow(cluster, host, head, body, self.timeout)
            asyncio.ensure_future(shadow.run())

    def _send_to(self, host: Host) -> None:
        """Starts an attempt on ``host`` (an ``UpstreamRequest`` gets it a connection)."""
        assert self.action is not None and self.cluster is not None
        self.host = host
        self.attempt += 1
        self.req = UpstreamRequest(self, host, self._upstream_head(self.action, host))
        self.req.start()

    def overflow(self) -> None:
        """A circuit breaker is open: Envoy's 503 with x-envoy-overloaded."""
        self.flags = "UO"
        self.details = "overflow"
        self._charge(503)
        self.local(503, CONNECT_FAILURE + b"overflow",
                   extra=[(b"x-envoy-overloaded", b"true")])

    def _upstream_head(self, action: Forward, host: Host) -> bytes:
        """The request head sent upstream, built in one pass over the client's headers."""
        hcm = self.hcm
        add_timeout = self.timeout > 0 and not hcm.suppress_envoy_headers
        drop = REQUEST_DROP_WITH_TIMEOUT if add_timeout else REQUEST_DROP
        out: Headers = []
        host_value = b""
        tokens = None
        for kv in self.headers:
            k = kv[0]
            if k in drop:
                if k == b"host":
                    host_value = kv[1]
                elif k == b"connection":
                    tokens = kv[1]
                elif k == b"transfer-encoding":
                    self.chunk_in = True
                elif k == b"te" and kv[1].lower() == b"trailers":
                    out.append(kv)
                continue
            out.append(kv)
        if tokens:
            named = {t.strip().lower() for t in tokens.split(b",")} - {b"host"}
            out = [kv for kv in out if kv[0] not in named]
        if self.chunk_in:
            out.append((b"transfer-encoding", b"chunked"))
        if add_timeout:
            out.append((b"x-envoy-expected-rq-timeout-ms", action.timeout_ms))
        assert self.route is not None
        for mut in self.route.mutations:
            mut.request.apply(out, self._expand)
        new_host = action.host_rewrite
        if new_host is None and action.auto_host_rewrite and host.hostname:
            new_host = host.hostname_bytes
        if new_host is not None:
            out.append((b"x-envoy-original-host", host_value))
            host_value = new_host
        path = self.url
        if action.prefix_rewrite is not None and action.prefix is not None:
            out.append((b"x-envoy-original-path", path))
            path = action.prefix_rewrite + path[len(action.prefix):]
        return (b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (self.method, path, host_value)
                + encode_headers(out) + b"\r\n")

    def _expand(self, value: str) -> str:
        """The few %OPERATORS% that header values may carry."""
        conn = self.conn
        return (value.replace("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", conn.remote_ip)
                .replace("%DOWNSTREAM_REMOTE_ADDRESS%", f"{conn.remote_ip}:{conn.remote_port}")
                .replace("%REQUESTED_SERVER_NAME%", conn.sni or "")
                .replace("%%", "%"))

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
        self.conn.flow.resume("pending")
        return body

    def request_body(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self.body_copy is not None:
            self.body_copy.append(data)
            self.body_copy_bytes += len(data)
            if self.body_copy_bytes > RETRY_BUFFER_LIMIT:
                self.body_copy = None  # too large to replay: no retries for this request
        if self.response_done:
            return
        if self.req is None or not self.req.write(data):
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > PENDING_BODY_LIMIT:
                self.conn.flow.pause("pending")

    def request_complete(self) -> None:
        self.request_done = True
        if self.shadows:
            self._send_shadows()
        if self.response_done:
            return
        if self.req is not None and self.req.end_request():
            self.request_sent()
        elif self.cluster is not None:
            self.request_sent()

    def request_sent(self) -> None:
        """The route timeout runs from the end of the request (Envoy's global timeout); a
        retry policy's per_try_timeout runs from the end of each attempt's request."""
        if self.response_done:
            return
        if self.timeout > 0 and not self.deadline:
            self.deadline = self.conn.arm_deadline(self.timeout)
        if self.retry is not None and self.retry.per_try_timeout and self.req is not None:
            self.req.arm_per_try(self.retry.per_try_timeout, self._on_try_timeout)

    def _on_try_timeout(self, req: UpstreamRequest) -> None:
        req.try_timer = None
        if req is not self.req or self.response_done or self.response_started:
            return
        assert self.cluster is not None and self.retry is not None
        self.cluster.stats.upstream_rq_per_try_timeout.value += 1
        self.cluster.report(req.host, 504)
        if self.retry.retriable_failure(False):
            if self._can_retry():
                self._retry_attempt()
                return
            self.cluster.stats.upstream_rq_retry_limit_exceeded.value += 1
        self.on_timeout(per_try=True)

    # --- retries ------------------------------------------------------------------------

    def _can_retry(self) -> bool:
        if not (self.retry is not None and self.retries_done < self.retry.num_retries
                and self.body_copy is not None and not self.response_started
                and not self.response_done):
            return False
        assert self.cluster is not None
        if not self.retries_done and self.cluster.retrying >= self.cluster.limits.max_retries:
            self.cluster.stats.upstream_rq_retry_overflow.value += 1
            return False
        return True

    def _retry_attempt(self, asked: float | None = None) -> None:
        """Abandons this attempt and schedules the next after Envoy's back-off (or after what
        the upstream asked for, under rate_limited_retry_back_off)."""
        assert self.retry is not None and self.cluster is not None and self.host is not None
        if not self.retries_done:
            self.cluster.retrying += 1
        self.retries_done += 1
        stats = self.cluster.stats
        stats.upstream_rq_retry.value += 1
        if asked is not None:
            stats.upstream_rq_retry_backoff_ratelimited.value += 1
            wait = self.retry.ratelimited_backoff(asked)
        else:
            stats.upstream_rq_retry_backoff_exponential.value += 1
            wait = self.retry.backoff(self.retries_done)
        self._end_attempt()
        self.tried = (*self.tried, self.host)
        self.retry_handle = self.conn.loop.call_later(wait, self._retry_now)

    def _retry_now(self) -> None:
        self.retry_handle = None
        if self.response_done:
            return
        assert self.cluster is not None and self.retry is not None
        host = None
        for attempt in range(self.retry.host_attempts):
            host = self.cluster.choose(self.hash, attempt)
            if host is None or not self.retry.previous_hosts or host not in self.tried:
                break
        if host is None:
            self.host = None
            self.flags = "UH"
            self.details = "no_healthy_upstream"
            self.local(503, b"no healthy upstream")
            return
        self._send_to(host)

    def _end_attempt(self) -> None:
        req, self.req = self.req, None
        if req is not None:
            req.release()

    def on_timeout(self, per_try: bool = False) -> None:
        """The route timeout (or the last attempt's per_try_timeout) ran out."""
        self.deadline = 0.0
        if self.response_done:
            return
        assert self.cluster is not None and self.host is not None
        if not per_try:
            self.cluster.stats.upstream_rq_timeout.value += 1
            self.cluster.report(self.host, 504)
        self.host.rq_timeout += 1
        self.flags = "UT"
        self._end_attempt()
        if self.response_started:
            self.conn.abort()
            self.finish()
        else:
            self._charge(504)
            self.details = "response_timeout"
            self.local(504, b"upstream request timeout")

    # --- the response, as the current UpstreamRequest relays it ---------------------------

    def upstream_headers(self, req: UpstreamRequest, status: int, headers: Headers,
                         keep_alive: bool) -> None:
        if self.response_done or req is not self.req:
            return
        req.cancel_per_try()
        assert self.cluster is not None
        self.cluster.report(req.host, status)
        retry = self.retry
        if retry is not None and retry.retriable_response(status, headers):
            if self._can_retry():
                self._charge_retried(status)
                self._retry_attempt(retry.reset_interval(headers))
                return
            if self.retries_done or retry.num_retries == 0:
                assert self.cluster is not None
                self.cluster.stats.upstream_rq_retry_limit_exceeded.value += 1
                self.flags = "URX"
        elif self.retries_done:
            assert self.cluster is not None
            self.cluster.stats.upstream_rq_retry_success.value += 1
        self._charge(status)
        ms = int((time.monotonic() - req.sent_at) * 1000)
        self.service_time = b"%d" % ms
        hcm = self.hcm
        has_length = False
        has_date = False
        tokens = None
        out: Headers = []
        for kv in headers:
            k = kv[0]
            if k in RESPONSE_DROP:
                if k == b"connection":
                    tokens = kv[1]
                continue
            if k == b"content-length":
                has_length = True
            elif k == b"date":
                has_date = True
            out.append(kv)
        if tokens:
            named = {t.strip().lower() for t in tokens.split(b",")}
            out = [kv for kv in out if kv[0] not in named]
        if not hcm.suppress_envoy_headers:
            out.append((b"x-envoy-upstream-service-time", self.service_time))
        if not has_date:
            out.append((b"date", http_date()))
        out.append((b"server", hcm.server_name))
        no_body = self.method == b"HEAD" or status in (204, 304)
        if not has_length and not no_body:
            if self.keep_alive:
                self.chunk_out = True
                out.append((b"transfer-encoding", b"chunked"))
        assert self.route is not None
        for mut in self.route.mutations:
            mut.response.apply(out, self._expand)
        for hook in self.response_hooks:
            hook(out)
        if not self.keep_alive or self.conn.draining:
            self.keep_alive = False
            out.append((b"connection", b"close"))
        self.code = status
        self.response_started = True
        self.details = "via_upstream"
        self.resp_headers = out
        self.out.append(status_line(status) + encode_headers(out) + b"\r\n")

    def upstream_body(self, data: bytes) -> None:
        if self.response_done or not data:
            return
        self.bytes_sent += len(data)
        self.conn.last_activity = time.monotonic()
        self.out.append(chunk(data) if self.chunk_out else data)

    def upstream_complete(self, req: UpstreamRequest) -> None:
        if self.response_done:
            return
        if self.chunk_out:
            self.out.append(LAST_CHUNK)
        self.flush()
        assert self.cluster is not None
        self.cluster.record_rq_time((time.monotonic() - req.sent_at) * 1000)
        self.finish()

    def upstream_reset(self, reason: str) -> None:
        """The connection failed after the request went out (before or during the response)."""
        if self.response_done:
            return
        if self.response_started:
            assert self.cluster is not None
            self.cluster.stats.upstream_rq_rx_reset.value += 1
            self.flags = _RESET_FLAGS.get(reason, "UR")
            self.conn.abort()
            self.finish()
            return
        self.upstream_failed(reason, "")

    def flush(self) -> None:
        """Writes what the upstream's last read produced in one go: a small response's head
        and body leave in one TLS record and one syscall instead of two."""
        if self.out:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            self.conn.transport_write(data)

    def upstream_failed(self, reason: str, detail: str, connect: bool = False) -> None:
        """No response: the connection could not be made or broke before one came."""
        if self.response_done:
            return
        if self.response_started:
            self.conn.abort()
            self.finish()
            return
        if self.req is not None:
            self.req.cancel_per_try()
        if self.host is not None and self.cluster is not None:
            self.cluster.report(self.host, 503)
        if self.retry is not None and self.retry.retriable_failure(connect):
            if self._can_retry():
                self._retry_attempt()
                return
            assert self.cluster is not None
            self.cluster.stats.upstream_rq_retry_limit_exceeded.value += 1
        self.flags = _RESET_FLAGS.get(reason, "UF")
        if self.flags == "UF" and self.cluster is not None:
            self.cluster.stats.upstream_rq_pending_failure_eject.value += 1
        self._charge(503)
        self.details = ("upstream_reset_before_response_started{" + reason.replace(" ", "_")
                        + ("|" + detail.replace(" ", "_") if detail else "") + "}")
        self.failure_reason = detail
        if detail:
            _log.debug("upstream %s: %s (%s)", self.host.label if self.host else "-", reason,
                       detail)
        body = CONNECT_FAILURE + reason.encode()
        if self.retries_done:
            self.flags += ",URX"
            body = body.replace(b"reset reason: ", b"retried and the latest reset reason: ")
        self.local(503, body)

    def _charge_retried(self, code: int) -> None:
        """A response that is retried is counted under ``retry.``, as Envoy counts it."""
        assert self.cluster is not None and self.host is not None
        c = self.cluster.stats.counter
        c(f"retry.upstream_rq_{code}").value += 1
        c(f"retry.upstream_rq_{code // 100}xx").value += 1
        c("retry.upstream_rq_completed").value += 1
        if code >= 500:
            self.host.rq_error += 1

    def _charge(self, code: int) -> None:
        """Counts a response code against the cluster (also replies made on the upstream's
        behalf, as Envoy does)."""
        if self.host is not None and code >= 500:
            self.host.rq_error += 1
        if self.cluster is not None:
            self.cluster.stats.count_code(code)
            self.cluster.status_counter(code).value += 1

    # --- downstream side ----------------------------------------------------------------

    def pause_upstream(self) -> None:
        if self.req is not None:
            self.req.pause_reading()

    def resume_upstream(self) -> None:
        if self.req is not None:
            self.req.resume_reading()

    def downstream_reset(self) -> None:
        """The client went away before the response was complete."""
        if self.response_done:
            return
        self.flags = "DC"
        if self.cluster is not None:
            self.cluster.stats.upstream_rq_tx_reset.value += 1
        self._end_attempt()
        self.finish()

    def local(self, status: int, body: bytes, close: bool = False,
              extra: Headers | None = None, mutate: bool = False) -> None:
        """Sends a reply made by edgegw itself, unless a response has already started."""
        if self.response_started:
            self.conn.abort()
            self.finish()
            return
        hcm = self.hcm
        headers = list(extra or [])
        if mutate and self.route is not None:
            for mut in self.route.mutations:
                mut.response.apply(headers, self._expand)
        for hook in self.response_hooks:
            hook(headers)
        if close or not self.keep_alive or self.conn.draining:
            close = True
            self.keep_alive = False
        self.code = status
        self.response_started = True
        self.bytes_sent = len(body)
        self.resp_headers = headers
        self.conn.transport_write(local_reply(status, body, hcm.server_name, close, headers,
                                              head=self.method == b"HEAD"))
        self._end_attempt()
        self.finish()

    def finish(self) -> None:
        if self.response_done:
            return
        self.response_done = True
        if self.pause_handle is not None:
            self.pause_handle.cancel()
            if self.pause_abandoned is not None:
                self.pause_abandoned()
            self.pause_handle = self.pause_abandoned = None
        self.deadline = 0.0
        self._end_attempt()
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        conn = self.conn
        if conn.flow.reasons:
            conn.flow.resume("upstream")
            conn.flow.resume("pending")
        hcm = self.hcm
        st = hcm.stats
        st.downstream_rq_active.value -= 1
        st.downstream_rq_completed.value += 1
        if self.code:
            st.count_code(self.code)
        st.downstream_rq_time.record((time.monotonic() - self.start_mono) * 1000)
        if self.retries_done and self.cluster is not None:
            self.cluster.retrying -= 1
        if self.rq_counted:
            assert self.cluster is not None
            self.cluster.stats.upstream_rq_active.value -= 1
            self.cluster.stats.upstream_rq_completed.value += 1
        for logger in hcm.access_logs:
            logger.log(self)
        self.conn.stream_done(self)

    def duration_ms(self) -> int:
        return int((time.monotonic() - self.start_mono) * 1000)
