"""xDS resources between protobuf and JSON.

A control plane sends resources as ``google.protobuf.Any``; edgegw's config model reads the
JSON form Envoy's YAML has (``json_format`` with proto field names: snake_case, ``@type``
kept, durations as ``"1.5s"``). A resource names the types nested in it (an HCM's
``typed_config``) by URL: each such type's package is imported before the conversion, so only
what is used is loaded. The protobuf modules come from ``xds-protos`` (Envoy's
data-plane-api, generated), imported only when a control plane is configured.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

PREFIX = "type.googleapis.com/"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ROUTES = PREFIX + "envoy.config.route.v3.RouteConfiguration"
ENDPOINTS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
WRAPPER = PREFIX + "envoy.service.discovery.v3.Resource"

_TYPE_URL = re.compile(rb"type\.googleapis\.com/([A-Za-z_][A-Za-z0-9_.]*)")
_imported: set[str] = set()


class ResourceError(ValueError):
    """A resource that cannot be read (a type nobody knows, a malformed message)."""


def load_types(blob: bytes) -> None:
    """Imports the generated modules of every type URL in ``blob`` (their whole package: a
    message's module is named after its .proto file, not after the message)."""
    for name in _TYPE_URL.findall(blob):
        package = name.decode().rsplit(".", 1)[0]
        if package in _imported:
            continue
        _imported.add(package)
        try:
            mod = importlib.import_module(package)
        except ImportError:
            continue
        for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")


def to_dict(type_url: str, value: bytes) -> dict[str, Any]:
    """One resource as JSON (``@type`` first)."""
    from google.protobuf import any_pb2, json_format

    load_types(type_url.encode() + b" " + value)
    msg = any_pb2.Any(type_url=type_url, value=value)
    try:
        out = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    except Exception as e:  # (an unknown type; protobuf's DecodeError for a bad message)
        raise ResourceError(f"Unable to unpack as {type_url.removeprefix(PREFIX)}: {e}"
                            ) from None
    if type_url == WRAPPER:
        inner = out.get("resource")
        if not isinstance(inner, dict):
            raise ResourceError("an envoy.service.discovery.v3.Resource without a resource")
        return inner
    return out

