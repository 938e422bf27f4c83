"""Envoy's retry policy: which failures are retried, how long to back off, which host next.

Plain values and decisions, no I/O: the stream asks ``Retry`` whether an upstream status or
failure is retriable and how long to wait; it does the sending. Envoy's rules: the route's
policy replaces the virtual host's; ``5xx`` and ``gateway-error`` also cover connect failures
and resets; back-off is fully jittered exponential (base 25 ms, cap 10× base); a response
that has started downstream is never retried; the route timeout covers all attempts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...config import model as m
from ..codec import Headers

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
    header_matchers: tuple[Callable[[Headers], bool], ...] = ()
    reset_headers: tuple[tuple[bytes, str], ...] = ()
    """rate_limited_retry_back_off: (header, SECONDS or UNIX_TIMESTAMP), in order."""
    reset_max: float = 300.0

    @classmethod
    def compile(cls, p: m.RetryPolicy,
                matcher: Callable[[m.HeaderMatcher], Callable[[Headers], bool]]) -> Retry:
        base = p.retry_back_off.base_interval if p.retry_back_off else 0.025
        cap = (p.retry_back_off.max_interval if p.retry_back_off and
               p.retry_back_off.max_interval else base * 10)
        rl = p.rate_limited_retry_back_off
        return cls(frozenset(p.conditions), p.num_retries, p.per_try_timeout or 0.0, base, cap,
                   frozenset(p.retriable_status_codes),
                   any(h.name == m.PREVIOUS_HOSTS for h in p.retry_host_predicate),
                   max(1, p.host_selection_retry_max_attempts),
                   tuple(matcher(h) for h in p.retriable_headers),
                   tuple((h.name.lower().encode("latin-1"), h.format)
                         for h in (rl.reset_headers if rl else [])),
                   rl.max_interval if rl else 300.0)

    def retriable_response(self, status: int, headers: Headers) -> bool:
        """Envoy's rules for a response: a rate-limited answer from an upstream Envoy
        (x-envoy-ratelimited) only under ``envoy-ratelimited``; then status, then headers."""
        c = self.conditions
        if any(k == b"x-envoy-ratelimited" for k, _ in headers):
            return "envoy-ratelimited" in c
        if self.retriable_status(status):
            return True
        return "retriable-headers" in c and any(match(headers) for match in self.header_matchers)

    def reset_interval(self, headers: Headers) -> float | None:
        """The back-off an upstream asked for in the first usable reset header (Retry-After:
        5, or a UNIX time), if rate_limited_retry_back_off names one and it is not over
        max_interval."""
        for name, fmt in self.reset_headers:
            for k, v in headers:
                if k != name:
                    continue
                try:
                    n = float(v.decode("latin-1").strip())
                except ValueError:
                    continue
                wait = n - time.time() if fmt == "UNIX_TIMESTAMP" else n
                if 0 < wait <= self.reset_max:
                    return wait
        return None

    def ratelimited_backoff(self, interval: float) -> float:
        """Envoy's jittered lower bound: at least what was asked, up to half again."""
        return interval + random.uniform(0, interval / 2)

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


def policy_for(route: m.RouteAction | None, vhost: m.VirtualHost,
               matcher: Callable[[m.HeaderMatcher], Callable[[Headers], bool]]
               ) -> Retry | None:
    """The route's retry policy, else the virtual host's (``matcher`` compiles
    retriable_headers)."""
    p = (route.retry_policy if route else None) or vhost.retry_policy
    return Retry.compile(p, matcher) if p is not None else None
