"""Certificates that renew themselves, end to end on loopback against Debian's pebble (a real
ACME server) and its challenge test server answering DNS with 127.0.0.1: edgegw's built-in
client, certbot in webroot mode, and a renewal while clients keep connecting."""

from __future__ import annotations

import datetime
import hashlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from .conftest import Proc, free_port, wait_for, wait_port
from .helpers import CHALLTESTSRV, EDGEGW, PEBBLE, Lab, Pebble, served

pytestmark = pytest.mark.skipif(PEBBLE is None or CHALLTESTSRV is None,
                                reason="Debian's pebble is missing (make sysdeps)")


@pytest.fixture
def pebble(tmp_path: Path, lab: Lab) -> Iterator[Pebble]:
    p = Pebble(tmp_path / "pebble", lab.http)
    yield p
    p.stop()


def sites(lab: Lab, pebble: Pebble) -> str:
    b = lab.backends
    return (f"acme: {{email: admin@example.com, directory: '{pebble.directory}', "
            f"ca: '{pebble.ca}', renew_interval: 1s}}\n"
            f"sites:\n  a.example.com: http://{b.a[0]}:{b.a[1]}\n")


def clear_site(lab: Lab, name: str) -> None:
    for suffix in (".pem", ".key"):
        (lab.root / "certs" / f"{name}{suffix}").unlink()


def test_builtin_acme_obtains_a_certificate_and_the_site_is_served(lab: Lab,
                                                                  pebble: Pebble) -> None:
    clear_site(lab, "a.example.com")
    lab.write(sites(lab, pebble))
    proc = lab.run("-c", "sites.yaml")
    root = lab.root / "pebble-root.pem"
    root.write_text(pebble.roots())
    wait_for(lambda: served(lab, "a.example.com", root) is not None, timeout=60)
    assert (lab.root / "certs" / "a.example.com.pem").stat().st_mode & 0o077 == 0
    out = proc.output()
    assert "acme: new certificate for a.example.com" in out
    stats = httpx.get(f"http://127.0.0.1:{lab.admin}/stats").text
    assert "edgegw.acme.issued: 1" in stats
    acme = httpx.get(f"http://127.0.0.1:{lab.admin}/status.json").json()["acme"]
    assert [(a["name"], a["managed"], a["last_error"]) for a in acme] == [
        ("a.example.com", True, "")]
    assert acme[0]["expires"] > acme[0]["renews_at"] > "2026"
    assert not list((lab.root / "webroot" / ".well-known" / "acme-challenge").iterdir())


def due_certificate(lab: Lab) -> None:
    """a.example.com's certificate, 80 days into a 90-day life, recorded as written by
    edgegw's ACME client (so it is due and may be replaced); its CA is old-ca.pem."""
    old_ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    old = old_ca.issue_cert("a.example.com", not_before=now - datetime.timedelta(days=80),
                            not_after=now + datetime.timedelta(days=10))
    pem = old.private_key_and_cert_chain_pem.bytes()
    clear_site(lab, "a.example.com")
    (lab.root / "certs" / "a.example.com.pem").write_bytes(pem)
    (lab.root / "certs" / ".acme").mkdir()
    (lab.root / "certs" / ".acme" / "a.example.com.sha256").write_text(
        hashlib.sha256(pem).hexdigest())
    old_ca.cert_pem.write_to_path(str(lab.root / "old-ca.pem"))


def test_a_due_certificate_is_renewed_while_clients_keep_connecting(lab: Lab,
                                                                   pebble: Pebble) -> None:
    """The certificate on disk was written by edgegw's client (its digest is recorded) and
    is past two thirds of its life: it is renewed, and no handshake or request fails."""
    due_certificate(lab)
    root = lab.root / "pebble-root.pem"
    root.write_text(pebble.roots())
    both = lab.root / "both.pem"
    both.write_text((lab.root / "old-ca.pem").read_text() + root.read_text())
    lab.write(sites(lab, pebble))
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def load() -> None:
        while not done.is_set():
            if served(lab, "a.example.com", both) is None:
                failures.append(time.strftime("%H:%M:%S"))
            count[0] += 1

    lab.run("-c", "sites.yaml")
    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(lambda: served(lab, "a.example.com", root) is not None, timeout=60)
        time.sleep(0.5)  # a little more load on the new certificate
    finally:
        done.set()
        worker.join()
    assert count[0] > 10
    assert failures == []


