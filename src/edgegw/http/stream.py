"""One request and its response on a downstream connection: Envoy's ActiveStream.

The stream knows nothing of the protocol its codec speaks. It counts the request, checks
what the connection manager checks (Host, upgrades, ``Expect``), routes it, runs the HTTP
filters in order and hands the request to the router filter, which answers through
``encode_*``. Local replies (404, 503, 504 …) have Envoy's statuses, bodies and response
flags, and become a gRPC status for gRPC requests, as Envoy's do. The stream owns the
request's record (``StreamInfo``), which filters write and access logs read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..matchers import first_header
from ..tls.cert_dir import covers
from .codec import Headers, RequestHead, ResponseEncoder, http_date
from .filter import Downstream, ResponseTransform
from .grpc import grpc_local_reply, stream_deadline
from .head_checks import check_head
from .path import Outcome
from .router.filter import Router
from .stream_info import ResponseFlag, StreamInfo
from .websocket import GOING_AWAY, FrameEdge

if TYPE_CHECKING:
    from ..upstream.cluster import ClusterManager
    from .settings import HttpConnectionManager


class Owner(Downstream, Protocol):
    """What a stream asks of its connection (the connection manager)."""

    hcm: HttpConnectionManager
    last_activity: float
    host_names: tuple[frozenset[str], frozenset[str]] | None

    def count_request(self) -> None: ...
    def drain_close(self) -> bool: ...
    def arm_deadline(self, timeout: float) -> float: ...
    def upgrade_started(self) -> None: ...
    def upgrade_ended(self) -> None: ...
    def stream_done(self, s: Stream) -> None: ...


class Stream:
    """A request from its head to the end of its response.

    Defaults live on the class and only what changes is set on the instance: a stream is made
    per request, and most of its fields keep their defaults on the common path.
    """

    request_done = False
    response_started = False
    response_done = False
    authority = ""
    router: Router | None = None
    early: list[bytes] | None = None
    """Body that arrived while a filter held the request, for the router."""
    early_size = 0
    body_wanted: tuple[int, Callable[[bytes, bool], None]] | None = None
    """A filter waiting for the request's body (buffer_body)."""
    filter_index = 0
    pause_handle: asyncio.TimerHandle | None = None
    pause_abandoned: Callable[[], None] | None = None
    response_hooks: tuple[Callable[[Headers], None], ...] = ()
    transforms: tuple[ResponseTransform, ...] = ()
    """What filters do to the response body (the compressor), in the filters' order."""
    shared: dict[str, Any] | None = None
    overrides: tuple[Callable[[int, Headers], bool], ...] = ()
    """What may answer instead of a response (custom_response), upstream or local: each is
    asked with its status and headers, and True means it replied."""
    overridden = False
    """A local reply was offered to the overrides already (theirs is not offered again)."""
    """Filters' additions to the response headers (e.g. x-ratelimit-*)."""
    deadline = 0.0
    """When the router's route timeout runs out (0: not armed)."""
    upgraded = False
    frames: FrameEdge | None = None
    """A WebSocket's server-side frames, followed once it is upgraded."""
    grpc = False
    duration_timer: asyncio.TimerHandle | None = None

    def __init__(self, conn: Owner, head: RequestHead, encoder: ResponseEncoder,
                 end_stream: bool) -> None:
        self.conn = conn
        self.hcm = conn.hcm
        """The settings this request runs under to its end, even if a reload swaps them."""
        self.head = head
        self.encoder = encoder
        self.method = head.method
        self.path = head.path
        self.headers = head.headers
        self.protocol = head.protocol
        self.request_done = end_stream
        self.info = StreamInfo(conn, head.protocol, head)
        """The request's record, which filters and access logs read."""

    # --- the request, as the codec delivers it ------------------------------------------

    def _count(self) -> None:
        st = self.hcm.stats
        st.downstream_rq_total.value += 1
        self.conn.count_request()
        st.downstream_rq_active.value += 1

    def start(self) -> None:
        hcm = self.hcm
        self._count()
        if self.protocol in ("HTTP/1.0", "HTTP/0.9"):
            self.send_local_reply(426, b"Upgrade Required", "low_version", close=True)
            return
        if hcm.underscores != "ALLOW" and not self._underscores():
            return
        head = self.head
        checked = check_head(head)
        self.headers = head.headers
        self.path = path = head.path
        if checked.refusal is not None:
            self.send_local_reply(*checked.refusal, close=True)
            return
        host, expect = checked.host, checked.expect
        if hcm.paths.active:
            outcome, path = hcm.paths.apply(path)
            if outcome is Outcome.REJECT:
                hcm.stats.downstream_rq_failed_path_normalization.value += 1
                self.send_local_reply(400, b"Bad Request", "path_normalization_failed")
                return
            self.path = head.path = path
            if outcome is Outcome.REDIRECT:
                hcm.stats.downstream_rq_redirected_with_normalized_path.value += 1
                self.send_local_reply(307, b"", "path_normalization_failed",
                                      extra=[(b"location", path)])
                return
        self.authority = host.decode("latin-1")
        if self.conn.host_names is not None and not covers(self.conn.host_names,
                                                            self.authority):
            self.send_local_reply(421, b"Misdirected Request", "edgegw.sni_host_mismatch")
            return
        ctype = checked.ctype
        self.grpc = ctype is not None and ctype.startswith(b"application/grpc")
        if expect is not None:
            if expect.lower() == b"100-continue":
                self.encoder.encode_100_continue()
            self.headers = head.headers = [h for h in self.headers if h[0] != b"expect"]
        fwd = hcm.forwarding
        internal = False
        if fwd.detectors:
            ip, trusted, reject = fwd.detect(self.headers)
            if reject is not None:
                self.send_local_reply(reject, b"", "rejecting_because_detection_failed")
                return
            if ip is not None:
                self.info.remote_ip, self.info.remote_port = ip, 0
                internal = trusted and fwd.is_internal(ip)
        client = fwd.apply(self.headers, self.conn.remote_ip, self.conn.tls, internal)
        if client is not None and client != self.conn.remote_ip:
            self.info.remote_ip, self.info.remote_port = client, 0
        info = self.info
        info.vhost, info.route = hcm.routes.route(
            self.authority, path.decode("latin-1"), self.headers, self.method,
            b"https" if self.conn.tls else b"http")
        if head.upgrade and not hcm.upgrade_allowed(head.upgrade, self.info.route):
            self.send_local_reply(403, b"", "upgrade_failed", close=True)
            return
        if self.grpc and self.info.route is not None:
            self._grpc_deadline()
        self.continue_decoding()

    def _underscores(self) -> bool:
        """headers_with_underscores_action: the request's header names holding '_' are
        dropped, or the request refused as Envoy's codecs refuse it (HTTP/1: 400 and close;
        HTTP/2: the stream reset); False when refused."""
        if not any(b"_" in k for k, _ in self.headers):
            return True
        hcm = self.hcm
        stats = hcm.http2_stats if self.protocol == "HTTP/2" else hcm.http1_stats
        if hcm.underscores == "REJECT_REQUEST":
            stats.requests_rejected_with_underscores_in_headers.value += 1
            if self.protocol == "HTTP/2":
                self.info.details = "http2.unexpected_underscore"
                self.reset_stream()
            else:
                self.codec_error(400, b"Bad Request", "http1.unexpected_underscore")
            return False
        kept = [h for h in self.headers if b"_" not in h[0]]
        stats.dropped_headers_with_underscores.value += len(self.headers) - len(kept)
        self.headers = self.head.headers = kept
        return True

    def _grpc_deadline(self) -> None:
        route = self.info.route
        asked = stream_deadline(route.action if route is not None else None,
                                first_header(self.headers, b"grpc-timeout"))
        if asked:
            self.duration_timer = self.conn.loop.call_later(asked, self._duration_reached)

    def _duration_reached(self) -> None:
        self.duration_timer = None
        if self.response_done:
            return
        self.hcm.stats.downstream_rq_max_duration_reached.value += 1
        self.info.add_flag(ResponseFlag.DT)
        self.send_local_reply(504 if self.request_done else 408, b"downstream duration timeout",
                              "max_duration_timeout", grpc_status=b"4")

    def reject(self, status: int, body: bytes, details: str, flag: str) -> None:
        """A request the codec could not read: Envoy answers it from a stream of its own, so
        it is counted (downstream_rq_4xx) and logged (flag DPE) like any other."""
        self._count()
        if flag != "-":
            self.info.add_flag(ResponseFlag[flag])
        self.send_local_reply(status, body, details, close=True)

    def codec_error(self, status: int, body: bytes, details: str) -> None:
        self.info.add_flag(ResponseFlag.DPE)
        self.send_local_reply(status, body, details, close=True)

    def continue_decoding(self) -> None:
        """Runs the HTTP filters before the router, in order; one may reply or pause."""
        filters = self.hcm.filters
        while self.filter_index < len(filters):
            name, f, off = filters[self.filter_index]
            self.filter_index += 1
            route = self.info.route
            cfg = None
            if route is not None:
                on = route.filters_on.get(name)
                if on is not None:
                    off = not on
                cfg = route.filter_configs.get(name)
            if not off and not f.decode_headers(self, cfg):
                return
        if self.response_done:
            return
        router = self.router = Router(self, self.hcm.router)
        router.decode_headers()
        early, self.early = self.early, None
        if early:
            for data in early:
                router.decode_data(data)
        if self.request_done and not self.response_done:
            router.decode_end()

    def decode_data(self, data: bytes) -> None:
        self.info.bytes_received += len(data)
        if self.response_done:
            return
        if self.router is not None:
            self.router.decode_data(data)
            return
        if self.early is None:
            self.early = [data]
        else:
            self.early.append(data)
        self.early_size += len(data)
        if self.body_wanted is not None and self.early_size >= self.body_wanted[0]:
            self._give_body()

    def decode_trailers(self, trailers: Headers) -> None:
        if self.router is not None and not self.response_done:
            self.router.decode_trailers(trailers)
        else:
            self.decode_end()

    def decode_end(self) -> None:
        self.request_done = True
        if self.router is not None and not self.response_done:
            self.router.decode_end()
        elif self.body_wanted is not None:
            self._give_body()

    def _give_body(self) -> None:
        assert self.body_wanted is not None
        then, self.body_wanted = self.body_wanted[1], None
        then(b"".join(self.early or ()), self.request_done)

    def decode_reset(self) -> None:
        """The client went away (or reset the stream) before the response was complete."""
        if self.response_done:
            return
        self.hcm.stats.downstream_rq_rx_reset.value += 1
        self.info.add_flag(ResponseFlag.DC)
        if self.router is not None:
            self.router.downstream_reset()
        self.finish()

    def write_blocked(self, blocked: bool) -> None:
        if self.router is not None:
            self.router.downstream_write_blocked(blocked)

    def deadline_passed(self) -> None:
        """The connection's route timer found this stream's deadline gone by."""
        self.deadline = 0.0
        if self.router is not None and not self.response_done:
            self.router.on_timeout()

    # --- what filters call (FilterCallbacks) -----------------------------------------------

    def add_response_hook(self, hook: Callable[[Headers], None]) -> None:
        self.response_hooks = (*self.response_hooks, hook)

    def add_response_transform(self, transform: ResponseTransform) -> None:
        self.transforms = (*self.transforms, transform)

    def add_response_override(self, override: Callable[[int, Headers], bool]) -> None:
        self.overrides = (*self.overrides, override)

    @property
    def filter_state(self) -> dict[str, Any]:
        """What the filters of this stream share (Envoy's FilterState)."""
        if self.shared is None:
            self.shared = {}
        return self.shared

    @property
    def clusters(self) -> ClusterManager:
        return self.hcm.clusters

    def pause_for(self, delay: float, then: Callable[[], bool],
                  abandoned: Callable[[], None]) -> None:
        def wake() -> None:
            self.pause_handle = self.pause_abandoned = None
            if then():
                self.continue_decoding()
        self.pause_handle = self.conn.loop.call_later(delay, wake)
        self.pause_abandoned = abandoned

    def buffer_body(self, limit: int, then: Callable[[bytes, bool], None]) -> None:
        self.body_wanted = (limit, then)
        if self.request_done or self.early_size >= limit:
            self._give_body()

    def arm_deadline(self, timeout: float) -> None:
        self.deadline = self.conn.arm_deadline(timeout)

    def read_disable(self, reason: str, disable: bool) -> None:
        self.encoder.read_disable(reason, disable)

    def send_local_reply(self, status: int, body: bytes, details: str = "",
                         extra: Headers | None = None, mutate: bool = False,
                         close: bool = False, grpc_status: bytes | None = None,
                         content_type: bytes | None = None) -> None:
        """A reply made by edgegw itself, unless a response has already started (then the
        stream is reset: a client must never take a cut response for a whole one)."""
        if self.response_done:
            return
        if details:
            self.info.details = details
        if self.response_started:
            self.reset_stream()
            return
        if self.overrides and not self.overridden:  # (as Envoy's, they see local replies too)
            self.overridden = True
            for override in self.overrides:
                if override(status, list(extra or [])):
                    return
        headers: Headers = list(extra or [])
        kind = content_type
        if self.hcm.local_reply is not None and not self.grpc:
            status, body, rewritten = self.hcm.local_reply.rewrite(status, body, self.info,
                                                                   self.headers, headers)
            kind = rewritten or kind
        if mutate and self.info.route is not None:
            for mut in self.info.route.mutations:
                mut.response.apply(headers, self.info.expand)
        for hook in self.response_hooks:
            hook(headers)
        self.info.bytes_sent = len(body)
        if self.grpc:
            status, body = grpc_local_reply(status, body, headers, grpc_status)
        elif body:
            headers[:0] = [(b"content-length", b"%d" % len(body)),
                           (b"content-type", kind or b"text/plain")]
        headers.append((b"date", http_date()))
        if self.hcm.server_header != "PASS_THROUGH":
            headers.append((b"server", self.hcm.server_name))
        if not body and not self.grpc:
            headers.append((b"content-length", b"0"))
        self.info.code = status
        self.response_started = True
        self.info.response_headers = headers
        if self.router is not None:
            self.router.on_local_reply()
        close = close or self.conn.drain_close()
        if body:
            self.encoder.encode_headers(status, headers, False, close)
            self.encoder.encode_data(body, True)
        else:
            self.encoder.encode_headers(status, headers, True, close)
        self.finish()

    # --- what the router calls to answer ------------------------------------------------

    def encode_headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        """A response from upstream: Envoy's connection manager adds Date and Server."""
        if self.overrides and not self.overridden:
            self.overridden = True  # (the reply an override makes is not offered again)
            for override in self.overrides:
                if override(status, headers):
                    return  # (replied: the upstream's body is dropped, the stream is done)
        if not any(k == b"date" for k, _ in headers):
            headers.append((b"date", http_date()))
        mode = self.hcm.server_header  # (under OVERWRITE the router dropped the upstream's)
        if mode == "OVERWRITE" or (mode == "APPEND_IF_ABSENT"
                                   and not any(k == b"server" for k, _ in headers)):
            headers.append((b"server", self.hcm.server_name))
        for hook in self.response_hooks:
            hook(headers)
        for t in self.transforms:
            t.headers(status, headers, end_stream)
        self.info.code = status
        self.response_started = True
        self.info.response_headers = headers
        if status == 101 and self.head.upgrade:
            self.upgraded = True
            if self.hcm.close_websockets and self.head.upgrade.lower() == b"websocket":
                self.frames = FrameEdge()
            self.conn.upgrade_started()
        self.encoder.encode_headers(status, headers, end_stream, self.conn.drain_close())
        if end_stream:
            self.finish()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.response_done:
            return
        for t in self.transforms:
            data = t.data(data, end_stream)
        if data:
            self.info.bytes_sent += len(data)
            self.conn.last_activity = time.monotonic()
            if self.frames is not None:
                self.frames.feed(data)
        self.encoder.encode_data(data, end_stream)
        if end_stream:
            self.finish()

    def encode_trailers(self, trailers: Headers) -> None:
        if self.response_done:
            return
        for t in self.transforms:
            tail = t.data(b"", True)
            if tail:
                self.encoder.encode_data(tail, False)
        self.encoder.encode_trailers(trailers)
        self.finish()

    def flush(self) -> None:
        self.encoder.flush()

    def idle_timed_out(self) -> None:
        """Silent both ways for the stream idle timeout: Envoy's 408 or reset; a WebSocket
        between frames gets a close frame (1001) and a clean close instead, when its chain
        asks for it (edgegw-only)."""
        self.info.add_flag(ResponseFlag.SI)
        if self.hcm.close_websockets and self.frames is not None and self.frames.at_edge \
                and not self.response_done:
            self.encode_data(GOING_AWAY, True)
            return
        self.send_local_reply(408, b"stream timeout", close=True)

    def reset_stream(self) -> None:
        """Resets the stream (on HTTP/1.1, the connection) and ends it."""
        if not self.response_done:
            self.encoder.reset()
            self.finish()

    # --- the end ------------------------------------------------------------------------

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
        if self.duration_timer is not None:
            self.duration_timer.cancel()
            self.duration_timer = None
        router, self.router = self.router, None
        if router is not None:
            router.on_destroy()  # (and the stream-router cycle is gone: no garbage to collect)
        st = self.hcm.stats
        st.downstream_rq_active.value -= 1
        st.downstream_rq_completed.value += 1
        if self.info.code:
            st.count_code(self.info.code)
        ms = (time.monotonic() - self.info.start_mono) * 1000
        st.downstream_rq_time.record(ms)
        if self.upgraded:
            self.hcm.upgrade_time.record(ms)
            self.hcm.upgrade_bytes.record(self.info.bytes_sent + self.info.bytes_received)
            self.conn.upgrade_ended()
        for logger in self.hcm.access_logs:
            logger.log(self.info)
        self.conn.stream_done(self)


