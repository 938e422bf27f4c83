"""route_config compiled for the hot path: virtual host by Host, then route by path and headers.

Everything that can be decided from the config is decided here once: domains are bucketed as
Envoy buckets them (exact map, suffix and prefix wildcards longest first, one catch-all),
matchers become small closures, header mutations become lists of operations, redirect and
direct-response replies are prepared. Matching a request is then dictionary lookups and a walk
over the vhost's routes in order, first match wins.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ...config import model as m
from ...config.datasource import read
from ...matchers import header_matcher
from ..codec import Headers
from .hash_policy import HashFn, compile_hash_policy
from .header_parser import HeaderOps, header_ops
from .retry import Retry, policy_for

# --- header mutations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Mutations:
    request: HeaderOps
    response: HeaderOps


def _mutations(x: m.HeaderMutations) -> Mutations:
    return Mutations(header_ops(x.request_headers_to_add, x.request_headers_to_remove),
                     header_ops(x.response_headers_to_add, x.response_headers_to_remove))


# --- matchers -------------------------------------------------------------------------------


def _path_matcher(rm: m.RouteMatch) -> Callable[[str], bool]:
    """Prefix rules see the whole :path; exact and regex rules see it without the query."""
    cs = rm.case_sensitive
    if rm.prefix is not None:
        p = rm.prefix if cs else rm.prefix.lower()
        return (lambda path: path.startswith(p)) if cs else (lambda path: path.lower().startswith(p))
    if rm.path_separated_prefix is not None:
        p = rm.path_separated_prefix if cs else rm.path_separated_prefix.lower()
        q = p + "/"

        def separated(path: str) -> bool:
            base = path.partition("?")[0]
            base = base if cs else base.lower()
            return base == p or base.startswith(q)

        return separated
    if rm.path is not None:
        p = rm.path if cs else rm.path.lower()
        if cs:
            return lambda path: path.partition("?")[0] == p
        return lambda path: path.partition("?")[0].lower() == p
    assert rm.safe_regex is not None
    rx = re.compile(rm.safe_regex.regex)
    return lambda path: rx.fullmatch(path.partition("?")[0]) is not None


def request_matcher(rm: m.RouteMatch) -> Callable[[str, Headers], bool]:
    """A route's match as a predicate of (path, headers), for a filter whose rules match
    requests as routes do (jwt_authn)."""
    path = _path_matcher(rm)
    headers = [header_matcher(h) for h in rm.headers]
    return lambda p, h: path(p) and all(x(h) for x in headers)


# --- compiled routes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """A ``route:`` action: send upstream to a cluster (or one of weighted clusters)."""

    cluster: str
    timeout: float
    host_rewrite: bytes | None
    auto_host_rewrite: bool
    prefix: bytes | None
    prefix_rewrite: bytes | None
    timeout_ms: bytes = b""
    """x-envoy-expected-rq-timeout-ms, formatted once."""
    retry: Retry | None = None
    weighted: tuple[tuple[int, str], ...] = ()
    """(cumulative weight, cluster) for weighted_clusters; empty for a single cluster."""
    hash: HashFn | None = None
    """The hash_policy, for RING_HASH and MAGLEV clusters."""
    mirrors: tuple[tuple[str, float, bool], ...] = ()
    """request_mirror_policies: (cluster, fraction of requests, append -shadow to Host)."""
    grpc_timeout_max: float | None = None
    """max_stream_duration.grpc_timeout_header_max: a gRPC request's grpc-timeout becomes the
    route timeout, capped by it (0: uncapped); None: grpc-timeout is not honoured."""
    grpc_timeout_offset: float = 0.0
    not_found: int = 503
    """The status when the cluster is not there (cluster_not_found_response_code)."""

    def pick_cluster(self) -> str:
        if not self.weighted:
            return self.cluster
        r = random.randrange(self.weighted[-1][0])
        for bound, name in self.weighted:
            if r < bound:
                return name
        return self.weighted[-1][1]


@dataclass(frozen=True)
class Redirect:
    https: bool
    scheme: str | None
    host: str | None
    port: int | None
    path: str | None
    prefix: str | None
    prefix_rewrite: str | None
    status: int
    strip_query: bool


@dataclass(frozen=True)
class Direct:
    status: int
    body: bytes
    webroot: str | None = None
    """edgegw-only: ACME HTTP-01 challenge files are answered from this directory."""


_REDIRECT_CODES = {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303,
                   "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308}
DEFAULT_ROUTE_TIMEOUT = 15.0
_NOT_FOUND = {"SERVICE_UNAVAILABLE": 503, "NOT_FOUND": 404, "INTERNAL_SERVER_ERROR": 500}


@dataclass(frozen=True)
class Route:
    name: str
    path_match: Callable[[str], bool]
    header_matches: tuple[Callable[[Headers], bool], ...]
    action: Forward | Redirect | Direct
    mutations: tuple[Mutations, ...]
    """This route's, its vhost's and the route_config's, in the order Envoy applies them."""
    filter_configs: dict[str, object] = field(default_factory=dict)
    """Per-route filter configs by filter name, the route's over its virtual host's."""
    filters_on: dict[str, bool] = field(default_factory=dict)
    """Filters the route (or else its virtual host) turns on or off by name: any per-route
    config turns a filter on, a ``FilterConfig`` with ``disabled`` off."""
    upgrades: dict[str, bool] = field(default_factory=dict)
    """The route action's upgrade_configs: enabled by upgrade type (lower case)."""
    pseudo: bool = False
    """A header matcher names a pseudo-header (``:method``, ``:path``, ``:authority``,
    ``:scheme``), which Envoy's matchers see as headers."""

    def matches(self, path: str, headers: Headers) -> bool:
        if not self.path_match(path):
            return False
        for hm in self.header_matches:
            if not hm(headers):
                return False
        return True


