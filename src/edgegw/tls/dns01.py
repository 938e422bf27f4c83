"""ACME DNS-01 (edgegw-only): the TXT records that prove a name, through the zone's DNS.

A provider adds and removes TXT values; this module does what every provider needs around
it, as lego and certbot's plugins do:

- ``_acme-challenge.NAME`` is followed through a CNAME (delegation to another zone, or an
  acme-dns account), so the record is written where the CA will read it;
- values are added, never replaced: an apex and its wildcard share one TXT name;
- before the CA is asked to look, every authoritative server of the zone (its NS, not the
  LAN resolver, which may cache the old answer; or the configured ``resolvers``, lego's
  recursive check) must serve every value, for at most ``propagation_timeout``;
- the records are always removed afterwards, whatever happened.

Providers here: ``rfc2136`` (dynamic updates signed with TSIG: BIND, Knot, PowerDNS,
Technitium, OPNsense), ``cloudflare`` (its API, with a token), ``acme-dns`` (joohoi's
server: an account per name, which the name's ``_acme-challenge`` CNAME points at),
``exec`` (a script called as ``SCRIPT present|cleanup FQDN VALUE``, as lego's) and
``httpreq`` (lego's JSON ``/present`` and ``/cleanup``). The dnspython library does the DNS;
the exchange runs in the ACME client's thread.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update

from .. import log
from ..config import model as m

_log = log.get("secret")

TTL = 60
QUERY_TIMEOUT = 5.0


class DnsError(RuntimeError):
    """Why a DNS-01 step failed, naming the provider and the zone."""


class Provider(Protocol):
    """Adds and removes one TXT value at ``fqdn``, which proves ``domain``."""

    name: str

    def present(self, domain: str, fqdn: str, value: str) -> None: ...

    def cleanup(self, domain: str, fqdn: str, value: str) -> None: ...


def _host_port(address: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``; port 53 when none is given."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if address.count(":") == 1:
        host, port = address.split(":")
        return host, int(port)
    return address, 53


class Lookup:
    """Names as the DNS tells them: zones, CNAMEs and the authoritative servers, asked of
    ``resolvers`` (``host:port``; the system's when none)."""

    def __init__(self, resolvers: list[str], primary: str | None = None) -> None:
        self.resolver = dns.resolver.Resolver(configure=not resolvers)
        self.resolvers = [_host_port(r) for r in resolvers]
        if resolvers:
            self.resolver.nameservers = [h for h, _ in self.resolvers]
            self.resolver.nameserver_ports = dict(self.resolvers)
        self.resolver.lifetime = QUERY_TIMEOUT
        self.primary = _host_port(primary) if primary else None
        """The server updates go to: an authoritative server at its address is asked on
        its port."""

    def follow(self, fqdn: str) -> str:
        """``fqdn``, or where its CNAME chain ends."""
        name = dns.name.from_text(fqdn)
        for _ in range(10):
            try:
                answer = self.resolver.resolve(name, "CNAME", raise_on_no_answer=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
                break
            if answer.rrset is None:
                break
            name = answer.rrset[0].target
        return name.to_text()

    def zone_of(self, fqdn: str) -> str:
        """The zone ``fqdn`` lives in (the closest name up with an SOA)."""
        try:
            return dns.resolver.zone_for_name(fqdn, resolver=self.resolver).to_text()
        except dns.exception.DNSException as e:
            raise DnsError(f"no DNS zone found for {fqdn}: {e}") from e

    def authoritative(self, zone: str) -> list[str]:
        """The addresses of the zone's NS servers."""
        try:
            ns = [r.target for r in self.resolver.resolve(zone, "NS")]
            return [a.address for n in ns for a in self.resolver.resolve(n, "A")]
        except dns.exception.DNSException as e:
            raise DnsError(f"zone {zone}: its name servers cannot be found: {e}") from e

    def servers(self, fqdn: str, how: str) -> list[tuple[str, int]]:
        """Who must serve a record before the CA looks: the authoritative servers of its
        zone, or the configured resolvers."""
        if how == "resolvers" and self.resolvers:
            return self.resolvers
        primary = dict([self.primary]) if self.primary else {}
        return [(a, primary.get(a, 53)) for a in self.authoritative(self.zone_of(fqdn))]

    def wait(self, records: list[tuple[str, str]], how: str, timeout: float) -> None:
        """Waits until every server ``how`` says serves each record's value."""
        servers = {fqdn: self.servers(fqdn, how) for fqdn, _ in records}
        deadline = time.monotonic() + timeout
        pending = list(records)
        while True:
            pending = [(fqdn, value) for fqdn, value in pending
                       if not all(value in _txt(s, fqdn) for s in servers[fqdn])]
            if not pending:
                return
            if time.monotonic() > deadline:
                fqdn, value = pending[0]
                raise DnsError(f"{fqdn}: the TXT value {value} is not served by "
                               f"{', '.join(f'{h}:{p}' for h, p in servers[fqdn])} after "
                               f"{timeout:.0f} s (propagation_timeout)")
            time.sleep(1.0)


def _txt(server: tuple[str, int], fqdn: str) -> set[str]:
    """The TXT values a server answers for ``fqdn``."""
    q = dns.message.make_query(fqdn, "TXT")
    try:
        r = dns.query.udp(q, server[0], port=server[1], timeout=QUERY_TIMEOUT)
    except (dns.exception.DNSException, OSError):
        return set()
    return {b"".join(rd.strings).decode() for rrset in r.answer
            if rrset.rdtype == dns.rdatatype.TXT for rd in rrset}


_KEY = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)


def read_tsig_key(path: str) -> tuple[str, str, str]:
    """(name, algorithm, secret) from a key file as BIND's ``tsig-keygen`` writes it."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise DnsError(f"rfc2136: the TSIG key file cannot be read: {e}") from e
    found = _KEY.search(text)
    alg = re.search(r'algorithm\s+"?([\w-]+)"?\s*;', found[2]) if found else None
    secret = re.search(r'secret\s+"([^"]+)"\s*;', found[2]) if found else None
    if not found or not alg or not secret:
        raise DnsError(f"rfc2136: {path} is not a TSIG key file (key \"NAME\" {{ algorithm "
                       "hmac-sha256; secret \"...\"; }}; as tsig-keygen writes it)")
    return found[1], alg[1], secret[1]


class Rfc2136:
    """Dynamic updates (RFC 2136) to the zone's primary, signed with a TSIG key."""

    name = "rfc2136"

    def __init__(self, cfg: m.AcmeDns, lookup: Lookup) -> None:
        assert cfg.server is not None and cfg.tsig_key is not None  # (the model says so)
        self.server = _host_port(cfg.server)
        self.lookup = lookup
        self.key_file = cfg.tsig_key

    def _update(self, fqdn: str, value: str, add: bool) -> None:
        name, alg, secret = read_tsig_key(self.key_file)
        zone = self.lookup.zone_of(fqdn)
        try:
            keyring = dns.tsigkeyring.from_text({name: (alg, secret)})
            upd = dns.update.UpdateMessage(zone, keyring=keyring, keyalgorithm=alg)
        except (dns.exception.DNSException, ValueError) as e:
            raise DnsError(f"rfc2136: the TSIG key in {self.key_file} is not usable: "
                           f"{e}") from e
        if add:
            upd.add(fqdn, TTL, "TXT", f'"{value}"')
        else:
            upd.delete(fqdn, "TXT", f'"{value}"')
        host, port = self.server
        try:
            r = dns.query.tcp(upd, host, port=port, timeout=QUERY_TIMEOUT)
        except dns.tsig.PeerError as e:
            raise DnsError(f"rfc2136: {host}:{port} refused the TSIG key '{name}' for zone "
                           f"{zone} ({type(e).__name__}): check the key file") from e
        except (dns.exception.DNSException, OSError) as e:
            raise DnsError(f"rfc2136: the update of zone {zone} at {host}:{port} failed: "
                           f"{e}") from e
        if r.rcode() != dns.rcode.NOERROR:
            why = {dns.rcode.REFUSED: " (the server does not take updates of this zone with "
                                      "this key: check allow-update / update-policy)",
                   dns.rcode.NOTAUTH: " (the server is not authoritative for the zone, or "
                                      "refused the key)"}.get(r.rcode(), "")
            raise DnsError(f"rfc2136: {host}:{port} answered {dns.rcode.to_text(r.rcode())} "
                           f"to the update of zone {zone}{why}")

    def present(self, domain: str, fqdn: str, value: str) -> None:
        self._update(fqdn, value, True)

    def cleanup(self, domain: str, fqdn: str, value: str) -> None:
        self._update(fqdn, value, False)


class Exec:
    """A script of the user's: ``SCRIPT present FQDN VALUE`` and ``SCRIPT cleanup FQDN
    VALUE`` (lego's ``exec`` provider)."""

    name = "exec"

    def __init__(self, cfg: m.AcmeDns) -> None:
        assert cfg.command is not None
        self.command = cfg.command

    def _run(self, action: str, fqdn: str, value: str) -> None:
        try:
            done = subprocess.run([self.command, action, fqdn, value], capture_output=True,
                                  timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DnsError(f"exec: {self.command} {action} {fqdn} could not run: {e}") from e
        if done.returncode != 0:
            out = (done.stderr or done.stdout).decode(errors="replace").strip()[-300:]
            raise DnsError(f"exec: {self.command} {action} {fqdn} exited with "
                           f"{done.returncode}: {out}")

    def present(self, domain: str, fqdn: str, value: str) -> None:
        self._run("present", fqdn, value)

    def cleanup(self, domain: str, fqdn: str, value: str) -> None:
        self._run("cleanup", fqdn, value)


def _call(provider: str, method: str, url: str, body: dict[str, Any] | None = None,
          headers: dict[str, str] | None = None) -> Any:
    """One JSON request of an HTTP DNS API; its answer, parsed."""
    req = urllib.request.Request(url, method=method, headers={
        "content-type": "application/json", "accept": "application/json", **(headers or {})},
        data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise DnsError(f"{provider}: {method} {url} answered {e.code}: {detail}") from e
    except OSError as e:
        raise DnsError(f"{provider}: {method} {url} failed: {e}") from e
    try:
        return json.loads(data) if data.strip() else None
    except ValueError as e:
        raise DnsError(f"{provider}: {method} {url} answered no JSON") from e


class HttpReq:
    """lego's ``httpreq``: ``POST ENDPOINT/present`` and ``/cleanup`` with ``{"fqdn":
    "_acme-challenge.NAME.", "value": "..."}``, basic auth when a user is given."""

    name = "httpreq"

    def __init__(self, cfg: m.AcmeDns) -> None:
        assert cfg.endpoint is not None
        self.endpoint = cfg.endpoint.rstrip("/")
        self.username = cfg.username
        self.password_file = cfg.password_file

    def _post(self, action: str, fqdn: str, value: str) -> None:
        headers = {}
        if self.username:
            password = _read_secret(self.password_file) if self.password_file else ""
            token = base64.b64encode(f"{self.username}:{password}".encode()).decode()
            headers["authorization"] = f"Basic {token}"
        _call(self.name, "POST", f"{self.endpoint}/{action}", {"fqdn": fqdn, "value": value},
              headers)

    def present(self, domain: str, fqdn: str, value: str) -> None:
        self._post("present", fqdn, value)

    def cleanup(self, domain: str, fqdn: str, value: str) -> None:
        self._post("cleanup", fqdn, value)


class AcmeDnsServer:
    """joohoi's acme-dns: each name gets an account (``POST /register``, kept in
    ``accounts``), and its ``_acme-challenge`` must be a CNAME to the account's
    ``fulldomain``; ``POST /update`` sets the value (acme-dns keeps the last two, which an
    apex and its wildcard need). Nothing to remove."""

    name = "acme-dns"

    def __init__(self, cfg: m.AcmeDns, accounts: str) -> None:
        assert cfg.endpoint is not None
        self.endpoint = cfg.endpoint.rstrip("/")
        self.accounts = accounts

    def _account(self, domain: str) -> dict[str, Any]:
        try:
            with open(self.accounts) as f:
                known: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            known = {}
        except (OSError, ValueError) as e:
            raise DnsError(f"acme-dns: {self.accounts} cannot be read: {e}") from e
        if domain not in known:
            known[domain] = _call(self.name, "POST", f"{self.endpoint}/register", {})
            fd = os.open(f"{self.accounts}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(known, f)
            os.replace(f"{self.accounts}.tmp", self.accounts)
        return dict(known[domain])

    def present(self, domain: str, fqdn: str, value: str) -> None:
        account = self._account(domain)
        target = account["fulldomain"].rstrip(".") + "."
        if fqdn != target:
            raise DnsError(f"acme-dns: _acme-challenge.{domain} must be a CNAME to {target} "
                           f"(the account registered for it); it resolves to {fqdn} now")
        _call(self.name, "POST", f"{self.endpoint}/update",
              {"subdomain": account["subdomain"], "txt": value},
              {"X-Api-User": account["username"], "X-Api-Key": account["password"]})

    def cleanup(self, domain: str, fqdn: str, value: str) -> None:
        pass  # (acme-dns keeps two values and replaces the older one next time)


class Cloudflare:
    """Cloudflare's API with a token (Zone.DNS edit): the zone is found by the API (the
    longest of the name's suffixes that is a zone of the account), the record is created,
    then deleted by its id."""

    name = "cloudflare"
    API = "https://api.cloudflare.com/client/v4"

    def __init__(self, cfg: m.AcmeDns) -> None:
        assert cfg.api_token_file is not None
        self.api = (cfg.endpoint or self.API).rstrip("/")
        self.token_file = cfg.api_token_file
        self.records: dict[tuple[str, str], tuple[str, str]] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        token = _read_secret(self.token_file)
        doc = _call(self.name, method, self.api + path, body,
                    {"authorization": f"Bearer {token}"})
        if not isinstance(doc, dict) or not doc.get("success"):
            errors = doc.get("errors") if isinstance(doc, dict) else doc
            raise DnsError(f"cloudflare: {method} {path} failed: {errors}")
        return doc["result"]

    def _zone(self, fqdn: str) -> tuple[str, str]:
        labels = fqdn.rstrip(".").split(".")
        for i in range(1, len(labels) - 1):
            name = ".".join(labels[i:])
            found = self._call("GET", f"/zones?name={urllib.parse.quote(name)}")
            if found:
                return found[0]["id"], name
        raise DnsError(f"cloudflare: no zone of this token's account holds {fqdn}")

    def present(self, domain: str, fqdn: str, value: str) -> None:
        zone, _ = self._zone(fqdn)
        made = self._call("POST", f"/zones/{zone}/dns_records", {
            "type": "TXT", "name": fqdn.rstrip("."), "content": value, "ttl": 120})
        self.records[(fqdn, value)] = (zone, made["id"])

    def cleanup(self, domain: str, fqdn: str, value: str) -> None:
        found = self.records.pop((fqdn, value), None)
        if found is not None:
            self._call("DELETE", f"/zones/{found[0]}/dns_records/{found[1]}")


def _read_secret(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def provider_for(cfg: m.AcmeDns, lookup: Lookup, state: str) -> Provider:
    """The provider ``cfg`` names (``state``: a private directory it may keep files in)."""
    if cfg.provider == "rfc2136":
        return Rfc2136(cfg, lookup)
    if cfg.provider == "exec":
        return Exec(cfg)
    if cfg.provider == "acme-dns":
        return AcmeDnsServer(cfg, os.path.join(state, "acme-dns.json"))
    if cfg.provider == "cloudflare":
        return Cloudflare(cfg)
    return HttpReq(cfg)


class Challenges:
    """The TXT records of one order: presented together, waited for, always cleaned up."""

    def __init__(self, cfg: m.AcmeDns, state: str) -> None:
        self.cfg = cfg
        # (an RFC 2136 server is the zone's primary: the one to ask when none is named)
        self.lookup = Lookup(cfg.resolvers or ([cfg.server] if cfg.server else []),
                             cfg.server)
        self.provider = provider_for(cfg, self.lookup, state)
        self.records: list[tuple[str, str, str]] = []

    def add(self, domain: str, value: str) -> None:
        """The record that proves ``domain`` (``_acme-challenge.DOMAIN``, followed through a
        CNAME), presented at once."""
        fqdn = self.lookup.follow(f"_acme-challenge.{domain}.")
        self.records.append((domain, fqdn, value))  # (cleaned up even if this fails)
        self.provider.present(domain, fqdn, value)
        _log.info("acme: dns-01 (%s): TXT %s presented", self.provider.name, fqdn)

    def wait(self) -> None:
        if self.cfg.propagation_check != "off" and self.records:
            self.lookup.wait([(fqdn, value) for _, fqdn, value in self.records],
                             self.cfg.propagation_check, self.cfg.propagation_timeout)

    def cleanup(self) -> None:
        for domain, fqdn, value in self.records:
            try:
                self.provider.cleanup(domain, fqdn, value)
            except DnsError as e:
                _log.warning("acme: dns-01: the TXT record %s could not be removed: %s",
                             fqdn, e)
        self.records = []

    def __enter__(self) -> Challenges:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()
