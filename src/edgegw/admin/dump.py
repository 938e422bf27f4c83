"""/config_dump in Envoy's shape: bootstrap, clusters, listeners, routes and secrets.

Built from the bootstrap exactly as it was given (after ``--config-yaml`` merging), with
private keys, passwords and basic_auth users shown as ``[redacted]``, as Envoy shows them. ``?resource=`` picks
one repeated field across the dumps and ``?mask=`` keeps only the named fields.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from ..config.model.base import CLUSTER_TYPE as CLUSTER
from ..config.model.base import LISTENER_TYPE as LISTENER
from ..config.model.base import ROUTES_TYPE as ROUTES
from ..config.model.base import SECRET_TYPE as SECRET

ADMIN = "type.googleapis.com/envoy.admin.v3."
REDACTED = "[redacted]"


def redact(value: Any, key: str = "") -> Any:
    """A deep copy with private keys, passwords, generic secrets (oauth2's client secret and
    HMAC key) and basic_auth users (their hashes) replaced by ``[redacted]``."""
    if isinstance(value, dict):
        if key in ("private_key", "password", "secret", "users", "basic_auth_users"):
            return {k: (REDACTED if k in ("inline_string", "inline_bytes") else v)
                    for k, v in value.items()}
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    return value


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _routes(listeners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for lst in listeners:
        for fc in lst.get("filter_chains", []) + ([lst["default_filter_chain"]]
                                                   if "default_filter_chain" in lst else []):
            for f in fc.get("filters", []):
                rc = f.get("typed_config", {}).get("route_config")
                if rc is not None:
                    out.append({"@type": ROUTES, **rc})
    return out


def build(raw: dict[str, Any], loaded_at: float, secrets: list[dict[str, Any]],
          dynamic: dict[str, list[dict[str, Any]]] | None = None,
          routes: list[tuple[str, dict[str, Any], float]] | None = None,
          versions: Callable[[str, str], tuple[str, float]] | None = None,
          warming: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """``dynamic``: listeners and clusters from LDS/CDS files or a control plane, dumped as
    Envoy dumps resources it received (``dynamic_listeners``, ``dynamic_active_clusters``),
    each with the version that brought it and when (``versions(field, name)``, for a control
    plane's). ``routes``: the route configurations RDS gave, each (version_info, as given,
    when). ``warming``: the listeners waiting for their RDS or SDS (``warming_state``)."""
    raw = redact(copy.deepcopy(raw))
    dyn = redact(copy.deepcopy(dynamic or {}))
    stamp = _stamp(loaded_at)
    sr = raw.get("static_resources", {})
    clusters: dict[str, Any] = {"@type": ADMIN + "ClustersConfigDump", "static_clusters": [
        {"cluster": {"@type": CLUSTER, **c}, "last_updated": stamp}
        for c in sr.get("clusters", [])]}

    def version(field: str, name: str) -> tuple[str, str]:
        got, at = versions(field, name) if versions else ("", 0.0)
        return got, _stamp(at) if at else stamp

    if dyn.get("clusters"):
        clusters["dynamic_active_clusters"] = [
            {"version_info": v, "cluster": {"@type": CLUSTER, **c}, "last_updated": at}
            for c in dyn["clusters"] for v, at in [version("clusters", c.get("name", ""))]]
    listeners: dict[str, Any] = {"@type": ADMIN + "ListenersConfigDump", "static_listeners": [
        {"listener": {"@type": LISTENER, **lst}, "last_updated": stamp}
        for lst in sr.get("listeners", [])]}
    if dyn.get("listeners"):
        listeners["dynamic_listeners"] = [
            {"name": lst.get("name", ""),
             "warming_state" if lst.get("name", "") in warming else "active_state": {
                "version_info": v, "listener": {"@type": LISTENER, **lst},
                "last_updated": at}} for lst in dyn["listeners"]
            for v, at in [version("listeners", lst.get("name", ""))]]
    return [
        {"@type": ADMIN + "BootstrapConfigDump", "bootstrap": raw, "last_updated": stamp},
        clusters,
        listeners,
        {"@type": ADMIN + "RoutesConfigDump", "static_route_configs": [
            {"route_config": rc, "last_updated": stamp}
            for rc in _routes([*sr.get("listeners", []), *dyn.get("listeners", [])])],
         **({"dynamic_route_configs": [
             {"version_info": version, "route_config": redact(rc), "last_updated": _stamp(at)}
             for version, rc, at in routes]} if routes else {})},
        {"@type": ADMIN + "SecretsConfigDump",
         "static_secrets": [{"name": s.get("name"), "last_updated": stamp,
                             "secret": {"@type": SECRET, **s}}
                            for s in sr.get("secrets", [])],
         "dynamic_active_secrets": [redact(s) for s in secrets]},
    ]


_ITEM_TYPES = {
    "static_clusters": "ClustersConfigDump.StaticCluster",
    "static_listeners": "ListenersConfigDump.StaticListener",
    "dynamic_listeners": "ListenersConfigDump.DynamicListener",
    "dynamic_active_clusters": "ClustersConfigDump.DynamicCluster",
    "static_route_configs": "RoutesConfigDump.StaticRouteConfig",
    "dynamic_route_configs": "RoutesConfigDump.DynamicRouteConfig",
    "static_secrets": "SecretsConfigDump.StaticSecret",
    "dynamic_active_secrets": "SecretsConfigDump.DynamicSecret",
}


def _mask(doc: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"@type": doc["@type"]} if "@type" in doc else {}
    for path in paths:
        src: Any = doc
        for part in path:
            src = src.get(part) if isinstance(src, dict) else None
        if src is None:
            continue
        dst = out
        for part in path[:-1]:
            dst = dst.setdefault(part, {})
        dst[path[-1]] = src
    return out


def select(configs: list[dict[str, Any]], resource: str | None, mask: str | None
           ) -> dict[str, Any]:
    """Applies ``?resource=`` and ``?mask=`` as Envoy does."""
    if resource:
        items = []
        for c in configs:
            for item in c.get(resource, []):
                kind = _ITEM_TYPES.get(resource)
                items.append({"@type": ADMIN + kind, **item} if kind else item)
        if not items:
            return {}  # what Envoy answers when the resource has no entries
        configs = items
    if mask:
        paths = [p.split(".") for p in mask.split(",") if p]
        configs = [_mask(c, paths) for c in configs]
    return {"configs": configs}
