"""envoy.filters.http.rbac: the RBAC engine (``edgegw.rbac``) on each request.

A refused request gets ``403 RBAC: access denied`` (no response flag: Envoy 1.40 sets none,
the details say ``rbac_access_denied_matched_policy[...]``). A route's ``RBACPerRoute``
replaces the rules, or turns the filter off when it has none. Stats:
``http.<stat_prefix>.rbac.*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import model as m
from ...rbac import RbacStats, Request, Rules, ShadowStats, join
from ...stats import Store
from ..filter import register

if TYPE_CHECKING:
    from ..filter import FilterCallbacks


@register(m.RBAC)
class RbacFilter:
    def __init__(self, cfg: m.RBAC, store: Store, hcm_prefix: str) -> None:
        prefix = f"http.{hcm_prefix}.rbac."
        self.own = Rules(cfg.rules, cfg.shadow_rules)
        self.stats = RbacStats(store, join(prefix, cfg.rules_stat_prefix))
        """One set of counters for the filter, per-route rules included (as Envoy)."""
        self.shadow_stats = ShadowStats(store, join(prefix, cfg.shadow_rules_stat_prefix))
        self.per_route: dict[int, Rules | None] = {}
        """Each route's RBACPerRoute, compiled at its first request."""

    def _for(self, route_cfg: object) -> Rules | None:
        if not isinstance(route_cfg, m.RBACPerRoute):
            return self.own
        key = id(route_cfg)
        if key not in self.per_route:
            rbac = route_cfg.rbac
            self.per_route[key] = Rules(rbac.rules, rbac.shadow_rules) if rbac else None
        return self.per_route[key]

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        c = self._for(route_cfg)
        if c is None:
            return True
        ok, name = c.check(Request.of_stream(cb), self.stats, self.shadow_stats)
        if ok:
            return True
        cb.send_local_reply(403, b"RBAC: access denied",
                            f"rbac_access_denied_matched_policy[{name or 'none'}]")
        return False
