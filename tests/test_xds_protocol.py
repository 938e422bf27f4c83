"""The xDS protocol at the byte level, without processes: the state-of-the-world state of one
type (what each request says after each response), resources read from protobuf, and gRPC's
message framing over a stream."""

from __future__ import annotations

from typing import Any

import pytest

from edgegw.xds.grpc import GrpcStream, frame
from edgegw.xds.resources import CLUSTER, ENDPOINTS, ResourceError, to_dict
from edgegw.xds.sotw import TypeState


class Recorder:
    """A watcher that refuses what ``refuse`` says, and remembers what it was given."""

    def __init__(self, prefix: str = "p.", refuse: str | None = None) -> None:
        self.prefix = prefix
        self.refuse = refuse
        self.got: list[tuple[str, dict, bool]] = []
        self.refused: list[str] = []
        self.failures = 0

    def xds_update(self, version: str, resources: dict, count: bool,
                   versions: dict | None = None) -> str | None:
        self.got.append((version, resources, count))
        self.versions = versions
        return self.refuse

    def xds_refused(self, why: str) -> None:
        self.refused.append(why)

    def xds_failed(self) -> None:
        self.failures += 1


def cla(name: str) -> tuple[str, Any]:
    return ENDPOINTS, lambda: {"@type": ENDPOINTS, "cluster_name": name}


def test_ack_echoes_the_version_and_nonce_and_nack_keeps_the_last_accepted() -> None:
    t = TypeState(ENDPOINTS, wildcard=False)
    w = Recorder()
    t.add("app", w)
    assert t.request().names == ["app"] and t.request().version == ""
    ack = t.respond("v1", "n1", [cla("app")])
    assert (ack.version, ack.nonce, ack.error) == ("v1", "n1", None)
    w.refuse = "no thanks"
    nack = t.respond("v2", "n2", [cla("app")])
    assert (nack.version, nack.nonce, nack.error) == ("v1", "n2", "no thanks")
    t.reconnected()
    again = t.request()
    assert (again.version, again.nonce, again.names) == ("v1", "", ["app"])


def test_named_resources_go_to_their_watchers_only_and_a_late_watcher_gets_the_last() -> None:
    t = TypeState(ENDPOINTS, wildcard=False)
    a, b = Recorder(), Recorder()
    assert t.add("a", a) and t.add("b", b)
    t.respond("v1", "n1", [cla("a")])
    assert [g[0] for g in a.got] == ["v1"] and b.got == []
    late = Recorder()
    assert not t.add("a", late)  # (the names asked for are the same)
    assert late.got == [("v1", {"a": {"@type": ENDPOINTS, "cluster_name": "a"}}, False)]
    newer = Recorder()  # the next config's watcher with the same stats: only it counts
    t.add("a", newer)
    t.respond("v2", "n2", [cla("a")])
    assert [w.got[-1][2] for w in (a, late, newer)] == [False, False, True]
    assert not t.remove("a", a) and not t.remove("a", late) and t.remove("a", newer)
    assert t.request().names == ["b"]


def test_whole_responses_refused_with_envoy_words() -> None:
    t = TypeState(CLUSTER, wildcard=True)
    w = Recorder()
    t.add("", w)
    mismatch = t.respond("v1", "n1", [(ENDPOINTS, lambda: {})])
    assert mismatch.error == (f"{ENDPOINTS} does not match the message-wide type URL "
                              f"{CLUSTER} in DiscoveryResponse")
    assert w.got == [] and w.refused == [mismatch.error]
    dup = t.respond("v2", "n2", [(CLUSTER, lambda: {"name": "x", "n": 1}),
                                 (CLUSTER, lambda: {"name": "x", "n": 2})])
    assert dup.error == "Error adding/updating cluster(s) x: duplicate cluster x found"
    assert w.got[-1] == ("v2", {"x": {"name": "x", "n": 1}}, False)  # the first is taken
    assert dup.version == ""


