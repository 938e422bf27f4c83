"""TLS: ``DownstreamTlsContext``, ``UpstreamTlsContext``, SDS secret configs and ``Secret``."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import (
    DOWNSTREAM_TLS_TYPE,
    PROXY_PROTOCOL_UPSTREAM_TYPE,
    RAW_BUFFER_TYPE,
    UPSTREAM_TLS_TYPE,
    Bool,
    Duration,
    Msg,
    TypedMsg,
    by_type,
    named_filter,
    one_of,
    typed_as,
)
from .core import ConfigSource, DataSource, PassThroughTlvs, StringMatcher, WatchedDirectory


class TlsCertificate(Msg):
    certificate_chain: DataSource
    private_key: DataSource
    watched_directory: WatchedDirectory | None = None


class SdsSecretConfig(Msg):
    """A named secret: from an SDS file when ``sds_config`` is set, else from
    ``static_resources.secrets``."""

    name: str = Field(min_length=1)
    sds_config: ConfigSource | None = None


TlsVersion = Literal["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"]


CURVES = {"X25519": "X25519", "P-256": "P-256", "P-384": "P-384", "P-521": "P-521"}
"""Envoy's (BoringSSL's) group names that OpenSSL 3.0 also has; the post-quantum hybrids are
BoringSSL's alone."""


def cipher_names(entry: str) -> list[str]:
    """One cipher_suites entry: a name, or BoringSSL's equal-preference group ``[A|B]``."""
    return entry.strip("[]").split("|") if entry.startswith("[") else [entry]


def _ciphers(v: list[str]) -> list[str]:
    for entry in v:
        for name in cipher_names(entry):
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(name)
            except ssl.SSLError:
                raise PydanticCustomError(
                    "cipher", "'{name}' is not a cipher suite OpenSSL knows (write OpenSSL "
                    "names, e.g. ECDHE-ECDSA-AES128-GCM-SHA256)", {"name": name}) from None
    return v


def _curves(v: list[str]) -> list[str]:
    for name in v:
        if name not in CURVES:
            raise PydanticCustomError(
                "curve", "'{name}' is not a curve edgegw supports; use {known}",
                {"name": name, "known": ", ".join(CURVES)})
    return v


class TlsParameters(Msg):
    tls_minimum_protocol_version: TlsVersion = "TLS_AUTO"
    tls_maximum_protocol_version: TlsVersion = "TLS_AUTO"
    cipher_suites: Annotated[list[str], AfterValidator(_ciphers)] = []
    ecdh_curves: Annotated[list[str], AfterValidator(_curves)] = []


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


class GenericSecret(Msg):
    secret: DataSource


class Secret(Msg):
    """``extensions.transport_sockets.tls.v3.Secret``: what an SDS file carries."""

    name: str = Field(min_length=1)
    tls_certificate: TlsCertificate | None = None
    validation_context: CertificateValidationContext | None = None
    generic_secret: GenericSecret | None = None
    """Bytes a filter keeps secret (oauth2's client secret and HMAC key)."""

    @model_validator(mode="after")
    def _one(self) -> Secret:
        one_of(self, ("tls_certificate", "validation_context", "generic_secret"))
        return self


class TlsSessionTicketKeys(Msg):
    keys: list[DataSource] = Field(min_length=1)
    """80 bytes each (``openssl rand 80``); the first one is used."""


class DownstreamTlsContext(Msg):
    common_tls_context: CommonTlsContext = CommonTlsContext()
    require_client_certificate: Bool = False
    disable_stateless_session_resumption: Bool = False
    """No session tickets (TLS 1.2 and 1.3): each connection makes a full handshake, as
    Envoy Gateway sets it."""
    disable_stateful_session_resumption: Bool = False
    """No session cache (TLS 1.2 session IDs, each worker's own)."""
    session_ticket_keys: TlsSessionTicketKeys | None = None
    """Keys every worker (and every other node with the same keys) encrypts tickets with;
    by default one made at start, shared by the workers and rotated every 12 hours."""
    session_timeout: Duration | None = Field(default=None, ge=0)
    """How long a session may be resumed (OpenSSL's default, 7200 s, when unset)."""

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


class UpstreamTlsContext(TypedMsg):
    common_tls_context: CommonTlsContext = CommonTlsContext()
    sni: str = Field(default="", max_length=255)


class RawBuffer(TypedMsg):
    """Plain TCP: the transport socket inside a PROXY protocol one, when there is no TLS."""


class ProxyProtocolConfig(Msg):
    version: Literal["V1", "V2"] = "V1"
    pass_through_tlvs: PassThroughTlvs | None = None


if TYPE_CHECKING:
    InnerSocketConfig = UpstreamTlsContext | RawBuffer
else:
    InnerSocketConfig = by_type((UPSTREAM_TLS_TYPE, UpstreamTlsContext),
                                (RAW_BUFFER_TYPE, RawBuffer))


class InnerTransportSocket(Msg):
    name: str = ""
    typed_config: InnerSocketConfig


class ProxyProtocolUpstreamTransport(TypedMsg):
    """A PROXY protocol header with the client's address before the inner transport's
    bytes (TLS included)."""

    config: ProxyProtocolConfig = ProxyProtocolConfig()
    transport_socket: InnerTransportSocket


_TLS_NAMES = ("envoy.transport_sockets.tls", "tls")


class DownstreamTransportSocket(Msg):
    name: str
    typed_config: Annotated[DownstreamTlsContext, typed_as(DOWNSTREAM_TLS_TYPE)]
    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return named_filter(v, _TLS_NAMES, "transport socket", typed_required=True)


if TYPE_CHECKING:
    UpstreamSocketConfig = UpstreamTlsContext | ProxyProtocolUpstreamTransport
else:
    UpstreamSocketConfig = by_type((UPSTREAM_TLS_TYPE, UpstreamTlsContext),
                                   (PROXY_PROTOCOL_UPSTREAM_TYPE, ProxyProtocolUpstreamTransport))


class UpstreamTransportSocket(Msg):
    name: str
    typed_config: UpstreamSocketConfig

    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return named_filter(v, (*_TLS_NAMES, "envoy.transport_sockets.upstream_proxy_protocol"),
                            "transport socket", typed_required=True)

    @property
    def tls(self) -> UpstreamTlsContext | None:
        """The TLS context, on its own or inside a PROXY protocol socket."""
        t = self.typed_config
        if isinstance(t, ProxyProtocolUpstreamTransport):
            inner = t.transport_socket.typed_config
            return inner if isinstance(inner, UpstreamTlsContext) else None
        return t

    @property
    def proxy_protocol(self) -> ProxyProtocolConfig | None:
        t = self.typed_config
        return t.config if isinstance(t, ProxyProtocolUpstreamTransport) else None
