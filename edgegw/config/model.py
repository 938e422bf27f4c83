"""The typed model of the Envoy v3 bootstrap subset that edgegw supports.

Each class mirrors one Envoy proto message and keeps Envoy's field names and defaults. A field
that is not declared here is refused (``extra="forbid"``): a config that edgegw accepts must
mean to edgegw what it means to Envoy, so nothing is ever silently ignored. ``typed_config``
blocks are checked against the ``@type`` URLs we understand, and the bare names that older
tutorials print (``envoy.filters.http.router`` with no typed_config) are accepted too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

T = "type.googleapis.com/envoy."
HCM_TYPE = T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = T + "extensions.filters.http.router.v3.Router"
TLS_INSPECTOR_TYPE = T + "extensions.filters.listener.tls_inspector.v3.TlsInspector"
DOWNSTREAM_TLS_TYPE = T + "extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_TYPE = T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SECRET_TYPE = T + "extensions.transport_sockets.tls.v3.Secret"
STDOUT_LOG_TYPE = T + "extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_LOG_TYPE = T + "extensions.access_loggers.stream.v3.StderrAccessLog"
FILE_LOG_TYPE = T + "extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS_TYPE = T + "extensions.upstreams.http.v3.HttpProtocolOptions"
FAULT_TYPE = T + "extensions.filters.http.fault.v3.HTTPFault"
LOCAL_RATELIMIT_TYPE = T + "extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


class Msg(BaseModel):
    """Base of every config message: immutable, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_DURATION = re.compile(r"^(-?\d+(?:\.\d{1,9})?)s$")
"""Negative durations parse (they are valid protobuf), then every edgegw field refuses them,
as Envoy's validation rules do for the fields edgegw supports."""


def _duration(v: Any) -> float:
    """Protobuf Duration in JSON/YAML form (``"1.5s"``) or as ``{seconds, nanos}``."""
    if isinstance(v, str):
        m = _DURATION.match(v.strip())
        if m:
            return _non_negative(float(m.group(1)), v)
    elif isinstance(v, dict) and set(v) <= {"seconds", "nanos"}:
        return _non_negative(int(v.get("seconds", 0)) + int(v.get("nanos", 0)) / 1e9, v)
    raise PydanticCustomError(
        "duration", "'{value}' is not a duration; write seconds with an 's', e.g. \"5s\" or \"0.25s\"",
        {"value": v},
    )


def _non_negative(seconds: float, v: Any) -> float:
    if seconds < 0:
        raise PydanticCustomError("duration", "'{value}' is negative; a duration here must be "
                                  "0s or more", {"value": v})
    return seconds


Duration = Annotated[float, BeforeValidator(_duration)]


def _bool(v: Any) -> Any:
    """Protobuf's JSON booleans: true/false, or the strings "true"/"false"; never a number
    (pydantic alone would take 1 for true, where Envoy refuses it)."""
    if isinstance(v, bool):
        return v
    if v in ("true", "false"):
        return v == "true"
    raise PydanticCustomError("bool", "'{value}' is not a boolean; write true or false",
                              {"value": v})


Bool = Annotated[bool, BeforeValidator(_bool)]


def _int(v: Any) -> Any:
    """Protobuf's JSON integers: numbers or strings of digits, never a boolean."""
    if isinstance(v, bool):
        raise PydanticCustomError("int", "'{value}' is not an integer", {"value": v})
    return v


Int = Annotated[int, BeforeValidator(_int)]
UInt32 = Annotated[int, BeforeValidator(_int), Field(le=2**32 - 1)]
"""Envoy's uint32 fields (ports, limits, counts, percentages)."""


def _typed(*urls: str) -> BeforeValidator:
    """Checks a ``typed_config``'s ``@type`` and hands the rest to the declared model."""

    def check(v: Any) -> Any:
        if not isinstance(v, dict):
            raise PydanticCustomError("typed_config", "typed_config must be a mapping with an \"@type\"")
        url = v.get("@type")
        if url is None:
            raise PydanticCustomError("typed_config", "typed_config has no \"@type\"")
        if url not in urls:
            raise PydanticCustomError(
                "unsupported_type",
                "\"@type\": {url} is not supported by edgegw here (supported: {urls})",
                {"url": url, "urls": ", ".join(urls)},
            )
        return {k: x for k, x in v.items() if k != "@type"}

    return BeforeValidator(check)


