"""One upstream address of a cluster (Envoy's Host): its pool, health flags and counters."""

from __future__ import annotations

from ..config import model as m
from .cluster_info import ClusterInfo
from .pool import Pool


class HostMonitor:
    """What the detector knows of one host."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "total", "success", "ejections",
                 "ejected_at", "unejected_at")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.total = 0
        """Requests in the current interval (for success rate and failure percentage)."""
        self.success = 0
        self.ejections = 0
        """Ejection time multiplier: up by one per ejection, down while the host behaves."""
        self.ejected_at = 0.0
        self.unejected_at: float | None = None


class Host:
    """One upstream address of a cluster, with its pool and counters."""

    def __init__(self, cluster: ClusterInfo, address: str, port: int, hostname: str,
                 weight: int = 1) -> None:
        self.cluster = cluster
        self.address = address
        self.port = port
        self.weight = weight
        self.locality = 0
        """The index of the host's group (locality) in the cluster's load assignment."""
        self.locality_weight = 1
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

    def totals(self) -> tuple[int, int, int, int, int]:
        return (self.cx_total, self.cx_connect_fail, self.rq_total, self.rq_error,
                self.rq_timeout)

    def carry(self, totals: tuple[int, int, int, int, int] | None) -> None:
        """Goes on counting from the ``totals`` of the same address's host in the previous
        config (a reload does not zero /clusters or the status page, nor does it zero stats)."""
        if totals is not None:
            (self.cx_total, self.cx_connect_fail, self.rq_total, self.rq_error,
             self.rq_timeout) = totals

    @property
    def placed(self) -> tuple[str, int, int, int, int]:
        """What service discovery says of the host: a change rebuilds the balancer."""
        return (self.address, self.port, self.weight, self.locality, self.locality_weight)

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
