"""envoy.filters.http.fault: injected delays and aborts, to rehearse a backend's failures.

As in Envoy: a fault applies when the request matches ``headers`` (and ``upstream_cluster``,
when set, names the route's cluster) and wins its percentage roll. ``header_delay`` and
``header_abort`` take the delay (ms) and the status from ``x-envoy-fault-delay-request`` and
``x-envoy-fault-abort-request``; ``x-envoy-fault-*-request-percentage`` then replaces the
percentage's numerator. A delay comes first; the abort is decided when it ends. Aborts answer
``fault filter abort`` with flag FI; delays set flag DI. ``max_active_faults`` caps faults in
flight (``faults_overflow``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...config import model as m
from ...matchers import first_header, header_matcher
from ...stats import Counter, Gauge, StatSet, Store
from ..codec import Headers
from ..filter import register
from ..router.table import Forward
from ..stream_info import ResponseFlag

if TYPE_CHECKING:
    from ..filter import FilterCallbacks


class FaultStats(StatSet):
    """``http.<stat_prefix>.fault.*``."""

    delays_injected: Counter
    aborts_injected: Counter
    faults_overflow: Counter
    active_faults: Gauge


_SCALE = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def _roll(pct: m.FractionalPercent, header: bytes | None) -> bool:
    numerator = pct.numerator
    if header is not None:
        try:
            numerator = int(header)
        except ValueError:
            return False
    scale = _SCALE[pct.denominator]
    return random.randrange(scale) < min(numerator, scale)


@register(m.HTTPFault)
class FaultFilter:
    def __init__(self, cfg: m.HTTPFault, store: Store, hcm_prefix: str) -> None:
        self.cfg = cfg
        self.stats = FaultStats(store, f"http.{hcm_prefix}.fault.")
        self.matchers: dict[int, list[Callable[[Headers], bool]]] = {
            id(cfg): [header_matcher(h) for h in cfg.headers]}
        """Compiled ``headers`` of this filter's config and of each per-route one, by id."""

    def decode_headers(self, s: FilterCallbacks, cfg: object) -> bool:
        """True to go on with the next filter; False when this filter replied or paused."""
        c = cfg if isinstance(cfg, m.HTTPFault) else self.cfg
        matchers = self.matchers.get(id(c))
        if matchers is None:
            matchers = self.matchers[id(c)] = [header_matcher(h) for h in c.headers]
        if not all(match(s.headers) for match in matchers):
            return True
        if c.upstream_cluster:
            action = s.info.route.action if s.info.route is not None else None
            if not isinstance(action, Forward) or action.cluster != c.upstream_cluster:
                return True
        delay = self._delay(c, s)
        abort = c.abort is not None
        if not delay and not abort:
            return True
        st = self.stats
        if c.max_active_faults is not None and st.active_faults.value >= c.max_active_faults:
            st.faults_overflow.value += 1
            return True
        if delay:
            st.delays_injected.value += 1
            st.active_faults.value += 1
            s.info.add_flag(ResponseFlag.DI)
            s.pause_for(delay, lambda: self._after_delay(s, c, counted=True),
                        self._abandoned)
            return False
        return self._abort(s, c, counted=False)

    def _delay(self, c: m.HTTPFault, s: FilterCallbacks) -> float:
        d = c.delay
        if d is None:
            return 0.0
        if d.header_delay is not None:
            raw = first_header(s.headers, b"x-envoy-fault-delay-request")
            if raw is None or not raw.isdigit():
                return 0.0
            ms = int(raw)
            pct_header = first_header(s.headers, b"x-envoy-fault-delay-request-percentage")
        else:
            ms = int((d.fixed_delay or 0) * 1000)
            pct_header = None
        return ms / 1000 if ms > 0 and _roll(d.percentage, pct_header) else 0.0

    def _abandoned(self) -> None:
        self.stats.active_faults.value -= 1

    def _after_delay(self, s: FilterCallbacks, c: m.HTTPFault, counted: bool) -> bool:
        go_on = self._abort(s, c, counted)
        if go_on:
            self.stats.active_faults.value -= 1
        return go_on

    def _abort(self, s: FilterCallbacks, c: m.HTTPFault, counted: bool) -> bool:
        a = c.abort
        status = 0
        if a is not None:
            if a.header_abort is not None:
                raw = first_header(s.headers, b"x-envoy-fault-abort-request")
                status = int(raw) if raw is not None and raw.isdigit() else 0
                if not 200 <= status < 600:
                    status = 0
                pct_header = first_header(s.headers, b"x-envoy-fault-abort-request-percentage")
            else:
                status = a.http_status or 0
                pct_header = None
            if status and not _roll(a.percentage, pct_header):
                status = 0
        if not status:
            return True
        st = self.stats
        st.aborts_injected.value += 1
        if counted:
            st.active_faults.value -= 1
        s.info.add_flag(ResponseFlag.FI)
        s.send_local_reply(status, b"fault filter abort", "fault_filter_abort")
        return False
