"""Listeners: addresses, filter chains, their match and listener filters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from .base import (
    HCM_TYPE,
    TCP_PROXY_TYPE,
    TLS_INSPECTOR_TYPE,
    Bool,
    Duration,
    Msg,
    UInt32,
    by_type,
    named_filter,
    typed_as,
)
from .core import Address
from .hcm import HttpConnectionManager
from .tcp import TcpProxy
from .tls import DownstreamTransportSocket


class TlsInspector(Msg):
    pass


class ListenerFilter(Msg):
    name: str
    typed_config: Annotated[TlsInspector, typed_as(TLS_INSPECTOR_TYPE)] | None = None
    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return named_filter(v, ("envoy.filters.listener.tls_inspector", "envoy.listener.tls_inspector"),
                    "listener filter", typed_required=False)


if TYPE_CHECKING:  # what the discriminated union holds, for the type checker
    NetworkFilterConfig = HttpConnectionManager | TcpProxy
else:
    NetworkFilterConfig = by_type((HCM_TYPE, HttpConnectionManager), (TCP_PROXY_TYPE, TcpProxy))


class NetworkFilter(Msg):
    """A filter chain's one network filter: the HTTP connection manager or the TCP proxy."""

    name: str
    typed_config: NetworkFilterConfig

    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return named_filter(v, ("envoy.filters.network.http_connection_manager",
                                "envoy.http_connection_manager",
                                "envoy.filters.network.tcp_proxy", "envoy.tcp_proxy"),
                            "network filter", typed_required=True)


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
    tcp_backlog_size: UInt32 | None = None
    ignore_global_conn_limit: Bool = False

    @model_validator(mode="after")
    def _chains(self) -> Listener:
        if not self.filter_chains and self.default_filter_chain is None:
            raise ValueError("a listener needs filter_chains or a default_filter_chain")
        return self
