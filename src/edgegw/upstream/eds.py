"""EDS from a file (``eds_cluster_config.eds_config.path_config_source``): an EDS cluster's
endpoints, from a DiscoveryResponse of one ClusterLoadAssignment, followed as the file
changes.

An update changes that cluster's hosts and nothing else: hosts that stay keep their pools,
health and outlier state. It is counted as Envoy counts it: ``cluster.<name>.update_attempt``
at each read, then ``update_success`` (with ``update_no_rebuild`` when the hosts are the same,
``update_empty`` when the file holds no assignment and the hosts stay), or
``update_rejected`` and a warning, the hosts unchanged; ``version`` is the xxHash64 of the
response's ``version_info``. A file refused at start leaves the cluster without hosts (503),
as Envoy starts.
"""

from __future__ import annotations

from collections.abc import Callable

import xxhash

from .. import log
from ..config import model as m
from ..config.source import file_signature
from ..config.subscription import FileSubscription, SubscriptionError, read_response
from ..stats import Counter, Gauge, StatSet, Store

_log = log.get("upstream")

ASSIGNMENT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

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


class EdsFile(FileSubscription):
    """One EDS cluster's subscription to its file. ``apply`` sets the cluster's hosts and
    says whether they changed."""

    def __init__(self, cluster_name: str, cfg: m.EdsClusterConfig, attempt: Counter,
                 success: Counter, apply: Callable[[Endpoints], bool], store: Store) -> None:
        super().__init__(cfg.eds_config.file)
        self.cluster_name = cluster_name
        self.name = cfg.service_name or cluster_name
        self.attempt, self.success, self.apply = attempt, success, apply
        self.stats = EdsStats(store, f"cluster.{cluster_name}.")

    def load(self) -> None:
        self.seen = file_signature(self.path)
        self.attempt.value += 1
        try:
            response = read_response(self.path, "EDS", ASSIGNMENT_TYPE,
                                     m.ClusterLoadAssignment)
            cla = response.resource
            if cla is not None and cla.cluster_name != self.name:
                raise SubscriptionError(f"Unexpected EDS cluster (expecting {self.name}): "
                                        f"{cla.cluster_name}")
        except SubscriptionError as e:
            self.stats.update_rejected.value += 1
            _log.warning("eds: cluster '%s' update rejected, its endpoints stay: %s",
                         self.cluster_name, e)
            return
        self.success.value += 1
        self.stats.version.value = xxhash.xxh64_intdigest(response.version.encode())
        if cla is None:
            self.stats.update_empty.value += 1
        elif not self.apply(endpoints_of(cla)):
            self.stats.update_no_rebuild.value += 1
