"""dynamic_resources from files: Envoy's LDS and CDS with ``path_config_source``.

The bootstrap names a file of listeners (``lds_config``) and one of clusters (``cds_config``),
each a DiscoveryResponse (``resources:`` with ``@type`` Listener or Cluster). Their resources
join the static ones in one model, so everything downstream (checks, runtime, reload) treats
them alike; errors in them name the file, the resource and the line. A change to either file
reloads the config, as Envoy reloads these files when they are moved into place. Control
planes (``api_config_source``, ``ads_config``) are not supported.
"""

from __future__ import annotations

from typing import Any

from .source import ConfigError, Path, Source, file_signature, parse

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
KINDS = {"lds_config": ("listeners", LISTENER), "cds_config": ("clusters", CLUSTER)}
XDS = ("dynamic resources from a control plane (gRPC/REST xDS) are not supported by edgegw: "
       "use path_config_source files for lds_config and cds_config, or static_resources")


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


def expand(src: Source) -> tuple[Source, dict[str, list[dict[str, Any]]], dict[Path, str]]:
    """Reads the LDS/CDS files into static_resources. Returns the combined source, the
    resources as read (for /config_dump's dynamic sections) and how to name their paths in
    errors (``static_resources.listeners[2]`` → ``lds.yaml: resources[0]``)."""
    data = dict(src.data)
    dyn = data.pop("dynamic_resources", None)
    if dyn is None:
        return src, {}, {}
    problems: list[str] = []
    where = src.where(("dynamic_resources",))
    suffix = f" ({where})" if where else ""
    if not isinstance(dyn, dict):
        raise ConfigError([f"dynamic_resources: must be a mapping{suffix}"])
    for key, value in dyn.items():
        ok = key in KINDS and isinstance(value, dict) and set(value) <= {
            "path", "path_config_source", "resource_api_version", "initial_fetch_timeout"} \
            and ("path" in value or "path_config_source" in value)
        if not ok:
            at: Path = ("dynamic_resources", key)
            if isinstance(value, dict):
                at += tuple(k for k in value if k in ("api_config_source", "ads", "ads_config")
                            )[:1]
            line = src.where(at)
            problems.append(f"{'.'.join(map(str, at))}: {XDS}" + (f" ({line})" if line else ""))
    if problems:
        raise ConfigError(problems)
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
    if problems:
        raise ConfigError(problems)
    data["static_resources"] = static
    return (Source(data, origins, seen, src.notes, src.names, src.left_out, src.waiting,
                   src.from_sites), read, names)
