"""dynamic_resources: Envoy's LDS and CDS, from files (``path_config_source``) or a control
plane (``ads``, ``api_config_source``).

A file is a DiscoveryResponse (``resources:`` with ``@type`` Listener or Cluster); a control
plane's resources are what it last sent, given to ``expand`` as ``xds``. Either way they join
the static ones in one model, so everything downstream (checks, runtime, reload) treats them
alike; errors in them name the file or the resource. A change to a file reloads the config,
as Envoy reloads these files when they are moved into place.
"""

from __future__ import annotations

from typing import Any

from .model.base import CLUSTER_TYPE as CLUSTER
from .model.base import LISTENER_TYPE as LISTENER
from .source import ConfigError, Path, Source, file_signature, parse

KINDS = {"lds_config": ("listeners", LISTENER), "cds_config": ("clusters", CLUSTER)}
XdsResources = dict[str, list[dict[str, Any]]]
"""What a control plane sent and is accepted, by field (``listeners``, ``clusters``): each
resource as JSON, ``@type`` included."""


def files(data: dict[str, Any]) -> dict[str, str]:
    """The LDS/CDS file of each configured kind (``lds_config`` → path)."""
    dyn = data.get("dynamic_resources")
    out = {}
    for key in KINDS:
        cs = dyn.get(key) if isinstance(dyn, dict) else None
        if isinstance(cs, dict):
            pcs = cs.get("path_config_source")
            path = pcs.get("path") if isinstance(pcs, dict) else cs.get("path")
            if isinstance(path, str) and path:
                out[key] = path
    return out


def xds_kinds(data: dict[str, Any]) -> list[str]:
    """The fields (``clusters``, ``listeners``) a control plane gives, CDS first."""
    dyn = data.get("dynamic_resources")
    return [KINDS[key][0] for key in ("cds_config", "lds_config")
            if isinstance(dyn, dict) and isinstance(dyn.get(key), dict)
            and ("ads" in dyn[key] or "api_config_source" in dyn[key])]


def expand(src: Source, xds: XdsResources | None = None
           ) -> tuple[Source, dict[str, list[dict[str, Any]]], dict[Path, str]]:
    """Reads the LDS/CDS files, and takes the control plane's resources from ``xds``, into
    static_resources. Returns the combined source, the dynamic resources as given (for
    /config_dump's dynamic sections) and how to name their paths in errors
    (``static_resources.listeners[2]`` → ``lds.yaml: resources[0]``)."""
    data = dict(src.data)
    dyn = data.get("dynamic_resources")
    if not isinstance(dyn, dict):
        return src, {}, {}
    problems: list[str] = []
    static = dict(data.get("static_resources") or {})
    origins = dict(src.origins)
    names: dict[Path, str] = {}
    read: dict[str, list[dict[str, Any]]] = {}
    seen = dict(src.files_seen)
    for key, path in files(src.data).items():
        field, url = KINDS[key]
        seen[path] = file_signature(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            line = src.where(("dynamic_resources", key))
            problems.append(f"dynamic_resources.{key}: unable to read file '{path}': "
                            f"{e.strerror}" + (f" ({line})" if line else ""))
            continue
        try:
            doc = parse(text, path)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        resources = doc.data.get("resources")
        if not isinstance(resources, list):
            problems.append(f"{path}: needs a 'resources' list of {url.rsplit('.', 1)[-1]}s "
                            f"({path}:1)")
            continue
        base = len(static.get(field) or [])
        items: list[dict[str, Any]] = []
        for i, res in enumerate(resources):
            if not isinstance(res, dict) or res.get("@type") != url:
                problems.append(f"{path}: resources[{i}]: \"@type\" must be {url} "
                                f"({doc.where(('resources', i)) or path})")
                continue
            at = ("static_resources", field, base + len(items))
            names[at] = f"{path}: resources[{i}]"
            for p, w in doc.origins.items():
                if p[:2] == ("resources", i):
                    origins[at + p[2:]] = w
            items.append({k: v for k, v in res.items() if k != "@type"})
        static[field] = [*(static.get(field) or []), *items]
        read[field] = items
    for field in xds_kinds(src.data):
        base = len(static.get(field) or [])
        items = []
        for res in (xds or {}).get(field, []):
            names[("static_resources", field, base + len(items))] = \
                f"{field[:-1]} '{res.get('name', '')}'"
            items.append({k: v for k, v in res.items() if k != "@type"})
        static[field] = [*(static.get(field) or []), *items]
        read[field] = items
    if problems:
        raise ConfigError(problems)
    data["static_resources"] = static
    return (Source(data, origins, seen, src.notes, src.names, src.left_out, src.waiting,
                   src.from_sites), read, names)
