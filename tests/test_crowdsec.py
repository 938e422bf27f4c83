"""The CrowdSec bouncer (edgegw-only) against Debian's CrowdSec: its Local API run on
loopback with a config of the test's own, decisions added and removed with ``cscli``."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgegw.crowdsec import Decisions

from .conftest import Proc, cluster, config, free_port, route, wait_for, wait_port

CROWDSEC = shutil.which("crowdsec")
LAPI_CONFIG = """\
common: {{daemonize: false, log_media: stdout, log_level: info, working_dir: .}}
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: /etc/crowdsec/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  notification_dir: /etc/crowdsec/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
db_config: {{type: sqlite, db_path: {d}/data/crowdsec.db}}
api:
  client: {{credentials_path: {d}/local_api_credentials.yaml}}
  server:
    listen_uri: 127.0.0.1:{port}
    profiles_path: /etc/crowdsec/profiles.yaml
    trusted_ips: [127.0.0.1]
prometheus: {{enabled: false}}
"""


class Lapi:
    """A CrowdSec Local API of the test's own, and cscli on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        (root / "data").mkdir()
        self.config = root / "config.yaml"
        self.config.write_text(LAPI_CONFIG.format(d=root, port=self.port))
        (root / "local_api_credentials.yaml").touch()
        self.key_file = root / "bouncer.key"
        key = secrets.token_hex(16)
        self.key_file.write_text(key + "\n")
        self.cscli("machines", "add", "tests", "--auto", "--force", "-f",
                   str(root / "local_api_credentials.yaml"))
        self.cscli("bouncers", "add", "edgegw", "-k", key)
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert CROWDSEC
        self.proc = Proc([CROWDSEC, "-c", str(self.config), "-no-cs"], self.root / "lapi.log")
        try:
            wait_port("127.0.0.1", self.port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def cscli(self, *args: str) -> str:
        r = subprocess.run(["cscli", "-c", str(self.config), *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout


@pytest.fixture
def lapi(tmp_path: Path) -> Iterator[Lapi]:
    if CROWDSEC is None:
        pytest.skip("crowdsec (apt, `make sysdeps`) missing")
    d = tmp_path / "lapi"
    d.mkdir()
    lapi = Lapi(d)
    yield lapi
    lapi.stop()


def bounced(port: int, c: tuple[str, int], lapi: Lapi) -> dict:
    cfg = config(port, [cluster("app", [c])], routes=[route("/", "app")])
    cfg["static_resources"]["listeners"][0]["metadata"] = {"filter_metadata": {"edgegw": {
        "crowdsec": {"url": lapi.url, "api_key_file": str(lapi.key_file),
                     "poll_interval": "0.2s"}}}}
    return cfg


def outcome(port: int) -> int | str:
    """The status of one request, or ``refused`` when the connection is cut at accept."""
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/headers", headers={"host": "a"}, timeout=5)
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
        return "refused"
    return r.status_code


def test_decisions_land_and_lift_within_a_poll(gateway, backend, lapi: Lapi) -> None:
    """A ban refuses the connection as it is accepted; a captcha on a range answers each
    request with a 403 page naming it; deleted, they lift. A LAPI that goes down leaves the
    last decisions in force, and /status says it is down."""
    port = free_port()
    gw = gateway(bounced(port, backend("127.0.0.22", "c"), lapi))
    wait_for(lambda: gw.stats().get("edgegw.crowdsec.lapi_up") == 1)
    assert outcome(port) == 200
    lapi.cscli("decisions", "add", "--ip", "127.0.0.1", "--type", "ban", "--duration", "1h")
    wait_for(lambda: outcome(port) == "refused")
    assert gw.stats()["edgegw.crowdsec.refused_connections"] >= 1
    lapi.cscli("decisions", "delete", "--ip", "127.0.0.1")
    wait_for(lambda: outcome(port) == 200)
    lapi.cscli("decisions", "add", "--range", "127.0.0.0/24", "--type", "captcha",
               "--duration", "1h")
    wait_for(lambda: outcome(port) == 403)
    r = httpx.get(f"http://127.0.0.1:{port}/", headers={"host": "a"}, timeout=5)
    assert "CrowdSec: captcha" in r.text and "127.0.0.1" in r.text
    assert gw.stats()["edgegw.crowdsec.decisions"] == 1
    lapi.stop()
    wait_for(lambda: gw.stats().get("edgegw.crowdsec.lapi_up") == 0)
    assert outcome(port) == 403  # the last decisions stay in force
    status = httpx.get(f"http://127.0.0.1:{gw.admin_port}/status.json", timeout=5).json()
    assert status["crowdsec"][0]["up"] is False and status["crowdsec"][0]["decisions"] == 1
    lapi.start()
    lapi.cscli("decisions", "delete", "--range", "127.0.0.0/24")
    wait_for(lambda: outcome(port) == 200, timeout=10)


def test_every_worker_enforces_what_one_pulls(gateway, backend, lapi: Lapi) -> None:
    """Under --concurrency 2 the LAPI sees one bouncer: worker 0 follows its stream (the
    LAPI keeps one position per key: two pullers would each miss what the other took) and
    the other asks worker 0. A ban, then its lifting, reach both: every new connection is
    refused, then served, whichever worker the kernel gives it to."""
    port = free_port()
    gw = gateway(bounced(port, backend("127.0.0.22", "c"), lapi), flags=("--concurrency", "2"))
    wait_for(lambda: outcome(port) == 200, timeout=10)
    lapi.cscli("decisions", "add", "--ip", "127.0.0.1", "--type", "ban", "--duration", "1h")
    wait_for(lambda: [outcome(port) for _ in range(20)] == ["refused"] * 20, timeout=10)
    lapi.cscli("decisions", "delete", "--ip", "127.0.0.1")
    wait_for(lambda: [outcome(port) for _ in range(20)] == [200] * 20, timeout=10)
    assert gw.stats()["edgegw.crowdsec.refused_connections"] >= 20


def test_the_decision_set() -> None:
    """Addresses and ranges, IPv4 and IPv6 (an IPv4-mapped client is its IPv4 address);
    a ban wins over a captcha; a decision counted twice lifts when both are deleted."""
    d = Decisions()
    d.add("192.0.2.7", "ban")
    d.add("198.51.100.0/24", "captcha")
    d.add("2001:db8::/32", "ban")
    d.add("198.51.100.9", "ban")
    d.add("203.0.113.1", "captcha")
    d.add("203.0.113.1", "captcha")
    d.add("not an address", "ban")
    assert d.count == 6
    assert [d.lookup(ip) for ip in ("192.0.2.7", "::ffff:192.0.2.7", "192.0.2.8",
                                    "198.51.100.1", "198.51.100.9", "2001:db8:1::5",
                                    "2001:db9::1", "junk")] == [
        "ban", "ban", None, "captcha", "ban", "ban", None, None]
    d.remove("203.0.113.1", "captcha")
    assert d.lookup("203.0.113.1") == "captcha"
    d.remove("203.0.113.1", "captcha")
    d.remove("198.51.100.0/24", "captcha")
    assert d.lookup("203.0.113.1") is None and d.lookup("198.51.100.1") is None
    assert sorted(d.all()) == [("192.0.2.7/32", "ban"), ("198.51.100.9/32", "ban"),
                               ("2001:db8::/32", "ban")]


def test_behind_a_proxy_the_address_in_the_proxy_header_is_banned(gateway, backend,
                                                                  lapi: Lapi) -> None:
    """With the PROXY protocol, the ban looks at the client the header names, before any
    byte of HTTP: a banned client behind the proxy is cut, another one is served."""
    port = free_port()
    cfg = bounced(port, backend("127.0.0.22", "c"), lapi)
    cfg["static_resources"]["listeners"][0]["listener_filters"] = [{
        "name": "envoy.filters.listener.proxy_protocol", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol."
                     "v3.ProxyProtocol"}}]
    gw = gateway(cfg)

    def through_proxy(client: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n".encode()
                      + b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except ConnectionResetError:
                return b"reset"
            return out or b"reset"

    wait_for(lambda: gw.stats().get("edgegw.crowdsec.lapi_up") == 1)
    lapi.cscli("decisions", "add", "--ip", "203.0.113.9", "--type", "ban", "--duration", "1h")
    wait_for(lambda: through_proxy("203.0.113.9") == b"reset")
    assert through_proxy("203.0.113.10").startswith(b"HTTP/1.1 200")
    assert gw.stats()["edgegw.crowdsec.refused_connections"] >= 1
