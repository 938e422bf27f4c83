"""Reading Envoy SDS secret files and turning secrets into checked key material.

An SDS file holds exactly one ``Secret`` resource whose name must equal the name that
references it (Envoy's rules). Reading is done twice and compared, so that a file caught in the
middle of a rewrite is retried rather than loaded half-written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography import x509
from pydantic import ValidationError

from .. import log
from ..config import model as m
from ..config.datasource import DataSourceError, describe, path_of, read
from .certs import CertPair, load_pair, parse_chain

_log = log.get("secret")


class SecretError(Exception):
    """An SDS file or the material it names cannot be used; the text says what and where."""


@dataclass(frozen=True)
class CertSecret:
    """A certificate chain and its key, checked to match."""

    pair: CertPair
    chain_path: str
    digest: bytes


@dataclass(frozen=True)
class CaSecret:
    """Trusted CA certificates for verifying peers."""

    pem: bytes
    certs: tuple[x509.Certificate, ...]
    path: str
    san_matchers: tuple[m.SubjectAltNameMatcher, ...]
    digest: bytes


@dataclass(frozen=True)
class GenericMaterial:
    """A generic secret's bytes (oauth2's client secret and HMAC key)."""

    value: bytes
    digest: bytes


Material = CertSecret | CaSecret | GenericMaterial


def read_sds_file(path: str, name: str) -> m.Secret:
    """The one Secret named ``name`` in the SDS file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise SecretError(f"unable to read SDS file '{path}': {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SecretError(f"SDS file '{path}' is not valid YAML/JSON: {e}") from None
    resources = doc.get("resources") if isinstance(doc, dict) else None
    if not isinstance(resources, list) or not resources:
        raise SecretError(f"Missing SDS resources for {name} in '{path}'")
    if len(resources) != 1:
        raise SecretError(f"Unexpected SDS secrets length: {len(resources)} in '{path}' "
                          "(one Secret per file)")
    res = dict(resources[0]) if isinstance(resources[0], dict) else {}
    url = res.pop("@type", None)
    if url != m.SECRET_TYPE:
        raise SecretError(f"SDS file '{path}': resource \"@type\" must be {m.SECRET_TYPE}")
    try:
        secret = m.Secret.model_validate(res)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SecretError(f"SDS file '{path}': {where}: {first['msg']}") from None
    if secret.name != name:
        raise SecretError(f"Unexpected SDS secret '{secret.name}' in '{path}' "
                          f"(expecting {name})")
    return secret


def digest(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.digest()


def materialize(secret: m.Secret) -> Material:
    """Reads the files a Secret names and checks them; raises SecretError on any problem."""
    try:
        if secret.tls_certificate is not None:
            tc = secret.tls_certificate
            pair = load_pair(tc.certificate_chain, tc.private_key)
            warn_if_key_readable(tc.private_key)
            return CertSecret(pair, path_of(tc.certificate_chain),
                              digest(pair.chain_pem, pair.key_pem))
        if secret.generic_secret is not None:
            value = read(secret.generic_secret.secret)
            return GenericMaterial(value, digest(value))
        vc = secret.validation_context
        assert vc is not None
        if vc.trusted_ca is None:
            raise SecretError(f"secret '{secret.name}': validation_context has no trusted_ca")
        pem = read(vc.trusted_ca)
        certs = parse_chain(pem, f"trusted_ca {describe(vc.trusted_ca)}")
        return CaSecret(pem, certs, path_of(vc.trusted_ca),
                        tuple(vc.match_typed_subject_alt_names), digest(pem))
    except DataSourceError as e:
        raise SecretError(str(e)) from None


def stable_materialize(secret: m.Secret, attempts: int = 5) -> Material:
    """Materializes twice and compares, as Envoy does, so a torn read is retried."""
    last: Material | None = None
    for _ in range(attempts):
        got = materialize(secret)
        if last is not None and got.digest == last.digest:
            return got
        last = got
    _log.warning("secret '%s': files kept changing while being read; using the last read",
                 secret.name)
    assert last is not None
    return last


def validity_problem(mat: Material, now: dt.datetime | None = None) -> str | None:
    """Why a certificate must not replace a working one: expired or not yet valid."""
    if not isinstance(mat, CertSecret):
        return None
    now = now or dt.datetime.now(dt.UTC)
    leaf = mat.pair.leaf
    if leaf.not_valid_after_utc < now:
        return f"certificate '{mat.chain_path}' expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
    if leaf.not_valid_before_utc > now:
        return (f"certificate '{mat.chain_path}' is not valid before "
                f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    return None


_warned: set[str] = set()


def warn_if_key_readable(ds: m.DataSource) -> None:
    """A private key readable by other users deserves one warning per file."""
    if ds.filename is None or ds.filename in _warned:
        return
    try:
        mode = os.stat(ds.filename).st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        _warned.add(ds.filename)
        _log.warning("private key '%s' is readable by other users (mode %o); "
                     "chmod 600 it", ds.filename, stat.S_IMODE(mode))


def files_of(secret: m.Secret) -> list[str]:
    """The files a Secret names, to watch for changes."""
    out = []
    if secret.tls_certificate is not None:
        for ds in (secret.tls_certificate.certificate_chain, secret.tls_certificate.private_key):
            if ds.filename:
                out.append(ds.filename)
    elif secret.generic_secret is not None:
        if secret.generic_secret.secret.filename:
            out.append(secret.generic_secret.secret.filename)
    elif secret.validation_context is not None and secret.validation_context.trusted_ca:
        if secret.validation_context.trusted_ca.filename:
            out.append(secret.validation_context.trusted_ca.filename)
    return out


Signature = tuple[Any, ...]
"""What tells that certificate files changed: device, inode, size and times of each."""


def signature_of(paths: list[str]) -> Signature:
    out: list[Any] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def now_stamp() -> str:
    """Now, as Envoy stamps config dumps: ``2026-12-01T22:04:28.718Z``."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
