"""htpasswd lines as basic_auth reads them: ``user:{SHA}base64(sha1(password))``, and (the
sites file's, edgegw-only) ``user:$2y$…`` bcrypt hashes. Here, not in the filter, so that
loading a config can check them without importing the HTTP side."""

from __future__ import annotations

import base64
import binascii
import re

SHA1_LEN = 20
"""A parsed ``{SHA}`` entry is the 20-byte digest; a bcrypt entry is its 60-byte hash."""

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")
"""What ``htpasswd -B``, ``caddy hash-password`` and Python's bcrypt write."""


def parse_users(text: str, bcrypt: bool = False) -> dict[str, bytes]:
    """htpasswd lines to {user: SHA-1 digest or bcrypt hash}, read as Envoy reads them: lines
    split on newlines, an empty line or one starting with '#' skipped, nothing trimmed (a
    stray space or carriage return is part of the name or hash, and Envoy refuses such a
    file). bcrypt hashes only when ``bcrypt`` (Envoy takes {SHA} alone). ValueError names the
    first bad line."""
    users: dict[str, bytes] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"line {n}: expected 'user:{{SHA}}hash'")
        if user in users:
            raise ValueError(f"line {n}: user '{user}' is listed twice")
        users[user] = _entry(n, user, hashed, bcrypt)
    return users


def _entry(n: int, user: str, hashed: str, bcrypt: bool) -> bytes:
    if hashed.startswith("$2") and bcrypt:
        if not _BCRYPT.fullmatch(hashed):
            raise ValueError(f"line {n}: user '{user}': the bcrypt hash is not whole "
                             "($2y$, a cost from 04 to 31, then 53 characters)")
        return hashed.encode("ascii")
    if not hashed.startswith("{SHA}"):
        raise ValueError(f"line {n}: user '{user}': only {{SHA}} hashes (htpasswd -s) " + (
            "and bcrypt hashes (htpasswd -B) are supported" if bcrypt else
            "are supported here, as in Envoy (bcrypt hashes are the sites file's)"))
    try:
        digest = base64.b64decode(hashed[5:], validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != SHA1_LEN:
        raise ValueError(f"line {n}: user '{user}': the {{SHA}} hash is not base64 of a "
                         "SHA-1 digest")
    return digest
