"""REST-JSON xDS (``api_type: REST``): each type's resources polled from the control plane,
as Envoy's HTTP subscription polls them.

Every ``refresh_delay`` (and at once when the names watched change) a DiscoveryRequest goes as
JSON in a ``POST /v3/discovery:<type>`` over the cluster's own connections, with the version
accepted last; as in Envoy, a refused response is told by that version alone (no nonce, no
``error_detail``), and the refusal is logged and counted. A 200 carries a
DiscoveryResponse as JSON (read as protobuf's JSON mapping, so camelCase or snake_case), a 304
says nothing changed; anything else, or no answer within ``request_timeout`` (1 s by
default), is logged and asked again at the next tick, the config in use serving meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import TYPE_CHECKING, Any, Protocol

from .. import log
from ..config import model as m
from ..http.codec import ClientConnection, Headers, RequestEncoder, RequestHead
from .resources import CLUSTER, ENDPOINTS, LISTENER, ROUTES, SECRET, load_types, to_dict
from .sotw import TypeState, Watch, Watcher

if TYPE_CHECKING:
    from ..upstream.cluster import Cluster
    from ..upstream.host import Host

_log = log.get("config")

PATHS = {LISTENER: "listeners", CLUSTER: "clusters", ROUTES: "routes", ENDPOINTS: "endpoints",
         SECRET: "secrets"}
MAX_BODY = 64 * 1024 * 1024


class Mux(Protocol):
    """What a REST channel needs of the mux."""

    def cluster(self, name: str) -> Cluster | None: ...
    def node_message(self) -> Any: ...


class FetchError(Exception):
    """A fetch that got no usable answer."""


class _Post:
    """One POST through the cluster's pool; ``answer`` is (status, body)."""

    def __init__(self, cluster: Cluster, path: str, body: bytes) -> None:
        self.cluster, self.path, self.body = cluster, path.encode(), body
        self.answer: asyncio.Future[tuple[int, bytes]] = \
            asyncio.get_running_loop().create_future()
        self.status = 0
        self.received = bytearray()
        self.host: Host | None = None
        self.encoder: RequestEncoder | None = None

    def start(self) -> None:
        host = self.cluster.choose()
        if host is None:
            self._fail(f"no healthy host in cluster '{self.cluster.name}'")
            return
        self.host = host
        host.pool.request(self)

    def cancel(self) -> None:
        encoder, self.encoder = self.encoder, None
        if encoder is not None:
            encoder.reset()

    def _fail(self, why: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(FetchError(why))

    def _done(self) -> None:
        self.encoder = None
        if not self.answer.done():
            self.answer.set_result((self.status, bytes(self.received)))

    # PoolClient
    def pool_ready(self, conn: ClientConnection, reused: bool) -> None:
        if self.answer.done():
            assert self.host is not None
            self.host.pool.release(conn)
            return
        headers: Headers = [(b"host", self.cluster.name.encode()),
                            (b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(self.body))]
        self.encoder = conn.new_stream(self)
        self.encoder.encode_headers(RequestHead(b"POST", self.path, headers, "HTTP/1.1"), False)
        self.encoder.encode_data(self.body, True)

    def pool_overflow(self) -> None:
        self._fail(f"cluster '{self.cluster.name}': too many requests (circuit breaker)")

    def pool_failure(self, reason: str, detail: str) -> None:
        self._fail(f"cannot connect to cluster '{self.cluster.name}': {detail or reason}")

    # ResponseReceiver
    def upstream_headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.status = status
        if end_stream:
            self._done()

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        self.received += data
        if len(self.received) > MAX_BODY:
            self.cancel()
            self._fail(f"the control plane sent more than {MAX_BODY} bytes")
        elif end_stream:
            self._done()

    def upstream_trailers(self, trailers: Headers) -> None:
        self._done()

    def upstream_reset(self, reason: str, stale: bool) -> None:
        self.encoder = None
        self._fail(f"the request was reset ({reason})")

    def flush(self) -> None:
        pass

    def upstream_write_blocked(self, blocked: bool) -> None:
        pass


class RestChannel:
    """One type polled from one REST control plane."""

    def __init__(self, mux: Mux, api: m.ApiConfigSource, type_url: str) -> None:
        self.mux, self.api, self.type_url = mux, api, type_url
        self.state = TypeState(type_url, type_url in (LISTENER, CLUSTER))
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failing = False

    def watch(self, type_url: str, name: str, watcher: Watcher) -> Watch:
        if self.state.add(name, watcher) or self.task is None:
            self.wake.set()
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())
        return Watch(self, type_url, name, watcher)

    def unwatch(self, w: Watch) -> None:
        self.state.remove(w.name, w.watcher)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        delay = self.api.refresh_delay or 1.0
        while True:
            self.wake.clear()
            await self._fetch()
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except TimeoutError:
                pass

    async def _fetch(self) -> None:
        from envoy.service.discovery.v3 import discovery_pb2
        from google.protobuf import json_format

        cluster = self.mux.cluster(self.api.cluster)
        if cluster is None:
            return
        req = self.state.request()
        doc: dict[str, Any] = {
            "version_info": req.version, "resource_names": req.names,
            "type_url": req.type_url,
            "node": json_format.MessageToDict(self.mux.node_message(),
                                              preserving_proto_field_name=True)}
        post = _Post(cluster, f"/v3/discovery:{PATHS[self.type_url]}", json.dumps(doc).encode())
        post.start()
        try:
            status, body = await asyncio.wait_for(post.answer, self.api.request_timeout or 1.0)
        except (FetchError, TimeoutError) as e:
            post.cancel()
            self._failed(str(e) or "no answer within request_timeout")
            return
        if status == 304:
            self._recovered()
            return
        if status != 200:
            self._failed(f"the control plane answered HTTP {status}")
            return
        try:
            load_types(body)
            resp = json_format.Parse(body, discovery_pb2.DiscoveryResponse())
        except Exception as e:  # (json_format's ParseError, a bad type URL)
            self._failed(f"the control plane sent a malformed DiscoveryResponse: {e}")
            return
        self._recovered()
        answer = self.state.respond(resp.version_info, resp.nonce, [
            (a.type_url, functools.partial(to_dict, a.type_url, a.value))
            for a in resp.resources])
        if answer.error is not None:
            _log.warning("xds: REST config for %s rejected: %s", self.type_url, answer.error)

    def _failed(self, why: str) -> None:
        self.state.failed()
        if not self.failing:  # (once, not at every tick)
            _log.warning("xds: REST fetch of %s failed: %s; asking again every %.1f s, the "
                         "config in use keeps serving", PATHS[self.type_url], why,
                         self.api.refresh_delay or 1.0)
        self.failing = True

    def _recovered(self) -> None:
        if self.failing:
            _log.info("xds: REST fetch of %s answered again", PATHS[self.type_url])
        self.failing = False
