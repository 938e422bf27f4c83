"""Envoy's retry policy: which failures are retried, how long to back off, which host next.

Plain values and decisions, no I/O: the stream asks ``Retry`` whether an upstream status or
failure is retriable and how long to wait; it does the sending. Envoy's rules: the route's
policy replaces the virtual host's; ``5xx`` and ``gateway-error`` also cover connect failures
and resets; back-off is fully jittered exponential (base 25 ms, cap 10× base); a response
that has started downstream is never retried; the route timeout covers all attempts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..config import model as m

RETRY_BUFFER_LIMIT = 1024 * 1024
"""Bodies up to this size are kept for replay; a larger body turns retries off (Envoy)."""


@dataclass(frozen=True)
class Retry:
    conditions: frozenset[str]
    num_retries: int
    per_try_timeout: float
    base: float
    cap: float
    status_codes: frozenset[int]
    previous_hosts: bool
    host_attempts: int

    @classmethod
    def compile(cls, p: m.RetryPolicy) -> Retry:
        base = p.retry_back_off.base_interval if p.retry_back_off else 0.025
        cap = (p.retry_back_off.max_interval if p.retry_back_off and
               p.retry_back_off.max_interval else base * 10)
        return cls(frozenset(p.conditions), p.num_retries, p.per_try_timeout or 0.0, base, cap,
                   frozenset(p.retriable_status_codes),
                   any(h.name == m.PREVIOUS_HOSTS for h in p.retry_host_predicate),
                   max(1, p.host_selection_retry_max_attempts))

    def retriable_status(self, status: int) -> bool:
        c = self.conditions
        if status >= 500 and "5xx" in c:
            return True
        if status in (502, 503, 504) and "gateway-error" in c:
            return True
        if status == 409 and "retriable-4xx" in c:
            return True
        return "retriable-status-codes" in c and status in self.status_codes

    def retriable_failure(self, connect_failure: bool) -> bool:
        """A connect failure, or a reset before any response byte (or a per-try timeout)."""
        c = self.conditions
        if c & {"5xx", "gateway-error", "reset"}:
            return True
        return connect_failure and "connect-failure" in c

    def backoff(self, retry_number: int) -> float:
        """Envoy's fully jittered exponential back-off for the n-th retry (1-based)."""
        ceiling = min(((1 << retry_number) - 1) * self.base, self.cap)
        return random.uniform(0, ceiling)


def policy_for(route: m.RouteAction | None, vhost: m.VirtualHost) -> Retry | None:
    """The route's retry policy, else the virtual host's."""
    p = (route.retry_policy if route else None) or vhost.retry_policy
    return Retry.compile(p) if p is not None else None
