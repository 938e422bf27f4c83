"""``tcp_proxy``: a filter chain's bytes to a cluster, both ways (Envoy's TcpProxy)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Duration, Msg, TypedMsg, UInt32, one_of
from .hcm import AccessLog


class TcpClusterWeight(Msg):
    name: str = Field(min_length=1)
    weight: UInt32 = Field(ge=1)


class TcpWeightedClusters(Msg):
    clusters: list[TcpClusterWeight] = Field(min_length=1)


class SourceIp(Msg):
    pass


class TcpHashPolicy(Msg):
    """``type.v3.HashPolicy``: the client's address (for ring-hash and Maglev clusters)."""

    source_ip: SourceIp


class TcpProxy(TypedMsg):
    stat_prefix: str = Field(min_length=1)
    cluster: str = ""
    weighted_clusters: TcpWeightedClusters | None = None
    idle_timeout: Duration | None = None
    """Envoy's default: 1 h; 0s disables it."""
    max_connect_attempts: UInt32 | None = Field(default=None, ge=1)
    access_log: list[AccessLog] = []
    hash_policy: list[TcpHashPolicy] = Field(default=[], max_length=1)

    @model_validator(mode="after")
    def _cluster(self) -> TcpProxy:
        one_of(self, ("cluster", "weighted_clusters"))
        return self
