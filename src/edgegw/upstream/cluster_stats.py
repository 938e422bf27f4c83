"""A cluster's stat sets (``cluster.<name>.*``), kept apart from ``ClusterInfo`` so that it
can be compiled: a ``StatSet`` subclass must stay interpreted, as its fields are filled by
name when it is made."""

from __future__ import annotations

from ..stats import Counter, Gauge, Histogram, StatSet


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