def _action(r: m.Route, vhost: m.VirtualHost) -> Forward | Redirect | Direct:
    if r.route is not None:
        a = r.route
        timeout = DEFAULT_ROUTE_TIMEOUT if a.timeout is None else a.timeout
        weighted: list[tuple[int, str]] = []
        for cw in a.weighted_clusters.clusters if a.weighted_clusters else []:
            if cw.weight:
                weighted.append(((weighted[-1][0] if weighted else 0) + cw.weight, cw.name))
        return Forward(
            not_found=_NOT_FOUND[a.cluster_not_found_response_code],
            cluster=a.cluster or weighted[0][1],
            weighted=tuple(weighted),
            timeout=timeout,
            timeout_ms=b"%d" % int(timeout * 1000),
            retry=policy_for(a, vhost, header_matcher),
            host_rewrite=a.host_rewrite_literal.encode("latin-1")
            if a.host_rewrite_literal else None,
            auto_host_rewrite=a.auto_host_rewrite,
            prefix=(r.match.rewritable_prefix.encode("latin-1")
                    if r.match.rewritable_prefix is not None else None),
            prefix_rewrite=a.prefix_rewrite.encode("latin-1")
            if a.prefix_rewrite is not None else None,
            hash=compile_hash_policy(a.hash_policy),
            mirrors=tuple((mp.cluster, mp.runtime_fraction.default_value.fraction
                           if mp.runtime_fraction else 1.0,
                           not mp.disable_shadow_host_suffix_append)
                          for mp in a.request_mirror_policies),
            grpc_timeout_max=a.max_stream_duration.grpc_timeout_header_max
            if a.max_stream_duration else None,
            grpc_timeout_offset=(a.max_stream_duration.grpc_timeout_header_offset or 0.0)
            if a.max_stream_duration else 0.0,
        )
    if r.redirect is not None:
        d = r.redirect
        return Redirect(https=d.https_redirect, scheme=d.scheme_redirect, host=d.host_redirect,
                        port=d.port_redirect, path=d.path_redirect,
                        prefix=r.match.rewritable_prefix,
                        prefix_rewrite=d.prefix_rewrite, status=_REDIRECT_CODES[d.response_code],
                        strip_query=d.strip_query)
    assert r.direct_response is not None
    body = read(r.direct_response.body) if r.direct_response.body else b""
    webroot = r.metadata.ours("webroot") if r.metadata else None
    return Direct(r.direct_response.status, body, webroot)


@dataclass
class VirtualHost:
    name: str
    routes: list[Route]
    require_tls: str


