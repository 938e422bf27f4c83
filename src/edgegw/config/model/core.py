"""Envoy's ``config.core`` and ``type.matcher`` messages: addresses, data sources, header
values, string matchers."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, model_validator

from .base import Bool, Duration, Msg, UInt32, one_of


class SocketAddress(Msg):
    protocol: Literal["TCP"] = "TCP"
    address: str
    port_value: UInt32 = Field(ge=0, le=65535)


def address_string(ip: str, port: int) -> str:
    """An address as Envoy writes one (``Address::asString``): ``1.2.3.4:80``, ``[::1]:80``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Address(Msg):
    socket_address: SocketAddress


class DataSource(Msg):
    filename: str | None = None
    inline_string: str | None = None
    inline_bytes: str | None = None

    @model_validator(mode="after")
    def _one(self) -> DataSource:
        one_of(self, ("filename", "inline_string", "inline_bytes"))
        return self


class HeaderValue(Msg):
    key: str = Field(min_length=1)
    value: str = ""


class HeaderValueOption(Msg):
    header: HeaderValue
    append: Bool | None = None
    append_action: Literal[
        "APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
        "OVERWRITE_IF_EXISTS",
    ] = "APPEND_IF_EXISTS_OR_ADD"
    keep_empty_value: Bool = False


class RegexMatcher(Msg):
    google_re2: dict[str, Any] = {}
    regex: str


