"""envoy.filters.network.rbac: a whole connection allowed or refused by who sends it (its
addresses, its client certificate) and where it goes (destination_port), before the HTTP
connection manager or TCP proxy sees a byte.

Before an HTTP connection manager the check runs on the first bytes, as Envoy's does.
*edgegw's difference* before a TCP proxy: it runs as the connection is accepted (after TLS
and any PROXY header), before the upstream is connected; Envoy checks on the first byte the
client sends, so a server-speaks-first backend (SSH, SMTP) could greet a client Envoy then
refuses; here it never does. Stats:
``<stat_prefix>.rbac.allowed|denied`` and ``shadow_allowed|shadow_denied``.
"""

from __future__ import annotations

from ..config import model as m
from ..rbac import RbacStats, Request, Rules, ShadowStats, join
from ..stats import Store


class NetworkRbac:
    def __init__(self, cfg: m.NetworkRbac, store: Store) -> None:
        prefix = f"{cfg.stat_prefix}.rbac."
        self.rules = Rules(cfg.rules, cfg.shadow_rules)
        self.stats = RbacStats(store, prefix)
        self.shadow_stats = ShadowStats(store, join(prefix, cfg.shadow_rules_stat_prefix))

    def allows(self, conn: object) -> bool:
        """Whether the connection may go on (counted as Envoy counts it)."""
        ok, _ = self.rules.check(Request.of_connection(conn), self.stats, self.shadow_stats)
        return ok
