"""Development certificates for the demo and the tests, made with trustme.

``certs/dev-ca.pem`` is the CA that clients trust; ``a.example.com`` and ``b.example.com`` are
served by the gateway. The HTTPS backend has its own CA (``backend-ca.pem``) and certificate
for ``b.internal``, so the gateway's upstream TLS is checked against a different trust root.
"""

from __future__ import annotations

import argparse
import os

import trustme

SITES = ("a.example.com", "b.example.com")
BACKEND_NAME = "b.internal"


def write_pair(ca: trustme.CA, name: str, directory: str, *extra: str) -> tuple[str, str]:
    cert = ca.issue_cert(name, *extra)
    crt = os.path.join(directory, f"{name}.pem")
    key = os.path.join(directory, f"{name}.key")
    cert.private_key_pem.write_to_path(key)
    os.chmod(key, 0o600)
    with open(crt, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return crt, key


def make(directory: str, force: bool = False) -> None:
    os.makedirs(directory, exist_ok=True)
    marker = os.path.join(directory, "dev-ca.pem")
    if os.path.exists(marker) and not force:
        return
    ca = trustme.CA(organization_name="edgegw dev CA")
    ca.cert_pem.write_to_path(marker)
    for site in SITES:
        write_pair(ca, site, directory)
    backend_ca = trustme.CA(organization_name="edgegw demo backend CA")
    backend_ca.cert_pem.write_to_path(os.path.join(directory, "backend-ca.pem"))
    write_pair(backend_ca, BACKEND_NAME, directory)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m edgegw.demo.certs", description=__doc__)
    ap.add_argument("--dir", default="certs")
    ap.add_argument("--force", action="store_true", help="replace existing certificates")
    a = ap.parse_args()
    make(a.dir, a.force)
    print(f"certificates in {a.dir}/")


if __name__ == "__main__":
    main()
