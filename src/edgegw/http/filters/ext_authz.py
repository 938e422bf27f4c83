"""envoy.filters.http.ext_authz, HTTP service mode: forward auth (Authelia's /api/verify,
Authentik's outpost, oauth2-proxy).

Each request is first asked of the authorization service: the same method, the path under
``path_prefix``, Host and Authorization always, plus the headers ``allowed_headers`` matches
and ``headers_to_add``; with ``with_request_body``, the body's first bytes too. The request waits (paused) for the
answer, which goes through the cluster's pool like any upstream request.
- **200**: allowed. Headers matched by ``allowed_upstream_headers`` are set on the request;
  those matched by ``allowed_client_headers_on_success`` are added to the response.
- **Any other status**: denied. The client gets that status, the service's body, and its
  headers (those ``allowed_client_headers`` matches, or all but hop-by-hop ones), e.g. a 302
  to the login page.
- **No answer** (connect failure, timeout, reset): 403 or ``status_on_error``, unless
  ``failure_mode_allow`` lets it go on. It is never allowed by accident.

*edgegw-only*: a header the client sent whose name ``allowed_upstream_headers`` matches
exactly (``Remote-User``…) is removed before the backend sees it, unless the service set it;
Envoy would pass a forged one through. Stats ``http.<stat_prefix>.ext_authz.ok|denied|error|
failure_mode_allowed``, and ``cluster.<routed cluster>.ext_authz.ok|denied|error``, as Envoy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...config import model as m
from ...matchers import string_matcher
from ...stats import Counter, StatSet, Store
from ..codec import HOP_BY_HOP, Headers, RequestHead
from ..filter import register
from ..headers import set_header
from ..service_call import ServiceCall
from ..stream_info import ResponseFlag

if TYPE_CHECKING:
    from ..filter import FilterCallbacks

NOT_TO_CLIENT = HOP_BY_HOP | {b"host", b"content-length", b"date", b"server"}


class ExtAuthzStats(StatSet):
    ok: Counter
    denied: Counter
    error: Counter
    failure_mode_allowed: Counter


Names = Callable[[bytes], bool]


def _names(lm: m.ListStringMatcher | None) -> Names | None:
    if lm is None:
        return None
    checks = [string_matcher(p) for p in lm.patterns]
    return lambda name: any(c(name.decode("latin-1")) for c in checks)


@register(m.ExtAuthz)
class ExtAuthzFilter:
    def __init__(self, cfg: m.ExtAuthz, store: Store, hcm_prefix: str) -> None:
        svc = cfg.http_service
        self.cluster = svc.server_uri.cluster
        self.timeout = svc.server_uri.timeout or 0.2
        self.prefix = svc.path_prefix.encode("latin-1")
        self.allowed = _names(svc.authorization_request.allowed_headers)
        self.to_add = [(h.key.lower().encode("latin-1"), h.value.encode("latin-1"))
                       for h in svc.authorization_request.headers_to_add]
        resp = svc.authorization_response
        self.upstream = _names(resp.allowed_upstream_headers)
        self.client = _names(resp.allowed_client_headers)
        self.on_success = _names(resp.allowed_client_headers_on_success)
        self.guarded = frozenset(
            p.exact.lower().encode("latin-1") for p in
            (resp.allowed_upstream_headers.patterns if resp.allowed_upstream_headers else [])
            if p.exact is not None)
        """Names only the service may set on the way to the backend (edgegw-only)."""
        self.with_body = cfg.with_request_body
        self.failure_mode_allow = cfg.failure_mode_allow
        self.status_on_error = cfg.status_on_error.code if cfg.status_on_error else 403
        self.stats = ExtAuthzStats(store, f"http.{hcm_prefix}.ext_authz.")
        self.store = store

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        if isinstance(route_cfg, m.ExtAuthzPerRoute) and route_cfg.disabled:
            return True
        if self.with_body is not None and not cb.request_done and not cb.head.upgrade:
            cb.buffer_body(self.with_body.max_request_bytes,
                           lambda body, complete: self._body_in(cb, body, complete))
            return False
        self._check(cb, None)
        return False

    def _body_in(self, cb: FilterCallbacks, body: bytes, complete: bool) -> None:
        """with_request_body: the whole body, or its first max_request_bytes when partial
        messages are allowed; a longer body is refused, as Envoy's buffer limit refuses it."""
        assert self.with_body is not None
        limit = self.with_body.max_request_bytes
        if not complete and not self.with_body.allow_partial_message:
            if len(body) <= limit:
                cb.buffer_body(limit + 1, lambda b, c: self._body_in(cb, b, c))
            else:
                cb.send_local_reply(413, b"Payload Too Large", "request_payload_too_large",
                                    close=True)
            return
        if not complete:
            cb.read_disable("ext_authz", True)
        self._check(cb, body[:limit], partial=len(body) > limit)

    def _check(self, cb: FilterCallbacks, body: bytes | None, partial: bool = False) -> None:
        headers: Headers = [(b"host", cb.authority.encode("latin-1"))]
        asked: dict[bytes, bytes] = {}
        for k, v in cb.headers:
            if k != b"host" and (k == b"authorization"
                                 or (self.allowed is not None and self.allowed(k))):
                # A repeated field reaches the service once, its values joined with ',' as
                # Envoy joins them (cookies too): the service judges every value the backend
                # may read.
                asked[k] = asked[k] + b"," + v if k in asked else v
        headers += asked.items()
        headers += self.to_add
        if body is not None:
            headers.append((b"x-envoy-auth-partial-body", b"true" if partial else b"false"))
        headers.append((b"content-length", b"%d" % len(body or b"")))
        head = RequestHead(cb.method, self.prefix + cb.path, headers, "HTTP/1.1")
        ServiceCall(cb.conn.loop, self.timeout, head, body,
                    lambda call: self.answered(cb, call),
                    lambda: self.failed(cb)).start(cb.clusters, self.cluster)

    def answered(self, cb: FilterCallbacks, call: ServiceCall) -> None:
        if cb.response_done:
            return
        cb.read_disable("ext_authz", False)
        if call.status != 200:
            self.stats.denied.value += 1
            self._count(cb, "denied")
            cb.info.add_flag(ResponseFlag.UAEX)
            keep = self.client
            extra = [(k, v) for k, v in call.headers
                     if k not in NOT_TO_CLIENT and (keep is None or keep(k))]
            cb.send_local_reply(call.status, call.body, "ext_authz_denied", extra=extra)
            return
        self.stats.ok.value += 1
        self._count(cb, "ok")
        given = {k for k, _ in call.headers}
        if self.guarded:
            cb.headers[:] = [h for h in cb.headers if h[0] not in self.guarded or h[0] in given]
        if self.upstream is not None:
            for k, v in call.headers:
                if self.upstream(k):
                    set_header(cb.headers, k, v)
        if self.on_success is not None:
            add = [(k, v) for k, v in call.headers if self.on_success(k)]
            if add:
                cb.add_response_hook(lambda h: h.extend(add))
        cb.continue_decoding()

    def failed(self, cb: FilterCallbacks) -> None:
        if cb.response_done:
            return
        cb.read_disable("ext_authz", False)
        self.stats.error.value += 1
        self._count(cb, "error")
        if self.failure_mode_allow:
            self.stats.failure_mode_allowed.value += 1
            cb.conn.loop.call_soon(cb.continue_decoding)
            return
        cb.info.add_flag(ResponseFlag.UAEX)
        cb.send_local_reply(self.status_on_error, b"", "ext_authz_error")

    def _count(self, cb: FilterCallbacks, what: str) -> None:
        """Envoy also counts each answer under the cluster the request is routed to."""
        action = cb.info.route.action if cb.info.route is not None else None
        name = cb.info.cluster.name if cb.info.cluster is not None else getattr(action, "cluster", "")
        if name:
            self.store.counter(f"cluster.{name}.ext_authz.{what}").value += 1