def _one_of(model: BaseModel, names: tuple[str, ...], required: bool = True) -> None:
    given = [n for n in names if getattr(model, n) not in (None, "", False)]
    if len(given) > 1:
        raise ValueError(f"only one of {', '.join(names)} may be set (got {', '.join(given)})")
    if required and not given:
        raise ValueError(f"one of {', '.join(names)} must be set")


def _named(v: Any, allowed: tuple[str, ...], what: str, typed_required: bool) -> Any:
    """Checks Envoy's ``{name, typed_config}`` extension blocks that come without a type URL."""
    if isinstance(v, dict) and "typed_config" not in v:
        if v.get("name") not in allowed:
            raise PydanticCustomError(
                "unsupported_extension",
                "{what} '{name}' is not supported by edgegw (supported: {allowed})",
                {"what": what, "name": v.get("name"), "allowed": ", ".join(allowed)},
            )
        if typed_required:
            raise PydanticCustomError(
                "missing_typed_config", "{what} '{name}' needs a typed_config",
                {"what": what, "name": v.get("name")},
            )
    return v


class TypedMsg(Msg):
    """A message that arrives as one member of a union chosen by its ``@type``."""

    @model_validator(mode="before")
    @classmethod
    def _drop_type(cls, v: Any) -> Any:
        return {k: x for k, x in v.items() if k != "@type"} if isinstance(v, dict) else v


def _by_type(*members: tuple[str, type[TypedMsg]]) -> Any:
    """A ``typed_config`` that may be any of several messages, told apart by ``@type``."""
    urls = ", ".join(u for u, _ in members)
    union = tuple(Annotated[model, Tag(url)] for url, model in members)
    return Annotated[
        Union[union],  # noqa: UP007
        Discriminator(lambda v: v.get("@type") if isinstance(v, dict) else
                      next(u for u, model in members if isinstance(v, model)),
                      custom_error_type="unsupported_type",
                      custom_error_message=f"this \"@type\" is not supported by edgegw here "
                                           f"(supported: {urls})"),
    ]


# --- core ---------------------------------------------------------------------------------


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
        _one_of(self, ("filename", "inline_string", "inline_bytes"))
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


# --- TLS ------------------------------------------------------------------------------------


class WatchedDirectory(Msg):
    path: str = Field(min_length=1)


class TlsCertificate(Msg):
    certificate_chain: DataSource
    private_key: DataSource
    watched_directory: WatchedDirectory | None = None


class PathConfigSource(Msg):
    path: str = Field(min_length=1)
    watched_directory: WatchedDirectory | None = None


class ConfigSource(Msg):
    """Where a secret comes from: a file (``path_config_source``, or the deprecated ``path``)."""

    path: str | None = None
    path_config_source: PathConfigSource | None = None
    resource_api_version: Literal["AUTO", "V3"] = "AUTO"
    initial_fetch_timeout: Duration | None = None

    @model_validator(mode="after")
    def _one(self) -> ConfigSource:
        _one_of(self, ("path", "path_config_source"))
        return self

    @property
    def file(self) -> str:
        return self.path_config_source.path if self.path_config_source else self.path or ""

    @property
    def watched_directory(self) -> str | None:
        pcs = self.path_config_source
        return pcs.watched_directory.path if pcs and pcs.watched_directory else None


class SdsSecretConfig(Msg):
    """A named secret: from an SDS file when ``sds_config`` is set, else from
    ``static_resources.secrets``."""

    name: str = Field(min_length=1)
    sds_config: ConfigSource | None = None


TlsVersion = Literal["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"]


class TlsParameters(Msg):
    tls_minimum_protocol_version: TlsVersion = "TLS_AUTO"
    tls_maximum_protocol_version: TlsVersion = "TLS_AUTO"


class SubjectAltNameMatcher(Msg):
    san_type: Literal["DNS", "URI", "IP_ADDRESS", "EMAIL"]
    matcher: StringMatcher


class CertificateValidationContext(Msg):
    trusted_ca: DataSource | None = None
    match_typed_subject_alt_names: list[SubjectAltNameMatcher] = []


