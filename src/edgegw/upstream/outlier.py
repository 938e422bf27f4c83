"""Outlier detection: passive health from real traffic, as Envoy's outlier detector does it.

Every upstream result is reported per host. Consecutive 5xx (and consecutive gateway
failures: 502, 503, 504) eject a host at once when the count reaches its threshold; success
rate and failure percentage are judged once per ``interval`` over that interval's requests.
An ejected host stays out for ``base_ejection_time`` × the number of times it was ejected
(capped by ``max_ejection_time``), checked at each interval; ``max_ejection_percent`` bounds
how much of the cluster may be out at once. Connect failures, resets and timeouts count as
503/504 (Envoy's default, ``split_external_local_origin_errors: false``).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import TYPE_CHECKING, Protocol

from .. import log
from ..config import model as m
from ..stats import Counter, Gauge, StatSet, Store

if TYPE_CHECKING:
    from .host import Host, HostMonitor

_log = log.get("upstream")


class OutlierStats(StatSet):
    """``cluster.<name>.outlier_detection.*``, as Envoy names them."""

    ejections_enforced_total: Counter
    ejections_total: Counter
    ejections_overflow: Counter
    ejections_consecutive_5xx: Counter
    ejections_enforced_consecutive_5xx: Counter
    ejections_detected_consecutive_5xx: Counter
    ejections_enforced_consecutive_gateway_failure: Counter
    ejections_detected_consecutive_gateway_failure: Counter
    ejections_success_rate: Counter
    ejections_enforced_success_rate: Counter
    ejections_detected_success_rate: Counter
    ejections_enforced_failure_percentage: Counter
    ejections_detected_failure_percentage: Counter
    ejections_active: Gauge


class Watched(Protocol):
    """The cluster as its outlier detector sees it (``Cluster`` is one)."""

    name: str
    hosts: list[Host]

    def health_changed(self) -> None: ...


class OutlierDetector:
    def __init__(self, cluster: Watched, cfg: m.OutlierDetection, store: Store) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.stats = OutlierStats(store, f"cluster.{cluster.name}.outlier_detection.")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # --- results, as the router reports them ----------------------------------------------

    def put_status(self, host: Host, code: int) -> None:
        mon = host.monitor
        mon.total += 1
        if code < 500:
            mon.success += 1
            mon.consecutive_5xx = mon.consecutive_gateway = 0
            return
        cfg = self.cfg
        if code in (502, 503, 504):
            mon.consecutive_gateway += 1
            if mon.consecutive_gateway == cfg.consecutive_gateway_failure:
                self.stats.ejections_detected_consecutive_gateway_failure.value += 1
                mon.consecutive_gateway = 0
                self._eject(host, "consecutive_gateway_failure",
                            cfg.enforcing_consecutive_gateway_failure)
        else:
            mon.consecutive_gateway = 0
        mon.consecutive_5xx += 1
        if mon.consecutive_5xx == cfg.consecutive_5xx:
            self.stats.ejections_detected_consecutive_5xx.value += 1
            self.stats.ejections_consecutive_5xx.value += 1
            mon.consecutive_5xx = 0
            self._eject(host, "consecutive_5xx", cfg.enforcing_consecutive_5xx)

    # --- ejection ---------------------------------------------------------------------------

    def _eject(self, host: Host, kind: str, enforcing: int) -> None:
        if host.ejected:
            return
        hosts = len(self.cluster.hosts)
        active = self.stats.ejections_active.value
        percent = 100.0 * (active + 1) / hosts if hosts else 100.0
        if percent > self.cfg.max_ejection_percent and not (
                self.cfg.always_eject_one_host and active == 0):
            self.stats.ejections_overflow.value += 1
            return
        if random.randrange(100) >= enforcing:
            return
        st = self.stats
        st.ejections_total.value += 1
        st.ejections_enforced_total.value += 1
        st.counter(f"ejections_enforced_{kind}").value += 1
        st.ejections_active.value += 1
        mon = host.monitor
        mon.ejections += 1
        mon.ejected_at = time.monotonic()
        host.ejected = True
        _log.info("cluster '%s': host %s ejected (%s), out for at least %.1fs",
                  self.cluster.name, host.label, kind.replace("_", " "),
                  self._ejection_time(mon))
        self.cluster.health_changed()

    def uneject(self, host: Host) -> None:
        if not host.ejected:
            return
        host.ejected = False
        host.monitor.unejected_at = time.monotonic()
        self.stats.ejections_active.value -= 1
        _log.info("cluster '%s': host %s returns to the pool", self.cluster.name, host.label)
        self.cluster.health_changed()

    def _ejection_time(self, mon: HostMonitor) -> float:
        cfg = self.cfg
        return min(cfg.base_ejection_time * mon.ejections,
                   max(cfg.max_ejection_time, cfg.base_ejection_time))

    # --- the interval timer -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval)
            self.on_interval()

    def on_interval(self) -> None:
        now = time.monotonic()
        for host in list(self.cluster.hosts):
            mon = host.monitor
            if host.ejected:
                jitter = random.uniform(0, self.cfg.max_ejection_time_jitter)
                if now - mon.ejected_at >= self._ejection_time(mon) + jitter:
                    self.uneject(host)
            elif mon.ejections and mon.unejected_at is not None and \
                    now - mon.unejected_at >= self._ejection_time(mon):
                mon.ejections -= 1
        self._success_rate()
        self._failure_percentage()
        for host in self.cluster.hosts:
            host.monitor.total = host.monitor.success = 0

    def _success_rate(self) -> None:
        cfg = self.cfg
        rates = [(h, 100.0 * h.monitor.success / h.monitor.total) for h in self.cluster.hosts
                 if h.monitor.total >= cfg.success_rate_request_volume and h.monitor.total]
        if len(rates) < max(cfg.success_rate_minimum_hosts, 1):
            return
        values = [r for _, r in rates]
        mean = statistics.fmean(values)
        limit = mean - (cfg.success_rate_stdev_factor / 1000.0) * statistics.pstdev(values)
        for host, rate in rates:
            if rate < limit:
                self.stats.ejections_detected_success_rate.value += 1
                self.stats.ejections_success_rate.value += 1
                self._eject(host, "success_rate", cfg.enforcing_success_rate)

    def _failure_percentage(self) -> None:
        cfg = self.cfg
        loads = [(h, 100.0 * (h.monitor.total - h.monitor.success) / h.monitor.total)
                 for h in self.cluster.hosts
                 if h.monitor.total >= cfg.failure_percentage_request_volume and h.monitor.total]
        if len(loads) < max(cfg.failure_percentage_minimum_hosts, 1):
            return
        for host, failed in loads:
            if failed >= cfg.failure_percentage_threshold:
                self.stats.ejections_detected_failure_percentage.value += 1
                self._eject(host, "failure_percentage", cfg.enforcing_failure_percentage)
