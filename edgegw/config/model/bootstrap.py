"""The bootstrap: node, admin, static and dynamic resources."""

from __future__ import annotations

from typing import Any

from pydantic import PrivateAttr

from .base import Msg
from .cluster import Cluster
from .core import Address
from .listener import Listener
from .tls import Secret


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
