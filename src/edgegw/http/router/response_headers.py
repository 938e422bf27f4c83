"""The response as it goes downstream (Envoy's router): the upstream's headers less the
hop-by-hop ones and Server (an upgrade's Upgrade and Connection stay), then
x-envoy-upstream-service-time and the route's response mutations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..codec import Headers, connection_tokens

if TYPE_CHECKING:
    from ..filter import FilterCallbacks

def downstream_headers(cb: FilterCallbacks, status: int, headers: Headers, service_time: bytes,
                       suppress_envoy_headers: bool, drop: frozenset[bytes]) -> Headers:
    """``drop``: the hop-by-hop headers, and Server when the connection manager overwrites
    it (RouterConfig.response_drop)."""
    tokens = None
    out: Headers = []
    upgrade = status == 101 and bool(cb.head.upgrade)
    for kv in headers:
        k = kv[0]
        if k in drop:
            if k == b"connection":
                tokens = kv[1]
                if upgrade:
                    out.append(kv)
            elif upgrade and k == b"upgrade":
                out.append(kv)
            continue
        out.append(kv)
    if tokens:
        named = connection_tokens(tokens) - {b"upgrade"}
        out = [kv for kv in out if kv[0] not in named]
    if not suppress_envoy_headers:
        out.append((b"x-envoy-upstream-service-time", service_time))
    assert cb.info.route is not None
    for mut in cb.info.route.mutations:
        mut.response.apply(out, cb.info.expand)
    return out
