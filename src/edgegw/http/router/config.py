"""What every router of one connection manager shares (Envoy's router FilterConfig)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from ...stats import Counter, StatSet, Store
from ..codec import HOP_BY_HOP

if TYPE_CHECKING:
    from ...upstream.cluster import ClusterManager


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class RouterStats(StatSet):
    """Envoy's router stats, under ``http.<stat_prefix>.``."""

    no_route: Counter
    no_cluster: Counter
    rq_total: Counter
    rq_direct_response: Counter
    rq_redirect: Counter


class RouterConfig:
    """The clusters, the router's stats and ``suppress_envoy_headers``."""

    def __init__(self, clusters: ClusterManager, store: Store, stat_prefix: str,
                 suppress_envoy_headers: bool, server_header: str) -> None:
        self.clusters = clusters
        self.stats = RouterStats(store, f"http.{stat_prefix}.")
        self.suppress_envoy_headers = suppress_envoy_headers
        self.response_drop = HOP_BY_HOP | ({b"server"} if server_header == "OVERWRITE"
                                           else frozenset())
        """What of the upstream's response headers never reaches the client: the
        hop-by-hop ones, and Server when the connection manager writes its own."""
