"""What a site reads from disk, checked before the site is built (edgegw-only, sites file).

A site whose files are broken (a key the gateway may not read, a garbage key, a missing CA, an
unreadable users file) is left out, with why in the sites file's words, and the other sites
are served, as Caddy does. Each check returns None, or the sentence a home-lab user reads.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

from cryptography import x509

from ..config.datasource import DataSourceError
from ..config.htpasswd import SHA1_LEN, parse_users
from ..config.model import DataSource
from ..tls.certs import load_pair


def _ownership(path: str) -> str:
    """``owner root, mode 0600; the gateway runs as uid 10001``: why a read was refused."""
    try:
        st = os.stat(path)
    except OSError:
        return f"the gateway runs as uid {os.getuid()}"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return (f"owner {owner}:{group}, mode {stat.S_IMODE(st.st_mode):04o}; the gateway runs as "
            f"uid {os.getuid()}")


def read(path: str, what: str) -> tuple[bytes | None, str | None]:
    """The file's bytes, or why they cannot be had."""
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except FileNotFoundError:
        return None, f"the {what} {path} does not exist"
    except PermissionError:
        return None, f"cannot read the {what} {path}: permission denied ({_ownership(path)})"
    except OSError as e:
        return None, f"cannot read the {what} {path}: {(e.strerror or str(e)).lower()}"


def certificate_problem(chain: str, key: str) -> str | None:
    """The certificate and its key: readable, and the pair the TLS context would load."""
    for path, what in ((chain, "certificate"), (key, "key")):
        _, why = read(path, what)
        if why is not None:
            return why
    try:
        load_pair(DataSource(filename=chain), DataSource(filename=key))
    except DataSourceError as e:
        return (str(e).replace(f"private_key '{key}'", f"the key {key}")
                .replace(f"certificate_chain '{chain}'", f"the certificate {chain}"))
    return None


def ca_problem(path: str) -> str | None:
    """An upstream's ``ca:``: readable, and PEM certificates."""
    pem, why = read(path, "CA file (ca:)")
    if pem is None:
        return why
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        return f"the CA file (ca:) {path} holds no PEM certificate"
    return None


def users_problem(path: str) -> str | None:
    """``auth: users_file``: readable, and htpasswd lines basic auth takes."""
    text, why = read(path, "users file")
    if text is None:
        return why
    try:
        parse_users(text.decode("utf-8", "replace"), bcrypt=True)
    except ValueError as e:
        return f"the users file {path}: {e}"
    return None


def has_bcrypt(path: str) -> bool:
    """Whether a users file (one ``users_problem`` passed) holds bcrypt hashes, which Envoy's
    basic_auth does not take."""
    text, _ = read(path, "users file")
    try:
        users = parse_users(text.decode("utf-8", "replace"), bcrypt=True) if text else {}
    except ValueError:
        return False
    return any(len(h) != SHA1_LEN for h in users.values())
