"""``edgegw certs``: what a home lab needs to know of its certificates, from the command line.

- ``edgegw certs list -c CONFIG``: every certificate file the config serves from (its files,
  SDS secrets' files, drop-in and ACME directories) with its names, issuer, days left and any
  problem that would keep it from being served (or break the next start); then what the
  running gateway serves now, asked of its admin port.
- ``edgegw certs dev NAME... [--dir certs]``: a local dev CA (``dev-ca.pem``, kept with its key
  so later names come from the same CA) and a certificate per name, made with trustme, the way
  ``make demo`` makes its own. Nothing that exists is overwritten.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from cryptography import x509

from .config import ConfigError, from_source
from .config import model as m
from .config.datasource import DataSourceError
from .tls.cert_dir import candidates, directory_of, has_key
from .tls.certs import load_pair
from .tls.secrets import CertSecret, digest, validity_problem


def _files(boot: m.Bootstrap) -> tuple[list[tuple[str, str]], list[str]]:
    """(certificate, key) files the config names, and the directories it serves from."""
    pairs: list[tuple[str, str]] = []
    dirs: list[str] = []
    for lst in boot.static_resources.listeners:
        if lst.acme is not None and lst.acme.certificates not in dirs:
            dirs.append(lst.acme.certificates)
        for fc in [*lst.filter_chains, *([lst.default_filter_chain]
                                         if lst.default_filter_chain else [])]:
            d = directory_of(fc)
            if d is not None and d not in dirs:
                dirs.append(d)
            ts = fc.transport_socket
            if ts is None:
                continue
            for c in ts.typed_config.common_tls_context.tls_certificates:
                if c.certificate_chain.filename and c.private_key.filename:
                    pairs.append((c.certificate_chain.filename, c.private_key.filename))
    for d in dirs:
        for chain, key in candidates(d).values():
            if (chain, key) not in pairs and (chain != key or has_key(chain)):
                pairs.append((chain, key))  # (a lone certificate is a CA, not a site's)
    return pairs, dirs


def _row(chain: str, key: str) -> dict[str, Any]:
    row: dict[str, Any] = {"file": chain, "names": "", "issuer": "", "days_left": "",
                           "problem": ""}
    try:
        pair = load_pair(m.DataSource(filename=chain), m.DataSource(filename=key))
    except DataSourceError as e:
        row["problem"] = str(e)
        return row
    leaf = pair.leaf
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        row["names"] = ", ".join(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        row["names"] = leaf.subject.rfc4514_string()
    named = (leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
             or leaf.issuer.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME))
    row["issuer"] = str(named[0].value) if named else leaf.issuer.rfc4514_string()
    left = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    row["days_left"] = left.days
    row["problem"] = validity_problem(CertSecret(pair, chain, digest(pair.chain_pem,
                                                                     pair.key_pem))) or ""
    return row


def _table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    out = ["  ".join(k.upper().replace("_", " ").ljust(widths[k]) for k in keys)]
    for r in rows:
        out.append("  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip())
    return "\n".join(out)


def _ask(boot: m.Bootstrap, path: str) -> dict[str, Any] | str:
    """A JSON page of the running gateway's admin port, or why there is none."""
    if boot.admin.address is None:
        return "the config has no admin address"
    sa = boot.admin.address.socket_address
    url = f"http://{sa.address}:{sa.port_value}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return dict(json.load(r))
    except (OSError, ValueError) as e:
        return f"no gateway answers on {url} ({getattr(e, 'reason', e)})"


def _served(boot: m.Bootstrap) -> list[dict[str, Any]] | str:
    """What the running gateway serves (its admin /certs), or why that is unknown."""
    doc = _ask(boot, "/certs")
    if isinstance(doc, str):
        return doc
    rows = []
    for ctx in doc.get("certificates", []):
        for c in ctx.get("cert_chain", [])[:1]:
            rows.append({"file": c.get("path", ""), "names": ", ".join(
                s.get("dns", "") for s in c.get("subject_alt_names", [])),
                "days_left": c.get("days_until_expiration", "")})
    return rows


def _renewals(boot: m.Bootstrap) -> list[dict[str, Any]] | str:
    """The built-in ACME client's state in the running gateway: when each certificate
    renews (and by whose rule), and its last failure."""
    doc = _ask(boot, "/status.json")
    if isinstance(doc, str):
        return doc
    return [{"names": ", ".join(a.get("names") or [a["name"]]), "expires": a["expires"],
             "renews_at": a["renews_at"], "by": {"ari": "CA (ARI)"}.get(
                 a.get("renewal_from", ""), "2/3 of life"),
             "last_error": (f"{a['last_error_at']}: {a['last_error']}"
                            if a.get("last_error") else "")} for a in doc.get("acme", [])]


def list_certs(config: str) -> int:
    from .sites import load

    try:
        boot = from_source(load(config, None))
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 1
    pairs, dirs = _files(boot)
    print(f"On disk ({', '.join(dirs) or 'files the config names'}):")
    rows = [_row(chain, key) for chain, key in pairs]
    print(_table(rows, ["file", "names", "issuer", "days_left", "problem"]) if rows
          else "  none")
    served = _served(boot)
    print("\nServed now:")
    print(_table(served, ["file", "names", "days_left"]) if isinstance(served, list) and served
          else f"  {served or 'none'}")
    if any(lst.acme is not None for lst in boot.static_resources.listeners):
        renewals = _renewals(boot)
        print("\nRenewals (built-in ACME):")
        print(_table(renewals, ["names", "expires", "renews_at", "by", "last_error"])
              if isinstance(renewals, list) and renewals else f"  {renewals or 'none'}")
    return 1 if any(r["problem"] for r in rows) else 0


def dev_certs(names: list[str], directory: str) -> int:
    from .demo.certs import make_for

    try:
        made = make_for(directory, names)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{directory}/: " + (f"made {', '.join(made)}; clients trust "
                               f"{os.path.join(directory, 'dev-ca.pem')}" if made
                               else "every name already has a certificate; nothing changed"))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edgegw certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    lst = sub.add_parser("list", help="certificates on disk and served")
    lst.add_argument("-c", "--config-path", required=True)
    dev = sub.add_parser("dev", help="a dev CA and certificates for NAMEs")
    dev.add_argument("names", nargs="+")
    dev.add_argument("--dir", default="certs")
    args = p.parse_args(argv)
    if args.what == "list":
        return list_certs(args.config_path)
    return dev_certs(args.names, args.dir)
