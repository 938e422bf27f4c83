"""Listeners: addresses, filter chains, their match and listener filters."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import (
    HCM_TYPE,
    NETWORK_RBAC_TYPE,
    PROXY_PROTOCOL_TYPE,
    TCP_PROXY_TYPE,
    TLS_INSPECTOR_TYPE,
    Bool,
    Duration,
    Msg,
    TypedMsg,
    UInt32,
    by_type,
    named_filter,
)
from .core import Address, Metadata, PassThroughTlvs
from .hcm import HttpConnectionManager
from .route import RbacRules
from .tcp import TcpProxy
from .tls import DownstreamTransportSocket


class TlsInspector(TypedMsg):
    pass


class ProxyProtocol(TypedMsg):
    """envoy.filters.listener.proxy_protocol (v1 and v2, chosen per connection)."""

    allow_requests_without_proxy_protocol: Bool = False
    pass_through_tlvs: PassThroughTlvs | None = None
    disallowed_versions: list[Literal["V1", "V2"]] = []
    stat_prefix: str = ""


TLS_INSPECTOR_NAMES = ("envoy.filters.listener.tls_inspector", "envoy.listener.tls_inspector")
PROXY_PROTOCOL_NAMES = ("envoy.filters.listener.proxy_protocol", "envoy.listener.proxy_protocol")

if TYPE_CHECKING:
    ListenerFilterConfig = TlsInspector | ProxyProtocol
else:
    ListenerFilterConfig = by_type((TLS_INSPECTOR_TYPE, TlsInspector),
                                   (PROXY_PROTOCOL_TYPE, ProxyProtocol))


class ListenerFilter(Msg):
    name: str
    typed_config: ListenerFilterConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return named_filter(v, TLS_INSPECTOR_NAMES + PROXY_PROTOCOL_NAMES, "listener filter",
                            typed_required=False)

    @property
    def config(self) -> TlsInspector | ProxyProtocol:
        """The typed config, or the default one a bare name stands for."""
        if self.typed_config is not None:
            return self.typed_config
        return ProxyProtocol() if self.name in PROXY_PROTOCOL_NAMES else TlsInspector()


class FilterChainMatch(Msg):
    server_names: list[str] = []
    transport_protocol: Literal["", "tls", "raw_buffer"] = ""
    application_protocols: list[str] = []


class NetworkRbac(TypedMsg):
    """envoy.filters.network.rbac: principals and permissions (destination_port, any …) for
    a whole connection, before its HTTP connection manager or TCP proxy."""

    stat_prefix: str = Field(min_length=1)
    rules: RbacRules | None = None
    shadow_rules: RbacRules | None = None
    shadow_rules_stat_prefix: str = ""
    enforcement_type: Literal["ONE_TIME_ON_FIRST_BYTE"] = "ONE_TIME_ON_FIRST_BYTE"


if TYPE_CHECKING:  # what the discriminated union holds, for the type checker
    NetworkFilterConfig = HttpConnectionManager | TcpProxy | NetworkRbac
else:
    NetworkFilterConfig = by_type((HCM_TYPE, HttpConnectionManager), (TCP_PROXY_TYPE, TcpProxy),
                                  (NETWORK_RBAC_TYPE, NetworkRbac))


class NetworkFilter(Msg):
    """A filter chain's one network filter: the HTTP connection manager or the TCP proxy."""

    name: str
    typed_config: NetworkFilterConfig

    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return named_filter(v, ("envoy.filters.network.http_connection_manager",
                                "envoy.http_connection_manager",
                                "envoy.filters.network.tcp_proxy", "envoy.tcp_proxy",
                                "envoy.filters.network.rbac"),
                            "network filter", typed_required=True)


class FilterChain(Msg):
    name: str = ""
    metadata: Metadata | None = None
    filter_chain_match: FilterChainMatch = FilterChainMatch()
    filters: list[NetworkFilter] = Field(min_length=1, max_length=2)
    transport_socket: DownstreamTransportSocket | None = None

    @model_validator(mode="after")
    def _terminal(self) -> FilterChain:
        *first, last = [f.typed_config for f in self.filters]
        if isinstance(last, NetworkRbac) or any(not isinstance(f, NetworkRbac) for f in first):
            raise ValueError("filters: the http_connection_manager or tcp_proxy, optionally "
                             "after one envoy.filters.network.rbac")
        return self

    @property
    def terminal(self) -> HttpConnectionManager | TcpProxy:
        """The filter that handles the bytes (the last one)."""
        t = self.filters[-1].typed_config
        assert not isinstance(t, NetworkRbac)
        return t

    @property
    def network_rbac(self) -> NetworkRbac | None:
        t = self.filters[0].typed_config
        return t if isinstance(t, NetworkRbac) else None


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


DNS_NEEDS = {"rfc2136": ("server", "tsig_key"), "exec": ("command",), "httpreq": ("endpoint",),
             "acme-dns": ("endpoint",), "cloudflare": ("api_token_file",)}


