"""envoy.filters.http.basic_auth: a password in front of a site.

Users are htpasswd lines, ``user:{SHA}base64(sha1(password))`` (the one scheme Envoy takes),
inline or from a file. edgegw-only: the filter chain's metadata ``basic_auth_users`` (which
the sites file writes) replaces them, and may hold bcrypt hashes too (``htpasswd -B``). A
bcrypt check takes milliseconds to a second by design, so it runs on a thread of its own, one
check at a time, while the stream waits; a credential it refused is refused again without a
second check while the users stay the same. A file is looked at again at most once a second and a changed one is
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
from asyncio import Future
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from ... import log
from ...config import model as m
from ...config.datasource import DataSourceError, read
from ...config.htpasswd import SHA1_LEN, parse_users
from ...stats import Counter, StatSet, Store
from ..filter import register
from ..headers import set_header

if TYPE_CHECKING:
    from ..filter import FilterCallbacks

_log = log.get("http")
RECHECK = 1.0
VERIFIED_MAX = 1024
BCRYPT_MAX_PASSWORD = 72
"""bcrypt reads no further; htpasswd -B hashed the first 72 bytes of a longer password."""
_hasher: ThreadPoolExecutor | None = None


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # only a config with bcrypt users pays for it

    return bool(bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed))


def _check_off_loop(cb: FilterCallbacks, password: bytes, hashed: bytes) -> Future[bool]:
    """``_bcrypt_check`` on the hashing thread; its result reaches the loop."""
    global _hasher
    if _hasher is None:
        _hasher = ThreadPoolExecutor(1, thread_name_prefix="bcrypt")
    return cb.conn.loop.run_in_executor(_hasher, _bcrypt_check, password, hashed)


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class BasicAuthStats(StatSet):
    allowed: Counter
    denied: Counter


class Users:
    """One users DataSource, kept fresh when it is a file."""

    def __init__(self, source: m.DataSource, bcrypt: bool = False) -> None:
        self.source = source
        self.bcrypt = bcrypt
        self.users = self._parse()
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

    def _parse(self) -> dict[str, bytes]:
        return parse_users(read(self.source).decode("utf-8", "replace"), self.bcrypt)

    def current(self) -> dict[str, bytes]:
        if self.source.filename is not None and time.monotonic() - self.checked >= RECHECK:
            self.checked = time.monotonic()
            sig = self._signature()
            if sig is not None and sig != self.signature:
                self.signature = sig
                try:
                    self.users = self._parse()
                except (DataSourceError, ValueError) as e:
                    _log.error("basic_auth users file '%s' not loaded, the previous users "
                               "stay: %s", self.source.filename, e)
        return self.users


@register(m.BasicAuth)
class BasicAuthFilter:
    def __init__(self, cfg: m.BasicAuth, store: Store, hcm_prefix: str,
                 own_users: m.DataSource | None = None) -> None:
        self.cfg = cfg
        self.users = Users(own_users, bcrypt=True) if own_users is not None else Users(cfg.users)
        self.per_route: dict[int, Users] = {}
        self.stats = BasicAuthStats(store, f"http.{hcm_prefix}.basic_auth.")
        self.header = (cfg.authentication_header or "authorization").lower().encode()
        self.forward = cfg.forward_username_header.lower().encode()
        self.verified: dict[bytes, tuple[dict[str, bytes], bytes]] = {}
        """Credentials already checked against a users table (kept while that table is the
        current one): a browser sends the same header on every request, and the check
        (base64, SHA-1) is most of this filter's cost."""
        self.refused: dict[bytes, dict[str, bytes]] = {}
        """Credentials a bcrypt check refused, against which users table: a browser with a
        stale password sends it on every request, and each check costs milliseconds."""

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
        if want is not None and len(want) != SHA1_LEN:
            return self._check_bcrypt(cb, value, users, user, password, want)
        got = hashlib.sha1(password.encode("utf-8")).digest()  # noqa: S324 (htpasswd {SHA})
        if want is None or not hmac.compare_digest(want, got):
            return self._refuse(cb)
        return self._allow(cb, value, users, user)

    def _check_bcrypt(self, cb: FilterCallbacks, value: bytes, users: dict[str, bytes],
                      user: str, password: str, hashed: bytes) -> bool:
        if self.refused.get(value) is users:
            return self._refuse(cb)
        _check_off_loop(cb, password.encode("utf-8"), hashed).add_done_callback(
            partial(self._checked, cb, value, users, user))
        return False

    def _checked(self, cb: FilterCallbacks, value: bytes, users: dict[str, bytes], user: str,
                 done: Future[bool]) -> None:
        """A bcrypt check's answer, back on the loop; the client may have gone meanwhile."""
        if cb.response_done:
            return
        if not done.cancelled() and done.exception() is None and done.result():
            self._allow(cb, value, users, user)
            cb.continue_decoding()
            return
        if len(self.refused) >= VERIFIED_MAX:
            self.refused.clear()
        self.refused[value] = users
        self._refuse(cb)

    def _allow(self, cb: FilterCallbacks, value: bytes, users: dict[str, bytes],
               user: str) -> bool:
        if len(self.verified) >= VERIFIED_MAX:
            self.verified.clear()
        self.verified[value] = (users, user.encode("utf-8"))
        self.stats.allowed.value += 1
        if self.forward:
            set_header(cb.headers, self.forward, user.encode("utf-8"))
        return True

    def _refuse(self, cb: FilterCallbacks) -> bool:
        return self._deny(cb, "User authentication failed. Invalid username/password "
                              "combination.", "invalid_credential_for_basic_auth")

    def _deny(self, cb: FilterCallbacks, body: str, details: str) -> bool:
        self.stats.denied.value += 1
        host = next((v for k, v in cb.headers if k == b"host"), b"")
        realm = b'Basic realm="http://' + host + cb.path + b'"'  # Envoy's: the request's URL
        cb.send_local_reply(401, body.encode(), details, extra=[(b"www-authenticate", realm)])
        return False
