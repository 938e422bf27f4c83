"""Clusters: their hosts (static or resolved by DNS), their health, load balancing and stats.

STATIC clusters take their endpoints as they are; STRICT_DNS resolves every endpoint and uses
every address; LOGICAL_DNS uses the first address of its single endpoint. Both re-resolve every
``dns_refresh_rate``; hosts keep their connection pools across refreshes when the address
stays. A host is healthy unless active health checking failed it or outlier detection ejected
it; the load balancer picks among healthy hosts, or among all of them when too few are healthy
(Envoy's panic threshold, 50 % by default, with Envoy's 1.4 overprovisioning factor).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

from .. import log
from ..config import model as m
from ..http.codec import http2
from ..http.codec.http1 import Http1Connection
from ..stats import Counter, Gauge, Histogram, StatSet, Store
from ..tls.context import ClientTls, SslStats
from ..tls.sds import SecretManager
from . import lb
from .health import HealthChecker
from .outlier import HostMonitor, OutlierDetector
from .pool import ClientCodec, Pool

_log = log.get("upstream")


class ClusterStats(StatSet):
    """``cluster.<name>.*``: Envoy's cluster traffic stats (a subset)."""

    upstream_cx_total: Counter
    upstream_cx_http1_total: Counter
    upstream_cx_http2_total: Counter
    upstream_cx_connect_fail: Counter
    upstream_cx_connect_timeout: Counter
    upstream_cx_destroy: Counter
    upstream_cx_idle_timeout: Counter
    upstream_cx_destroy_remote_with_active_rq: Counter
    upstream_cx_none_healthy: Counter
    upstream_rq_total: Counter
    upstream_rq_completed: Counter
    upstream_rq_timeout: Counter
    upstream_rq_rx_reset: Counter
    upstream_rq_tx_reset: Counter
    upstream_rq_pending_total: Counter
    upstream_rq_pending_failure_eject: Counter
    upstream_rq_per_try_timeout: Counter
    upstream_rq_retry: Counter
    upstream_rq_retry_success: Counter
    upstream_rq_retry_limit_exceeded: Counter
    upstream_rq_retry_overflow: Counter
    upstream_rq_retry_backoff_exponential: Counter
    upstream_rq_retry_backoff_ratelimited: Counter
    upstream_cx_overflow: Counter
    upstream_rq_pending_overflow: Counter
    upstream_rq_active_overflow: Counter
    membership_change: Counter
    update_attempt: Counter
    update_success: Counter
    update_failure: Counter
    lb_healthy_panic: Counter
    upstream_cx_active: Gauge
    upstream_rq_active: Gauge
    upstream_rq_pending_active: Gauge
    membership_total: Gauge
    membership_healthy: Gauge
    membership_degraded: Gauge
    membership_excluded: Gauge
    upstream_cx_connect_ms: Histogram


class BreakerStats(StatSet):
    """``cluster.<name>.circuit_breakers.<priority>.*``."""

    cx_open: Gauge
    cx_pool_open: Gauge
    rq_pending_open: Gauge
    rq_open: Gauge
    rq_retry_open: Gauge


class RemainingStats(BreakerStats):
    """With ``track_remaining``: how far each breaker is from its limit, as Envoy shows it."""

    remaining_cx: Gauge
    remaining_cx_pools: Gauge
    remaining_pending: Gauge
    remaining_rq: Gauge
    remaining_retries: Gauge


_FAMILIES = {
    "AUTO": (socket.AF_UNSPEC,), "V4_ONLY": (socket.AF_INET,), "V6_ONLY": (socket.AF_INET6,),
    "V4_PREFERRED": (socket.AF_INET, socket.AF_INET6), "ALL": (socket.AF_UNSPEC,),
}


class Host:
    """One upstream address of a cluster, with its pool and counters."""

    def __init__(self, cluster: Cluster, address: str, port: int, hostname: str,
                 weight: int = 1) -> None:
        self.cluster = cluster
        self.address = address
        self.port = port
        self.weight = weight
        self.failed_active_hc = False
        self.ejected = False
        """Out of the pool by outlier detection (Envoy's /failed_outlier_check)."""
        self.monitor = HostMonitor()
        self.hostname = hostname
        """What auto_host_rewrite puts in Host: the DNS name or the endpoint's hostname."""
        self.hostname_bytes = hostname.encode("latin-1")
        self.label: str = m.address_string(address, port)
        self.pool = Pool(self)
        self.cx_active = 0
        self.cx_total = 0
        self.cx_connect_fail = 0
        self.rq_active = 0
        self.rq_total = 0
        self.rq_error = 0
        self.rq_timeout = 0

    @property
    def healthy(self) -> bool:
        return not (self.failed_active_hc or self.ejected)

    def counters(self) -> list[tuple[str, int]]:
        """Per-host counters in /clusters, as Envoy names them."""
        return [("cx_connect_fail", self.cx_connect_fail), ("cx_total", self.cx_total),
                ("rq_error", self.rq_error), ("rq_success", self.rq_total - self.rq_error),
                ("rq_timeout", self.rq_timeout), ("rq_total", self.rq_total)]

    def gauges(self) -> list[tuple[str, int]]:
        return [("cx_active", self.cx_active), ("rq_active", self.rq_active)]


