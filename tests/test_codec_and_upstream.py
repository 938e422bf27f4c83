"""Wire helpers, request ids and load balancing, driven with values, no sockets."""

from __future__ import annotations

import collections
import uuid

from edgegw.config import model as m
from edgegw.http.codec.http1 import chunk, status_line
from edgegw.http.headers import ForwardingPolicy, _RequestIds
from edgegw.stats import Store
from edgegw.upstream.cluster import Cluster


def test_status_line_and_chunks() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(599) == b"HTTP/1.1 599 Unknown\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


def test_request_ids_are_distinct_uuid4() -> None:
    ids = _RequestIds()
    seen = {ids.next() for _ in range(1000)}
    assert len(seen) == 1000
    assert all(uuid.UUID(i.decode()).version == 4 for i in seen)


def policy(**kw: object) -> ForwardingPolicy:
    cfg = m.HttpConnectionManager.model_validate({
        "stat_prefix": "p", "route_config": {}, "http_filters": [
            {"name": "envoy.filters.http.router"}], **kw})
    return ForwardingPolicy.from_config(cfg)


def test_trusted_hops_pick_the_client_from_xff() -> None:
    p = policy(use_remote_address=True, xff_num_trusted_hops=1)
    h = [(b"x-forwarded-for", b"198.51.100.7, 203.0.113.1"), (b"x-forwarded-proto", b"https")]
    client = p.apply(h, "10.1.1.1", tls=False)
    assert client == "203.0.113.1"
    assert (b"x-forwarded-proto", b"https") in h  # trusted hop: its proto is kept
    assert (b"x-forwarded-for", b"198.51.100.7, 203.0.113.1,10.1.1.1") in h  # as written
    assert (b"x-envoy-external-address", b"203.0.113.1") in h


def test_internal_address_config_marks_internal_requests() -> None:
    p = policy(use_remote_address=True, internal_address_config={
        "cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]})
    h = [(b"x-request-id", b"keep-me")]
    p.apply(h, "10.2.3.4", tls=True)
    assert (b"x-envoy-internal", b"true") in h and (b"x-request-id", b"keep-me") in h
    assert not any(k == b"x-envoy-external-address" for k, _ in h)


def cluster(policy_name: str, n: int) -> Cluster:
    return Cluster(m.Cluster.model_validate({
        "name": "c", "lb_policy": policy_name, "load_assignment": {"endpoints": [{
            "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": f"127.0.0.{20 + i}", "port_value": 80}}}} for i in range(n)]}]}}),
        Store())


def test_round_robin_visits_every_host_evenly() -> None:
    c = cluster("ROUND_ROBIN", 3)
    counts = collections.Counter(c.choose().address for _ in range(300))  # type: ignore[union-attr]
    assert set(counts.values()) == {100}


def test_least_request_avoids_the_busy_host() -> None:
    # Envoy draws its two choices with replacement: the busy host wins only when drawn twice.
    c = cluster("LEAST_REQUEST", 3)
    c.hosts[0].rq_active = 50
    picks = collections.Counter(c.choose().address for _ in range(300))  # type: ignore[union-attr]
    assert picks["127.0.0.20"] < 60
    assert picks["127.0.0.21"] > 100 and picks["127.0.0.22"] > 100


def test_random_uses_all_hosts_and_empty_cluster_has_none() -> None:
    c = cluster("RANDOM", 4)
    assert len({c.choose().address for _ in range(400)}) == 4  # type: ignore[union-attr]
    assert cluster("ROUND_ROBIN", 0).choose() is None


def test_upstream_tls_contexts_are_told_apart_and_hashable() -> None:
    """Pools and caches key on a cluster's ClientTls: two contexts are two keys."""
    from edgegw.config import model as m
    from edgegw.tls.context import ClientTls

    a, b = (ClientTls(m.UpstreamTlsContext(sni=sni), "c") for sni in ("a", "b"))
    assert a != b and len({a, b, a}) == 2