class CommonTlsContext(Msg):
    tls_params: TlsParameters = TlsParameters()
    tls_certificates: list[TlsCertificate] = []
    tls_certificate_sds_secret_configs: list[SdsSecretConfig] = []
    validation_context: CertificateValidationContext | None = None
    validation_context_sds_secret_config: SdsSecretConfig | None = None
    alpn_protocols: list[str] = []

    @model_validator(mode="after")
    def _validation(self) -> CommonTlsContext:
        if self.validation_context and self.validation_context_sds_secret_config:
            raise ValueError("only one of validation_context, "
                             "validation_context_sds_secret_config may be set")
        return self

    @property
    def has_trust(self) -> bool:
        vc = self.validation_context
        return bool(vc and vc.trusted_ca) or self.validation_context_sds_secret_config is not None


class Secret(Msg):
    """``extensions.transport_sockets.tls.v3.Secret``: what an SDS file carries."""

    name: str = Field(min_length=1)
    tls_certificate: TlsCertificate | None = None
    validation_context: CertificateValidationContext | None = None

    @model_validator(mode="after")
    def _one(self) -> Secret:
        _one_of(self, ("tls_certificate", "validation_context"))
        return self


class DownstreamTlsContext(Msg):
    common_tls_context: CommonTlsContext = CommonTlsContext()
    require_client_certificate: Bool = False

    @model_validator(mode="after")
    def _certs(self) -> DownstreamTlsContext:
        ctx = self.common_tls_context
        if not ctx.tls_certificates and not ctx.tls_certificate_sds_secret_configs:
            raise ValueError("a DownstreamTlsContext needs common_tls_context.tls_certificates "
                             "or tls_certificate_sds_secret_configs")
        if self.require_client_certificate and not ctx.has_trust:
            raise ValueError("require_client_certificate needs a trusted_ca "
                             "(validation_context or validation_context_sds_secret_config)")
        return self


class UpstreamTlsContext(Msg):
    common_tls_context: CommonTlsContext = CommonTlsContext()
    sni: str = Field(default="", max_length=255)


_TLS_NAMES = ("envoy.transport_sockets.tls", "tls")


class DownstreamTransportSocket(Msg):
    name: str
    typed_config: Annotated[DownstreamTlsContext, _typed(DOWNSTREAM_TLS_TYPE)]
    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return _named(v, _TLS_NAMES, "transport socket", typed_required=True)


class UpstreamTransportSocket(Msg):
    name: str
    typed_config: Annotated[UpstreamTlsContext, _typed(UPSTREAM_TLS_TYPE)]
    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return _named(v, _TLS_NAMES, "transport socket", typed_required=True)


# --- routes ---------------------------------------------------------------------------------


class HeaderMatcher(Msg):
    name: str = Field(min_length=1)
    exact_match: str | None = None
    safe_regex_match: RegexMatcher | None = None
    present_match: Bool | None = None
    prefix_match: str | None = None
    suffix_match: str | None = None
    contains_match: str | None = None
    string_match: StringMatcher | None = None
    invert_match: Bool = False


class RouteMatch(Msg):
    prefix: str | None = None
    path: str | None = None
    safe_regex: RegexMatcher | None = None
    case_sensitive: Bool = True
    headers: list[HeaderMatcher] = []

    @model_validator(mode="after")
    def _one(self) -> RouteMatch:
        given = [n for n in ("prefix", "path", "safe_regex") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of prefix, path, safe_regex must be set")
        return self


RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx",
            "refused-stream", "retriable-status-codes", "retriable-headers", "envoy-ratelimited")
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_HOSTS_TYPE = T + "extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


class RetryBackOff(Msg):
    base_interval: Duration
    max_interval: Duration | None = None


class ResetHeader(Msg):
    name: str = Field(min_length=1)
    format: Literal["SECONDS", "UNIX_TIMESTAMP"] = "SECONDS"


class RateLimitedRetryBackOff(Msg):
    """Back off as long as the upstream asks (``Retry-After: 5``) before retrying."""

    reset_headers: list[ResetHeader] = Field(min_length=1)
    max_interval: Duration = Field(default=300.0, gt=0)


class PreviousHosts(Msg):
    pass


class RetryHostPredicate(Msg):
    name: Literal["envoy.retry_host_predicates.previous_hosts"]
    typed_config: Annotated[PreviousHosts, _typed(PREVIOUS_HOSTS_TYPE)]
    """Required: Envoy 1.40 refuses the bare name too."""


