"""The request as it goes upstream (Envoy's router finalizeRequestHeaders): the client's
headers less the hop-by-hop ones and the router's own controls, the route's header
mutations, and the Host and prefix rewrites."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..codec import HOP_BY_HOP, Headers, RequestHead, connection_tokens
from .table import Forward

if TYPE_CHECKING:
    from ...upstream.host import Host
    from ..filter import FilterCallbacks

ROUTER_CONTROL = frozenset({
    b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries",
    b"x-envoy-upstream-rq-timeout-ms", b"x-envoy-upstream-rq-per-try-timeout-ms",
    b"x-envoy-upstream-rq-timeout-alt-response", b"x-envoy-hedge-on-per-try-timeout",
    b"x-envoy-retriable-status-codes", b"x-envoy-retriable-header-names"})
"""The router's own request controls: Envoy's router takes them off before forwarding (edgegw
does not act on them)."""
REQUEST_DROP = HOP_BY_HOP | ROUTER_CONTROL | {b"host"}
"""Set aside while copying a request's headers: hop-by-hop headers, the router's controls,
and Host (put first)."""
REQUEST_DROP_WITH_TIMEOUT = REQUEST_DROP | {b"x-envoy-expected-rq-timeout-ms"}


def upstream_head(cb: FilterCallbacks, action: Forward, host: Host, add_timeout: bool
                  ) -> RequestHead:
    """The request as it goes upstream, built in one pass over the client's headers."""
    drop = REQUEST_DROP_WITH_TIMEOUT if add_timeout else REQUEST_DROP
    upgrade = cb.head.upgrade
    out: Headers = [(b"host", b"")]
    host_value = b""
    tokens = None
    for kv in cb.headers:
        k = kv[0]
        if k in drop:
            if k == b"host":
                host_value = kv[1]
            elif k == b"connection":
                tokens = kv[1]
                if upgrade:
                    out.append(kv)  # Envoy passes an upgrade's Connection as it came
            elif k == b"te" and kv[1].lower() == b"trailers":
                out.append(kv)
            elif upgrade and k == b"upgrade":
                out.append(kv)
            continue
        out.append(kv)
    if tokens:
        named = connection_tokens(tokens) - {b"host", b"upgrade"}
        out = [kv for kv in out if kv[0] not in named]
    if add_timeout:
        out.append((b"x-envoy-expected-rq-timeout-ms", action.timeout_ms))
    assert cb.info.route is not None
    for mut in cb.info.route.mutations:
        mut.request.apply(out, cb.info.expand)
    new_host = action.host_rewrite
    if new_host is None and action.auto_host_rewrite and host.hostname:
        new_host = host.hostname_bytes
    if new_host is not None:
        out.append((b"x-envoy-original-host", host_value))
        host_value = new_host
    out[0] = (b"host", host_value)
    path = cb.path
    if action.prefix_rewrite is not None and action.prefix is not None:
        out.append((b"x-envoy-original-path", path))
        path = action.prefix_rewrite + path[len(action.prefix):]
    return RequestHead(cb.method, path, out, cb.protocol, upgrade)