class Cluster:
    def __init__(self, cfg: m.Cluster, store: Store, secrets: SecretManager | None = None) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
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
        self.buffer_limit = 1024 * 1024
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
        self.hosts: list[Host] = []
        self._status_counters: dict[int, Counter] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.endpoints = [
            (e.endpoint.address.socket_address.address,
             e.endpoint.address.socket_address.port_value, e.endpoint.hostname,
             e.load_balancing_weight)
            for loc in (cfg.load_assignment.endpoints if cfg.load_assignment else [])
            for e in loc.lb_endpoints
        ]
        panic = cfg.common_lb_config.healthy_panic_threshold
        self.panic_threshold = 50.0 if panic is None else panic.value
        self.panic = False
        self.lb: lb.LoadBalancer = lb.build(cfg, [])
        self.health_checker = (HealthChecker(self, cfg.health_checks[0], store)
                               if cfg.health_checks else None)
        self.outlier = (OutlierDetector(self, cfg.outlier_detection, store)
                        if cfg.outlier_detection else None)
        if cfg.type == "STATIC":
            self._set_hosts(self.endpoints)

    def update_breakers(self) -> None:
        """The *_open gauges: 1 while a circuit breaker is at its limit, as Envoy shows them."""
        b, lim, st = self.breakers, self.limits, self.stats
        b.cx_open.value = int(self.connections >= lim.max_connections)
        b.rq_pending_open.value = int(st.upstream_rq_pending_active.value
                                      >= lim.max_pending_requests)
        b.rq_open.value = int(self.attached >= lim.max_requests)
        b.rq_retry_open.value = int(self.retrying >= lim.max_retries)
        if isinstance(b, RemainingStats):
            b.remaining_cx.value = max(lim.max_connections - self.connections, 0)
            # max_connection_pools is unlimited; Envoy counts a host's pool from its first use
            b.remaining_cx_pools.value = 2**64 - 1 - sum(1 for h in self.hosts if h.cx_total)
            b.remaining_pending.value = max(lim.max_pending_requests
                                            - st.upstream_rq_pending_active.value, 0)
            b.remaining_rq.value = max(lim.max_requests - self.attached, 0)
            b.remaining_retries.value = max(lim.max_retries - self.retrying, 0)

    def record_rq_time(self, ms: float) -> None:
        """``upstream_rq_time``, created on first use as Envoy's router creates it."""
        if self._rq_time is None:
            self._rq_time = self.stats._store.histogram(f"cluster.{self.name}.upstream_rq_time")
        self._rq_time.record(ms)

    def charge(self, host: Host | None, code: int, retried: bool = False) -> None:
        """Counts a response code: ``upstream_rq_<code>`` and its class, or, for a response
        that is retried, the same under ``retry.`` (as Envoy counts them); 5xx on the host."""
        if host is not None and code >= 500:
            host.rq_error += 1
        if retried:
            c = self.stats.counter
            c(f"retry.upstream_rq_{code}").value += 1
            c(f"retry.upstream_rq_{code // 100}xx").value += 1
            c("retry.upstream_rq_completed").value += 1
        else:
            self.stats.count_code(code)
            self.status_counter(code).value += 1

    def status_counter(self, status: int) -> Counter:
        """``upstream_rq_<code>``, looked up once per code."""
        c = self._status_counters.get(status)
        if c is None:
            c = self._status_counters[status] = self.stats.counter(f"upstream_rq_{status}")
        return c

    async def start(self) -> None:
        """Warms the cluster as Envoy does: resolves DNS once and runs a first round of health
        checks before serving; then keeps refreshing and checking."""
        if self.cfg.type != "STATIC" and self.endpoints:
            await self.resolve()
            self._tasks.append(asyncio.ensure_future(self._refresh()))
        self._tasks.append(asyncio.ensure_future(self._expire_idle()))
        if self.outlier is not None:
            self.outlier.start()
        if self.health_checker is not None:
            try:
                await self.health_checker.start()
            except TimeoutError:
                _log.warning("cluster '%s': first health checks did not finish in time",
                             self.name)

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.health_checker is not None:
            self.health_checker.stop()
        if self.outlier is not None:
            self.outlier.stop()
        for h in self.hosts:
            h.pool.close_all()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.dns_refresh_rate)
            await self.resolve()

    async def _expire_idle(self) -> None:
        period = min(max(self.idle_timeout / 4, 0.5), 30.0)
        while True:
            await asyncio.sleep(period)
            for h in self.hosts:
                h.pool.expire(self.idle_timeout)

    async def resolve(self) -> None:
        self.stats.update_attempt.value += 1
        found: list[tuple[str, int, str, int]] = []
        loop = asyncio.get_running_loop()
        ok = True
        for name, port, hostname, weight in self.endpoints:
            addrs: list[str] = []
            for family in _FAMILIES[self.cfg.dns_lookup_family]:
                try:
                    infos = await loop.getaddrinfo(name, port, family=family,
                                                   type=socket.SOCK_STREAM)
                except OSError as e:
                    _log.warning("cluster '%s': DNS resolution of '%s' failed: %s",
                                 self.name, name, e.strerror or e)
                    ok = False
                    continue
                addrs = list(dict.fromkeys(str(i[4][0]) for i in infos))
                if addrs:
                    break
            if self.cfg.type == "LOGICAL_DNS":
                addrs = addrs[:1]
            found.extend((a, port, hostname or name, weight) for a in addrs)
        if ok:
            self.stats.update_success.value += 1
        else:
            self.stats.update_failure.value += 1
        if found or ok:
            self._set_hosts(found)

    def _set_hosts(self, endpoints: Iterable[tuple[str, int, str, int]]) -> None:
        old = {(h.address, h.port): h for h in self.hosts}
        hosts = []
        for address, port, hostname, weight in endpoints:
            h = old.pop((address, port), None) or Host(self, address, port, hostname, weight)
            h.weight = weight
            hosts.append(h)
        if old or len(hosts) != len(self.hosts):
            self.stats.membership_change.value += 1
        for h in old.values():
            h.pool.close_all()
            if h.ejected and self.outlier is not None:
                self.outlier.stats.ejections_active.value -= 1
        self.hosts = hosts
        self.stats.membership_total.value = len(hosts)
        if self.health_checker is not None and self._tasks:
            self.health_checker.sync_hosts()
        self.health_changed()

    def health_changed(self) -> None:
        """Rebuilds the load balancer over the hosts it may use now (and the health gauges)."""
        healthy = [h for h in self.hosts if h.healthy]
        self.stats.membership_healthy.value = len(healthy)
        total = len(self.hosts)
        self.panic = bool(total) and min(100.0, 140.0 * len(healthy) / total) \
            < self.panic_threshold
        self.lb = lb.build(self.cfg, self.hosts if self.panic else healthy)
        store = self.stats._store
        prefix = f"cluster.{self.name}."
        if isinstance(self.lb, lb.RingHash):
            store.gauge(prefix + "ring_hash_lb.size").value = len(self.lb.ring)
            store.gauge(prefix + "ring_hash_lb.min_hashes_per_host").value = self.lb.min_hashes
            store.gauge(prefix + "ring_hash_lb.max_hashes_per_host").value = self.lb.max_hashes
        elif isinstance(self.lb, lb.Maglev):
            store.gauge(prefix + "maglev_lb.min_entries_per_host").value = self.lb.min_entries
            store.gauge(prefix + "maglev_lb.max_entries_per_host").value = self.lb.max_entries

    def choose(self, hash: int | None = None, attempt: int = 0) -> Host | None:
        """Picks a host by the cluster's lb_policy; None when there is none to pick."""
        if self.panic:
            self.stats.lb_healthy_panic.value += 1
        return self.lb.choose(hash, attempt)

    def report(self, host: Host, code: int) -> None:
        """An upstream result for outlier detection (connect failures and resets as 503,
        timeouts as 504)."""
        if self.outlier is not None:
            self.outlier.put_status(host, code)


