"""RDS (``http_connection_manager.rds``): one connection manager's route table, one
RouteConfiguration followed in a file or from a control plane.

A new version is swapped in for the requests that start after it; a request under way keeps
the route it was given, and nothing else is rebuilt. Counted as Envoy counts it, under
``http.<stat_prefix>.rds.<route_config_name>.``: ``update_attempt`` at each read, then
``update_success`` (and ``config_reload`` when the routes changed, ``update_empty`` for a
response without resources, which keeps them) or ``update_rejected`` and a warning, the
routes unchanged; ``version`` is the xxHash64 of ``version_info``. A file refused at start, or
a control plane that sends nothing within ``initial_fetch_timeout``, leaves the connection
manager without routes (404), as Envoy starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import xxhash

from ..config import model as m
from ..config.subscription import Response, Subscription, Watches
from ..stats import Counter, Gauge, StatSet, Store
from .router.table import RouteTable, compile_routes


class RdsStats(StatSet):
    update_attempt: Counter
    update_success: Counter
    update_rejected: Counter
    update_empty: Counter
    config_reload: Counter
    version: Gauge


class RdsSubscription(Subscription[m.RouteConfiguration]):
    """One connection manager's route subscription; ``apply`` swaps its table."""

    kind, url, noun, model = "RDS", m.ROUTES_TYPE, "configuration", m.RouteConfiguration

    def __init__(self, cfg: m.Rds, stat_prefix: str, store: Store,
                 apply: Callable[[RouteTable], None], xds: Watches | None) -> None:
        name = cfg.route_config_name
        self.stats = RdsStats(store, f"http.{stat_prefix}.rds.{name}.")
        super().__init__(cfg.config_source, name, f"route config '{name}'",
                         self.stats.update_attempt, self.stats.update_rejected, xds,
                         f"http.{stat_prefix}.rds.{name}.", store)
        self.apply = apply
        self.current: m.RouteConfiguration | None = None
        self.version = ""
        self.raw: dict[str, Any] = {}
        """The route configuration in use as it was given (for /config_dump)."""
        self.updated = 0.0

    def name_of(self, resource: m.RouteConfiguration) -> str:
        return resource.name

    def update(self, response: Response[m.RouteConfiguration]) -> None:
        count = self.counting
        if count:
            self.stats.update_success.value += 1
            self.stats.version.value = xxhash.xxh64_intdigest(response.version.encode())
        rc = response.resource
        if rc is None:
            self.stats.update_empty.value += count
            return
        if rc != self.current:  # (an unchanged one keeps the version that brought it)
            self.current = rc
            self.version, self.raw, self.updated = response.version, response.raw, time.time()
            self.apply(compile_routes(rc))
            self.stats.config_reload.value += count