class StringMatcher(Msg):
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    safe_regex: RegexMatcher | None = None
    ignore_case: Bool = False

    @model_validator(mode="after")
    def _one(self) -> StringMatcher:
        given = [n for n in ("exact", "prefix", "suffix", "contains", "safe_regex")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of exact, prefix, suffix, contains, safe_regex must be set")
        return self


class HttpProtocolOptions(Msg):
    """``config.core.v3.HttpProtocolOptions``: the options both directions share."""

    idle_timeout: Duration | None = None
    max_headers_count: UInt32 | None = Field(default=None, ge=1)
    max_response_headers_kb: UInt32 | None = Field(default=None, ge=1, le=8192)
    headers_with_underscores_action: Literal["ALLOW", "REJECT_REQUEST", "DROP_HEADER"] = "ALLOW"
    """Client request headers only, as in Envoy (a cluster's setting changes nothing)."""


class Http2ProtocolOptions(Msg):
    """``config.core.v3.Http2ProtocolOptions`` with Envoy's defaults (a subset). The proto
    documents 2³¹−1 streams and 256 MiB windows; Envoy 1.40 advertises 1024 streams, 16 MiB
    per stream and 24 MiB per connection when they are unset, and so does edgegw."""

    hpack_table_size: UInt32 = 4096
    max_concurrent_streams: UInt32 = Field(default=1024, ge=1, le=2147483647)
    initial_stream_window_size: UInt32 = Field(default=16777216, ge=65535, le=2147483647)
    initial_connection_window_size: UInt32 = Field(default=25165824, ge=65535, le=2147483647)
    max_outbound_frames: UInt32 = Field(default=10000, ge=1)
    max_outbound_control_frames: UInt32 = Field(default=1000, ge=1)
    max_consecutive_inbound_frames_with_empty_payload: UInt32 = 1
    max_inbound_priority_frames_per_stream: UInt32 = 100
    max_inbound_window_update_frames_per_data_frame_sent: UInt32 = Field(default=10, ge=1)


class PassThroughTlvs(Msg):
    match_type: Literal["INCLUDE_ALL", "INCLUDE"] = "INCLUDE_ALL"
    tlv_type: list[UInt32] = []

    def keeps(self, tlv: int) -> bool:
        return self.match_type == "INCLUDE_ALL" or tlv in self.tlv_type


class CidrRange(Msg):
    address_prefix: str
    prefix_len: UInt32 = Field(default=0, ge=0, le=128)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{self.address_prefix}/{self.prefix_len}", strict=False)

    @model_validator(mode="after")
    def _valid(self) -> CidrRange:
        try:
            self.network  # noqa: B018
        except ValueError as e:
            raise ValueError(f"invalid CIDR range: {e}") from None
        return self


class Metadata(Msg):
    """``config.core.v3.Metadata``: Envoy keeps it and ignores it; edgegw reads its own
    ``edgegw`` namespace (a filter chain's drop-in certificate directory and strict SNI/Host,
    a route's ACME webroot)."""

    filter_metadata: dict[str, dict[str, Any]] = {}

    def ours(self, key: str) -> Any:
        """The value of ``filter_metadata.edgegw.<key>``, or None."""
        own = self.filter_metadata.get("edgegw")
        return own.get(key) if isinstance(own, dict) else None


class WatchedDirectory(Msg):
    path: str = Field(min_length=1)


class PathConfigSource(Msg):
    path: str = Field(min_length=1)
    watched_directory: WatchedDirectory | None = None


class EnvoyGrpc(Msg):
    """A gRPC service reached through one of the bootstrap's clusters, on edgegw's own
    HTTP/2 connections (Envoy's ``envoy_grpc``)."""

    cluster_name: str = Field(min_length=1)
    authority: str = ""


class GrpcService(Msg):
    envoy_grpc: EnvoyGrpc
    timeout: Duration | None = None
    initial_metadata: list[HeaderValue] = []


class RateLimitSettings(Msg):
    """How fast requests may go to the control plane: a token bucket (Envoy's defaults)."""

    max_tokens: UInt32 = 100
    fill_rate: float = Field(default=10.0, gt=0)


class ApiConfigSource(Msg):
    """A control plane: xDS over a gRPC stream (state of the world or incremental: delta),
    or REST-JSON polled every ``refresh_delay``."""

    api_type: Literal["GRPC", "DELTA_GRPC", "REST"]
    transport_api_version: Literal["AUTO", "V3"] = "AUTO"
    grpc_services: list[GrpcService] = []
    cluster_names: list[str] = []
    refresh_delay: Duration | None = None
    set_node_on_first_message_only: Bool = False
    rate_limit_settings: RateLimitSettings | None = None
    request_timeout: Duration | None = None

    @model_validator(mode="after")
    def _transport(self) -> ApiConfigSource:
        """Envoy's rules, in its words."""
        what = "envoy.config.core.v3.ApiConfigSource"
        if self.api_type == "REST":
            if self.grpc_services:
                raise ValueError(f"{what}, if not a gRPC type, must not have a gRPC service "
                                 "specified")
            if len(self.cluster_names) != 1:
                raise ValueError(f"{what} must have a singleton cluster name specified")
            if self.refresh_delay is None:
                raise ValueError("refresh_delay is required for REST API configuration sources")
        else:
            if self.cluster_names:
                raise ValueError(f"{what}::(AGGREGATED_)(DELTA_)GRPC must not have a cluster "
                                 "name specified")
            if not self.grpc_services:
                raise ValueError(f"{what} must have a gRPC service specified")
        return self

    @property
    def cluster(self) -> str:
        """The cluster the control plane is reached by."""
        return (self.cluster_names[0] if self.api_type == "REST"
                else self.grpc_services[0].envoy_grpc.cluster_name)


class AggregatedConfigSource(Msg):
    """``ads: {}``: the resource comes on the bootstrap's ``ads_config`` stream."""


class ConfigSource(Msg):
    """Where listeners, clusters, SDS secrets, EDS endpoints or RDS routes come from: a file
    (``path_config_source``, or the deprecated ``path``) or a control plane (``ads``,
    ``api_config_source``)."""

    path: str | None = None
    path_config_source: PathConfigSource | None = None
    ads: AggregatedConfigSource | None = None
    api_config_source: ApiConfigSource | None = None
    resource_api_version: Literal["AUTO", "V3"] = "AUTO"
    initial_fetch_timeout: Duration | None = None

    @model_validator(mode="after")
    def _one(self) -> ConfigSource:
        one_of(self, ("path", "path_config_source", "ads", "api_config_source"))
        return self

    @property
    def xds(self) -> bool:
        """From a control plane, not a file."""
        return self.ads is not None or self.api_config_source is not None

    @property
    def fetch_timeout(self) -> float:
        """How long the first answer is waited for; 0 waits forever (Envoy's default 15 s)."""
        return 15.0 if self.initial_fetch_timeout is None else self.initial_fetch_timeout

    @property
    def file(self) -> str:
        return self.path_config_source.path if self.path_config_source else self.path or ""

    @property
    def watched_directory(self) -> str | None:
        pcs = self.path_config_source
        return pcs.watched_directory.path if pcs and pcs.watched_directory else None


class SubstitutionFormatString(Msg):
    """An access log (or local reply) format: a text template or a JSON object of
    templates."""

    text_format: str | None = None
    text_format_source: DataSource | None = None
    json_format: dict[str, Any] | None = None
    omit_empty_values: Bool = False
    content_type: str = ""

    @model_validator(mode="after")
    def _one(self) -> SubstitutionFormatString:
        one_of(self, ("text_format", "text_format_source", "json_format"))
        return self
