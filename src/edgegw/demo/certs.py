"""Development certificates for the demo and the tests, made with trustme.

``dev-ca.pem`` is the CA that clients trust; ``a.example.com`` and ``b.example.com`` are
served by the gateway. The HTTPS backend has its own CA (``backend-ca.pem``) and certificate
for ``b.internal``, so the gateway's upstream TLS is checked against a different trust root.

Nothing that exists is ever overwritten: a name that has a certificate (of any layout the
gateway reads) keeps it, and a CA whose key is kept (``.dev-ca.key``) issues the missing ones,
so a real certificate dropped in stays, whatever else is deleted.
"""

from __future__ import annotations

import argparse
import os

import trustme

SITES = ("a.example.com", "b.example.com")
BACKEND_NAME = "b.internal"


def _has_certificate(directory: str, name: str) -> bool:
    return any(os.path.exists(os.path.join(directory, name + suffix))
               for suffix in (".pem", ".crt", ".cer", ".key", ""))


def _ca(directory: str, stem: str, organization: str) -> trustme.CA | None:
    """The CA ``stem`` of the directory (made if absent); None when only its certificate is
    there (its key was not kept, so it can issue nothing)."""
    # The CA's key is a dot file: the gateway's drop-in directory skips those, so the CA is
    # never taken for a site's pair.
    cert, key = os.path.join(directory, f"{stem}.pem"), os.path.join(directory, f".{stem}.key")
    if os.path.exists(cert):
        if not os.path.exists(key):
            return None
        with open(cert, "rb") as c, open(key, "rb") as k:
            return trustme.CA.from_pem(c.read(), k.read())
    ca = trustme.CA(organization_name=organization)
    ca.private_key_pem.write_to_path(key)
    os.chmod(key, 0o600)
    ca.cert_pem.write_to_path(cert)
    return ca


def write_pair(ca: trustme.CA, name: str, directory: str, *extra: str,
               key_mode: int = 0o600) -> tuple[str, str]:
    cert = ca.issue_cert(name, *extra)
    crt = os.path.join(directory, f"{name}.pem")
    key = os.path.join(directory, f"{name}.key")
    cert.private_key_pem.write_to_path(key)
    os.chmod(key, key_mode)
    with open(crt, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return crt, key


def make_for(directory: str, names: list[str] | tuple[str, ...], ca_stem: str = "dev-ca",
             organization: str = "edgegw dev CA", key_mode: int = 0o600) -> list[str]:
    """Certificates from the CA ``ca_stem`` for the names that have none; the names made."""
    os.makedirs(directory, exist_ok=True)
    missing = [n for n in names if not _has_certificate(directory, n)]
    if not missing:
        return []
    ca = _ca(directory, ca_stem, organization)
    if ca is None:
        raise ValueError(f"{directory}/{ca_stem}.pem is there without its key "
                         f"(.{ca_stem}.key), so it cannot issue {', '.join(missing)}: move it "
                         "away to start a new dev CA")
    for name in missing:
        write_pair(ca, name, directory, key_mode=key_mode)
    return missing


def make(directory: str, key_mode: int = 0o600) -> list[str]:
    """The demo's certificates, where missing; returns the names it issued certificates for."""
    return (make_for(directory, SITES, key_mode=key_mode)
            + make_for(directory, (BACKEND_NAME,), "backend-ca", "edgegw demo backend CA",
                       key_mode))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m edgegw.demo.certs", description=__doc__)
    ap.add_argument("--dir", default="certs")
    ap.add_argument("--readable-keys", action="store_true",
                    help="keys readable by every user (for a demo container whose gateway runs "
                         "as another user; never for real keys)")
    a = ap.parse_args()
    try:
        made = make(a.dir, 0o644 if a.readable_keys else 0o600)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(f"certificates in {a.dir}/: " + (f"made {', '.join(made)}" if made else
                                            "nothing missing, nothing changed"))
    print("the demo answers for its sites' names (there is no site named localhost); try:")
    for name in SITES:  # (the demo gateway listens on 8443)
        print(f"  curl --cacert {a.dir}/dev-ca.pem --resolve {name}:8443:127.0.0.1 "
              f"https://{name}:8443/headers")


if __name__ == "__main__":
    main()
