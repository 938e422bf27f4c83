"""Clusters: endpoints, load balancing, circuit breakers, health checks, outlier detection
and upstream protocol options."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from .base import (
    HTTP_OPTIONS_TYPE,
    Bool,
    Duration,
    Int,
    Msg,
    T,
    TypedMsg,
    UInt32,
    by_type,
    one_of,
    typed_as,
)
from .core import (
    Address,
    ConfigSource,
    HeaderValueOption,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    Metadata,
)
from .tls import UpstreamTransportSocket


class Endpoint(Msg):
    address: Address
    hostname: str = ""


class LbEndpoint(Msg):
    endpoint: Endpoint
    load_balancing_weight: UInt32 = Field(default=1, ge=1)
    metadata: Metadata | None = None
    """Kept and acted on by nothing: Envoy reads it for subset balancing and transport
    socket matches, which edgegw refuses."""


class Locality(Msg):
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


class LocalityLbEndpoints(Msg):
    lb_endpoints: list[LbEndpoint] = []
    locality: Locality | None = None
    """Where the endpoints are (a name; Envoy's zone-aware routing, which edgegw lacks, reads
    it too). Each group of endpoints is a locality to locality-weighted balancing."""
    load_balancing_weight: UInt32 | None = Field(default=None, ge=1)
    """The locality's weight, read by locality-weighted balancing (else by nothing, as in
    Envoy)."""
    metadata: Metadata | None = None
    """Kept and acted on by nothing, as an endpoint's."""


class ClusterLoadAssignment(Msg):
    cluster_name: str = ""
    endpoints: list[LocalityLbEndpoints] = []


class ExplicitHttpConfig(Msg):
    http_protocol_options: dict[str, Any] | None = Field(default=None, max_length=0)
    http2_protocol_options: Http2ProtocolOptions | None = None

    @model_validator(mode="after")
    def _one(self) -> ExplicitHttpConfig:
        one_of(self, ("http_protocol_options", "http2_protocol_options"))
        return self


class AutoHttpConfig(Msg):
    """HTTP/2 when the upstream's TLS picks ``h2`` by ALPN, else HTTP/1.1."""

    http_protocol_options: dict[str, Any] | None = Field(default=None, max_length=0)
    http2_protocol_options: Http2ProtocolOptions | None = None


class UpstreamHttpProtocolOptions(Msg):
    """``extensions.upstreams.http.v3.HttpProtocolOptions``: the protocol a cluster speaks."""

    common_http_protocol_options: HttpProtocolOptions | None = None
    explicit_http_config: ExplicitHttpConfig | None = None
    auto_config: AutoHttpConfig | None = None

    @model_validator(mode="after")
    def _one(self) -> UpstreamHttpProtocolOptions:
        one_of(self, ("explicit_http_config", "auto_config"), required=False)
        return self


class Thresholds(Msg):
    priority: Literal["DEFAULT", "HIGH"] = "DEFAULT"
    max_connections: UInt32 = Field(default=1024, ge=0)
    max_pending_requests: UInt32 = Field(default=1024, ge=0)
    max_requests: UInt32 = Field(default=1024, ge=0)
    max_retries: UInt32 = Field(default=3, ge=0)
    track_remaining: Bool = False


class CircuitBreakers(Msg):
    thresholds: list[Thresholds] = []

    @property
    def default(self) -> Thresholds:
        return next((t for t in self.thresholds if t.priority == "DEFAULT"), Thresholds())


class Int64Range(Msg):
    """[start, end): a range of HTTP statuses."""

    start: Int = 0
    end: Int = 0


class HttpHealthCheck(Msg):
    host: str = ""
    path: str = Field(min_length=1)
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"] = "GET"
    request_headers_to_add: list[HeaderValueOption] = Field(default=[], max_length=1000)
    request_headers_to_remove: list[str] = []
    expected_statuses: list[Int64Range] = []
    retriable_statuses: list[Int64Range] = []

    @model_validator(mode="after")
    def _ranges(self) -> HttpHealthCheck:
        for r in (*self.expected_statuses, *self.retriable_statuses):
            if not 100 <= r.start < r.end <= 600:
                raise ValueError(f"status range [{r.start}, {r.end}) must lie within [100, 600)")
        return self


class Payload(Msg):
    text: str | None = None
    """Hex-encoded bytes, as Envoy writes them."""

    @model_validator(mode="after")
    def _hex(self) -> Payload:
        try:
            bytes.fromhex(self.text or "")
        except ValueError:
            raise ValueError(f"text '{self.text}' is not hex-encoded bytes") from None
        return self


class TcpHealthCheck(Msg):
    send: Payload | None = None
    receive: list[Payload] = []


