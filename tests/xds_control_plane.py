"""An xDS control plane for tests, on grpcio and xds-protos: the ADS service and the per-type
ones (LDS, CDS, RDS, EDS), state of the world and delta, serving one snapshot of JSON
resources to every node that connects (edgegw and real Envoy alike), and recording every
request.

Like go-control-plane's servers: a type is sent when a stream first asks for it or asks for
other names, and pushed again to every stream that asked for it when the snapshot of that
type changes; a request that only ACKs or NACKs gets no answer. A delta stream is sent only
the resources whose version it does not hold (a resource's version is a hash of it) and the
names removed; an empty first request for LDS or CDS, or ``*``, is a wildcard.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2, json_format

from edgegw.xds.resources import CLUSTER, ENDPOINTS, LISTENER, ROUTES, SECRET, load_types

from .conftest import free_port


@dataclass
class Seen:
    """One request a node sent."""

    node: str
    type_url: str
    version: str
    nonce: str
    names: list[str]
    error: str | None


def name_of(resource: dict) -> str:
    return resource.get("cluster_name" if resource["@type"] == ENDPOINTS else "name", "")


def to_any(resource: dict) -> Any:
    load_types(json.dumps(resource).encode())
    msg = any_pb2.Any()
    json_format.ParseDict(resource, msg)
    return msg


def version_of(resource: Any) -> str:
    blob = resource.SerializeToString() if isinstance(resource, any_pb2.Any) else \
        json.dumps(resource, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


class _Stream:
    def __init__(self, cp: ControlPlane, delta: bool) -> None:
        self.cp = cp
        self.delta = delta
        self.out: queue.Queue[Any] = queue.Queue()
        self.names: dict[str, list[str]] = {}
        self.wildcard: dict[str, bool] = {}
        self.held: dict[str, dict[str, str]] = {}
        """Delta: each type's resources the client holds, with their versions."""
        self.versions: dict[str, str] = {}
        """Delta: the system version each nonce sent."""
        self.node = ""
        self.nonce = 0

    def on_request(self, req: Any) -> None:
        if req.node.id:
            self.node = req.node.id
        url = req.type_url
        error = req.error_detail.message if req.HasField("error_detail") else None
        with self.cp.lock:
            if not self.delta:
                names = list(req.resource_names)
                self.cp.seen.append(Seen(self.node, url, req.version_info, req.response_nonce,
                                         names, error))
                changed = self.names.get(url) != names
                self.names[url] = names
                if changed or not req.response_nonce:
                    self.push(url)
                return
            subscribe, unsubscribe = list(req.resource_names_subscribe), \
                list(req.resource_names_unsubscribe)
            self.cp.seen.append(Seen(self.node, url, self.versions.get(req.response_nonce, ""),
                                     req.response_nonce, subscribe, error))
            first = url not in self.names
            if first:
                self.wildcard[url] = not subscribe or "*" in subscribe
                self.names[url] = []
                self.held[url] = dict(req.initial_resource_versions)
            names = set(self.names[url]) | (set(subscribe) - {"*"})
            names -= set(unsubscribe)
            for n in unsubscribe:
                self.held[url].pop(n, None)
            self.names[url] = sorted(names)
            if first or subscribe:
                self.push(url, first)

    def push(self, type_url: str, first: bool = False) -> None:
        """(With the lock held.)"""
        if type_url not in self.cp.snapshot or type_url not in self.names:
            return
        version, resources = self.cp.snapshot[type_url]
        if callable(resources):
            resources = resources(self.node)
        names = self.names[type_url]
        if self.delta:
            self._push_delta(type_url, version, resources, first)
            return
        self.nonce += 1
        self.out.put(discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=str(self.nonce),
            resources=[r if isinstance(r, any_pb2.Any) else to_any(r) for r in resources
                       if not names or isinstance(r, any_pb2.Any) or name_of(r) in names]))

    def _push_delta(self, type_url: str, version: str, resources: list[Any],
                    first: bool) -> None:
        wanted = {("" if isinstance(r, any_pb2.Any) else name_of(r)): r for r in resources
                  if self.wildcard[type_url] or isinstance(r, any_pb2.Any)
                  or name_of(r) in self.names[type_url]}
        held = self.held[type_url]
        changed = {n: r for n, r in wanted.items() if held.get(n) != version_of(r)}
        removed = [n for n in held if n not in wanted]
        if not (changed or removed or first):
            return
        self.nonce += 1
        self.versions[str(self.nonce)] = version
        self.out.put(discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=str(self.nonce),
            removed_resources=removed, resources=[discovery_pb2.Resource(
                name=n, version=version_of(r),
                resource=r if isinstance(r, any_pb2.Any) else to_any(r))
                for n, r in changed.items()]))
        for n, r in changed.items():
            held[n] = version_of(r)
        for n in removed:
            del held[n]

    def serve(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        def read() -> None:
            try:
                for req in requests:
                    self.on_request(req)
            except grpc.RpcError:
                pass
            self.out.put(None)

        with self.cp.lock:
            self.cp.streams.append(self)
        threading.Thread(target=read, daemon=True).start()
        try:
            while (item := self.out.get()) is not None:
                yield item
        finally:
            with self.cp.lock:
                self.cp.streams.remove(self)


class _Services(ads_pb2_grpc.AggregatedDiscoveryServiceServicer,
                lds_pb2_grpc.ListenerDiscoveryServiceServicer,
                cds_pb2_grpc.ClusterDiscoveryServiceServicer,
                rds_pb2_grpc.RouteDiscoveryServiceServicer,
                eds_pb2_grpc.EndpointDiscoveryServiceServicer,
                sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def StreamAggregatedResources(self, requests, context):  # noqa: N802
        yield from _Stream(self.cp, False).serve(requests, context)

    def DeltaAggregatedResources(self, requests, context):  # noqa: N802
        yield from _Stream(self.cp, True).serve(requests, context)

    StreamListeners = StreamClusters = StreamRoutes = StreamEndpoints = StreamSecrets = \
        StreamAggregatedResources
    DeltaListeners = DeltaClusters = DeltaRoutes = DeltaEndpoints = DeltaSecrets = \
        DeltaAggregatedResources


class _Rest(http.server.BaseHTTPRequestHandler):
    """REST-JSON: ``POST /v3/discovery:<type>`` answered from the snapshot (304 when the
    node holds its version), as sovereign answers it."""

    protocol_version = "HTTP/1.1"
    cp: ControlPlane

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        req = json_format.Parse(body, discovery_pb2.DiscoveryRequest())
        cp = self.cp
        with cp.lock:
            cp.seen.append(Seen(req.node.id, req.type_url, req.version_info, req.response_nonce,
                                list(req.resource_names), req.error_detail.message
                                if req.HasField("error_detail") else None))
            version, resources = cp.snapshot.get(req.type_url, ("", []))
            if callable(resources):
                resources = resources(req.node.id)
            cp.rest_nonce += 1
            nonce = str(cp.rest_nonce)
        if version == req.version_info or req.type_url not in cp.snapshot:
            self.send_response(304)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        names = set(req.resource_names)
        out = json_format.MessageToJson(discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=req.type_url, nonce=nonce,
            resources=[r if isinstance(r, any_pb2.Any) else to_any(r) for r in resources
                       if not names or isinstance(r, any_pb2.Any)
                       or name_of(r) in names])).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


class ControlPlane:
    """``set(type_url, version, resources)`` publishes; ``seen`` holds every request. gRPC
    on ``port``; REST-JSON too on ``rest_port`` once ``serve_rest()`` is called."""

    def __init__(self, host: str = "127.0.0.2", tls: Any = None) -> None:
        """``tls``: grpc server credentials (mTLS), else plaintext HTTP/2."""
        self.host, self.port = host, free_port(host)
        self.tls = tls
        self.lock = threading.Lock()
        self.snapshot: dict[str, tuple[str, Any]] = {}
        self.streams: list[_Stream] = []
        self.seen: list[Seen] = []
        self.server: grpc.Server | None = None
        self.rest: http.server.ThreadingHTTPServer | None = None
        self.rest_port = 0
        self.rest_nonce = 0
        self.start()

    def serve_rest(self) -> None:
        handler = type("Rest", (_Rest,), {"cp": self})
        self.rest_port = free_port(self.host)
        self.rest = http.server.ThreadingHTTPServer((self.host, self.rest_port), handler)
        self.rest.daemon_threads = True
        threading.Thread(target=self.rest.serve_forever, daemon=True).start()

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                             options=[("grpc.so_reuseport", 0)])
        services = _Services(self)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(services, server)
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(services, server)
        cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server(services, server)
        rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server(services, server)
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(services, server)
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(services, server)
        if self.tls is not None:
            server.add_secure_port(f"{self.host}:{self.port}", self.tls)
        else:
            server.add_insecure_port(f"{self.host}:{self.port}")
        server.start()
        self.server = server

    def stop(self) -> None:
        """Goes away: every stream ends (clients reconnect once it is started again)."""
        if self.rest is not None:
            self.rest.shutdown()
            self.rest.server_close()
            self.rest = None
        with self.lock:
            for s in self.streams:
                s.out.put(None)
        if self.server is not None:
            self.server.stop(grace=None).wait()
            self.server = None

    def set(self, type_url: str, version: str,
            resources: list[Any] | Callable[[str], list[Any]]) -> None:
        """Publishes a type's resources (JSON, or an ``Any`` sent as it is), or a function
        of the node id that gives them (listeners on each node's own port)."""
        with self.lock:
            self.snapshot[type_url] = (version, resources)
            for s in self.streams:
                s.push(type_url)

    def requests(self, node: str, type_url: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.node == node and s.type_url == type_url]

    def answers(self, node: str, type_url: str) -> list[tuple[str, bool]]:
        """The node's ACKs and NACKs of a type: (the version answered, True for an ACK; on
        a delta stream, the system version of the response answered)."""
        return [(s.version, s.error is None) for s in self.requests(node, type_url)
                if s.nonce]

    def cluster(self, name: str = "xds_cluster") -> dict:
        """The static cluster a bootstrap reaches this control plane by."""
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                                 "HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": self.host, "port_value": self.port}}}}]}]}}


__all__ = ["CLUSTER", "ENDPOINTS", "LISTENER", "ROUTES", "SECRET", "ControlPlane", "Seen"]
