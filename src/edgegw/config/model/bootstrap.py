"""The bootstrap: node, admin, static and dynamic resources."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, PrivateAttr, model_validator

from .base import Duration, Int, Msg, T, named_filter, typed_as
from .cluster import Cluster
from .core import Address, ApiConfigSource, ConfigSource
from .listener import Listener
from .tls import Secret


class Node(Msg):
    id: str = ""
    cluster: str = ""
    metadata: dict[str, Any] = {}


class Admin(Msg):
    address: Address | None = None
    access_log_path: str = ""


class DynamicResources(Msg):
    """Listeners and clusters from files or a control plane; ``ads_config`` is the stream
    the ``ads: {}`` sources share."""

    lds_config: ConfigSource | None = None
    cds_config: ConfigSource | None = None
    ads_config: ApiConfigSource | None = None


class StaticResources(Msg):
    listeners: list[Listener] = []
    clusters: list[Cluster] = []
    secrets: list[Secret] = []


DOWNSTREAM_CONNECTIONS_TYPE = (T + "extensions.resource_monitors.downstream_connections.v3."
                               "DownstreamConnectionsConfig")
GLOBAL_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"


class DownstreamConnectionsConfig(Msg):
    max_active_downstream_connections: Int = Field(ge=1)


class ResourceMonitor(Msg):
    """The one monitor edgegw has: the global limit on active downstream connections."""

    name: str
    typed_config: Annotated[DownstreamConnectionsConfig, typed_as(DOWNSTREAM_CONNECTIONS_TYPE)]

    @model_validator(mode="before")
    @classmethod
    def _extension(cls, v: Any) -> Any:
        return named_filter(v, (GLOBAL_CONNECTIONS,), "resource monitor", typed_required=True)


class OverloadManager(Msg):
    """``overload_manager`` with resource monitors only: the connection limit is proactive
    (checked at each accept), so it takes no actions, as in Envoy."""

    refresh_interval: Duration | None = None
    resource_monitors: list[ResourceMonitor] = []

    @property
    def max_connections(self) -> int | None:
        limits = [r.typed_config.max_active_downstream_connections
                  for r in self.resource_monitors]
        return min(limits) if limits else None


class Bootstrap(Msg):
    node: Node = Node()
    admin: Admin = Admin()
    static_resources: StaticResources = StaticResources()
    dynamic_resources: DynamicResources | None = None
    overload_manager: OverloadManager = OverloadManager()
    _dynamic: dict[str, list[dict[str, Any]]] = PrivateAttr(default_factory=dict)
    """Listeners and clusters read from dynamic_resources' LDS/CDS files, as written (they
    are also in static_resources); set by the loader."""

    _files_seen: dict[str, tuple[str, int, int, int]] = PrivateAttr(default_factory=dict)
    """The config files as they were when they were read; set by the loader."""

    _notes: list[str] = PrivateAttr(default_factory=list)
    _left_out: list[dict[str, str]] = PrivateAttr(default_factory=list)
    """Sites of a sites file left out for their broken files; set by the loader."""

    _waiting: list[str] = PrivateAttr(default_factory=list)

    @property
    def waiting(self) -> list[str]:
        """Listeners a sites file asks for that are not there yet: not ready until they are."""
        return self._waiting

    @property
    def notes(self) -> list[str]:
        """What the user should know of a config that loads (e.g. a site left out)."""
        return self._notes

    @property
    def left_out(self) -> list[dict[str, str]]:
        """Each site left out: ``site``, ``where`` (its line) and ``why``."""
        return self._left_out

    @property
    def dynamic(self) -> dict[str, list[dict[str, Any]]]:
        return self._dynamic

    @property
    def files_seen(self) -> dict[str, tuple[str, int, int, int]]:
        return self._files_seen