@dataclass
class RouteTable:
    """One compiled RouteConfiguration."""

    name: str
    ignore_port: bool
    exact: dict[str, VirtualHost] = field(default_factory=dict)
    suffixes: list[tuple[str, VirtualHost]] = field(default_factory=list)
    prefixes: list[tuple[str, VirtualHost]] = field(default_factory=list)
    default: VirtualHost | None = None

    def virtual_host(self, host: str) -> VirtualHost | None:
        """Envoy's order: exact, longest ``*.suffix``, longest ``prefix*``, then ``*``."""
        host = host.lower()
        if self.ignore_port or host not in self.exact:
            host = _strip_port(host) if self.ignore_port else host
        vh = self.exact.get(host)
        if vh is not None:
            return vh
        for suffix, vh in self.suffixes:
            if len(host) > len(suffix) and host.endswith(suffix):
                return vh
        for prefix, vh in self.prefixes:
            if len(host) > len(prefix) and host.startswith(prefix):
                return vh
        return self.default

    def route(self, host: str, path: str, headers: Headers, method: bytes = b"GET",
              scheme: bytes = b"https") -> tuple[VirtualHost | None, Route | None]:
        vh = self.virtual_host(host)
        if vh is None:
            return None, None
        with_pseudo: Headers | None = None
        for r in vh.routes:
            seen = headers
            if r.pseudo:
                if with_pseudo is None:
                    with_pseudo = [(b":method", method), (b":path", path.encode("latin-1")),
                                   (b":authority", host.encode("latin-1")),
                                   (b":scheme", scheme), *headers]
                seen = with_pseudo
            if r.matches(path, seen):
                return vh, r
        return vh, None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    i = host.rfind(":")
    return host[:i] if i >= 0 and host[i + 1 :].isdigit() else host


def _filter_configs(r: m.Route, v: m.VirtualHost) -> dict[str, object]:
    """Each filter's per-route config, from the most specific level that has one (a
    FilterConfig's ``config``; one without leaves the filter's own settings)."""
    out: dict[str, object] = {}
    for level in (r.typed_per_filter_config, v.typed_per_filter_config):
        for name, pf in level.items():
            cfg = pf.config if isinstance(pf, m.FilterConfig) else pf
            if cfg is not None:
                out.setdefault(name, cfg)
    return out


def _filters_on(r: m.Route, v: m.VirtualHost) -> dict[str, bool]:
    """Whether the most specific level that names a filter turns it on or off."""
    out: dict[str, bool] = {}
    for level in (r.typed_per_filter_config, v.typed_per_filter_config):
        for name, pf in level.items():
            out.setdefault(name, not (isinstance(pf, m.FilterConfig) and pf.disabled))
    return out


def compile_routes(rc: m.RouteConfiguration) -> RouteTable:
    table = RouteTable(rc.name, rc.ignore_port_in_host_matching)
    top = _mutations(rc)
    for v in rc.virtual_hosts:
        vmut = _mutations(v)
        routes = [
            Route(
                name=r.name,
                path_match=_path_matcher(r.match),
                header_matches=tuple(header_matcher(h) for h in r.match.headers),
                action=_action(r, v),
                mutations=tuple(x for x in (_mutations(r), vmut, top)
                                if x.request or x.response),
                filter_configs=_filter_configs(r, v),
                filters_on=_filters_on(r, v),
                upgrades={u.upgrade_type.lower(): u.enabled
                          for u in (r.route.upgrade_configs if r.route else [])},
                pseudo=any(h.name.startswith(":") for h in r.match.headers),
            )
            for r in v.routes
        ]
        vh = VirtualHost(v.name, routes, v.require_tls)
        for d in v.domains:
            d = d.lower()
            if d == "*":
                table.default = vh
            elif d.startswith("*"):
                table.suffixes.append((d[1:], vh))
            elif d.endswith("*"):
                table.prefixes.append((d[:-1], vh))
            else:
                table.exact[d] = vh
    table.suffixes.sort(key=lambda x: -len(x[0]))
    table.prefixes.sort(key=lambda x: -len(x[0]))
    return table


def redirect_location(r: Redirect, scheme: str, host: str, path: str) -> str:
    """The Location of a redirect, built as Envoy builds it from the request."""
    new_scheme = "https" if r.https else (r.scheme or scheme)
    hostname, port = host, ""
    bare = _strip_port(host)
    if bare != host:
        hostname, port = bare, host[len(bare) + 1 :]
    if r.host is not None:
        hostname = r.host
    if r.port is not None:
        port = str(r.port) if r.port else ""
    if port and port == {"https": "443", "http": "80"}.get(new_scheme):
        port = ""
    if port == "80" and scheme == "http" and r.port is None:
        port = ""
    p, q, query = path.partition("?")
    if r.path is not None:
        rp, rq, rquery = r.path.partition("?")
        p = rp
        if rq:
            q, query = rq, rquery
    elif r.prefix_rewrite is not None and r.prefix is not None:
        p = r.prefix_rewrite + p[len(r.prefix):]
    if r.strip_query:
        q = query = ""
    authority = hostname + (f":{port}" if port else "")
    return f"{new_scheme}://{authority}{p}{q}{query}"
