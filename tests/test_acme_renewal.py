"""Renewal as CAs now ask, against an ACME server of the tests' own (tests/acme_server.py;
Debian's pebble has none of it): renewal info (RFC 9773) with ``replaces``, profiles, and
external account binding."""

from __future__ import annotations

import base64
import datetime
import subprocess
from pathlib import Path

import httpx
from cryptography import x509

from .acme_server import AcmeServer, cert_id
from .conftest import wait_for
from .helpers import EDGEGW, Lab, served

HMAC_KEY = b"an hmac key the CA gave out, 32+"


def sites(lab: Lab, ca: AcmeServer, extra: str = "") -> str:
    a = lab.backends.a
    return (f"acme:\n  email: ops@example.com\n  directory: '{ca.directory}'\n"
            f"  ca: '{ca.ca}'\n  renew_interval: 1s\n{extra}"
            f"sites:\n  new.example.com: http://{a[0]}:{a[1]}\n")


def certs_list(lab: Lab) -> str:
    r = subprocess.run([*EDGEGW, "certs", "list", "-c", "sites.yaml"], cwd=lab.root,
                       capture_output=True, text=True, timeout=30)
    return r.stdout


def acme_status(lab: Lab) -> list[dict]:
    return httpx.get(f"http://127.0.0.1:{lab.admin}/status.json", timeout=5).json()["acme"]


def first_certificate(lab: Lab, ca: AcmeServer) -> x509.Certificate:
    """Starts the gateway on the sites file and waits for the certificate it obtains."""
    lab.write(sites(lab, ca))
    lab.run("-c", "sites.yaml", https=False)
    wait_for(lambda: served(lab, "new.example.com", ca.issuer_file) is not None, timeout=30)
    cert = served(lab, "new.example.com", ca.issuer_file)
    assert cert is not None
    return cert


def test_an_external_account_binding_and_a_profile(lab: Lab, tmp_path: Path) -> None:
    """A CA that asks for EAB (ZeroSSL's way): the account is bound with the kid and the
    HMAC key from its file; the order asks for the profile; the certificate is served."""
    ca = AcmeServer(tmp_path / "ca", eab=("kid-7", HMAC_KEY))
    try:
        (lab.root / "eab.key").write_text(base64.urlsafe_b64encode(HMAC_KEY).decode()
                                          .rstrip("="))
        lab.write(sites(lab, ca, "  profile: shortlived\n"
                                 "  eab: {kid: kid-7, hmac_key_file: eab.key}\n"))
        lab.run("-c", "sites.yaml", https=False)
        wait_for(lambda: served(lab, "new.example.com", ca.issuer_file) is not None,
                 timeout=30)
        cert = served(lab, "new.example.com", ca.issuer_file)
        assert cert is not None
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert life < datetime.timedelta(days=7)  # the shortlived profile's
        assert [a["eab_kid"] for a in ca.accounts] == ["kid-7"]
        assert [(o.get("profile"), o.get("replaces")) for o in ca.orders] == [
            ("shortlived", None)]
    finally:
        ca.stop()


def test_a_wrong_eab_key_is_refused_and_shown(lab: Lab, tmp_path: Path) -> None:
    ca = AcmeServer(tmp_path / "ca", eab=("kid-7", HMAC_KEY))
    try:
        (lab.root / "eab.key").write_text(base64.urlsafe_b64encode(b"x" * 32).decode())
        lab.write(sites(lab, ca, "  eab: {kid: kid-7, hmac_key_file: eab.key}\n"))
        lab.run("-c", "sites.yaml", https=False)
        wait_for(lambda: acme_status(lab)[0]["last_error"] != "", timeout=30)
        st = acme_status(lab)[0]
        assert "external account binding does not verify" in st["last_error"], st
        assert st["last_error_at"] > "2026" and ca.accounts == []
        stats = httpx.get(f"http://127.0.0.1:{lab.admin}/stats", timeout=5).text
        assert "edgegw.acme.failed: " in stats and "edgegw.acme.failed: 0" not in stats
        listed = certs_list(lab)
        assert "Renewals (built-in ACME):" in listed
        assert "external account binding does not verify" in listed
    finally:
        ca.stop()


def test_renewal_info_brings_a_renewal_forward_and_the_order_names_what_it_replaces(
        lab: Lab, tmp_path: Path) -> None:
    """A fresh certificate (far from two thirds of its life) whose renewal window the CA
    moves into the past, as after an incident: it is renewed at once, and the new order
    says which certificate it replaces. Until then /status says the CA's window rules."""
    ca = AcmeServer(tmp_path / "ca")
    try:
        first = first_certificate(lab, ca)
        wait_for(lambda: acme_status(lab)[0]["renewal_from"] == "ari", timeout=30)
        st = acme_status(lab)[0]
        assert st["renews_at"] < st["expires"]
        assert len(ca.orders) == 1
        assert "CA (ARI)" in certs_list(lab)
        stats = httpx.get(f"http://127.0.0.1:{lab.admin}/stats", timeout=5).text
        assert "edgegw.acme.days_left: 89" in stats

        now = datetime.datetime.now(datetime.UTC)
        ca.windows[cert_id(first)] = (now - datetime.timedelta(hours=2),
                                      now - datetime.timedelta(hours=1))
        # (the client asks again after Retry-After; a restart asks at once)
        lab.stop()
        lab.run("-c", "sites.yaml", https=False)

        def renewed() -> x509.Certificate | None:
            c = served(lab, "new.example.com", ca.issuer_file)
            return c if c is not None and c.serial_number != first.serial_number else None

        wait_for(lambda: renewed() is not None, timeout=30)
        assert [o.get("replaces") for o in ca.orders] == [None, cert_id(first)]
    finally:
        ca.stop()


def test_without_renewal_info_two_thirds_of_the_lifetime_rule(lab: Lab,
                                                             tmp_path: Path) -> None:
    ca = AcmeServer(tmp_path / "ca", ari=False)
    try:
        cert = first_certificate(lab, ca)
        wait_for(lambda: acme_status(lab)[0]["renews_at"] != "", timeout=10)
        st = acme_status(lab)[0]
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        two_thirds = (start + (end - start) * 2 / 3).isoformat(timespec="seconds")
        assert (st["renewal_from"], st["renews_at"]) == ("lifetime", two_thirds)
        assert [o.get("replaces") for o in ca.orders] == [None]
    finally:
        ca.stop()