class RetryPolicy(Msg):
    retry_on: str = ""
    num_retries: UInt32 = Field(default=1, ge=0)
    per_try_timeout: Duration | None = None
    retry_back_off: RetryBackOff | None = None
    retriable_status_codes: list[int] = []
    retriable_headers: list[HeaderMatcher] = []
    rate_limited_retry_back_off: RateLimitedRetryBackOff | None = None
    retry_host_predicate: list[RetryHostPredicate] = []
    host_selection_retry_max_attempts: UInt32 = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _conditions(self) -> RetryPolicy:
        for c in self.conditions:
            if c not in RETRY_ON:
                raise ValueError(f"retry_on '{c}' is not supported by edgegw (supported: "
                                 f"{', '.join(RETRY_ON)})")
        return self

    @property
    def conditions(self) -> list[str]:
        return [c.strip() for c in self.retry_on.split(",") if c.strip()]


class ClusterWeight(Msg):
    name: str = Field(min_length=1)
    weight: UInt32 = Field(default=0, ge=0)


class WeightedCluster(Msg):
    """Traffic shifting: each request goes to one cluster, chosen by weight."""

    clusters: list[ClusterWeight] = Field(min_length=1)
    total_weight: UInt32 | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _weights(self) -> WeightedCluster:
        total = sum(c.weight for c in self.clusters)
        if total <= 0:
            raise ValueError("the weights of weighted_clusters must add up to more than 0")
        if self.total_weight is not None and self.total_weight != total:
            raise ValueError(f"total_weight {self.total_weight} is not the sum of the weights "
                             f"({total})")
        return self


class FractionalPercent(Msg):
    numerator: UInt32 = Field(default=0, ge=0)
    denominator: Literal["HUNDRED", "TEN_THOUSAND", "MILLION"] = "HUNDRED"

    @property
    def fraction(self) -> float:
        scale = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}[self.denominator]
        return min(self.numerator / scale, 1.0)


class RuntimeFractionalPercent(Msg):
    default_value: FractionalPercent
    runtime_key: str = ""
    """Accepted for Envoy compatibility; edgegw has no runtime layer, so the default holds."""


class HashHeader(Msg):
    header_name: str = Field(min_length=1)


class HashCookie(Msg):
    name: str = Field(min_length=1)
    ttl: Duration | None = None
    """When set, a client without the cookie gets one (Envoy's generated cookie)."""
    path: str = ""


class HashConnectionProperties(Msg):
    source_ip: Bool = False


class HashQueryParameter(Msg):
    name: str = Field(min_length=1)


class HashPolicy(Msg):
    """What a RING_HASH or MAGLEV cluster hashes to pick a host (sticky sessions)."""

    header: HashHeader | None = None
    cookie: HashCookie | None = None
    connection_properties: HashConnectionProperties | None = None
    query_parameter: HashQueryParameter | None = None
    terminal: Bool = False

    @model_validator(mode="after")
    def _one(self) -> HashPolicy:
        _one_of(self, ("header", "cookie", "connection_properties", "query_parameter"))
        return self


class RequestMirrorPolicy(Msg):
    """Shadowing: a copy of each request goes to another cluster; its answer is dropped."""

    cluster: str = Field(min_length=1)
    runtime_fraction: RuntimeFractionalPercent | None = None
    disable_shadow_host_suffix_append: Bool = False


class RouteAction(Msg):
    cluster: str | None = Field(default=None, min_length=1)
    weighted_clusters: WeightedCluster | None = None
    hash_policy: list[HashPolicy] = []
    request_mirror_policies: list[RequestMirrorPolicy] = []
    timeout: Duration | None = None
    retry_policy: RetryPolicy | None = None
    host_rewrite_literal: str | None = None
    auto_host_rewrite: Bool = False
    prefix_rewrite: str | None = None

    @model_validator(mode="after")
    def _rewrite(self) -> RouteAction:
        _one_of(self, ("cluster", "weighted_clusters"))
        if self.host_rewrite_literal is not None and self.auto_host_rewrite:
            raise ValueError("only one of host_rewrite_literal, auto_host_rewrite may be set")
        return self


