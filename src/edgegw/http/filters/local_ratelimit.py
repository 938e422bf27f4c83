"""envoy.filters.http.local_ratelimit: a token bucket in front of the routes.

As in Envoy: the bucket starts full (``max_tokens``) and refills continuously at
``tokens_per_fill`` per ``fill_interval``; each request takes a token. The filter does nothing unless
``filter_enabled`` says so, and only refuses requests when ``filter_enforced`` does too (an
unenforced limit just counts, and adds ``request_headers_to_add_when_not_enforced``). A refused
request gets 429 (or ``status``) with body ``local_rate_limited`` and flag RL. A route's or
virtual host's ``typed_per_filter_config`` replaces the filter's settings and has a bucket of
its own; ``local_rate_limit_per_downstream_connection`` gives each connection its own bucket.
Stats: ``<stat_prefix>.http_local_rate_limit.{enabled,ok,rate_limited,enforced}``.
"""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING

from ...config import model as m
from ...stats import Counter, StatSet, Store
from ..codec import Headers
from ..filter import register
from ..router.header_parser import HeaderOps, header_ops
from ..stream_info import ResponseFlag

if TYPE_CHECKING:
    from ..filter import FilterCallbacks


class LocalRateLimitStats(StatSet):
    """``<stat_prefix>.http_local_rate_limit.*``."""

    enabled: Counter
    ok: Counter
    rate_limited: Counter
    enforced: Counter


class TokenBucket:
    """Envoy's (atomic) token bucket: refilled continuously at tokens_per_fill per
    fill_interval, never above max_tokens; it starts full."""

    def __init__(self, cfg: m.TokenBucket) -> None:
        self.max = cfg.max_tokens
        self.rate = cfg.tokens_per_fill / cfg.fill_interval
        self.tokens = float(cfg.max_tokens)
        self.at = time.monotonic()

    def _fill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.max), self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self) -> bool:
        self._fill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def remaining(self) -> int:
        return int(self.tokens)

    def reset_after(self) -> int:
        """Seconds until a token is there again (x-ratelimit-reset); 0 while one is."""
        self._fill()
        return 0 if self.tokens >= 1 else math.ceil((1 - self.tokens) / self.rate)


def _on(p: m.RuntimeFractionalPercent | None) -> bool:
    return p is not None and random.random() < p.default_value.fraction


class _Limit:
    """One compiled LocalRateLimit config (the filter's own, or a route's)."""

    def __init__(self, cfg: m.LocalRateLimit, store: Store) -> None:
        self.cfg = cfg
        self.stats = LocalRateLimitStats(store, f"{cfg.stat_prefix}.http_local_rate_limit.")
        self.bucket = TokenBucket(cfg.token_bucket) if cfg.token_bucket else None
        self.status = cfg.status.code if cfg.status else 429
        self.response_ops = header_ops(cfg.response_headers_to_add, [])
        self.request_ops: HeaderOps = header_ops(cfg.request_headers_to_add_when_not_enforced,
                                                 [])

    def bucket_for(self, s: FilterCallbacks) -> TokenBucket | None:
        if self.bucket is None or not self.cfg.local_rate_limit_per_downstream_connection:
            return self.bucket
        buckets = s.conn.buckets
        b = buckets.get(id(self))
        if b is None:
            assert self.cfg.token_bucket is not None
            b = buckets[id(self)] = TokenBucket(self.cfg.token_bucket)
        return b


@register(m.LocalRateLimit)
class LocalRateLimitFilter:
    def __init__(self, cfg: m.LocalRateLimit, store: Store, hcm_prefix: str) -> None:
        self.store = store
        self.own = _Limit(cfg, store)
        self.per_route: dict[int, _Limit] = {}

    def _limit(self, cfg: object) -> _Limit:
        if not isinstance(cfg, m.LocalRateLimit):
            return self.own
        limit = self.per_route.get(id(cfg))
        if limit is None:
            limit = self.per_route[id(cfg)] = _Limit(cfg, self.store)
        return limit

    def decode_headers(self, s: FilterCallbacks, cfg: object) -> bool:
        limit = self._limit(cfg)
        bucket = limit.bucket_for(s)
        if bucket is None or not _on(limit.cfg.filter_enabled):
            return True
        st = limit.stats
        st.enabled.value += 1
        if limit.cfg.enable_x_ratelimit_headers == "DRAFT_VERSION_03":
            s.add_response_hook(lambda headers: self._x_headers(headers, limit, bucket))
        if bucket.take():
            st.ok.value += 1
            return True
        st.rate_limited.value += 1
        if not _on(limit.cfg.filter_enforced):
            limit.request_ops.apply(s.headers)
            return True
        st.enforced.value += 1
        s.info.add_flag(ResponseFlag.RL)
        headers: Headers = []
        limit.response_ops.apply(headers)
        s.send_local_reply(limit.status, b"local_rate_limited", "local_rate_limited",
                           extra=headers)
        return False

    @staticmethod
    def _x_headers(headers: Headers, limit: _Limit,
                   bucket: TokenBucket) -> None:
        headers += [(b"x-ratelimit-limit", b"%d" % bucket.max),
                    (b"x-ratelimit-remaining", b"%d" % bucket.remaining()),
                    (b"x-ratelimit-reset", b"%d" % bucket.reset_after())]
