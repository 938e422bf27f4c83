"""Shared pieces of the config model: the base message, Envoy's scalar types (durations,
booleans, integers) read as Envoy reads them, ``@type`` URLs and the helpers that check them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

T = "type.googleapis.com/envoy."
LISTENER_TYPE = T + "config.listener.v3.Listener"
CLUSTER_TYPE = T + "config.cluster.v3.Cluster"
ROUTES_TYPE = T + "config.route.v3.RouteConfiguration"
ENDPOINTS_TYPE = T + "config.endpoint.v3.ClusterLoadAssignment"
HCM_TYPE = T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY_TYPE = T + "extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_TYPE = T + "extensions.filters.http.router.v3.Router"
TLS_INSPECTOR_TYPE = T + "extensions.filters.listener.tls_inspector.v3.TlsInspector"
PROXY_PROTOCOL_TYPE = T + "extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
DOWNSTREAM_TLS_TYPE = T + "extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_TYPE = T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext"
XFF_DETECTION_TYPE = T + "extensions.http.original_ip_detection.xff.v3.XffConfig"
CUSTOM_HEADER_DETECTION_TYPE = (T + "extensions.http.original_ip_detection.custom_header.v3."
                                "CustomHeaderConfig")
RAW_BUFFER_TYPE = T + "extensions.transport_sockets.raw_buffer.v3.RawBuffer"
PROXY_PROTOCOL_UPSTREAM_TYPE = (T + "extensions.transport_sockets.proxy_protocol.v3."
                                "ProxyProtocolUpstreamTransport")
SECRET_TYPE = T + "extensions.transport_sockets.tls.v3.Secret"
STDOUT_LOG_TYPE = T + "extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_LOG_TYPE = T + "extensions.access_loggers.stream.v3.StderrAccessLog"
FILE_LOG_TYPE = T + "extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS_TYPE = T + "extensions.upstreams.http.v3.HttpProtocolOptions"
FAULT_TYPE = T + "extensions.filters.http.fault.v3.HTTPFault"
LOCAL_RATELIMIT_TYPE = T + "extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
RBAC_TYPE = T + "extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC_TYPE = T + "extensions.filters.network.rbac.v3.RBAC"
EXT_AUTHZ_TYPE = T + "extensions.filters.http.ext_authz.v3.ExtAuthz"
EXT_AUTHZ_PER_ROUTE_TYPE = T + "extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
HEADER_MUTATION_TYPE = T + "extensions.filters.http.header_mutation.v3.HeaderMutation"
COMPRESSOR_TYPE = T + "extensions.filters.http.compressor.v3.Compressor"
GEOIP_TYPE = T + "extensions.filters.http.geoip.v3.Geoip"
OAUTH2_TYPE = T + "extensions.filters.http.oauth2.v3.OAuth2"
JWT_AUTHN_TYPE = T + "extensions.filters.http.jwt_authn.v3.JwtAuthentication"
MAXMIND_TYPE = T + "extensions.geoip_providers.maxmind.v3.MaxMindConfig"
CUSTOM_RESPONSE_TYPE = T + "extensions.filters.http.custom_response.v3.CustomResponse"
LOCAL_RESPONSE_POLICY_TYPE = \
    T + "extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy"
STATUS_CODE_INPUT_TYPE = T + "type.matcher.v3.HttpResponseStatusCodeMatchInput"
STATUS_CLASS_INPUT_TYPE = T + "type.matcher.v3.HttpResponseStatusCodeClassMatchInput"
COMPRESSOR_PER_ROUTE_TYPE = T + "extensions.filters.http.compressor.v3.CompressorPerRoute"
GZIP_TYPE = T + "extensions.compression.gzip.compressor.v3.Gzip"
BROTLI_TYPE = T + "extensions.compression.brotli.compressor.v3.Brotli"
ZSTD_TYPE = T + "extensions.compression.zstd.compressor.v3.Zstd"
HEADER_MUTATION_PER_ROUTE_TYPE = \
    T + "extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
BASIC_AUTH_TYPE = T + "extensions.filters.http.basic_auth.v3.BasicAuth"
BASIC_AUTH_PER_ROUTE_TYPE = T + "extensions.filters.http.basic_auth.v3.BasicAuthPerRoute"
RBAC_PER_ROUTE_TYPE = T + "extensions.filters.http.rbac.v3.RBACPerRoute"
FILTER_CONFIG_TYPE = T + "config.route.v3.FilterConfig"


class Msg(BaseModel):
    """Base of every config message: immutable, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


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


def typed_as(*urls: str) -> BeforeValidator:
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


def one_of(model: BaseModel, names: tuple[str, ...], required: bool = True) -> None:
    given = [n for n in names if getattr(model, n) not in (None, "", False)]
    if len(given) > 1:
        raise ValueError(f"only one of {', '.join(names)} may be set (got {', '.join(given)})")
    if required and not given:
        raise ValueError(f"one of {', '.join(names)} must be set")


def named_filter(v: Any, allowed: tuple[str, ...], what: str, typed_required: bool) -> Any:
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


def by_type(*members: tuple[str, type[TypedMsg]]) -> Any:
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
