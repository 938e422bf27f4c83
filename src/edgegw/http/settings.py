"""The compiled settings of one http_connection_manager filter, shared by its connections.

Built once per filter chain from the config (and again on a reload): the route table, the
HTTP filters from the registry, the router's config, forwarding rules, limits and timeouts,
and the connection manager's stats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..accesslog import AccessLogger
from ..config import model as m
from ..stats import Counter, Gauge, Histogram, StatSet, Store
from ..upstream.cluster import ClusterManager
from . import filter as http_filter
from . import filters as _filters  # noqa: F401 (registers the HTTP filters)
from .codec import http1, http2
from .filters.basic_auth import BasicAuthFilter
from .filters.oauth2 import OAuth2Filter
from .headers import ForwardingPolicy
from .local_reply import LocalReply
from .path import PathPolicy
from .rds import RdsSubscription
from .router.config import RouterConfig
from .router.table import Route, RouteTable, compile_routes

if TYPE_CHECKING:
    from ..tls.sds import SecretManager


class HcmStats(StatSet):
    """``http.<stat_prefix>.*``: Envoy's connection manager stats (a subset)."""

    downstream_cx_total: Counter
    downstream_cx_http1_total: Counter
    downstream_cx_http2_total: Counter
    downstream_cx_upgrades_total: Counter
    downstream_cx_ssl_total: Counter
    downstream_cx_destroy: Counter
    downstream_cx_protocol_error: Counter
    downstream_cx_idle_timeout: Counter
    downstream_rq_total: Counter
    downstream_rq_http1_total: Counter
    downstream_rq_http2_total: Counter
    downstream_rq_completed: Counter
    downstream_rq_timeout: Counter
    downstream_rq_idle_timeout: Counter
    downstream_rq_header_timeout: Counter
    downstream_rq_rx_reset: Counter
    downstream_rq_too_many_premature_resets: Counter
    downstream_rq_max_duration_reached: Counter
    downstream_rq_failed_path_normalization: Counter
    downstream_rq_redirected_with_normalized_path: Counter
    downstream_cx_active: Gauge
    downstream_cx_ssl_active: Gauge
    downstream_cx_http1_active: Gauge
    downstream_cx_http2_active: Gauge
    downstream_cx_upgrades_active: Gauge
    downstream_rq_active: Gauge
    downstream_rq_time: Histogram


