"""``http_connection_manager``: its settings, access logs and HTTP filter list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import (
    CUSTOM_HEADER_DETECTION_TYPE,
    FILE_LOG_TYPE,
    STDERR_LOG_TYPE,
    STDOUT_LOG_TYPE,
    XFF_DETECTION_TYPE,
    Bool,
    Duration,
    Msg,
    TypedMsg,
    UInt32,
    by_type,
    named_filter,
    one_of,
)
from .core import (
    CidrRange,
    ConfigSource,
    DataSource,
    HeaderValueOption,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    SubstitutionFormatString,
)
from .route import (
    RBAC,
    BasicAuth,
    Compressor,
    CustomResponse,
    ExtAuthz,
    Geoip,
    HeaderMatcher,
    HeaderMutation,
    HTTPFault,
    HttpFilterConfig,
    HttpStatus,
    JwtAuthentication,
    LocalRateLimit,
    OAuth2,
    RouteConfiguration,
    UpgradeConfig,
)


class Rds(Msg):
    """Routes from a file: the RouteConfiguration named ``route_config_name`` in the
    DiscoveryResponse at ``config_source``, followed as the file changes."""

    config_source: ConfigSource
    route_config_name: str = Field(min_length=1)


class HttpFilter(Msg):
    name: str
    typed_config: HttpFilterConfig | None = None
    disabled: Bool = False
    """Off unless a route (or its virtual host) turns it on with a ``typed_per_filter_config``
    for this filter's name: its per-route config, or a ``FilterConfig`` that is not
    ``disabled``."""

    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        if isinstance(v, dict) and "typed_config" not in v and v.get("name") in (
                "envoy.filters.http.fault", "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.rbac", "envoy.filters.http.basic_auth",
                "envoy.filters.http.ext_authz", "envoy.filters.http.header_mutation",
                "envoy.filters.http.compressor", "envoy.filters.http.custom_response",
                "envoy.filters.http.geoip", "envoy.filters.http.oauth2",
                "envoy.filters.http.jwt_authn"):
            raise PydanticCustomError("missing_typed_config",
                                      "HTTP filter '{name}' needs a typed_config", v)
        return named_filter(v, ("envoy.filters.http.router", "envoy.router"), "HTTP filter",
                      typed_required=False)

    @property
    def kind(self) -> str:
        """router or the filter's kind (a bare name is the router)."""
        c = self.typed_config
        return ("fault" if isinstance(c, HTTPFault) else
                "local_ratelimit" if isinstance(c, LocalRateLimit) else
                "rbac" if isinstance(c, RBAC) else
                "basic_auth" if isinstance(c, BasicAuth) else
                "ext_authz" if isinstance(c, ExtAuthz) else
                "header_mutation" if isinstance(c, HeaderMutation) else
                "compressor" if isinstance(c, Compressor) else
                "custom_response" if isinstance(c, CustomResponse) else
                "geoip" if isinstance(c, Geoip) else
                "oauth2" if isinstance(c, OAuth2) else
                "jwt_authn" if isinstance(c, JwtAuthentication) else "router")


_LOG_KINDS = {STDOUT_LOG_TYPE: "stdout", STDERR_LOG_TYPE: "stderr", FILE_LOG_TYPE: "file"}


def _access_log_type(v: Any) -> Any:
    """Checks the logger's ``@type`` and records which of the three sinks it is."""
    if not isinstance(v, dict) or "@type" not in v:
        raise PydanticCustomError("typed_config", "typed_config must be a mapping with an \"@type\"")
    kind = _LOG_KINDS.get(v["@type"])
    if kind is None:
        raise PydanticCustomError(
            "unsupported_type", "\"@type\": {url} is not supported by edgegw here (supported: "
            "{urls})", {"url": v["@type"], "urls": ", ".join(_LOG_KINDS)})
    if "kind" in v:
        raise PydanticCustomError("extra_forbidden", "field 'kind' is not supported by edgegw")
    return {**{k: x for k, x in v.items() if k != "@type"}, "kind": kind}


class AccessLogSink(Msg):
    """Stdout/StderrAccessLog or FileAccessLog (``kind`` comes from the ``@type``)."""

    kind: Literal["stdout", "stderr", "file"]
    path: str = ""
    log_format: SubstitutionFormatString | None = None
    format: str | None = None
    json_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _fields(self) -> AccessLogSink:
        if self.kind == "file" and not self.path:
            raise ValueError("a FileAccessLog needs a path")
        if self.kind != "file" and (self.path or self.format or self.json_format):
            raise ValueError(f"a {self.kind} access log takes only log_format")
        one_of(self, ("log_format", "format", "json_format"), required=False)
        return self

    @property
    def template(self) -> SubstitutionFormatString | None:
        if self.format is not None:
            return SubstitutionFormatString(text_format=self.format)
        if self.json_format is not None:
            return SubstitutionFormatString(json_format=self.json_format)
        return self.log_format


class AccessLog(Msg):
    name: str = ""
    typed_config: Annotated[AccessLogSink, BeforeValidator(_access_log_type)]


class InternalAddressConfig(Msg):
    unix_sockets: Bool = False
    cidr_ranges: list[CidrRange] = []


class XffConfig(TypedMsg):
    """original_ip_detection's xff extension: the address N trusted hops from the right."""

    xff_num_trusted_hops: UInt32 = 0


class CustomHeaderConfig(TypedMsg):
    """original_ip_detection's custom_header extension: the address a header holds."""

    header_name: str = Field(min_length=1)
    allow_extension_to_set_address_as_trusted: Bool = False
    reject_with_status: HttpStatus | None = None


