"""The streams to the control plane, as Envoy's gRPC mux runs them.

Each config source of a control plane's kind is a channel: ``ads: {}`` sources share the one
ADS stream of ``ads_config``; an ``api_config_source`` gets a stream of its type's service
(``ClusterDiscoveryService/StreamClusters`` …). ``api_type`` chooses the protocol: ``GRPC``
is the state of the world (``sotw``), ``DELTA_GRPC`` the incremental one (``delta``), and
``REST`` is polled (``rest``). A channel opens its stream when the first resource is
watched, asks for each type as watchers come and go (coalesced per loop turn), and answers
each response with an ACK or a NACK. A stream that ends is opened again after a jittered
exponential backoff (0.5 s doubling to 30 s, as Envoy's); meanwhile the accepted config
keeps serving, and the new stream asks every type again with the versions accepted.
``rate_limit_settings`` bounds the requests sent (a token bucket) when given. Under several
workers only worker 0 has streams; the others follow it (``follow``).

Stats, as Envoy scopes them: ``control_plane.connected_state`` (1 while the stream is up),
``control_plane.rate_limit_enforced`` and ``control_plane.pending_requests`` for the ADS
stream; the same under the first subscriber's prefix for a type's own stream
(``listener_manager.lds.control_plane.connected_state``).
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__, log
from ..config import model as m
from ..stats import Counter, Gauge, StatSet, Store
from .delta import DeltaRequest, DeltaState
from .follow import Follower, Published
from .grpc import GrpcStream
from .resources import CLUSTER, ENDPOINTS, LISTENER, ROUTES, SECRET, to_dict
from .rest import RestChannel
from .sotw import Request, TypeState, Watch, Watcher

if TYPE_CHECKING:
    from ..upstream.cluster import Cluster

_log = log.get("config")

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
SERVICES = {
    LISTENER: "/envoy.service.listener.v3.ListenerDiscoveryService/",
    CLUSTER: "/envoy.service.cluster.v3.ClusterDiscoveryService/",
    ROUTES: "/envoy.service.route.v3.RouteDiscoveryService/",
    ENDPOINTS: "/envoy.service.endpoint.v3.EndpointDiscoveryService/",
    SECRET: "/envoy.service.secret.v3.SecretDiscoveryService/",
}
METHODS = {LISTENER: "Listeners", CLUSTER: "Clusters", ROUTES: "Routes", ENDPOINTS: "Endpoints",
           SECRET: "Secrets"}
"""A service's methods: ``Stream<X>`` (state of the world) and ``Delta<X>``."""
WILDCARD = (LISTENER, CLUSTER)
BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0


class ControlPlaneStats(StatSet):
    connected_state: Gauge
    pending_requests: Gauge
    rate_limit_enforced: Counter


