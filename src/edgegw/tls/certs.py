"""Reading certificate and key material and checking that it is usable.

Used both by ``--mode validate`` (so that a bad file is reported with the config path that names
it) and by the context builder, so the two can never disagree about what is acceptable.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..config.datasource import DataSourceError, describe, read
from ..config.model import DataSource


class CertError(DataSourceError):
    """A certificate, key or CA that cannot be used; the text says which and why."""


@dataclass(frozen=True)
class CertPair:
    """A parsed certificate chain with its key, ready to be turned into an SSLContext."""

    chain_pem: bytes
    key_pem: bytes
    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def dns_names(self) -> list[str]:
        """The leaf's DNS SANs (or its CN when it has none), as Envoy's cert selector uses."""
        try:
            san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = san.value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        if not names:
            names = [str(a.value) for a in self.leaf.subject.get_attributes_for_oid(
                x509.NameOID.COMMON_NAME)]
        return [n.lower() for n in names]


def parse_chain(pem: bytes, what: str) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise CertError(f"{what} is not a PEM certificate ({e})") from None
    return tuple(certs)


def load_pair(chain_ds: DataSource, key_ds: DataSource) -> CertPair:
    """Reads and checks a certificate chain and its private key (the key must match the leaf)."""
    chain_pem = read(chain_ds)
    key_pem = read(key_ds)
    chain = parse_chain(chain_pem, f"certificate_chain {describe(chain_ds)}")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"private_key {describe(key_ds)} is not a usable PEM private key "
                        f"({str(e).splitlines()[0]})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise CertError(f"private_key {describe(key_ds)}: unsupported key type")
    if _public(key.public_key()) != _public(chain[0].public_key()):
        raise CertError(f"private_key {describe(key_ds)} does not match the certificate in "
                        f"certificate_chain {describe(chain_ds)}")
    return CertPair(chain_pem, key_pem, chain)


def _public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def days_left(cert: x509.Certificate, now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    return max(0, (cert.not_valid_after_utc - now).days)


def cert_details(cert: x509.Certificate, path: str) -> dict[str, object]:
    """One certificate in the shape of Envoy's admin /certs ``CertificateDetails``."""
    sans: list[dict[str, str]] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans += [{"dns": v} for v in ext.get_values_for_type(x509.DNSName)]
        sans += [{"uri": v} for v in ext.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [{"ip_address": str(v)} for v in ext.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return {
        "path": path,
        "serial_number": format(cert.serial_number, "x"),
        "subject_alt_names": sans,
        "days_until_expiration": str(days_left(cert)),
        "valid_from": _stamp(cert.not_valid_before_utc),
        "expiration_time": _stamp(cert.not_valid_after_utc),
    }
