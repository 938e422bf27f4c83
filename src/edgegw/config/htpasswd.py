"""htpasswd lines as basic_auth reads them: ``user:{SHA}base64(sha1(password))``. Here, not
in the filter, so that loading a config can check them without importing the HTTP side."""

from __future__ import annotations

import base64
import binascii


def parse_users(text: str) -> dict[str, bytes]:
    """htpasswd lines to {user: sha1 digest}; ValueError names the first bad line."""
    users: dict[str, bytes] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"line {n}: expected 'user:{{SHA}}hash'")
        if not hashed.startswith("{SHA}"):
            raise ValueError(f"line {n}: user '{user}': only {{SHA}} hashes are supported "
                             "(htpasswd -s)")
        try:
            digest = base64.b64decode(hashed[5:], validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 20:
            raise ValueError(f"line {n}: user '{user}': the {{SHA}} hash is not base64 of a "
                             "SHA-1 digest")
        if user in users:
            raise ValueError(f"line {n}: user '{user}' is listed twice")
        users[user] = digest
    return users