if TYPE_CHECKING:
    IpDetectionConfig = XffConfig | CustomHeaderConfig
else:
    IpDetectionConfig = by_type((XFF_DETECTION_TYPE, XffConfig),
                                (CUSTOM_HEADER_DETECTION_TYPE, CustomHeaderConfig))


class OriginalIpDetection(Msg):
    name: str = ""
    typed_config: IpDetectionConfig


class RuntimeUInt32(Msg):
    default_value: UInt32 = 0
    runtime_key: str = ""


class ComparisonFilter(Msg):
    op: Literal["EQ", "GE", "LE"] = "EQ"
    value: RuntimeUInt32 = RuntimeUInt32()


class StatusCodeFilter(Msg):
    comparison: ComparisonFilter


class ResponseFlagFilter(Msg):
    flags: list[str] = []
    """Envoy's short flags (``UH``, ``UF`` …); none: any flag."""


class HeaderFilter(Msg):
    header: HeaderMatcher


class FilterList(Msg):
    filters: list[AccessLogFilter] = Field(min_length=2)


class AccessLogFilter(Msg):
    """config.accesslog.v3.AccessLogFilter, the kinds a local reply mapper needs."""

    status_code_filter: StatusCodeFilter | None = None
    response_flag_filter: ResponseFlagFilter | None = None
    header_filter: HeaderFilter | None = None
    and_filter: FilterList | None = None
    or_filter: FilterList | None = None

    @model_validator(mode="after")
    def _one(self) -> AccessLogFilter:
        one_of(self, ("status_code_filter", "response_flag_filter", "header_filter",
                      "and_filter", "or_filter"))
        return self


FilterList.model_rebuild()


class ResponseMapper(Msg):
    """A local reply that ``filter`` matches gets this status, body and headers."""

    filter: AccessLogFilter
    status_code: UInt32 | None = Field(default=None, ge=200, lt=600)
    body: DataSource | None = None
    body_format_override: SubstitutionFormatString | None = None
    headers_to_add: list[HeaderValueOption] = Field(default=[], max_length=1000)


class LocalReplyConfig(Msg):
    """The replies edgegw makes itself (no route, no healthy upstream, timeouts …),
    rewritten by the first mapper that matches, then formatted by ``body_format``."""

    mappers: list[ResponseMapper] = []
    body_format: SubstitutionFormatString | None = None


class HttpConnectionManager(TypedMsg):
    stat_prefix: str = Field(min_length=1)
    codec_type: Literal["AUTO", "HTTP1", "HTTP2"] = "AUTO"
    route_config: RouteConfiguration | None = None
    rds: Rds | None = None
    http_filters: list[HttpFilter] = []
    access_log: list[AccessLog] = []
    local_reply_config: LocalReplyConfig | None = None
    use_remote_address: Bool = False
    xff_num_trusted_hops: UInt32 = Field(default=0, ge=0)
    skip_xff_append: Bool = False
    internal_address_config: InternalAddressConfig | None = None
    server_name: str = ""
    server_header_transformation: Literal["OVERWRITE", "APPEND_IF_ABSENT",
                                          "PASS_THROUGH"] = "OVERWRITE"
    """The Server header of responses: always ``server_name`` (OVERWRITE), the upstream's
    if it sent one (APPEND_IF_ABSENT), or only what the upstream sent (PASS_THROUGH; local
    replies then have none)."""
    generate_request_id: Bool = True
    request_headers_timeout: Duration | None = None
    request_timeout: Duration | None = None
    stream_idle_timeout: Duration | None = None
    max_request_headers_kb: UInt32 = Field(default=60, ge=1, le=8192)
    common_http_protocol_options: HttpProtocolOptions | None = None
    http2_protocol_options: Http2ProtocolOptions | None = None
    upgrade_configs: list[UpgradeConfig] = []
    normalize_path: Bool = False
    merge_slashes: Bool = False
    original_ip_detection_extensions: list[OriginalIpDetection] = []
    path_with_escaped_slashes_action: Literal[
        "IMPLEMENTATION_SPECIFIC_DEFAULT", "KEEP_UNCHANGED", "REJECT_REQUEST",
        "UNESCAPE_AND_REDIRECT", "UNESCAPE_AND_FORWARD"] = "IMPLEMENTATION_SPECIFIC_DEFAULT"
    """The default is Envoy's: KEEP_UNCHANGED."""

    @model_validator(mode="after")
    def _routes(self) -> HttpConnectionManager:
        one_of(self, ("route_config", "rds"))
        return self

    @model_validator(mode="after")
    def _router_last(self) -> HttpConnectionManager:
        opts = self.common_http_protocol_options
        if opts is not None and opts.max_response_headers_kb is not None:
            raise ValueError("max_response_headers_kb cannot be set on http_connection_manager "
                             "(it is a cluster's option)")
        if not self.http_filters:
            raise ValueError("http_filters must end with envoy.filters.http.router")
        if self.http_filters[-1].disabled:
            raise ValueError(f"the last (terminal) filter ({self.http_filters[-1].name}) in the "
                             "chain cannot be disabled by default (as in Envoy)")
        if self.original_ip_detection_extensions and (self.use_remote_address
                                                      or self.xff_num_trusted_hops):
            raise ValueError("original_ip_detection_extensions cannot be used with "
                             "use_remote_address or xff_num_trusted_hops (as in Envoy)")
        return self
