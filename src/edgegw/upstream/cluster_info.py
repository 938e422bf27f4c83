"""What every part of a cluster reads (Envoy's ClusterInfo): its name, stats, circuit breakers
and their counts, timeouts, protocol and TLS. Its hosts, their pools, health checks and
outlier detection see the cluster through it; ``Cluster`` adds the hosts and balancing."""

from __future__ import annotations

from ..config import model as m
from ..http.codec import ClientCodec, http2
from ..http.codec.http1 import Http1Connection
from ..stats import Counter, Histogram, Store
from ..tls.context import ClientTls, SslStats
from ..tls.sds import SecretManager
from .cluster_stats import BreakerStats, ClusterStats, RemainingStats


class ClusterInfo:
    """The cluster's settings and counters, as its hosts, pools and checks use them."""

    def __init__(self, cfg: m.Cluster, store: Store, secrets: SecretManager | None = None) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        site = cfg.metadata.ours("site") if cfg.metadata else None
        self.label = f"site {site}" if isinstance(site, str) else f"cluster '{cfg.name}'"
        """How log lines name it: the sites file's site it serves, else the cluster."""
        self.stats = ClusterStats(store, f"cluster.{cfg.name}.", code_classes="upstream_rq",
                                  lazy_classes=True)
        self._rq_time: Histogram | None = None
        self.limits = cfg.circuit_breakers.default
        prefix = f"cluster.{cfg.name}.circuit_breakers.default."
        self.breakers: BreakerStats = RemainingStats(store, prefix) \
            if self.limits.track_remaining else BreakerStats(store, prefix)
        BreakerStats(store, f"cluster.{cfg.name}.circuit_breakers.high.")
        self.connections = 0
        """Open and opening upstream connections, kept by the host pools (max_connections)."""
        self.attached = 0
        """Requests on a connection, kept by the host pools (what max_requests limits)."""
        self.retrying = 0
        """Requests with a retry under way (what max_retries limits)."""
        self.connect_timeout = cfg.connect_timeout
        self.idle_timeout = cfg.http_options.idle_timeout or 3600.0
        self.max_response_header_bytes = (cfg.http_options.max_response_headers_kb or 60) * 1024
        self.max_response_headers = cfg.http_options.max_headers_count or 100
        """Envoy's response header limits: past them the response is a protocol error (502)."""
        self.buffer_limit = cfg.per_connection_buffer_limit_bytes
        auto = cfg.auto_http
        h2opts = cfg.http2_options or (auto.http2_protocol_options if auto else None)
        self.http2 = cfg.http2_options is not None
        self.auto = auto is not None
        """auto_config: ALPN picks HTTP/2 or HTTP/1.1 on each new connection."""
        self.http2_codec: ClientCodec | None = (
            http2.client_codec(http2.Options(h2opts), store, cfg.name)
            if self.http2 or self.auto else None)
        self.client_codec: ClientCodec = (
            self.http2_codec if self.http2 and self.http2_codec else Http1Connection)
        """The protocol object of a new connection (the cluster's HttpProtocolOptions); under
        auto_config, HTTP/1.1's until ALPN says h2."""
        self.tls = None
        self.ssl: SslStats | None = None
        self.proxy_protocol = cfg.transport_socket.proxy_protocol if cfg.transport_socket \
            else None
        """A PROXY protocol header goes first on each connection (tcp_proxy clusters)."""
        tls = cfg.transport_socket.tls if cfg.transport_socket else None
        if tls is not None:
            updates = store.counter(
                f"cluster.{cfg.name}.client_ssl_socket_factory.ssl_context_update_by_sds")
            self.tls = ClientTls(tls, cfg.name, secrets, updates,
                                 alpn=["h2"] if self.http2 else
                                 ["h2", "http/1.1"] if self.auto else None)
            self.ssl = SslStats(store, f"cluster.{cfg.name}.ssl.")
        self._status_counters: dict[int, Counter] = {}

    def record_rq_time(self, ms: float) -> None:
        """``upstream_rq_time``, created on first use as Envoy's router creates it."""
        if self._rq_time is None:
            self._rq_time = self.stats._store.histogram(f"cluster.{self.name}.upstream_rq_time")
        self._rq_time.record(ms)

    def status_counter(self, status: int) -> Counter:
        """``upstream_rq_<code>``, looked up once per code."""
        c = self._status_counters.get(status)
        if c is None:
            c = self._status_counters[status] = self.stats.counter(f"upstream_rq_{status}")
        return c