def test_resources_read_from_protobuf() -> None:
    from envoy.config.cluster.v3 import cluster_pb2

    c = cluster_pb2.Cluster(name="app", type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.FromMilliseconds(1500)
    assert to_dict(CLUSTER, c.SerializeToString()) == {
        "@type": CLUSTER, "name": "app", "type": "STATIC", "connect_timeout": "1.500s"}
    with pytest.raises(ResourceError, match="Unable to unpack as envoy.config.cluster.v3"):
        to_dict(CLUSTER, b"\xff\xff\xff")
    with pytest.raises(ResourceError, match="Unable to unpack as no.such.Type"):
        to_dict("type.googleapis.com/no.such.Type", b"")


class _Cluster:
    name = "xds"


def _stream() -> tuple[GrpcStream, list[bytes], list[str]]:
    got: list[bytes] = []
    closed: list[str] = []
    stream = GrpcStream(_Cluster(), "/svc/M", "", [],  # type: ignore[arg-type]
                        got.append, closed.append)
    return stream, got, closed


def test_grpc_messages_split_and_joined_across_frames() -> None:
    s, got, closed = _stream()
    s.upstream_headers(200, [(b"content-type", b"application/grpc")], False)
    data = frame(b"one") + frame(b"") + frame(b"x" * 70000)
    for i in range(0, len(data), 7):
        s.upstream_data(data[i:i + 7], False)
    assert got == [b"one", b"", b"x" * 70000] and closed == []
    s.upstream_trailers([(b"grpc-status", b"14"), (b"grpc-message", b"going away")])
    assert closed == ["gRPC status 14: going away"]


def test_grpc_streams_end_on_what_is_not_a_message() -> None:
    s, got, closed = _stream()
    s.upstream_data(b"\x01\x00\x00\x00\x01x", False)
    assert closed == ["the control plane sent a compressed message"] and got == []
    s, got, closed = _stream()
    s.upstream_headers(503, [], False)
    assert closed == ["the control plane answered HTTP 503"]
    s, got, closed = _stream()
    s.upstream_headers(200, [(b"grpc-status", b"12")], True)  # trailers-only
    assert closed == ["gRPC status 12"]


def test_delta_requests_carry_changes_and_reconnects_carry_what_is_held() -> None:
    from edgegw.xds.delta import DeltaState

    t = DeltaState(ENDPOINTS, wildcard=False)
    a, b = Recorder(), Recorder()
    t.add("a", a)
    first = t.request()
    assert (first.subscribe, first.unsubscribe, first.nonce) == (["a"], [], "")
    ack = t.respond_delta("s1", "n1", [("a", "va1", *cla("a"))], [])
    assert (ack.nonce, ack.error, ack.subscribe) == ("n1", None, [])
    assert a.versions == {"a": "va1"}  # (each resource's own version)
    t.add("b", b)
    t.remove("a", a)
    change = t.request()  # a subscription change answers no response: no nonce
    assert (change.subscribe, change.unsubscribe, change.nonce) == (["b"], ["a"], "")
    t.respond_delta("s2", "n2", [("b", "vb1", *cla("b"))], [])
    t.reconnected()
    again = t.request()
    assert (again.subscribe, again.initial_versions, again.nonce) == (["b"], {"b": "vb1"}, "")


def test_delta_wildcard_watchers_see_the_whole_set_after_each_change() -> None:
    from edgegw.xds.delta import DeltaState

    t = DeltaState(CLUSTER, wildcard=True)
    w = Recorder()
    t.add("", w)
    assert t.request().subscribe == []  # (an empty first request is the wildcard)

    def c(name: str) -> tuple[str, str, str, Any]:
        return name, f"v-{name}", CLUSTER, lambda: {"name": name}

    t.respond_delta("s1", "n1", [c("x"), c("y")], [])
    t.respond_delta("s2", "n2", [c("z")], ["x"])
    assert sorted(w.got[-1][1]) == ["y", "z"]
    assert t.versions == {"y": "v-y", "z": "v-z"}


class _Encoder:
    def __init__(self, sent: list[bytes]) -> None:
        self.sent = sent
        self.was_reset = False

    def encode_headers(self, head: Any, end_stream: bool) -> None:
        self.head = head

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        self.sent.append(data)

    def reset(self) -> None:
        self.was_reset = True


class _Conn:
    def __init__(self, sent: list[bytes]) -> None:
        self.sent = sent
        self.receivers: list[Any] = []

    def new_stream(self, receiver: Any) -> _Encoder:
        self.receivers.append(receiver)
        return _Encoder(self.sent)


class _Pool:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def request(self, client: Any) -> None:
        client.pool_ready(self.conn, False)


class _Host:
    def __init__(self, conn: _Conn) -> None:
        self.pool = _Pool(conn)


class _FakeCluster:
    name = "xds"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.conn = _Conn(self.sent)

    def choose(self) -> _Host:
        return _Host(self.conn)


def _requests(sent: list[bytes]) -> list[Any]:
    from envoy.service.discovery.v3 import discovery_pb2

    return [discovery_pb2.DiscoveryRequest.FromString(m[5:]) for m in sent]


async def _until(check: Any, limit: float = 5.0) -> None:
    """Waits, on the loop, until ``check()`` holds."""
    import asyncio

    for _ in range(int(limit / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


def _mux(rate_limit: dict | None = None) -> tuple[Any, _FakeCluster, Any]:
    from edgegw.config import model as m
    from edgegw.stats import Store
    from edgegw.xds.mux import XdsMux

    api = m.ApiConfigSource.model_validate({
        "api_type": "GRPC", "set_node_on_first_message_only": True,
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
        **({"rate_limit_settings": rate_limit} if rate_limit else {})})
    cluster = _FakeCluster()
    store = Store()
    return XdsMux(m.Node(id="n1", cluster="c1"), api, lambda name: cluster, store), cluster, \
        store


def test_the_mux_asks_acks_and_reconnects_after_garbage() -> None:
    import asyncio

    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from edgegw.config import model as m

    async def run() -> None:
        mux, cluster, store = _mux()
        w = Recorder("cluster.app.")
        mux.watch(m.ConfigSource(ads={}), ENDPOINTS, "app", w)
        await asyncio.sleep(0)
        [first] = _requests(cluster.sent)
        assert (first.node.id, first.resource_names, first.type_url) == ("n1", ["app"],
                                                                          ENDPOINTS)
        receiver = cluster.conn.receivers[-1]
        receiver.upstream_headers(200, [], False)
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="app")
        resp = discovery_pb2.DiscoveryResponse(version_info="v1", nonce="1", type_url=ENDPOINTS)
        resp.resources.add().Pack(cla)
        receiver.upstream_data(frame(resp.SerializeToString()), False)
        ack = _requests(cluster.sent)[-1]
        assert (ack.version_info, ack.response_nonce, ack.HasField("node")) == ("v1", "1",
                                                                                 False)
        assert w.got[-1][0] == "v1"
        assert store.gauge("control_plane.connected_state").value == 1
        receiver.upstream_data(frame(b"\xff\xff\xff\xff"), False)  # not a DiscoveryResponse
        assert store.gauge("control_plane.connected_state").value == 0
        channel = next(iter(mux.streams.values()))
        assert channel.stream is None and channel.retry is not None
        before = len(cluster.sent)
        await _until(lambda: len(cluster.sent) > before)  # (a backoff of at most 0.5 s)
        again = _requests(cluster.sent)[-1]
        assert (again.version_info, again.response_nonce, again.node.id) == ("v1", "", "n1")
        mux.stop()

    asyncio.run(run())


def test_the_mux_holds_requests_past_the_rate_limit() -> None:
    import asyncio

    from edgegw.config import model as m

    async def run() -> None:
        mux, cluster, store = _mux({"max_tokens": 1, "fill_rate": 20})
        mux.watch(m.ConfigSource(ads={}), ENDPOINTS, "a", Recorder())
        await asyncio.sleep(0)
        mux.watch(m.ConfigSource(ads={}), ENDPOINTS, "b", Recorder())
        await asyncio.sleep(0)
        assert [r.resource_names for r in _requests(cluster.sent)] == [["a"]]
        assert store.counter("control_plane.rate_limit_enforced").value == 1
        assert store.gauge("control_plane.pending_requests").value == 1
        await _until(lambda: len(cluster.sent) == 2)  # (a token comes back in 50 ms)
        assert [r.resource_names for r in _requests(cluster.sent)] == [["a"], ["a", "b"]]
        assert store.gauge("control_plane.pending_requests").value == 0
        mux.stop()

    asyncio.run(run())


def test_assignments_read_fast_check_every_endpoint_as_the_model_does() -> None:
    """Endpoints are checked once and taken from a cache after; a refused one still makes
    the whole assignment refused, with the path the model names."""
    from envoy.config.endpoint.v3 import endpoint_pb2

    from edgegw.config import model as m
    from edgegw.config.subscription import SubscriptionError, parse

    def assignment(port: int) -> bytes:
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="app")
        group = cla.endpoints.add()
        group.load_balancing_weight.value = 3
        for last in (1, 2):
            sa = group.lb_endpoints.add().endpoint.address.socket_address
            sa.address, sa.port_value = f"10.0.0.{last}", port
        return cla.SerializeToString()

    for _ in range(2):  # (the second time from the cache)
        got = parse(to_dict(ENDPOINTS, assignment(80)), m.ClusterLoadAssignment, "")
        assert [(e.endpoint.address.socket_address.address, g.load_balancing_weight)
                for g in got.endpoints for e in g.lb_endpoints] == [("10.0.0.1", 3),
                                                                     ("10.0.0.2", 3)]
    bad = to_dict(ENDPOINTS, assignment(70000))
    with pytest.raises(SubscriptionError, match="endpoints.0.lb_endpoints.0.endpoint.address"
                                                ".socket_address.port_value"):
        parse(bad, m.ClusterLoadAssignment, "")