class HealthCheck(Msg):
    """Active health checking of every host of a cluster (Envoy's core.v3.HealthCheck)."""

    timeout: Duration = Field(gt=0)
    interval: Duration = Field(gt=0)
    initial_jitter: Duration = 0.0
    interval_jitter: Duration = 0.0
    interval_jitter_percent: UInt32 = Field(default=0, ge=0)
    unhealthy_threshold: UInt32 = Field(ge=0)
    healthy_threshold: UInt32 = Field(ge=0)
    reuse_connection: Bool = True
    no_traffic_interval: Duration = Field(default=60.0, gt=0)
    no_traffic_healthy_interval: Duration | None = Field(default=None, gt=0)
    unhealthy_interval: Duration | None = Field(default=None, gt=0)
    unhealthy_edge_interval: Duration | None = Field(default=None, gt=0)
    healthy_edge_interval: Duration | None = Field(default=None, gt=0)
    always_log_health_check_failures: Bool = False
    http_health_check: HttpHealthCheck | None = None
    tcp_health_check: TcpHealthCheck | None = None

    @model_validator(mode="after")
    def _kind(self) -> HealthCheck:
        one_of(self, ("http_health_check", "tcp_health_check"))
        return self


class OutlierDetection(Msg):
    """Passive health: hosts that keep failing leave the pool for a while (Envoy's
    cluster.v3.OutlierDetection, defaults included)."""

    consecutive_5xx: UInt32 = Field(default=5, ge=0)
    consecutive_gateway_failure: UInt32 = Field(default=5, ge=0)
    interval: Duration = Field(default=10.0, gt=0)
    base_ejection_time: Duration = Field(default=30.0, gt=0)
    max_ejection_time: Duration = Field(default=300.0, gt=0)
    max_ejection_time_jitter: Duration = 0.0
    max_ejection_percent: UInt32 = Field(default=10, ge=0, le=100)
    enforcing_consecutive_5xx: UInt32 = Field(default=100, ge=0, le=100)
    enforcing_consecutive_gateway_failure: UInt32 = Field(default=0, ge=0, le=100)
    enforcing_success_rate: UInt32 = Field(default=100, ge=0, le=100)
    success_rate_minimum_hosts: UInt32 = Field(default=5, ge=0)
    success_rate_request_volume: UInt32 = Field(default=100, ge=0)
    success_rate_stdev_factor: UInt32 = Field(default=1900, ge=0)
    failure_percentage_threshold: UInt32 = Field(default=85, ge=0, le=100)
    enforcing_failure_percentage: UInt32 = Field(default=0, ge=0, le=100)
    failure_percentage_minimum_hosts: UInt32 = Field(default=5, ge=0)
    failure_percentage_request_volume: UInt32 = Field(default=50, ge=0)
    split_external_local_origin_errors: Literal[False] = False
    successful_active_health_check_uneject_host: Bool = True
    always_eject_one_host: Bool = False


class Percent(Msg):
    value: float = Field(ge=0, le=100)


class ConsistentHashingLbConfig(Msg):
    use_hostname_for_hashing: Bool = False


class CommonLbConfig(Msg):
    healthy_panic_threshold: Percent | None = None
    consistent_hashing_lb_config: ConsistentHashingLbConfig = ConsistentHashingLbConfig()


class RingHashLbConfig(Msg):
    minimum_ring_size: UInt32 = Field(default=1024, ge=1, le=8388608)
    maximum_ring_size: UInt32 = Field(default=8388608, ge=1, le=8388608)
    hash_function: Literal["XX_HASH"] = "XX_HASH"

    @model_validator(mode="after")
    def _sizes(self) -> RingHashLbConfig:
        if self.minimum_ring_size > self.maximum_ring_size:
            raise ValueError(f"minimum_ring_size ({self.minimum_ring_size}) > maximum_ring_size "
                             f"({self.maximum_ring_size})")
        return self


class MaglevLbConfig(Msg):
    table_size: UInt32 = Field(default=65537, ge=1, le=5000011)

    @model_validator(mode="after")
    def _prime(self) -> MaglevLbConfig:
        n = self.table_size
        if n < 2 or any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
            raise ValueError("The table size of maglev must be prime number")
        return self


_LB = T + "extensions.load_balancing_policies."


class LeastRequestLbConfig(Msg):
    choice_count: UInt32 = Field(default=2, ge=2)


class LocalityWeightedLbConfig(Msg):
    """No fields: its presence turns locality-weighted balancing on."""


class LocalityLbConfig(Msg):
    locality_weighted_lb_config: LocalityWeightedLbConfig | None = None


class RoundRobinPolicy(TypedMsg):
    """envoy.load_balancing_policies.round_robin."""

    locality_lb_config: LocalityLbConfig | None = None


class LeastRequestPolicy(TypedMsg):
    """envoy.load_balancing_policies.least_request."""

    choice_count: UInt32 = Field(default=2, ge=2)
    locality_lb_config: LocalityLbConfig | None = None