class Channel:
    """One stream (ADS, or one type's service) of one API config source, and its reconnects."""

    def __init__(self, mux: XdsMux, api: m.ApiConfigSource, path: str, prefix: str,
                 key: str) -> None:
        self.mux, self.api, self.path, self.key = mux, api, path, key
        self.delta = api.api_type == "DELTA_GRPC"
        self.stats = ControlPlaneStats(mux.store, prefix + "control_plane.")
        self.types: dict[str, TypeState] = {}
        self.stream: GrpcStream | None = None
        self.node_sent = False
        self.up = False
        self.failures = 0
        self.dirty: list[str] = []
        self.retry: asyncio.TimerHandle | None = None
        limits = api.rate_limit_settings
        self.tokens = float(limits.max_tokens) if limits else 0.0
        self.refilled = time.monotonic()
        self.held: list[Request | DeltaRequest] = []
        """Requests the rate limit holds back."""

    def watch(self, type_url: str, name: str, watcher: Watcher) -> Watch:
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = (DeltaState if self.delta else TypeState)(
                type_url, type_url in WILDCARD)
            self._ask(type_url)
        if state.add(name, watcher):
            self._ask(type_url)
        if self.mux.follower is not None:  # (a follower worker: the leader's stream serves)
            self.mux.follower.start()
            self.mux.follower.watched(f"{self.key}|{type_url}")
        elif self.stream is None and self.retry is None:
            self._open()
        return Watch(self, type_url, name, watcher)

    def unwatch(self, w: Watch) -> None:
        state = self.types.get(w.type_url)
        if state is not None and state.remove(w.name, w.watcher):
            self._ask(w.type_url)

    def _ask(self, type_url: str) -> None:
        """Sends the type's request once this turn of the loop is over (one request for the
        watchers a config build adds)."""
        if type_url in self.dirty:
            return
        self.dirty.append(type_url)
        if len(self.dirty) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for url in dirty:
            self._send(self.types[url].request())

    def _open(self) -> None:
        self.retry = None
        service = self.api.grpc_services[0]
        cluster = self.mux.cluster(self.api.cluster)
        if cluster is None:
            self._closed(f"no cluster '{service.envoy_grpc.cluster_name}'")
            return
        metadata = [(h.key.lower().encode(), h.value.encode()) for h in service.initial_metadata]
        self.stream = GrpcStream(cluster, self.path, service.envoy_grpc.authority, metadata,
                                 self._received, self._closed)
        self.node_sent = False
        self.held.clear()
        self.dirty.clear()  # (every type is asked below)
        for state in self.types.values():
            state.reconnected()
        self.stream.start()
        for state in self.types.values():
            self._send(state.request())

    def _send(self, req: Request | DeltaRequest) -> None:
        if self.stream is None or self.stream.closed:
            return  # (sent again on the next stream)
        if self.api.rate_limit_settings is not None and not self._token():
            if isinstance(req, Request):  # (a newer one says all an older one said)
                self.held = [r for r in self.held if r.type_url != req.type_url]
            self.held.append(req)
            self.stats.rate_limit_enforced.value += 1
            self.stats.pending_requests.value = len(self.held)
            return
        from envoy.service.discovery.v3 import discovery_pb2

        msg: Any
        if isinstance(req, DeltaRequest):
            msg = discovery_pb2.DeltaDiscoveryRequest(
                type_url=req.type_url, response_nonce=req.nonce,
                resource_names_subscribe=req.subscribe,
                resource_names_unsubscribe=req.unsubscribe,
                initial_resource_versions=req.initial_versions)
        else:
            msg = discovery_pb2.DiscoveryRequest(
                version_info=req.version, response_nonce=req.nonce, type_url=req.type_url,
                resource_names=req.names)
        if not (self.api.set_node_on_first_message_only and self.node_sent):
            msg.node.CopyFrom(self.mux.node_message())
            self.node_sent = True
        if req.error is not None:
            msg.error_detail.code = 13  # INTERNAL, as Envoy sends it
            msg.error_detail.message = req.error
        self.stream.send(msg.SerializeToString())

    def _token(self) -> bool:
        limits = self.api.rate_limit_settings
        assert limits is not None
        now = time.monotonic()
        self.tokens = min(float(limits.max_tokens),
                          self.tokens + (now - self.refilled) * limits.fill_rate)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        if not self.held:
            asyncio.get_running_loop().call_later((1 - self.tokens) / limits.fill_rate,
                                                  self._release)
        return False

    def _release(self) -> None:
        held, self.held = self.held, []
        self.stats.pending_requests.value = 0
        for req in held:
            self._send(req)

    def _received(self, message: bytes) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        if not self.up:
            self.up = True
            self.failures = 0
            self.stats.connected_state.value = 1
        try:
            resp = (discovery_pb2.DeltaDiscoveryResponse if self.delta
                    else discovery_pb2.DiscoveryResponse).FromString(message)
        except Exception as e:  # protobuf's DecodeError
            self._fail(f"the control plane sent a malformed response: {e}")
            return
        state = self.types.get(resp.type_url)
        if state is None:
            _log.warning("xds: ignoring a response of type %s, which nothing here asked for",
                         resp.type_url or "(none)")
            return
        req: Request | DeltaRequest
        if isinstance(state, DeltaState):
            req = state.respond_delta(resp.system_version_info, resp.nonce, [
                (r.name, r.version, r.resource.type_url,
                 functools.partial(to_dict, r.resource.type_url, r.resource.value))
                for r in resp.resources], list(resp.removed_resources))
        else:
            req = state.respond(resp.version_info, resp.nonce, [
                (a.type_url, functools.partial(to_dict, a.type_url, a.value))
                for a in resp.resources])
        published = self.mux.published
        if published is not None:
            key = f"{self.key}|{resp.type_url}"
            if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
                published.delta(key, state.wildcard, resp.system_version_info, [
                    (r.name, r.resource.type_url, r.resource.value, r.version)
                    for r in resp.resources], list(resp.removed_resources))
            elif len(state.read_names) == len(resp.resources):  # (else unreadable: refused)
                published.sotw(key, state.wildcard, resp.version_info, [
                    (name, a.type_url, a.value)
                    for name, a in zip(state.read_names, resp.resources, strict=True)])
        if req.error is not None:
            _log.warning("xds: %s config for %s rejected: %s",
                         "delta gRPC" if self.delta else "gRPC", resp.type_url, req.error)
        self._send(req)

    def _fail(self, why: str) -> None:
        if self.stream is not None:
            self.stream.close()
        self._closed(why)

    def _closed(self, why: str) -> None:
        self.stream = None
        for state in self.types.values():
            state.failed()
        if self.up:
            self.up = False
            self.stats.connected_state.value = 0
        if self.mux.stopped:
            return
        delay = random.uniform(0, min(BACKOFF_BASE * 2 ** self.failures, BACKOFF_MAX))
        self.failures += 1
        _log.warning("xds: stream to the control plane (%s) closed: %s; reconnecting in "
                     "%.1f s, the config in use keeps serving", self.path.rsplit("/", 1)[-1],
                     why, delay)
        self.retry = asyncio.get_running_loop().call_later(delay, self._open)

    def stop(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class XdsMux:
    """Every channel of this process; ``watch`` is how subscriptions get their resources.
    ``cluster`` finds the control plane's cluster in the config now served."""

    def __init__(self, node: m.Node, ads: m.ApiConfigSource | None,
                 cluster: Callable[[str], Cluster | None], store: Store,
                 leading: bool = False, leader_socket: str | None = None) -> None:
        self.node = node
        self.ads = ads
        self.cluster = cluster
        self.store = store
        self.polls: dict[str, RestChannel] = {}
        """REST channels, by API source and type (every worker polls for itself)."""
        self.streams: dict[str, Channel] = {}
        self.stopped = False
        self.published = Published() if leading else None
        """What the other workers follow (worker 0 of several)."""
        self.follower = Follower(self, leader_socket) if leader_socket else None
        """A worker other than 0: no stream of its own, worker 0's are followed."""

    def watch(self, source: m.ConfigSource, type_url: str, name: str,
              watcher: Watcher) -> Watch:
        """Watches the resource ``name`` (any name for LDS and CDS) from ``source``."""
        api = self.ads if source.ads is not None else source.api_config_source
        assert api is not None  # (the config checks say so)
        if api.api_type == "REST":
            rest = self.polls.get(f"{api.model_dump_json()} {type_url}")
            if rest is None:
                rest = self.polls[f"{api.model_dump_json()} {type_url}"] = RestChannel(
                    self, api, type_url)
            return rest.watch(type_url, name, watcher)
        delta = api.api_type == "DELTA_GRPC"
        if source.ads is not None:
            path = ADS + ("DeltaAggregatedResources" if delta else "StreamAggregatedResources")
        else:
            path = SERVICES[type_url] + ("Delta" if delta else "Stream") + METHODS[type_url]
        key = f"{api.model_dump_json()} {path}"
        channel = self.streams.get(key)
        if channel is None:
            channel = self.streams[key] = Channel(
                self, api, path, "" if source.ads is not None else watcher.prefix, key)
        return channel.watch(type_url, name, watcher)

    def node_message(self) -> Any:
        from envoy.config.core.v3 import base_pb2
        from google.protobuf import json_format

        node = base_pb2.Node(id=self.node.id, cluster=self.node.cluster,
                             user_agent_name="edgegw", user_agent_version=__version__)
        if self.node.metadata:
            json_format.ParseDict(self.node.metadata, node.metadata)
        return node

    def stop(self) -> None:
        self.stopped = True
        for rest in self.polls.values():
            rest.stop()
        for channel in self.streams.values():
            channel.stop()
        if self.follower is not None:
            self.follower.stop()
