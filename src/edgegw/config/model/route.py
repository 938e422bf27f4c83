"""``route_config``: virtual hosts, routes and their actions, retry and hash policies, and
the HTTP filters' configs (router, fault, local_ratelimit)."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Annotated, Any, Literal

import maxminddb
from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import (
    BASIC_AUTH_PER_ROUTE_TYPE,
    BASIC_AUTH_TYPE,
    BROTLI_TYPE,
    COMPRESSOR_PER_ROUTE_TYPE,
    COMPRESSOR_TYPE,
    CUSTOM_RESPONSE_TYPE,
    EXT_AUTHZ_PER_ROUTE_TYPE,
    EXT_AUTHZ_TYPE,
    FAULT_TYPE,
    FILTER_CONFIG_TYPE,
    GEOIP_TYPE,
    GZIP_TYPE,
    HEADER_MUTATION_PER_ROUTE_TYPE,
    HEADER_MUTATION_TYPE,
    JWT_AUTHN_TYPE,
    LOCAL_RATELIMIT_TYPE,
    LOCAL_RESPONSE_POLICY_TYPE,
    MAXMIND_TYPE,
    OAUTH2_TYPE,
    RBAC_PER_ROUTE_TYPE,
    RBAC_TYPE,
    ROUTER_TYPE,
    STATUS_CLASS_INPUT_TYPE,
    STATUS_CODE_INPUT_TYPE,
    ZSTD_TYPE,
    Bool,
    Duration,
    Msg,
    T,
    TypedMsg,
    UInt32,
    by_type,
    one_of,
    typed_as,
)
from .core import (
    CidrRange,
    DataSource,
    HeaderValueOption,
    Metadata,
    RegexMatcher,
    StringMatcher,
    SubstitutionFormatString,
)
from .tls import SdsSecretConfig


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
    path_separated_prefix: str | None = Field(default=None, pattern=r"^[^?#]+[^?#/]$")
    """The path (its query aside) is this or starts with it and a '/': ``/api`` matches
    ``/api`` and ``/api/x``, not ``/apis`` (Envoy Gateway's PathPrefix matches)."""
    case_sensitive: Bool = True
    headers: list[HeaderMatcher] = []

    @model_validator(mode="after")
    def _one(self) -> RouteMatch:
        given = [n for n in ("prefix", "path", "safe_regex", "path_separated_prefix")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of prefix, path, safe_regex, path_separated_prefix "
                             "must be set")
        return self

    @property
    def rewritable_prefix(self) -> str | None:
        """What prefix_rewrite replaces: the prefix of either kind of prefix match."""
        return self.prefix if self.prefix is not None else self.path_separated_prefix


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
    typed_config: Annotated[PreviousHosts, typed_as(PREVIOUS_HOSTS_TYPE)]
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
        one_of(self, ("header", "cookie", "connection_properties", "query_parameter"))
        return self


class RequestMirrorPolicy(Msg):
    """Shadowing: a copy of each request goes to another cluster; its answer is dropped."""

    cluster: str = Field(min_length=1)
    runtime_fraction: RuntimeFractionalPercent | None = None
    disable_shadow_host_suffix_append: Bool = False


class UpgradeConfig(Msg):
    """An upgrade the connection manager (or a route) allows, such as ``websocket``."""

    upgrade_type: str = ""
    enabled: Bool = True


class MaxStreamDuration(Msg):
    """The gRPC part of ``RouteAction.MaxStreamDuration``: honour a client's grpc-timeout."""

    grpc_timeout_header_max: Duration | None = None
    grpc_timeout_header_offset: Duration | None = None


class RouteAction(Msg):
    cluster: str | None = Field(default=None, min_length=1)
    cluster_not_found_response_code: Literal["SERVICE_UNAVAILABLE", "NOT_FOUND",
                                             "INTERNAL_SERVER_ERROR"] = "SERVICE_UNAVAILABLE"
    """The answer when the cluster is not there (a route from RDS may name one CDS has not
    sent, or has removed): 503, 404 or 500."""
    weighted_clusters: WeightedCluster | None = None
    hash_policy: list[HashPolicy] = []
    request_mirror_policies: list[RequestMirrorPolicy] = []
    timeout: Duration | None = None
    retry_policy: RetryPolicy | None = None
    host_rewrite_literal: str | None = None
    auto_host_rewrite: Bool = False
    prefix_rewrite: str | None = None
    upgrade_configs: list[UpgradeConfig] = []
    max_stream_duration: MaxStreamDuration | None = None

    @model_validator(mode="after")
    def _rewrite(self) -> RouteAction:
        one_of(self, ("cluster", "weighted_clusters"))
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
        one_of(self, ("https_redirect", "scheme_redirect"), required=False)
        one_of(self, ("path_redirect", "prefix_rewrite"), required=False)
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
        one_of(self, ("fixed_delay", "header_delay"))
        return self


class FaultAbort(Msg):
    http_status: UInt32 | None = Field(default=None, ge=200, lt=600)
    header_abort: dict[str, Any] | None = Field(default=None, max_length=0)
    percentage: FractionalPercent = FractionalPercent()

    @model_validator(mode="after")
    def _one(self) -> FaultAbort:
        one_of(self, ("http_status", "header_abort"))
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


class PathMatcher(Msg):
    path: StringMatcher


class Permission(Msg):
    """config.rbac.v3.Permission: what a request asks for (one of the fields)."""

    any: Bool | None = None
    header: HeaderMatcher | None = None
    url_path: PathMatcher | None = None
    destination_port: UInt32 | None = Field(default=None, le=65535)
    and_rules: PermissionSet | None = None
    or_rules: PermissionSet | None = None
    not_rule: Permission | None = None

    @model_validator(mode="after")
    def _one(self) -> Permission:
        one_of(self, ("any", "header", "url_path", "destination_port", "and_rules",
                      "or_rules", "not_rule"))
        return self


class PermissionSet(Msg):
    rules: list[Permission] = Field(min_length=1)


class Authenticated(Msg):
    principal_name: StringMatcher | None = None


class ListMatcher(Msg):
    one_of: ValueMatcher


class ValueMatcher(Msg):
    """type.matcher.v3.ValueMatcher (strings, booleans, presence, lists)."""

    string_match: StringMatcher | None = None
    bool_match: Bool | None = None
    present_match: Bool | None = None
    list_match: ListMatcher | None = None

    @model_validator(mode="after")
    def _one(self) -> ValueMatcher:
        one_of(self, ("string_match", "bool_match", "present_match", "list_match"))
        return self


ListMatcher.model_rebuild()


class MetadataPathSegment(Msg):
    key: str = Field(min_length=1)


class MetadataMatcher(Msg):
    """type.matcher.v3.MetadataMatcher on the request's dynamic metadata (what jwt_authn's
    ``payload_in_metadata`` writes)."""

    filter: str = Field(min_length=1)
    path: list[MetadataPathSegment] = Field(min_length=1)
    value: ValueMatcher
    invert: Bool = False


class Principal(Msg):
    """config.rbac.v3.Principal: who asks (one of the fields)."""

    any: Bool | None = None
    authenticated: Authenticated | None = None
    source_ip: CidrRange | None = None
    direct_remote_ip: CidrRange | None = None
    remote_ip: CidrRange | None = None
    header: HeaderMatcher | None = None
    url_path: PathMatcher | None = None
    metadata: MetadataMatcher | None = None
    and_ids: PrincipalSet | None = None
    or_ids: PrincipalSet | None = None
    not_id: Principal | None = None

    @model_validator(mode="after")
    def _one(self) -> Principal:
        one_of(self, ("any", "authenticated", "source_ip", "direct_remote_ip", "remote_ip",
                      "header", "url_path", "metadata", "and_ids", "or_ids", "not_id"))
        return self


class PrincipalSet(Msg):
    ids: list[Principal] = Field(min_length=1)


class Policy(Msg):
    permissions: list[Permission] = Field(min_length=1)
    principals: list[Principal] = Field(min_length=1)


class RbacRules(Msg):
    """config.rbac.v3.RBAC."""

    action: Literal["ALLOW", "DENY", "LOG"] = "ALLOW"
    policies: dict[str, Policy] = {}


class RBAC(TypedMsg):
    """envoy.filters.http.rbac: who may reach what, by policies of permissions and
    principals; ``shadow_rules`` are evaluated and counted, never enforced."""

    rules: RbacRules | None = None
    shadow_rules: RbacRules | None = None
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""


class RBACPerRoute(TypedMsg):
    """A route's RBAC: its own rules, or (with no ``rbac``) the filter off for the route."""

    rbac: RBAC | None = None


class BasicAuth(TypedMsg):
    """envoy.filters.http.basic_auth: htpasswd ``user:{SHA}base64(sha1(password))`` lines."""

    users: DataSource
    forward_username_header: str = ""
    authentication_header: str = ""
    """Read the credentials from this header instead of Authorization."""


class BasicAuthPerRoute(TypedMsg):
    users: DataSource


class HttpUri(Msg):
    uri: str = Field(min_length=1)
    cluster: str = Field(min_length=1)
    timeout: Duration


class ListStringMatcher(Msg):
    patterns: list[StringMatcher] = Field(min_length=1)


class AuthzHeader(Msg):
    key: str = Field(min_length=1)
    value: str = ""


class AuthorizationRequest(Msg):
    allowed_headers: ListStringMatcher | None = None
    headers_to_add: list[AuthzHeader] = []


class AuthorizationResponse(Msg):
    allowed_upstream_headers: ListStringMatcher | None = None
    allowed_client_headers: ListStringMatcher | None = None
    allowed_client_headers_on_success: ListStringMatcher | None = None


class HttpService(Msg):
    server_uri: HttpUri
    path_prefix: str = ""
    authorization_request: AuthorizationRequest = AuthorizationRequest()
    authorization_response: AuthorizationResponse = AuthorizationResponse()


class BufferSettings(Msg):
    """ext_authz's with_request_body: up to ``max_request_bytes`` of the request's body go to
    the service with the check; past that the request gets 413, unless
    ``allow_partial_message`` sends the first bytes alone."""

    max_request_bytes: UInt32 = Field(ge=1)
    allow_partial_message: Bool = False
    pack_as_bytes: Bool = False
    """gRPC service mode only; accepted and meaningless over HTTP, as in Envoy."""


class ExtAuthz(TypedMsg):
    """envoy.filters.http.ext_authz in HTTP service mode (Authelia, Authentik,
    oauth2-proxy): each request is first asked of an authorization service."""

    http_service: HttpService
    with_request_body: BufferSettings | None = None
    failure_mode_allow: Bool = False
    status_on_error: HttpStatus | None = None
    transport_api_version: Literal["V3"] = "V3"


class ExtAuthzPerRoute(TypedMsg):
    disabled: Bool = False


class HeaderMutationRule(Msg):
    """config.common.mutation_rules.v3.HeaderMutation: remove one header, or add one."""

    remove: str | None = None
    append: HeaderValueOption | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderMutationRule:
        one_of(self, ("remove", "append"))
        return self


class HeaderMutationLists(Msg):
    request_mutations: list[HeaderMutationRule] = []
    response_mutations: list[HeaderMutationRule] = []


class HeaderMutation(TypedMsg):
    """envoy.filters.http.header_mutation: request and response headers changed in order,
    the filter's first, then a route's HeaderMutationPerRoute."""

    mutations: HeaderMutationLists = HeaderMutationLists()
    most_specific_header_mutations_wins: Bool = False
    """Orders Envoy's several levels of HeaderMutationPerRoute (route table, virtual host,
    route); edgegw reads the most specific one only, so this changes nothing."""


class HeaderMutationPerRoute(TypedMsg):
    mutations: HeaderMutationLists = HeaderMutationLists()


GZIP_LEVELS = {"DEFAULT_COMPRESSION": 6, "BEST_SPEED": 1, "BEST_COMPRESSION": 9,
               **{f"COMPRESSION_LEVEL_{n}": n for n in range(1, 10)}}


class Gzip(TypedMsg):
    """envoy.compression.gzip.compressor, with Envoy's defaults (zlib)."""

    memory_level: UInt32 = Field(default=5, ge=1, le=9)
    compression_level: Literal[tuple(GZIP_LEVELS)] = "DEFAULT_COMPRESSION"  # type: ignore[valid-type]
    compression_strategy: Literal["DEFAULT_STRATEGY", "FILTERED", "HUFFMAN_ONLY", "RLE",
                                  "FIXED"] = "DEFAULT_STRATEGY"
    window_bits: UInt32 = Field(default=12, ge=9, le=15)
    chunk_size: UInt32 = Field(default=4096, ge=4096, le=65536)


class Brotli(TypedMsg):
    """envoy.compression.brotli.compressor, with Envoy's defaults."""

    quality: UInt32 = Field(default=3, le=11)
    encoder_mode: Literal["DEFAULT", "GENERIC", "TEXT", "FONT"] = "DEFAULT"
    window_bits: UInt32 = Field(default=18, ge=10, le=24)
    input_block_bits: UInt32 = Field(default=24, ge=16, le=24)
    chunk_size: UInt32 = Field(default=4096, ge=4096, le=65536)
    disable_literal_context_modeling: Bool = False

    @model_validator(mode="after")
    def _literal_modeling(self) -> Brotli:
        if self.disable_literal_context_modeling:
            raise ValueError("disable_literal_context_modeling is not supported by edgegw "
                             "(the brotli binding has no such switch)")
        return self


class Zstd(TypedMsg):
    """envoy.compression.zstd.compressor, with Envoy's defaults."""

    compression_level: UInt32 = 3
    enable_checksum: Bool = False
    chunk_size: UInt32 = Field(default=4096, ge=4096, le=65536)


if TYPE_CHECKING:
    CompressorLibraryConfig = Gzip | Brotli | Zstd
else:
    CompressorLibraryConfig = by_type((GZIP_TYPE, Gzip), (BROTLI_TYPE, Brotli),
                                      (ZSTD_TYPE, Zstd))


class CompressorLibrary(Msg):
    name: str = Field(min_length=1)
    typed_config: CompressorLibraryConfig


class RuntimeFeatureFlag(Msg):
    default_value: Bool = True
    runtime_key: str = ""


class CommonDirectionConfig(Msg):
    enabled: RuntimeFeatureFlag = RuntimeFeatureFlag()
    min_content_length: UInt32 = 30
    content_type: list[str] = []
    """Envoy's list when empty (text, JSON, JavaScript, XML, SVG; not text/event-stream)."""


class ResponseDirectionConfig(Msg):
    common_config: CommonDirectionConfig = CommonDirectionConfig()
    disable_on_etag_header: Bool = False
    remove_accept_encoding_header: Bool = False
    uncompressible_response_codes: list[Annotated[int, Field(ge=200, lt=600)]] = []


class Compressor(TypedMsg):
    """envoy.filters.http.compressor: responses compressed with the library the client
    prefers among the chain's compressors (one filter per library, as in Envoy)."""

    compressor_library: CompressorLibrary
    response_direction_config: ResponseDirectionConfig = ResponseDirectionConfig()
    choose_first: Bool = False
    """On a tie of q-values, this filter's library wins."""


class CompressorPerRoute(TypedMsg):
    disabled: Bool = False


class GeolocationHeadersToAdd(Msg):
    """Which request header each geolocation field is written to (empty: not looked up)."""

    country: str = ""
    city: str = ""
    region: str = ""
    asn: str = ""
    is_anon: str = ""
    anon: str = ""
    """The same as ``is_anon`` (its newer name)."""
    anon_vpn: str = ""
    anon_hosting: str = ""
    anon_tor: str = ""
    anon_proxy: str = ""
    isp: str = ""
    apple_private_relay: str = ""


class GeolocationFieldKeys(Msg):
    """Envoy's newer name for the same thing: under the HTTP filter, the request header of
    each field."""

    country: str = ""
    city: str = ""
    region: str = ""
    asn: str = ""
    anon: str = ""
    anon_vpn: str = ""
    anon_hosting: str = ""
    anon_tor: str = ""
    anon_proxy: str = ""
    isp: str = ""
    apple_private_relay: str = ""


class CommonGeoipProviderConfig(Msg):
    geo_headers_to_add: GeolocationHeadersToAdd | None = None
    geo_field_keys: GeolocationFieldKeys | None = None
    """Takes precedence over ``geo_headers_to_add`` when both are set, as in Envoy."""

    @model_validator(mode="after")
    def _one(self) -> CommonGeoipProviderConfig:
        if self.geo_headers_to_add is None and self.geo_field_keys is None:
            raise ValueError("geo_field_keys (or geo_headers_to_add) is needed")
        return self

    @property
    def headers(self) -> GeolocationHeadersToAdd | GeolocationFieldKeys:
        """The header of each field."""
        keys = self.geo_field_keys or self.geo_headers_to_add
        assert keys is not None
        return keys


GEO_DATABASES = {  # field: the databases that hold it, the first one set is read
    "country": ("country_db_path", "city_db_path"), "city": ("city_db_path",),
    "region": ("city_db_path",), "asn": ("asn_db_path", "isp_db_path"),
    "is_anon": ("anon_db_path",), "anon": ("anon_db_path",), "anon_vpn": ("anon_db_path",),
    "anon_hosting": ("anon_db_path",), "anon_tor": ("anon_db_path",),
    "anon_proxy": ("anon_db_path",), "isp": ("isp_db_path",),
    "apple_private_relay": ("isp_db_path",)}


class MaxMindConfig(TypedMsg):
    """envoy.geoip_providers.maxmind: MaxMind (GeoIP2, GeoLite2) database files, each
    reopened when it is replaced."""

    city_db_path: str = ""
    country_db_path: str = ""
    asn_db_path: str = ""
    anon_db_path: str = ""
    isp_db_path: str = ""
    common_provider_config: CommonGeoipProviderConfig

    @model_validator(mode="after")
    def _databases(self) -> MaxMindConfig:
        headers = self.common_provider_config.headers
        for field, paths in GEO_DATABASES.items():
            if getattr(headers, field, "") and not any(getattr(self, p) for p in paths):
                raise ValueError(f"the {field} header needs {' or '.join(paths)}")
        files = {p: getattr(self, p) for p in (
            "city_db_path", "country_db_path", "asn_db_path", "anon_db_path", "isp_db_path")}
        if not any(files.values()):
            raise ValueError("at least one database path is needed")
        for name, path in files.items():
            if path:  # (as Envoy, which fails to load a config whose file it cannot open)
                try:
                    maxminddb.open_database(path).close()
                except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
                    raise ValueError(f"{name}: '{path}' is not a MaxMind database that can "
                                     f"be read: {e}") from None
        return self


if TYPE_CHECKING:
    GeoipProviderConfig = MaxMindConfig
else:
    GeoipProviderConfig = by_type((MAXMIND_TYPE, MaxMindConfig))


class GeoipProvider(Msg):
    name: str = Field(min_length=1)
    typed_config: GeoipProviderConfig


class GeoipXff(Msg):
    xff_num_trusted_hops: UInt32 = 0
    """The address this many entries from the end of x-forwarded-for (0: not used)."""


class GeoipCustomHeader(Msg):
    header_name: str = Field(min_length=1)


class Geoip(TypedMsg):
    """envoy.filters.http.geoip: the client's address looked up, and what is found written
    to request headers (a header the client sent stays when nothing is found, as in Envoy)."""

    xff_config: GeoipXff | None = None
    custom_header_config: GeoipCustomHeader | None = None
    """The address is read from this header; where it is missing or not an address, the
    connection's is used."""
    provider: GeoipProvider


class RemoteJwks(Msg):
    http_uri: HttpUri
    cache_duration: Duration | None = None
    """How long fetched keys are kept (Envoy's 10 minutes when unset)."""


class LocalJwks(Msg):
    inline_string: str | None = None
    filename: str | None = None


class JwtHeader(Msg):
    name: str = Field(min_length=1)
    value_prefix: str = ""


class JwtClaimToHeader(Msg):
    header_name: str = Field(min_length=1)
    claim_name: str = Field(min_length=1)


class JwtProvider(Msg):
    """Who issues the tokens and where their keys are: the issuer, audiences and expiry
    are checked, then the signature (RS256/384/512, PS256/384/512, ES256/384)."""

    issuer: str = ""
    audiences: list[str] = []
    remote_jwks: RemoteJwks | None = None
    local_jwks: LocalJwks | None = None
    forward: Bool = False
    from_headers: list[JwtHeader] = []
    from_cookies: list[str] = []
    payload_in_metadata: str = ""
    claim_to_headers: list[JwtClaimToHeader] = []
    clock_skew_seconds: UInt32 = 60

    @model_validator(mode="after")
    def _one(self) -> JwtProvider:
        one_of(self, ("remote_jwks", "local_jwks"))
        return self


class JwtRequirement(Msg):
    provider_name: str = Field(min_length=1)


class JwtRequirementRule(Msg):
    match: RouteMatch
    requires: JwtRequirement | None = None
    """None: the requests it matches need no token."""


class JwtAuthentication(TypedMsg):
    """envoy.filters.http.jwt_authn: a JWT verified per request, its claims handed on."""

    providers: dict[str, JwtProvider] = Field(min_length=1)
    rules: list[JwtRequirementRule] = []

    @model_validator(mode="after")
    def _names(self) -> JwtAuthentication:
        for rule in self.rules:
            if rule.requires is not None and rule.requires.provider_name not in self.providers:
                raise ValueError(f"rule requires provider '{rule.requires.provider_name}', "
                                 "which is not in providers")
        return self


class OAuth2CookieNames(Msg):
    """The cookies' names (Envoy's, where empty)."""

    bearer_token: str = ""
    oauth_hmac: str = ""
    oauth_expires: str = ""
    id_token: str = ""
    refresh_token: str = ""
    oauth_nonce: str = ""
    code_verifier: str = ""


class OAuth2Credentials(Msg):
    client_id: str = Field(min_length=1)
    token_secret: SdsSecretConfig
    """The client secret: an SDS ``generic_secret``."""
    hmac_secret: SdsSecretConfig
    """What signs (and encrypts) the cookies: an SDS ``generic_secret``, the only trust
    anchor of a login."""
    cookie_names: OAuth2CookieNames = OAuth2CookieNames()
    cookie_domain: str = ""


class OAuth2CookieConfig(Msg):
    same_site: Literal["DISABLED", "STRICT", "LAX", "NONE"] = "DISABLED"
    path: str = ""
    """The cookie's Path (``/`` when empty)."""


class OAuth2CookieConfigs(Msg):
    bearer_token_cookie_config: OAuth2CookieConfig = OAuth2CookieConfig()
    oauth_hmac_cookie_config: OAuth2CookieConfig = OAuth2CookieConfig()
    oauth_expires_cookie_config: OAuth2CookieConfig = OAuth2CookieConfig()
    id_token_cookie_config: OAuth2CookieConfig = OAuth2CookieConfig()
    refresh_token_cookie_config: OAuth2CookieConfig = OAuth2CookieConfig()
    oauth_nonce_cookie_config: OAuth2CookieConfig = OAuth2CookieConfig()
    code_verifier_cookie_config: OAuth2CookieConfig = OAuth2CookieConfig()


class OAuth2Config(Msg):
    """A login at the edge: the authorization code flow with PKCE against an OAuth 2.0 /
    OpenID provider, the session kept in HMAC-signed cookies."""

    token_endpoint: HttpUri
    authorization_endpoint: str = Field(min_length=1)
    end_session_endpoint: str = ""
    """The provider's RP-initiated logout (OpenID): sign-out redirects there."""
    credentials: OAuth2Credentials
    redirect_uri: str = Field(min_length=1)
    """The callback URL, a format string (``%REQ(:authority)%``…)."""
    redirect_path_matcher: PathMatcher
    signout_path: PathMatcher
    forward_bearer_token: Bool = False
    preserve_authorization_header: Bool = False
    pass_through_matcher: list[HeaderMatcher] = []
    auth_scopes: list[str] = []
    """``user`` when empty, as in Envoy."""
    resources: list[str] = []
    auth_type: Literal["URL_ENCODED_BODY", "BASIC_AUTH"] = "URL_ENCODED_BODY"
    use_refresh_token: Bool | None = None
    """True when unset."""
    default_expires_in: Duration | None = None
    deny_redirect_matcher: list[HeaderMatcher] = []
    default_refresh_token_expires_in: Duration | None = None
    disable_id_token_set_cookie: Bool = False
    disable_access_token_set_cookie: Bool = False
    disable_refresh_token_set_cookie: Bool = False
    cookie_configs: OAuth2CookieConfigs = OAuth2CookieConfigs()
    stat_prefix: str = ""
    csrf_token_expires_in: Duration | None = None
    code_verifier_token_expires_in: Duration | None = None
    disable_token_encryption: Bool = False

    @model_validator(mode="after")
    def _checks(self) -> OAuth2Config:
        if self.end_session_endpoint and "openid" not in self.auth_scopes:
            raise ValueError("end_session_endpoint is only supported for OpenID Connect: "
                             "auth_scopes must include openid")
        url = urllib.parse.urlsplit(self.authorization_endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"invalid authorization endpoint URL "
                             f"'{self.authorization_endpoint}'")
        return self


class OAuth2(TypedMsg):
    """envoy.filters.http.oauth2."""

    config: OAuth2Config | None = None
    """None: the filter lets everything through (Envoy's empty OAuth2)."""


class StatusCodeInput(TypedMsg):
    """The response's status code, as text (``502``)."""


class StatusClassInput(TypedMsg):
    """The response's status class, as text (``5xx``)."""


if TYPE_CHECKING:
    MatchInput = StatusCodeInput | StatusClassInput
else:
    MatchInput = by_type((STATUS_CODE_INPUT_TYPE, StatusCodeInput),
                         (STATUS_CLASS_INPUT_TYPE, StatusClassInput))


class TypedInput(Msg):
    name: str = ""
    typed_config: MatchInput


class SinglePredicate(Msg):
    input: TypedInput
    value_match: StringMatcher


class PredicateList(Msg):
    predicate: list[Predicate] = Field(min_length=2)


class Predicate(Msg):
    """xds.type.matcher.v3.Matcher.MatcherList.Predicate."""

    single_predicate: SinglePredicate | None = None
    or_matcher: PredicateList | None = None
    and_matcher: PredicateList | None = None
    not_matcher: Predicate | None = None

    @model_validator(mode="after")
    def _one(self) -> Predicate:
        one_of(self, ("single_predicate", "or_matcher", "and_matcher", "not_matcher"))
        return self


PredicateList.model_rebuild()


class LocalResponsePolicy(TypedMsg):
    """The reply that replaces a matched response."""

    body: DataSource | None = None
    body_format: SubstitutionFormatString | None = None
    status_code: UInt32 | None = Field(default=None, ge=100, lt=600)
    response_headers_to_add: list[HeaderValueOption] = Field(default=[], max_length=1000)


if TYPE_CHECKING:
    ResponsePolicy = LocalResponsePolicy
else:
    ResponsePolicy = by_type((LOCAL_RESPONSE_POLICY_TYPE, LocalResponsePolicy))


class TypedAction(Msg):
    name: str = ""
    typed_config: ResponsePolicy


class OnMatch(Msg):
    action: TypedAction


class FieldMatcher(Msg):
    predicate: Predicate
    on_match: OnMatch


class MatcherList(Msg):
    matchers: list[FieldMatcher] = Field(min_length=1)


class ResponseMatcher(Msg):
    """xds.type.matcher.v3.Matcher, on a response's status: the first that matches."""

    matcher_list: MatcherList
    on_no_match: OnMatch | None = None


class CustomResponse(TypedMsg):
    """envoy.filters.http.custom_response: a backend's response replaced by a reply of
    the gateway's own (its status, body and format) when the matcher says so."""

    custom_response_matcher: ResponseMatcher


if TYPE_CHECKING:  # what the discriminated unions below hold, for the type checker
    HttpFilterConfig = Router | HTTPFault | LocalRateLimit | RBAC | BasicAuth | ExtAuthz | \
        HeaderMutation | Compressor | CustomResponse | Geoip | OAuth2 | JwtAuthentication
    FilterPerRoute = HTTPFault | LocalRateLimit | RBACPerRoute | BasicAuthPerRoute | \
        ExtAuthzPerRoute | HeaderMutationPerRoute | CompressorPerRoute
else:
    HttpFilterConfig = by_type((ROUTER_TYPE, Router), (FAULT_TYPE, HTTPFault),
                                (LOCAL_RATELIMIT_TYPE, LocalRateLimit), (RBAC_TYPE, RBAC),
                                (BASIC_AUTH_TYPE, BasicAuth), (EXT_AUTHZ_TYPE, ExtAuthz),
                                (HEADER_MUTATION_TYPE, HeaderMutation),
                                (COMPRESSOR_TYPE, Compressor),
                                (CUSTOM_RESPONSE_TYPE, CustomResponse),
                                (GEOIP_TYPE, Geoip), (OAUTH2_TYPE, OAuth2),
                                (JWT_AUTHN_TYPE, JwtAuthentication))
    FilterPerRoute = by_type((FAULT_TYPE, HTTPFault), (LOCAL_RATELIMIT_TYPE, LocalRateLimit),
                             (RBAC_PER_ROUTE_TYPE, RBACPerRoute),
                             (BASIC_AUTH_PER_ROUTE_TYPE, BasicAuthPerRoute),
                             (EXT_AUTHZ_PER_ROUTE_TYPE, ExtAuthzPerRoute),
                             (HEADER_MUTATION_PER_ROUTE_TYPE, HeaderMutationPerRoute),
                             (COMPRESSOR_PER_ROUTE_TYPE, CompressorPerRoute))


class FilterConfig(TypedMsg):
    """``envoy.config.route.v3.FilterConfig``: what a route (or virtual host) says of one
    HTTP filter: ``disabled`` turns it off there; otherwise the filter runs there, even one
    its chain lists as ``disabled``, with ``config`` as its per-route config (an empty
    ``config: {}`` enables it with its own settings). Envoy Gateway turns filters on per
    route this way."""

    config: FilterPerRoute | None = None
    is_optional: Bool = False
    disabled: Bool = False

    @model_validator(mode="before")
    @classmethod
    def _empty_any(cls, v: Any) -> Any:
        """``config: {}`` (an Any with no type) enables the filter with no per-route config,
        as Envoy reads it; neither ``config`` nor ``disabled`` says nothing, which Envoy
        refuses."""
        if not isinstance(v, dict):
            return v
        if "config" not in v and not v.get("disabled"):
            raise PydanticCustomError(
                "empty_filter_config", "a FilterConfig needs a config (an empty one turns "
                "the filter on with its own settings) or disabled: true, as in Envoy")
        if v.get("config") == {}:
            return {k: x for k, x in v.items() if k != "config"}
        return v


if TYPE_CHECKING:
    PerFilterConfig = FilterPerRoute | FilterConfig
else:
    PerFilterConfig = by_type((FAULT_TYPE, HTTPFault), (LOCAL_RATELIMIT_TYPE, LocalRateLimit),
                              (RBAC_PER_ROUTE_TYPE, RBACPerRoute),
                              (BASIC_AUTH_PER_ROUTE_TYPE, BasicAuthPerRoute),
                              (EXT_AUTHZ_PER_ROUTE_TYPE, ExtAuthzPerRoute),
                              (HEADER_MUTATION_PER_ROUTE_TYPE, HeaderMutationPerRoute),
                              (COMPRESSOR_PER_ROUTE_TYPE, CompressorPerRoute),
                              (FILTER_CONFIG_TYPE, FilterConfig))


class Route(HeaderMutations):
    name: str = ""
    typed_per_filter_config: dict[str, PerFilterConfig] = {}
    match: RouteMatch
    route: RouteAction | None = None
    redirect: RedirectAction | None = None
    direct_response: DirectResponseAction | None = None
    metadata: Metadata | None = None
    """edgegw reads ``edgegw.webroot``: a direct_response route that serves ACME HTTP-01
    challenge files from that directory (Envoy answers the direct response)."""

    @model_validator(mode="after")
    def _action(self) -> Route:
        one_of(self, ("route", "redirect", "direct_response"))
        webroot = self.metadata.ours("webroot") if self.metadata else None
        if webroot is not None and (self.direct_response is None or not isinstance(webroot, str)):
            raise ValueError("metadata edgegw.webroot (a directory) needs a direct_response "
                             "route, whose answer is what Envoy and a missing file give")
        return self


class VirtualHost(HeaderMutations):
    name: str = Field(min_length=1)
    metadata: Metadata | None = None
    """Kept and acted on by nothing (as in Envoy with no filter that reads it; Envoy Gateway
    names the Kubernetes resources there)."""
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