class RandomPolicy(TypedMsg):
    """envoy.load_balancing_policies.random."""

    locality_lb_config: LocalityLbConfig | None = None


if TYPE_CHECKING:
    PolicyConfig = RoundRobinPolicy | LeastRequestPolicy | RandomPolicy
else:
    PolicyConfig = by_type((_LB + "round_robin.v3.RoundRobin", RoundRobinPolicy),
                           (_LB + "least_request.v3.LeastRequest", LeastRequestPolicy),
                           (_LB + "random.v3.Random", RandomPolicy))


class PolicyExtension(Msg):
    name: str = ""
    typed_config: PolicyConfig


class Policy(Msg):
    typed_extension_config: PolicyExtension


class LoadBalancingPolicy(Msg):
    """The typed form of ``lb_policy`` (what Envoy Gateway writes): the first policy is the
    cluster's (Envoy takes the first it knows; edgegw refuses one it does not know)."""

    policies: list[Policy] = Field(min_length=1)

    @property
    def chosen(self) -> PolicyConfig:
        return self.policies[0].typed_extension_config.typed_config


class EdsClusterConfig(Msg):
    """An EDS cluster's endpoints: from a file of ClusterLoadAssignment resources (a
    DiscoveryResponse), the one named ``service_name`` (default: the cluster's name)."""

    eds_config: ConfigSource
    service_name: str = ""


class Cluster(Msg):
    name: str = Field(min_length=1)
    type: Literal["STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS"] = "STATIC"
    per_connection_buffer_limit_bytes: UInt32 = Field(default=1024 * 1024, ge=1)
    """What an upstream connection buffers before the request's reading from the client
    pauses (Envoy Gateway sets 32768)."""
    ignore_health_on_host_removal: Literal[True] | None = None
    """A host that service discovery (EDS, DNS) drops is dropped at once, whatever its health:
    what edgegw always does (Envoy Gateway sets it). Envoy's default keeps a healthy one
    while active health checks run, which edgegw does not, so false is refused."""
    eds_cluster_config: EdsClusterConfig | None = None
    connect_timeout: Duration = Field(default=5.0, gt=0)
    lb_policy: Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH",
                       "MAGLEV"] = "ROUND_ROBIN"
    load_balancing_policy: LoadBalancingPolicy | None = None
    common_lb_config: CommonLbConfig = CommonLbConfig()
    ring_hash_lb_config: RingHashLbConfig | None = None
    maglev_lb_config: MaglevLbConfig | None = None
    least_request_lb_config: LeastRequestLbConfig | None = None
    health_checks: list[HealthCheck] = []
    outlier_detection: OutlierDetection | None = None
    load_assignment: ClusterLoadAssignment | None = None
    dns_lookup_family: Literal["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"] = "AUTO"
    dns_refresh_rate: Duration = 5.0
    transport_socket: UpstreamTransportSocket | None = None
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    metadata: Metadata | None = None
    """edgegw reads ``edgegw.site``: the sites file's site the cluster serves, which its log
    lines name."""
    typed_extension_protocol_options: dict[
        Literal["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
        Annotated[UpstreamHttpProtocolOptions, typed_as(HTTP_OPTIONS_TYPE)],
    ] = {}

    @model_validator(mode="after")
    def _one_policy(self) -> Cluster:
        if self.load_balancing_policy is not None and "lb_policy" in self.model_fields_set:
            raise ValueError("set lb_policy or load_balancing_policy, not both")
        return self

    @model_validator(mode="after")
    def _eds(self) -> Cluster:
        if self.type == "EDS" and self.eds_cluster_config is None:
            raise ValueError("cannot create an EDS cluster without an EDS config (as in Envoy)")
        if self.type != "EDS" and self.eds_cluster_config is not None:
            raise ValueError("eds_cluster_config set in a non-EDS cluster (as in Envoy)")
        return self

    @model_validator(mode="after")
    def _alpn_needs_tls(self) -> Cluster:
        if self.auto_http is not None and self.transport_socket is None:
            raise ValueError(f"ALPN configured for cluster {self.name} which has a non-ALPN "
                             "transport socket (auto_config needs TLS)")
        return self

    @property
    def http_options(self) -> HttpProtocolOptions:
        opts = self.typed_extension_protocol_options.get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        )
        return (opts and opts.common_http_protocol_options) or HttpProtocolOptions()

    @property
    def http2_options(self) -> Http2ProtocolOptions | None:
        """Set when the cluster speaks HTTP/2 (explicit_http_config)."""
        opts = self.typed_extension_protocol_options.get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        )
        explicit = opts.explicit_http_config if opts else None
        return explicit.http2_protocol_options if explicit else None

    @property
    def auto_http(self) -> AutoHttpConfig | None:
        """Set when the cluster lets ALPN choose between HTTP/2 and HTTP/1.1."""
        opts = self.typed_extension_protocol_options.get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        )
        return opts.auto_config if opts else None