def test_certbot_in_webroot_mode_renews_into_the_watched_directory(lab: Lab,
                                                                  pebble: Pebble) -> None:
    """certbot certonly --webroot while the gateway runs: the challenge is answered on port
    80, and the certificate certbot writes (its live/ folder is the certificate directory) is
    served without a restart."""
    certbot = shutil.which("certbot")
    if certbot is None:
        pytest.skip("certbot is missing (make sysdeps)")
    b = lab.backends
    (lab.root / "letsencrypt" / "live").mkdir(parents=True)
    (lab.root / "webroot").mkdir()
    lab.write(f"sites:\n  a.example.com: http://{b.a[0]}:{b.a[1]}\n")
    text = (lab.root / "sites.yaml").read_text()
    (lab.root / "sites.yaml").write_text(
        text.replace("certificates: certs/", "certificates: letsencrypt/live/"))
    lab.run("-c", "sites.yaml", https=False)  # no certificate yet: port 80 only
    ready = f"http://127.0.0.1:{lab.admin}/ready"
    wait_for(lambda: httpx.get(ready).text.startswith(  # not serving HTTPS yet, and why
        f"INITIALIZING\nwaiting for HTTPS (127.0.0.1:{lab.https}): no site has a usable "
        "certificate yet\n"))
    r = subprocess.run(
        [certbot, "certonly", "--webroot", "-w", str(lab.root / "webroot"), "-d",
         "a.example.com", "--server", pebble.directory, "--agree-tos", "-m",
         "admin@example.com", "--non-interactive", "--no-eff-email",
         "--config-dir", str(lab.root / "letsencrypt"), "--work-dir", str(lab.root / "work"),
         "--logs-dir", str(lab.root / "logs")],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "REQUESTS_CA_BUNDLE": str(pebble.ca)})
    assert r.returncode == 0, r.stdout + r.stderr
    root = lab.root / "pebble-root.pem"
    root.write_text(pebble.roots())
    wait_for(lambda: served(lab, "a.example.com", root) is not None, timeout=30)
    assert httpx.get(ready).status_code == 200


def test_under_several_workers_one_renews_and_all_serve(lab: Lab, pebble: Pebble) -> None:
    clear_site(lab, "a.example.com")
    lab.write(sites(lab, pebble))
    proc = Proc([*EDGEGW, "-c", "sites.yaml", "--concurrency", "2"], lab.root / "gw.log",
                cwd=lab.root)
    lab.procs.append(proc)
    wait_port("127.0.0.1", lab.http)
    root = lab.root / "pebble-root.pem"
    root.write_text(pebble.roots())
    wait_for(lambda: served(lab, "a.example.com", root) is not None, timeout=60)
    # new connections land on either worker (SO_REUSEPORT): every one is served
    assert all(served(lab, "a.example.com", root) is not None for _ in range(20))
    stats = httpx.get(f"http://127.0.0.1:{lab.admin}/stats").text
    assert "edgegw.acme.issued: 1" in stats  # summed over the workers: one issuance
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{lab.admin}/ready").text == "LIVE\n")


def test_an_unreachable_acme_server_keeps_the_old_certificate_and_retries_later(
        lab: Lab, tmp_path: Path) -> None:
    """The certificate is due but the ACME server is down: it keeps serving, the failure is
    logged and shown, and the next attempt is a minute away (backing off)."""
    due_certificate(lab)
    b = lab.backends
    lab.write(f"acme: {{email: admin@example.com, directory: 'https://127.0.0.1:"
              f"{free_port()}/dir', renew_interval: 600s}}\n"
              f"sites:\n  a.example.com: http://{b.a[0]}:{b.a[1]}\n")
    proc = lab.run("-c", "sites.yaml")
    status = f"http://127.0.0.1:{lab.admin}/status.json"
    wait_for(lambda: httpx.get(status).json()["acme"][0]["failures"] >= 1, timeout=15)
    acme = httpx.get(status).json()["acme"][0]
    assert acme["last_error"].startswith("ConnectionError: "), acme["last_error"]
    assert served(lab, "a.example.com", lab.root / "old-ca.pem") is not None
    time.sleep(2)  # the retry waits its minute
    assert httpx.get(status).json()["acme"][0]["failures"] == 1
    assert "trying again in 60 s" in proc.output()
    assert "config reload" not in proc.output()  # nothing the client did reloads the config
