"""envoy.filters.http.basic_auth: a password in front of a site.

Users are htpasswd lines, ``user:{SHA}base64(sha1(password))`` (the one scheme Envoy takes),
inline or from a file. A file is looked at again at most once a second and a changed one is
swapped in when it parses, so it rotates like certificates do; a broken one keeps the
previous users and says why in the log. A request without valid credentials gets Envoy's
401 and ``WWW-Authenticate``; an allowed one goes on, with the user name in
``forward_username_header`` if set (its credentials header too: Envoy 1.40 forwards it). A route's ``BasicAuthPerRoute`` brings
its own users. Stats: ``http.<stat_prefix>.basic_auth.allowed|denied``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from ... import log
from ...config import model as m
from ...config.datasource import DataSourceError, read
from ...config.htpasswd import parse_users
from ...stats import Counter, StatSet, Store
from ..filter import register
from ..headers import set_header

if TYPE_CHECKING:
    from ..filter import FilterCallbacks

_log = log.get("http")
RECHECK = 1.0
VERIFIED_MAX = 1024


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class BasicAuthStats(StatSet):
    allowed: Counter
    denied: Counter


class Users:
    """One users DataSource, kept fresh when it is a file."""

    def __init__(self, source: m.DataSource) -> None:
        self.source = source
        self.users = parse_users(read(source).decode("utf-8", "replace"))
        self.checked = time.monotonic()
        self.signature = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        if self.source.filename is None:
            return None
        try:
            st = os.stat(self.source.filename)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def current(self) -> dict[str, bytes]:
        if self.source.filename is not None and time.monotonic() - self.checked >= RECHECK:
            self.checked = time.monotonic()
            sig = self._signature()
            if sig is not None and sig != self.signature:
                self.signature = sig
                try:
                    self.users = parse_users(read(self.source).decode("utf-8", "replace"))
                except (DataSourceError, ValueError) as e:
                    _log.error("basic_auth users file '%s' not loaded, the previous users "
                               "stay: %s", self.source.filename, e)
        return self.users


@register(m.BasicAuth)
class BasicAuthFilter:
    def __init__(self, cfg: m.BasicAuth, store: Store, hcm_prefix: str) -> None:
        self.cfg = cfg
        self.users = Users(cfg.users)
        self.per_route: dict[int, Users] = {}
        self.stats = BasicAuthStats(store, f"http.{hcm_prefix}.basic_auth.")
        self.header = (cfg.authentication_header or "authorization").lower().encode()
        self.forward = cfg.forward_username_header.lower().encode()
        self.verified: dict[bytes, tuple[dict[str, bytes], bytes]] = {}
        """Credentials already checked against a users table (kept while that table is the
        current one): a browser sends the same header on every request, and the check
        (base64, SHA-1) is most of this filter's cost."""

    def _users(self, route_cfg: object) -> dict[str, bytes]:
        if isinstance(route_cfg, m.BasicAuthPerRoute):
            users = self.per_route.get(id(route_cfg))
            if users is None:
                users = self.per_route[id(route_cfg)] = Users(route_cfg.users)
            return users.current()
        return self.users.current()

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        header = self.header
        value = None
        for k, v in cb.headers:
            if k == header:
                if value is not None:
                    # Envoy joins repeated fields with ',', which no credential survives: an
                    # app reading the last one would see an identity nobody checked.
                    return self._deny(cb, "User authentication failed. Invalid basic "
                                          "credential format.", "invalid_format_for_basic_auth")
                value = v
        users = self._users(route_cfg)
        known = self.verified.get(value) if value is not None else None
        if known is not None and known[0] is users:
            self.stats.allowed.value += 1
            if self.forward:
                set_header(cb.headers, self.forward, known[1])
            return True
        if value is None:
            return self._deny(cb, "User authentication failed. Missing username and password.",
                              "no_credential_for_basic_auth")
        scheme, _, credential = value.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return self._deny(cb, "User authentication failed. Expected 'Basic' "
                                  "authentication scheme.", "invalid_scheme_for_basic_auth")
        try:
            user, sep, password = base64.b64decode(credential.strip(), validate=True
                                                   ).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            sep = ""
        if not sep:
            return self._deny(cb, "User authentication failed. Invalid basic credential "
                                  "format.", "invalid_format_for_basic_auth")
        want = users.get(user)
        got = hashlib.sha1(password.encode("utf-8")).digest()  # noqa: S324 (htpasswd {SHA})
        if want is None or not hmac.compare_digest(want, got):
            return self._deny(cb, "User authentication failed. Invalid username/password "
                                  "combination.", "invalid_credential_for_basic_auth")
        if len(self.verified) >= VERIFIED_MAX:
            self.verified.clear()
        self.verified[value] = (users, user.encode("utf-8"))
        self.stats.allowed.value += 1
        if self.forward:
            set_header(cb.headers, self.forward, user.encode("utf-8"))
        return True

    def _deny(self, cb: FilterCallbacks, body: str, details: str) -> bool:
        self.stats.denied.value += 1
        host = next((v for k, v in cb.headers if k == b"host"), b"")
        realm = b'Basic realm="http://' + host + cb.path + b'"'  # Envoy's: the request's URL
        cb.send_local_reply(401, body.encode(), details, extra=[(b"www-authenticate", realm)])
        return False