RedirectCode = Literal[
    "MOVED_PERMANENTLY", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT", "PERMANENT_REDIRECT"
]


class RedirectAction(Msg):
    https_redirect: Bool = False
    scheme_redirect: str | None = None
    host_redirect: str | None = None
    port_redirect: UInt32 | None = Field(default=None, ge=0, le=65535)
    path_redirect: str | None = None
    prefix_rewrite: str | None = None
    response_code: RedirectCode = "MOVED_PERMANENTLY"
    strip_query: Bool = False

    @model_validator(mode="after")
    def _one(self) -> RedirectAction:
        _one_of(self, ("https_redirect", "scheme_redirect"), required=False)
        _one_of(self, ("path_redirect", "prefix_rewrite"), required=False)
        return self


class DirectResponseAction(Msg):
    status: UInt32 = Field(ge=200, le=599)
    body: DataSource | None = None


class HeaderMutations(Msg):
    """The add/remove lists that route_config, virtual hosts and routes all carry."""

    request_headers_to_add: list[HeaderValueOption] = Field(default=[], max_length=1000)
    request_headers_to_remove: list[str] = []
    response_headers_to_add: list[HeaderValueOption] = Field(default=[], max_length=1000)
    response_headers_to_remove: list[str] = []


class Router(TypedMsg):
    suppress_envoy_headers: Bool = False


class FaultDelay(Msg):
    fixed_delay: Duration | None = None
    header_delay: dict[str, Any] | None = Field(default=None, max_length=0)
    percentage: FractionalPercent = FractionalPercent()

    @model_validator(mode="after")
    def _one(self) -> FaultDelay:
        _one_of(self, ("fixed_delay", "header_delay"))
        return self


class FaultAbort(Msg):
    http_status: UInt32 | None = Field(default=None, ge=200, lt=600)
    header_abort: dict[str, Any] | None = Field(default=None, max_length=0)
    percentage: FractionalPercent = FractionalPercent()

    @model_validator(mode="after")
    def _one(self) -> FaultAbort:
        _one_of(self, ("http_status", "header_abort"))
        return self


