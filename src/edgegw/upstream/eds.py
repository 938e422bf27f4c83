"""EDS from a file (``eds_cluster_config.eds_config.path_config_source``): an EDS cluster's
endpoints, read from a DiscoveryResponse of one ClusterLoadAssignment and read again when the
file changes (checked by stat twice a second, as the config file is).

An update changes that cluster's hosts and nothing else: hosts that stay keep their pools,
health and outlier state. It is counted as Envoy counts it: ``cluster.<name>.update_attempt``
at each read, then ``update_success`` (with ``update_no_rebuild`` when the hosts are the same,
``update_empty`` when the file holds no assignment and the hosts stay), or
``update_rejected`` and a warning, the hosts unchanged; ``version`` is the xxHash64 of the
response's ``version_info``. A file refused at start leaves the cluster without hosts (503),
as Envoy starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import xxhash
import yaml
from pydantic import ValidationError

from .. import log
from ..config import model as m
from ..config.source import FileSignature, file_signature
from ..stats import Counter, Gauge, StatSet, Store

_log = log.get("upstream")

ASSIGNMENT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
POLL = 0.5

Endpoints = list[tuple[str, int, str, int]]
"""(address, port, hostname, weight) of each endpoint, in order."""


class EdsError(ValueError):
    """Why an EDS file is refused (its previous endpoints stay)."""


class EdsStats(StatSet):
    """``cluster.<name>.*`` that only an EDS cluster has (``update_attempt`` and
    ``update_success`` are every cluster's)."""

    update_rejected: Counter
    update_no_rebuild: Counter
    update_empty: Counter
    version: Gauge


@dataclass(frozen=True)
class Response:
    version: str
    assignment: m.ClusterLoadAssignment | None
    """None: the response holds no assignment (Envoy keeps the hosts it has)."""


def endpoints_of(cla: m.ClusterLoadAssignment) -> Endpoints:
    return [(e.endpoint.address.socket_address.address,
             e.endpoint.address.socket_address.port_value, e.endpoint.hostname,
             e.load_balancing_weight)
            for loc in cla.endpoints for e in loc.lb_endpoints]


def read_eds_file(path: str, name: str) -> Response:
    """The response in the EDS file at ``path`` for the cluster (or service) ``name``."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise EdsError(f"unable to read EDS file '{path}': {e.strerror}") from None
    except yaml.YAMLError as e:
        raise EdsError(f"EDS file '{path}' is not valid YAML/JSON: {e}") from None
    resources = doc.get("resources") if isinstance(doc, dict) else None
    if not isinstance(resources, list):
        raise EdsError(f"EDS file '{path}' needs a 'resources' list")
    version = str(doc.get("version_info") or "")
    if not resources:
        return Response(version, None)
    if len(resources) != 1:
        raise EdsError(f"Unexpected EDS resource length: {len(resources)} (expected 1)")
    res = dict(resources[0]) if isinstance(resources[0], dict) else {}
    if res.pop("@type", None) != ASSIGNMENT_TYPE:
        raise EdsError(f"EDS file '{path}': resource \"@type\" must be {ASSIGNMENT_TYPE}")
    try:
        cla = m.ClusterLoadAssignment.model_validate(res)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EdsError(f"EDS file '{path}': {where}: {first['msg']}") from None
    if cla.cluster_name != name:
        raise EdsError(f"Unexpected EDS cluster (expecting {name}): {cla.cluster_name}")
    return Response(version, cla)


class EdsFile:
    """One EDS cluster's subscription to its file. ``apply`` sets the cluster's hosts and
    says whether they changed."""

    def __init__(self, cluster_name: str, cfg: m.EdsClusterConfig, attempt: Counter,
                 success: Counter, apply: Callable[[Endpoints], bool], store: Store) -> None:
        self.cluster_name = cluster_name
        self.path = cfg.eds_config.file
        self.name = cfg.service_name or cluster_name
        self.attempt, self.success, self.apply = attempt, success, apply
        self.stats = EdsStats(store, f"cluster.{cluster_name}.")
        self.seen: FileSignature | None = None

    def load(self) -> None:
        self.seen = file_signature(self.path)
        self.attempt.value += 1
        try:
            response = read_eds_file(self.path, self.name)
        except EdsError as e:
            self.stats.update_rejected.value += 1
            _log.warning("eds: cluster '%s' update rejected, its endpoints stay: %s",
                         self.cluster_name, e)
            return
        self.success.value += 1
        self.stats.version.value = xxhash.xxh64_intdigest(response.version.encode())
        if response.assignment is None:
            self.stats.update_empty.value += 1
        elif not self.apply(endpoints_of(response.assignment)):
            self.stats.update_no_rebuild.value += 1

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            if file_signature(self.path) != self.seen:
                await asyncio.sleep(POLL)  # let a writer finish
                self.load()
