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
from ..config.subscription import Warms, Watches
from ..stats import Store
from ..tls.sds import SecretManager
from . import lb
from .cluster_info import ClusterInfo
from .cluster_stats import RemainingStats
from .eds import EdsSubscription, Endpoint, Endpoints, endpoints_of
from .health import HealthChecker
from .host import Host
from .outlier import OutlierDetector

_log = log.get("upstream")


_FAMILIES = {
    "AUTO": (socket.AF_UNSPEC,), "V4_ONLY": (socket.AF_INET,), "V6_ONLY": (socket.AF_INET6,),
    "V4_PREFERRED": (socket.AF_INET, socket.AF_INET6), "ALL": (socket.AF_UNSPEC,),
}


class Cluster(ClusterInfo):
    """A cluster's hosts, their health and how one is chosen, over its ``ClusterInfo``."""

    def __init__(self, cfg: m.Cluster, store: Store, secrets: SecretManager | None = None,
                 xds: Watches | None = None) -> None:
        super().__init__(cfg, store, secrets)
        self.hosts: list[Host] = []
        self.counted: dict[str, tuple[int, int, int, int, int]] = {}
        """The counters of the previous config's hosts of this cluster, which new hosts at
        the same address carry on."""
        self._tasks: list[asyncio.Task[None]] = []
        self.endpoints = (endpoints_of(cfg.load_assignment)
                          if cfg.load_assignment and cfg.type != "EDS" else [])
        self.eds = (EdsSubscription(self.name, cfg.eds_cluster_config,
                                    self.stats.update_attempt, self.stats.update_success,
                                    self.set_hosts, store, xds)
                    if cfg.eds_cluster_config is not None else None)
        panic = cfg.common_lb_config.healthy_panic_threshold
        self.panic_threshold = 50.0 if panic is None else panic.value
        self.panic = False
        self.lb: lb.LoadBalancer = lb.build(cfg, [])
        self.health_checker = (HealthChecker(self, cfg.health_checks[0], store)
                               if cfg.health_checks else None)
        self.outlier = (OutlierDetector(self, cfg.outlier_detection, store)
                        if cfg.outlier_detection else None)
        if cfg.type == "STATIC":
            self.set_hosts(self.endpoints)

    def subscriptions(self) -> list[Warms]:
        """What it warms on: its EDS, its TLS secrets from a control plane."""
        return [*([self.eds] if self.eds is not None else []),
                *(self.tls.sources.from_control_plane() if self.tls is not None else [])]

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

    async def start(self) -> None:
        """Warms the cluster as Envoy does: resolves DNS once and runs a first round of health
        checks before serving; then keeps refreshing and checking."""
        if self.cfg.type in ("STRICT_DNS", "LOGICAL_DNS") and self.endpoints:
            await self.resolve()
            self._tasks.append(asyncio.ensure_future(self._refresh()))
        if self.eds is not None:
            self.eds.load()
            self.eds.start()
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
        if self.eds is not None:
            self.eds.stop()
        if self.health_checker is not None:
            self.health_checker.stop()
        if self.outlier is not None:
            self.outlier.stop()
        for h in self.hosts:
            h.pool.close_all()
        if self.tls is not None:
            self.tls.close()

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
        found: Endpoints = []
        loop = asyncio.get_running_loop()
        ok = True
        for name, port, hostname, weight, locality, locality_weight in self.endpoints:
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
            found.extend((a, port, hostname or name, weight, locality, locality_weight)
                         for a in addrs)
        if ok:
            self.stats.update_success.value += 1
        else:
            self.stats.update_failure.value += 1
        if found or ok:
            self.set_hosts(found)

    def set_hosts(self, endpoints: Iterable[Endpoint]) -> bool:
        """Makes these the cluster's hosts; a host already there is kept as it is (its pool,
        health and outlier state). Says whether anything changed."""
        old = {(h.address, h.port): h for h in self.hosts}
        before = [h.placed for h in self.hosts]
        hosts = []
        for address, port, hostname, weight, locality, locality_weight in endpoints:
            h = old.pop((address, port), None)
            if h is None:
                h = Host(self, address, port, hostname, weight)
                h.carry(self.counted.get(h.label))
            h.weight, h.locality, h.locality_weight = weight, locality, locality_weight
            hosts.append(h)
        if before == [h.placed for h in hosts]:
            return False
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
        return True

    def health_changed(self) -> None:
        """Rebuilds the load balancer over the hosts it may use now (and the health gauges)."""
        healthy = [h for h in self.hosts if h.healthy]
        self.stats.membership_healthy.value = len(healthy)
        total = len(self.hosts)
        self.panic = bool(total) and min(100.0, 140.0 * len(healthy) / total) \
            < self.panic_threshold
        self.lb = lb.build(self.cfg, self.hosts if self.panic else healthy, self.hosts)
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
    state stay), as Envoy leaves a cluster alone when CDS sends it unchanged. A TLS cluster
    is carried over when its secrets are too (the new secret manager took them over) and the
    certificate files it read are unchanged.
    """

    def __init__(self, clusters: list[m.Cluster], store: Store,
                 secrets: SecretManager | None = None,
                 previous: ClusterManager | None = None, xds: Watches | None = None) -> None:
        self.clusters: dict[str, Cluster] = {}
        self.xds = xds
        """The control plane's mux, for RDS and EDS subscriptions (None without one)."""
        self.kept: set[str] = set()
        """Names of the clusters carried over from the previous manager (already started)."""
        for c in clusters:
            old = previous.clusters.get(c.name) if previous is not None else None
            if old is not None and old.cfg == c and (old.tls is None or old.tls.current(secrets)):
                self.clusters[c.name] = old
                self.kept.add(c.name)
            else:
                new = self.clusters[c.name] = Cluster(c, store, secrets, xds)
                if old is not None:  # its hosts' counters go on, as the cluster's stats do
                    new.counted = {h.label: h.totals() for h in old.hosts}
                    for h in new.hosts:
                        h.carry(new.counted.get(h.label))

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for n, c in self.clusters.items()
                               if n not in self.kept))

    def stop(self, keep: Iterable[ClusterManager] = ()) -> None:
        """Stops every cluster, but those that the managers in ``keep`` took over."""
        taken = {c for other in keep for c in other.clusters.values()}
        for c in self.clusters.values():
            if c not in taken:
                c.stop()

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)