class AcmeDns(Msg):
    """edgegw-only: DNS-01 through the zone's DNS, for every name (wildcards too)."""

    provider: Literal["rfc2136", "exec", "httpreq", "acme-dns", "cloudflare"]
    server: str | None = None
    """rfc2136: the zone's primary server, ``host`` or ``host:port``."""
    tsig_key: str | None = None
    """rfc2136: the key file, as BIND's ``tsig-keygen`` writes it."""
    command: str | None = None
    """exec: run as ``COMMAND present|cleanup FQDN VALUE``."""
    endpoint: str | None = None
    """httpreq: the base URL of lego's ``/present`` and ``/cleanup``; acme-dns: the
    server's API; cloudflare: another API base than Cloudflare's own."""
    api_token_file: str | None = None
    """cloudflare: the file holding an API token with Zone.DNS edit rights."""
    username: str | None = None
    password_file: str | None = None
    resolvers: list[str] = []
    """Where zones, CNAMEs and name servers are looked up (``host:port``); when empty, the
    rfc2136 ``server``, else the system's resolvers."""
    propagation_timeout: Duration = Field(default=120.0, gt=0)
    propagation_check: Literal["authoritative", "resolvers", "off"] = "authoritative"
    """Before the CA looks, wait until the record is served by every authoritative server
    of its zone (its NS, on port 53; the rfc2136 ``server``'s address on its port), or by
    each of ``resolvers``, or do not wait."""

    @model_validator(mode="after")
    def _complete(self) -> AcmeDns:
        missing = [f for f in DNS_NEEDS[self.provider] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"the {self.provider} provider needs {' and '.join(missing)}")
        return self


class AcmeEab(Msg):
    """edgegw-only: an external account binding, for CAs that ask one (ZeroSSL, Google)."""

    kid: str = Field(min_length=1)
    hmac_key_file: str
    """The file holding the base64url HMAC key the CA gave (never inline)."""


class Acme(Msg):
    """edgegw-only (the listener's ``metadata.filter_metadata.edgegw.acme``; Envoy keeps and
    ignores it): certificates for ``names`` obtained and renewed by HTTP-01, or DNS-01 when
    ``dns`` is given, and written into ``certificates``, the directory the listener's chains
    serve from. Under DNS-01, ``*.NAME`` and ``NAME`` share one certificate."""

    email: str = Field(min_length=3)
    directory: str = LETS_ENCRYPT
    ca: str | None = None
    """The CA file that signs the ACME server's own HTTPS certificate (a test server such as
    pebble); the system's trust by default."""
    names: list[str] = Field(min_length=1)
    certificates: str = "certs"
    webroot: str = "webroot"
    """Where HTTP-01 answers are written; a route with ``edgegw.webroot`` serves them."""
    renew_interval: Duration = Field(default=3600.0, gt=0)
    """How often certificates are looked at; each is renewed when the CA's renewal info
    (ARI) says, or at two thirds of its life where the CA has none."""
    dns: AcmeDns | None = None
    profile: str | None = None
    """The CA's certificate profile (Let's Encrypt: ``classic``, ``tlsserver``,
    ``shortlived``)."""
    eab: AcmeEab | None = None


class CrowdSec(Msg):
    """edgegw-only (the listener's ``metadata.filter_metadata.edgegw.crowdsec``): a CrowdSec
    bouncer. Bans refuse connections as they are accepted, and every decision refuses its
    client's requests with a 403 page."""

    url: str = Field(pattern=r"^https?://")
    """The Local API (``http://127.0.0.1:8080``)."""
    api_key_file: str
    """The file holding the bouncer's key (``cscli bouncers add edgegw``; never inline)."""
    poll_interval: Duration = Field(default=10.0, gt=0)
    """How often the decision stream is asked for what changed."""

    @model_validator(mode="after")
    def _key(self) -> CrowdSec:
        if not os.path.isfile(self.api_key_file):
            raise ValueError(f"api_key_file: '{self.api_key_file}' is not a file (relative "
                             f"paths start where the gateway runs: {os.getcwd()})")
        return self


class ListenerEdgegw(Msg):
    acme: Acme | None = None
    crowdsec: CrowdSec | None = None


class ListenerFilterMetadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    edgegw: ListenerEdgegw | None = None


class ListenerMetadata(Msg):
    """A listener's ``config.core.v3.Metadata``: other namespaces are kept and ignored, as
    Envoy does; edgegw reads its own."""

    filter_metadata: ListenerFilterMetadata = ListenerFilterMetadata()


class Listener(Msg):
    name: str = ""
    address: Address
    metadata: ListenerMetadata | None = None
    listener_filters: list[ListenerFilter] = []
    listener_filters_timeout: Duration = 15.0
    filter_chains: list[FilterChain] = []
    default_filter_chain: FilterChain | None = None
    per_connection_buffer_limit_bytes: UInt32 = Field(default=1024 * 1024, ge=1)
    max_connections_to_accept_per_socket_event: UInt32 | None = Field(default=None, gt=0)
    """How many pending connections one wake-up of the listener accepts before the loop
    turns to other work (Envoy Gateway sets 1); unset: up to 64."""
    tcp_backlog_size: UInt32 | None = None
    ignore_global_conn_limit: Bool = False

    @property
    def acme(self) -> Acme | None:
        own = self.metadata.filter_metadata.edgegw if self.metadata else None
        return own.acme if own else None

    @property
    def crowdsec(self) -> CrowdSec | None:
        own = self.metadata.filter_metadata.edgegw if self.metadata else None
        return own.crowdsec if own else None

    @property
    def proxy_protocol(self) -> ProxyProtocol | None:
        for f in self.listener_filters:
            if isinstance(f.config, ProxyProtocol):
                return f.config
        return None

    @model_validator(mode="after")
    def _filters(self) -> Listener:
        kinds = [type(f.config).__name__ for f in self.listener_filters]
        if len(set(kinds)) != len(kinds):
            raise ValueError("listener_filters: each listener filter at most once")
        if kinds == ["TlsInspector", "ProxyProtocol"]:
            raise ValueError("listener_filters: put proxy_protocol before tls_inspector (the "
                             "PROXY header comes before the ClientHello)")
        return self

    @model_validator(mode="after")
    def _chains(self) -> Listener:
        if not self.filter_chains and self.default_filter_chain is None:
            raise ValueError("a listener needs filter_chains or a default_filter_chain")
        return self