class HttpConnectionManager:
    """The compiled settings of one http_connection_manager filter."""

    def __init__(self, cfg: m.HttpConnectionManager, clusters: ClusterManager,
                 store: Store, close_websockets: bool = False,
                 basic_auth_users: m.DataSource | None = None,
                 secrets: SecretManager | None = None) -> None:
        self.stat_prefix = cfg.stat_prefix
        self.stats = HcmStats(store, f"http.{cfg.stat_prefix}.", code_classes="downstream_rq")
        self.close_websockets = close_websockets
        """edgegw-only (filter chain metadata ``websocket_close_on_idle``): a WebSocket the
        stream idle timeout cuts gets a close frame when it is between frames."""
        self.upgrade_time = store.private_histogram(f"http.{cfg.stat_prefix}.upgrade_time")
        """How long upgraded streams (WebSockets) lasted: in downstream_rq_time too, as in
        Envoy, and subtracted from the latency the status page shows."""
        self.upgrade_bytes = store.private_histogram(f"http.{cfg.stat_prefix}.upgrade_bytes")
        """The bytes each upgraded stream carried, both ways (the status page's sum)."""
        self.routes = (compile_routes(cfg.route_config) if cfg.route_config is not None
                       else RouteTable("", False))
        self.rds: RdsSubscription | None = None
        """RDS: swaps ``routes`` as new versions come (the first one asked for here)."""
        if cfg.rds is not None:
            self.rds = RdsSubscription(cfg.rds, cfg.stat_prefix, store, self._swap_routes,
                                       clusters.xds)
            self.rds.load()
        self.clusters = clusters
        self.server_name = (cfg.server_name or "edgegw").encode("latin-1")
        self.server_header = cfg.server_header_transformation
        self.local_reply = LocalReply(cfg.local_reply_config) \
            if cfg.local_reply_config is not None else None
        """local_reply_config: how edgegw's own replies are rewritten (None: as they are)."""
        self.forwarding = ForwardingPolicy.from_config(cfg)
        self.max_header_bytes = cfg.max_request_headers_kb * 1024
        self.codec_type = cfg.codec_type
        self.http2 = http2.Options(cfg.http2_protocol_options)
        self.store = store
        self._http2_stats: http2.Http2Stats | None = None
        self._http1_stats: http1.Http1Stats | None = None
        opts = cfg.common_http_protocol_options or m.HttpProtocolOptions()
        self.max_headers = opts.max_headers_count or 100
        self.underscores = opts.headers_with_underscores_action
        action = cfg.path_with_escaped_slashes_action
        self.paths = PathPolicy(cfg.normalize_path, cfg.merge_slashes,
                                "KEEP_UNCHANGED" if action == "IMPLEMENTATION_SPECIFIC_DEFAULT"
                                else action)
        self.idle_timeout = 3600.0 if opts.idle_timeout is None else opts.idle_timeout
        self.request_headers_timeout = cfg.request_headers_timeout or 0.0
        self.request_timeout = cfg.request_timeout or 0.0
        """Envoy's: the whole request must arrive within it (disarmed once a response
        starts); 0 disables it, the default."""
        self.stream_idle_timeout = (300.0 if cfg.stream_idle_timeout is None
                                    else cfg.stream_idle_timeout)
        self.access_logs = [AccessLogger(a) for a in cfg.access_log]
        router = cfg.http_filters[-1].typed_config if cfg.http_filters else None
        self.router = RouterConfig(clusters, store, cfg.stat_prefix,
                                   isinstance(router, m.Router) and router.suppress_envoy_headers,
                                   cfg.server_header_transformation)
        self.filters: list[tuple[str, http_filter.HttpFilter, bool]] = [
            (f.name, BasicAuthFilter(f.typed_config, store, cfg.stat_prefix, basic_auth_users)
             if basic_auth_users is not None and isinstance(f.typed_config, m.BasicAuth)
             else OAuth2Filter(f.typed_config, store, cfg.stat_prefix, secrets)
             if isinstance(f.typed_config, m.OAuth2)
             else http_filter.build(f.typed_config, store, cfg.stat_prefix), f.disabled)
            for f in cfg.http_filters[:-1]]
        """The HTTP filters before the router, with the names per-route configs use and
        whether each is off unless a route turns it on. A basic_auth filter takes the chain's
        ``basic_auth_users`` (edgegw-only) if set; oauth2 reads its secrets through the
        config's secret manager."""
        self.upgrades = {u.upgrade_type.lower(): u.enabled for u in cfg.upgrade_configs}
        """upgrade_configs: the upgrades the connection manager allows, by type."""

    @property
    def http2_stats(self) -> http2.Http2Stats:
        """``http2.*``, made at the first HTTP/2 connection, as Envoy makes them."""
        if self._http2_stats is None:
            self._http2_stats = http2.Http2Stats(self.store, "http2.")
        return self._http2_stats

    @property
    def http1_stats(self) -> http1.Http1Stats:
        """``http1.*``, made when first counted."""
        if self._http1_stats is None:
            self._http1_stats = http1.Http1Stats(self.store, "http1.")
        return self._http1_stats

    def upgrade_allowed(self, upgrade: bytes, route: Route | None) -> bool:
        """Envoy's rule: a route's upgrade_configs entry for the type decides; else the HCM's."""
        kind = upgrade.decode("latin-1").lower()
        on_route = route.upgrades.get(kind) if route is not None else None
        return on_route if on_route is not None else self.upgrades.get(kind, False)

    def _swap_routes(self, routes: RouteTable) -> None:
        self.routes = routes

    def start(self) -> None:
        if self.rds is not None:
            self.rds.start()

    def close(self) -> None:
        if self.rds is not None:
            self.rds.stop()
        for a in self.access_logs:
            a.close()
