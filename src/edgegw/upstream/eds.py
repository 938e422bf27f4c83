"""EDS (``eds_cluster_config.eds_config``): an EDS cluster's endpoints, one
ClusterLoadAssignment followed in a file or from a control plane.

An update changes that cluster's hosts and nothing else: hosts that stay keep their pools,
health and outlier state. It is counted as Envoy counts it: ``cluster.<name>.update_attempt``
at each read, then ``update_success`` (with ``update_no_rebuild`` when the hosts are the same,
``update_empty`` when the file holds no assignment and the hosts stay), or
``update_rejected`` and a warning, the hosts unchanged; ``version`` is the xxHash64 of the
response's ``version_info``. A file refused at start, or a control plane that sends nothing
within ``initial_fetch_timeout``, leaves the cluster without hosts (503), as Envoy starts.
"""

from __future__ import annotations

from collections.abc import Callable

import xxhash

from ..config import model as m
from ..config.subscription import Response, Subscription, Watches
from ..stats import Counter, Gauge, StatSet, Store

Endpoint = tuple[str, int, str, int, int, int]
"""(address, port, hostname, weight, locality, the locality's weight): locality is the index
of the endpoint's group in the load assignment."""
Endpoints = list[Endpoint]


class EdsStats(StatSet):
    """``cluster.<name>.*`` that only an EDS cluster has (``update_attempt`` and
    ``update_success`` are every cluster's)."""

    update_rejected: Counter
    update_no_rebuild: Counter
    update_empty: Counter
    version: Gauge


def endpoints_of(cla: m.ClusterLoadAssignment) -> Endpoints:
    return [(e.endpoint.address.socket_address.address,
             e.endpoint.address.socket_address.port_value, e.endpoint.hostname,
             e.load_balancing_weight, i, loc.load_balancing_weight or 1)
            for i, loc in enumerate(cla.endpoints) for e in loc.lb_endpoints]


class EdsSubscription(Subscription[m.ClusterLoadAssignment]):
    """One EDS cluster's subscription. ``apply`` sets the cluster's hosts and says whether
    they changed."""

    kind, url, noun, model = "EDS", m.ENDPOINTS_TYPE, "cluster", m.ClusterLoadAssignment

    def __init__(self, cluster_name: str, cfg: m.EdsClusterConfig, attempt: Counter,
                 success: Counter, apply: Callable[[Endpoints], bool], store: Store,
                 xds: Watches | None) -> None:
        self.stats = EdsStats(store, f"cluster.{cluster_name}.")
        super().__init__(cfg.eds_config, cfg.service_name or cluster_name,
                         f"cluster '{cluster_name}'", attempt, self.stats.update_rejected, xds,
                         f"cluster.{cluster_name}.", store)
        self.success, self.apply = success, apply

    def name_of(self, resource: m.ClusterLoadAssignment) -> str:
        return resource.cluster_name

    def update(self, response: Response[m.ClusterLoadAssignment]) -> None:
        count = self.counting
        if count:
            self.success.value += 1
            self.stats.version.value = xxhash.xxh64_intdigest(response.version.encode())
        if response.resource is None:
            self.stats.update_empty.value += count
        elif not self.apply(endpoints_of(response.resource)):
            self.stats.update_no_rebuild.value += count