class ClusterManager:
    """All clusters of a bootstrap, by name.

    Built again by a config reload with the previous manager at hand: a cluster whose config
    did not change is carried over as it is (its pooled connections, health check and outlier
    state stay), as Envoy leaves a cluster alone when CDS sends it unchanged. Clusters with a
    transport socket are always built anew, since their certificates belong to the previous
    config's secret manager.
    """

    def __init__(self, clusters: list[m.Cluster], store: Store,
                 secrets: SecretManager | None = None,
                 previous: ClusterManager | None = None) -> None:
        self.clusters: dict[str, Cluster] = {}
        self.kept: set[str] = set()
        """Names of the clusters carried over from the previous manager (already started)."""
        for c in clusters:
            old = previous.clusters.get(c.name) if previous is not None else None
            if old is not None and old.cfg == c and c.transport_socket is None:
                self.clusters[c.name] = old
                self.kept.add(c.name)
            else:
                self.clusters[c.name] = Cluster(c, store, secrets)

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for n, c in self.clusters.items()
                               if n not in self.kept))

    def stop(self, keep: ClusterManager | None = None) -> None:
        """Stops every cluster, but those that ``keep`` (the next config's manager) took."""
        taken = set(keep.clusters.values()) if keep is not None else set()
        for c in self.clusters.values():
            if c not in taken:
                c.stop()

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)
