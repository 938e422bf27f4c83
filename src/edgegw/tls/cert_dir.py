"""Drop-in certificate directory (an edgegw extension, not part of Envoy).

A filter chain whose metadata says
``filter_metadata: {edgegw: {certificate_directory: certs/}}`` also serves every certificate
found in that directory, chosen by SNI against its SANs after the configured ones:

* ``NAME.crt`` / ``NAME.pem`` / ``NAME.cer`` with ``NAME.key``,
* one ``NAME.pem`` holding both the chain and the key,
* certbot's layout, ``NAME/fullchain.pem`` with ``NAME/privkey.pem``.

Envoy accepts and ignores the metadata, so the config stays valid Envoy config. Adding a site
is dropping its files in; a broken or half-written pair never replaces a working one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import log
from ..config import model as m
from ..config.datasource import DataSourceError
from ..stats import Counter, StatSet, Store
from .certs import CertPair, load_pair
from .secrets import (
    CertSecret,
    Signature,
    digest,
    now_stamp,
    signature_of,
    validity_problem,
)

_log = log.get("secret")

CERT_SUFFIXES = (".crt", ".pem", ".cer")


def directory_of(fc: m.FilterChain) -> str | None:
    """The drop-in directory a filter chain's metadata names, if any."""
    path = fc.metadata.ours("certificate_directory") if fc.metadata else None
    return str(path) if path else None


def strict_sni_host(fc: m.FilterChain) -> bool:
    """``filter_metadata: {edgegw: {strict_sni_host: true}}``: a request whose Host is not a
    name of the certificate SNI chose gets 421 Misdirected Request (edgegw-only)."""
    return fc.metadata is not None and fc.metadata.ours("strict_sni_host") is True


def covers(names: tuple[frozenset[str], frozenset[str]], authority: str) -> bool:
    """Whether a certificate with these names serves this Host (port dropped): a name, or a
    wildcard one level up."""
    host = authority.lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    host = host.rstrip(".")
    exact, wild = names
    dot = host.find(".")
    return host in exact or (dot > 0 and host[dot:] in wild)


def candidates(root: str) -> dict[str, tuple[str, str]]:
    """Certificate and key files by site name, as the three layouts pair them."""
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return {}
    names = set(entries)
    out: dict[str, tuple[str, str]] = {}
    for e in entries:
        if e.startswith("."):
            continue
        full = os.path.join(root, e)
        if os.path.isdir(full):
            chain, key = os.path.join(full, "fullchain.pem"), os.path.join(full, "privkey.pem")
            if os.path.isfile(chain) and os.path.isfile(key):
                out[e] = (chain, key)
            continue
        stem, ext = os.path.splitext(e)
        if ext not in CERT_SUFFIXES:
            continue
        if f"{stem}.key" in names:
            out.setdefault(stem, (full, os.path.join(root, f"{stem}.key")))
        elif ext == ".pem":
            out.setdefault(stem, (full, full))
    return out


def on_disk(directory: str) -> list[tuple[str, str, x509.Certificate, list[str]]]:
    """(chain file, key file, leaf, DNS names) of each pair in the directory whose
    certificate parses, in name order: what a site's certificate is looked up in."""
    out = []
    for _, (chain, key) in sorted(candidates(directory).items()):
        try:
            with open(chain, "rb") as f:
                leaf = x509.load_pem_x509_certificate(f.read())
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, ValueError, x509.ExtensionNotFound):
            continue
        out.append((chain, key, leaf, san.get_values_for_type(x509.DNSName)))
    return out


def has_key(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"PRIVATE KEY-----" in f.read()
    except OSError:
        return False


class CertDirectoryStats(StatSet):
    """``edgegw.certificate_directory.*`` (edgegw-only)."""

    loaded: Counter
    rejected: Counter
    scans: Counter


class CertDirectory:
    """The certificates of one drop-in directory, rescanned when anything in it changes."""

    def __init__(self, path: str, store: Store) -> None:
        self.path = path
        self.watched_directory = path
        self.stats = CertDirectoryStats(store, "edgegw.certificate_directory.")
        self.good: dict[str, CertSecret] = {}
        self.bad: dict[str, Signature] = {}
        self.problems: dict[str, dict[str, str]] = {}
        """Files on disk that were refused, by pair name, until they are fixed or removed."""
        self.callbacks: list[Callable[[], None]] = []
        self.files: list[str] = []
        self.signature: Signature = ()
        self._scan()

    def _listing(self) -> list[str]:
        files = [self.path]
        for chain, key in candidates(self.path).values():
            files += [chain] if chain == key else [chain, key]
        return files

    def changed(self) -> bool:
        return self._listing() != self.files or signature_of(self.files) != self.signature

    def refresh(self) -> bool:
        if self._scan():
            for cb in self.callbacks:
                cb()
            return True
        return False

    def _scan(self) -> bool:
        """Loads new and changed pairs; True when the set of served certificates changed."""
        self.stats.scans.value += 1
        found = candidates(self.path)
        changed = False
        for name in [n for n in self.good if n not in found]:
            del self.good[name]
            changed = True
        for name in [n for n in self.problems if n not in found]:
            del self.problems[name]
        for name, (chain, key) in found.items():
            sig = signature_of([chain, key])
            if self.bad.get(name) == sig:
                continue
            if chain == key and not has_key(chain):
                continue  # a certificate alone (a CA, or a chain whose key is yet to come)
            try:
                pair = self._load(chain, key)
            except DataSourceError as e:
                self._reject(name, sig, str(e))
                continue
            current = self.good.get(name)
            if current is not None and current.digest == pair.digest:
                self.problems.pop(name, None)
                continue
            problem = validity_problem(pair)
            if problem and (current is None or validity_problem(current) is None):
                self._reject(name, sig, problem)
                continue
            self.good[name] = pair
            self.bad.pop(name, None)
            self.problems.pop(name, None)
            self.stats.loaded.value += 1
            _log.info("certificate directory %s: serving '%s' for %s", self.path, name,
                      ", ".join(pair.pair.dns_names()))
            changed = True
        self.files = self._listing()
        self.signature = signature_of(self.files)
        return changed

    def _load(self, chain: str, key: str) -> CertSecret:
        pair = load_pair(m.DataSource(filename=chain), m.DataSource(filename=key))
        if chain == key:  # one file with both: hand OpenSSL the two parts apart
            certs = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in pair.chain)
            key_pem = serialization.load_pem_private_key(pair.key_pem, None).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
            pair = CertPair(certs, key_pem, pair.chain)
        return CertSecret(pair, chain, digest(pair.chain_pem, pair.key_pem))

    def _reject(self, name: str, sig: Signature, why: str) -> None:
        self.bad[name] = sig
        self.problems[name] = {"name": name, "file": candidates(self.path).get(
            name, ("", ""))[0], "problem": why, "since": now_stamp()}
        self.stats.rejected.value += 1
        kept = " (still serving the previous one)" if name in self.good else ""
        _log.warning("certificate directory %s: '%s' not loaded%s: %s", self.path, name, kept,
                     why)

    def pairs(self) -> list[tuple[CertPair, str]]:
        return [(s.pair, s.chain_path) for _, s in sorted(self.good.items())]