class HTTPFault(TypedMsg):
    """envoy.filters.http.fault: injected delays and aborts, to rehearse failures."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    upstream_cluster: str = ""
    headers: list[HeaderMatcher] = []
    max_active_faults: UInt32 | None = Field(default=None, ge=0)


class TokenBucket(Msg):
    max_tokens: UInt32 = Field(ge=1)
    tokens_per_fill: UInt32 = Field(default=1, ge=1)
    fill_interval: Duration = Field(gt=0)


def _http_status(v: Any) -> Any:
    names = {"TooManyRequests": 429, "ServiceUnavailable": 503, "Forbidden": 403,
             "BadRequest": 400, "InternalServerError": 500}
    return names.get(v, v) if isinstance(v, str) else v


class HttpStatus(Msg):
    code: Annotated[int, BeforeValidator(_http_status)] = Field(ge=200, lt=600)


class LocalRateLimit(TypedMsg):
    """envoy.filters.http.local_ratelimit: a token bucket in front of the routes."""

    stat_prefix: str = Field(min_length=1)
    status: HttpStatus | None = None
    token_bucket: TokenBucket | None = None
    filter_enabled: RuntimeFractionalPercent | None = None
    filter_enforced: RuntimeFractionalPercent | None = None
    request_headers_to_add_when_not_enforced: list[HeaderValueOption] = []
    response_headers_to_add: list[HeaderValueOption] = []
    local_rate_limit_per_downstream_connection: Bool = False
    enable_x_ratelimit_headers: Literal["OFF", "DRAFT_VERSION_03"] = "OFF"


if TYPE_CHECKING:  # what the discriminated unions below hold, for the type checker
    HttpFilterConfig = Router | HTTPFault | LocalRateLimit
    PerFilterConfig = HTTPFault | LocalRateLimit
else:
    HttpFilterConfig = _by_type((ROUTER_TYPE, Router), (FAULT_TYPE, HTTPFault),
                                (LOCAL_RATELIMIT_TYPE, LocalRateLimit))
    PerFilterConfig = _by_type((FAULT_TYPE, HTTPFault), (LOCAL_RATELIMIT_TYPE, LocalRateLimit))


class Route(HeaderMutations):
    name: str = ""
    typed_per_filter_config: dict[str, PerFilterConfig] = {}
    match: RouteMatch
    route: RouteAction | None = None
    redirect: RedirectAction | None = None
    direct_response: DirectResponseAction | None = None

    @model_validator(mode="after")
    def _action(self) -> Route:
        _one_of(self, ("route", "redirect", "direct_response"))
        return self


class VirtualHost(HeaderMutations):
    name: str = Field(min_length=1)
    domains: list[str] = Field(min_length=1)
    routes: list[Route] = []
    require_tls: Literal["NONE", "EXTERNAL_ONLY", "ALL"] = "NONE"
    retry_policy: RetryPolicy | None = None
    typed_per_filter_config: dict[str, PerFilterConfig] = {}


class RouteConfiguration(HeaderMutations):
    name: str = ""
    virtual_hosts: list[VirtualHost] = []
    ignore_port_in_host_matching: Bool = False
    validate_clusters: Literal[True] | None = None
    """edgegw always checks that routes name known clusters (false is refused)."""


# --- http_connection_manager ----------------------------------------------------------------


class HttpFilter(Msg):
    name: str
    typed_config: HttpFilterConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        if isinstance(v, dict) and "typed_config" not in v and v.get("name") in (
                "envoy.filters.http.fault", "envoy.filters.http.local_ratelimit"):
            raise PydanticCustomError("missing_typed_config",
                                      "HTTP filter '{name}' needs a typed_config", v)
        return _named(v, ("envoy.filters.http.router", "envoy.router"), "HTTP filter",
                      typed_required=False)

    @property
    def kind(self) -> str:
        """router, fault or local_ratelimit (a bare name is the router)."""
        c = self.typed_config
        return ("fault" if isinstance(c, HTTPFault) else
                "local_ratelimit" if isinstance(c, LocalRateLimit) else "router")


class SubstitutionFormatString(Msg):
    """An access log format: a text template or a JSON object of templates."""

    text_format: str | None = None
    text_format_source: DataSource | None = None
    json_format: dict[str, Any] | None = None
    omit_empty_values: Bool = False
    content_type: str = ""

    @model_validator(mode="after")
    def _one(self) -> SubstitutionFormatString:
        _one_of(self, ("text_format", "text_format_source", "json_format"))
        return self


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
        _one_of(self, ("log_format", "format", "json_format"), required=False)
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


class CidrRange(Msg):
    address_prefix: str
    prefix_len: UInt32 = Field(default=0, ge=0, le=128)


class InternalAddressConfig(Msg):
    unix_sockets: Bool = False
    cidr_ranges: list[CidrRange] = []


class HttpConnectionManager(Msg):
    stat_prefix: str = Field(min_length=1)
    codec_type: Literal["AUTO", "HTTP1"] = "AUTO"
    route_config: RouteConfiguration
    http_filters: list[HttpFilter] = []
    access_log: list[AccessLog] = []
    use_remote_address: Bool = False
    xff_num_trusted_hops: UInt32 = Field(default=0, ge=0)
    skip_xff_append: Bool = False
    internal_address_config: InternalAddressConfig | None = None
    server_name: str = ""
    generate_request_id: Bool = True
    request_headers_timeout: Duration | None = None
    request_timeout: Duration | None = None
    stream_idle_timeout: Duration | None = None
    max_request_headers_kb: UInt32 = Field(default=60, ge=1, le=8192)
    common_http_protocol_options: HttpProtocolOptions | None = None

    @model_validator(mode="after")
    def _router_last(self) -> HttpConnectionManager:
        if not self.http_filters:
            raise ValueError("http_filters must end with envoy.filters.http.router")
        return self


class NetworkFilter(Msg):
    name: str
    typed_config: Annotated[HttpConnectionManager, _typed(HCM_TYPE)]
    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return _named(v,
        ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager"),
        "network filter", typed_required=True,
    )


# --- listeners ------------------------------------------------------------------------------


class TlsInspector(Msg):
    pass


class ListenerFilter(Msg):
    name: str
    typed_config: Annotated[TlsInspector, _typed(TLS_INSPECTOR_TYPE)] | None = None
    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return _named(v, ("envoy.filters.listener.tls_inspector", "envoy.listener.tls_inspector"),
                    "listener filter", typed_required=False)


class FilterChainMatch(Msg):
    server_names: list[str] = []
    transport_protocol: Literal["", "tls", "raw_buffer"] = ""
    application_protocols: list[str] = []


class Metadata(Msg):
    """``config.core.v3.Metadata``: Envoy keeps it and ignores it; edgegw reads its own
    ``edgegw`` namespace (the drop-in certificate directory)."""

    filter_metadata: dict[str, dict[str, Any]] = {}


class FilterChain(Msg):
    name: str = ""
    metadata: Metadata | None = None
    filter_chain_match: FilterChainMatch = FilterChainMatch()
    filters: list[NetworkFilter] = Field(min_length=1, max_length=1)
    transport_socket: DownstreamTransportSocket | None = None


class Listener(Msg):
    name: str = ""
    address: Address
    listener_filters: list[ListenerFilter] = []
    listener_filters_timeout: Duration = 15.0
    filter_chains: list[FilterChain] = []
    default_filter_chain: FilterChain | None = None
    per_connection_buffer_limit_bytes: UInt32 = Field(default=1024 * 1024, ge=1)

    @model_validator(mode="after")
    def _chains(self) -> Listener:
        if not self.filter_chains and self.default_filter_chain is None:
            raise ValueError("a listener needs filter_chains or a default_filter_chain")
        return self


# --- clusters -------------------------------------------------------------------------------


class Endpoint(Msg):
    address: Address
    hostname: str = ""


class LbEndpoint(Msg):
    endpoint: Endpoint
    load_balancing_weight: UInt32 = Field(default=1, ge=1)


class LocalityLbEndpoints(Msg):
    lb_endpoints: list[LbEndpoint] = []


class ClusterLoadAssignment(Msg):
    cluster_name: str = ""
    endpoints: list[LocalityLbEndpoints] = []


class ExplicitHttpConfig(Msg):
    http_protocol_options: dict[str, Any] = Field(default={}, max_length=0)


class UpstreamHttpProtocolOptions(Msg):
    """``extensions.upstreams.http.v3.HttpProtocolOptions``: HTTP/1.1 only for now."""

    common_http_protocol_options: HttpProtocolOptions | None = None
    explicit_http_config: ExplicitHttpConfig | None = None


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
        _one_of(self, ("http_health_check", "tcp_health_check"))
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


class LeastRequestLbConfig(Msg):
    choice_count: UInt32 = Field(default=2, ge=2)


class Cluster(Msg):
    name: str = Field(min_length=1)
    type: Literal["STATIC", "STRICT_DNS", "LOGICAL_DNS"] = "STATIC"
    connect_timeout: Duration = Field(default=5.0, gt=0)
    lb_policy: Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH",
                       "MAGLEV"] = "ROUND_ROBIN"
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
    typed_extension_protocol_options: dict[
        Literal["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
        Annotated[UpstreamHttpProtocolOptions, _typed(HTTP_OPTIONS_TYPE)],
    ] = {}

    @property
    def http_options(self) -> HttpProtocolOptions:
        opts = self.typed_extension_protocol_options.get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        )
        return (opts and opts.common_http_protocol_options) or HttpProtocolOptions()


# --- bootstrap ------------------------------------------------------------------------------


class Node(Msg):
    id: str = ""
    cluster: str = ""
    metadata: dict[str, Any] = {}


class Admin(Msg):
    address: Address | None = None
    access_log_path: str = ""


class StaticResources(Msg):
    listeners: list[Listener] = []
    clusters: list[Cluster] = []
    secrets: list[Secret] = []


class Bootstrap(Msg):
    node: Node = Node()
    admin: Admin = Admin()
    static_resources: StaticResources = StaticResources()
    _dynamic: dict[str, list[dict[str, Any]]] = PrivateAttr(default_factory=dict)
    """Listeners and clusters read from dynamic_resources' LDS/CDS files, as written (they
    are also in static_resources); set by the loader."""

    _files_seen: dict[str, tuple[str, int, int, int]] = PrivateAttr(default_factory=dict)
    """The config files as they were when they were read; set by the loader."""

    @property
    def dynamic(self) -> dict[str, list[dict[str, Any]]]:
        return self._dynamic

    @property
    def files_seen(self) -> dict[str, tuple[str, int, int, int]]:
        return self._files_seen
