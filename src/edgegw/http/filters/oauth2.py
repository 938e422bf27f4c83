"""envoy.filters.http.oauth2: a login at the edge, as Envoy 1.40 runs it.

A request without a valid session is sent (302) to the provider's authorization endpoint with
PKCE (S256), a state that carries the original URL, a CSRF token and a flow id, and two
cookies per flow: the CSRF token (``OauthNonce.<flow>``) and the encrypted code verifier
(``CodeVerifier.<flow>``), each also under its bare name as Envoy sets them. The callback
(``redirect_path_matcher``) checks the state against its cookie, exchanges the code at the
token endpoint (a cluster), and answers 302 to the original URL with the session cookies:
``OauthHMAC``, ``OauthExpires`` and the tokens (encrypted with the HMAC secret).

The session is valid while ``OauthHMAC`` is the HMAC-SHA256, under the HMAC secret, of the
host (or ``cookie_domain``), the expiry and the tokens, and the expiry is ahead: a cookie
forged, kept past its expiry or taken to another host fails. An invalid session with a
refresh token is refreshed in place; ``signout_path`` deletes the cookies and goes to the
provider's ``end_session_endpoint``. The backend never sees the HMAC, expiry, refresh, nonce
and verifier cookies, and sees the access token as ``Authorization: Bearer`` when
``forward_bearer_token`` asks.

Cookies are encrypted as Envoy 1.40 does by default (AES-256-CBC, key SHA-256 of the HMAC
secret, the IV first, base64url), so a fleet of edgegw and Envoy nodes with one HMAC secret
accepts each other's cookies. Envoy's opt-in AES-GCM cookies (``gcm.``) are not read: they
fail and the user logs in again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ...accesslog.format import text_formatter
from ...config import model as m
from ...log import get as get_log
from ...matchers import header_matcher, string_matcher
from ...stats import Counter, StatSet, Store
from ...tls.secrets import GenericMaterial
from ..codec import Headers, RequestHead
from ..headers import parse_cookies, set_header
from ..service_call import ServiceCall

if TYPE_CHECKING:
    from ...tls.sds import SecretManager, Subscription
    from ..filter import FilterCallbacks

_log = get_log("oauth2")

UNAUTHORIZED = b"OAuth flow failed."
DELETED = "{}=deleted; path={}; expires=Thu, 01 Jan 1970 00:00:00 GMT"
SAME_SITE = {"DISABLED": "", "STRICT": ";SameSite=Strict", "LAX": ";SameSite=Lax",
             "NONE": ";SameSite=None"}
FORM_RESERVED = ":/=&?+"
"""What Envoy percent-encodes in a token request's form values (besides controls and ~)."""


class OAuth2Stats(StatSet):
    oauth_failure: Counter
    oauth_passthrough: Counter
    oauth_success: Counter
    oauth_unauthorized_rq: Counter
    oauth_refreshtoken_success: Counter
    oauth_refreshtoken_failure: Counter
    oauth_legacy_cbc_decrypt: Counter


# --- encodings, as Envoy writes them ---------------------------------------------------------


def url_encode(value: str) -> str:
    """Envoy's PercentEncoding::urlEncode: all but the unreserved characters."""
    return urllib.parse.quote(value, safe="-._~")


def form_encode(value: str, reserved: str = FORM_RESERVED) -> str:
    """Envoy's PercentEncoding::encode: controls, ``~`` and above, and ``reserved``."""
    return "".join(f"%{ord(c):02X}" if c < " " or c >= "~" or c in reserved else c
                   for c in value)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return b""


def hmac_b64(secret: bytes, message: str) -> str:
    return base64.b64encode(hmac.new(secret, message.encode("latin-1"),
                                     hashlib.sha256).digest()).decode("ascii")


def session_hmac(secret: bytes, *parts: str, hex_form: bool = False) -> str:
    """The HMAC of (domain, expires, access token, ID token, refresh token), base64; Envoy
    also accepts the older base64 of its hex form."""
    mac = hmac.new(secret, "\n".join(parts).encode("latin-1"), hashlib.sha256)
    raw = mac.hexdigest().encode("ascii") if hex_form else mac.digest()
    return base64.b64encode(raw).decode("ascii")


def encrypt(plaintext: str, secret: bytes) -> str:
    key = hashlib.sha256(secret).digest()
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext.encode("latin-1")) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return b64url(iv + enc.update(data) + enc.finalize())


def decrypt(token: str, secret: bytes) -> str | None:
    """The plaintext, or None when ``token`` is not one of ours (never encrypted, another
    secret's, or not a header value once decrypted)."""
    raw = b64url_decode(token)
    if len(raw) <= 16 or (len(raw) - 16) % 16:
        return None
    key = hashlib.sha256(secret).digest()
    dec = Cipher(algorithms.AES(key), modes.CBC(raw[:16])).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(dec.update(raw[16:]) + dec.finalize()) + unpadder.finalize()
    except ValueError:
        return None
    if any(b in plain for b in (0, 10, 13)):
        return None
    return plain.decode("latin-1")


def jwt_expiry(token: str) -> int | None:
    """A JWT's ``exp`` (not verified: only the cookie's lifetime is taken from it)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) and exp > 0 else None


def set_cookies(headers: Headers, cookies: dict[str, str]) -> None:
    """Replaces the request's Cookie headers with one holding ``cookies`` (as Envoy, an empty
    one when none is left)."""
    set_header(headers, b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items())
               .encode("latin-1"))


def raw_query(query: str) -> dict[str, str]:
    """A query's parameters as Envoy's parseQueryString reads them: not decoded, the first
    of a name wins."""
    out: dict[str, str] = {}
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.setdefault(name, value)
    return out


def path_only(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0]


class Names:
    """The cookies' names, Envoy's where the config leaves one empty."""

    def __init__(self, cfg: m.OAuth2CookieNames) -> None:
        self.bearer = cfg.bearer_token or "BearerToken"
        self.hmac = cfg.oauth_hmac or "OauthHMAC"
        self.expires = cfg.oauth_expires or "OauthExpires"
        self.id_token = cfg.id_token or "IdToken"
        self.refresh = cfg.refresh_token or "RefreshToken"
        self.nonce = cfg.oauth_nonce or "OauthNonce"
        self.verifier = cfg.code_verifier or "CodeVerifier"


class _Session:
    """What one request's cookies hold (tokens decrypted)."""

    def __init__(self, cookies: dict[str, str], names: Names) -> None:
        self.expires = cookies.get(names.expires, "")
        self.access = cookies.get(names.bearer, "")
        self.id_token = cookies.get(names.id_token, "")
        self.refresh = cookies.get(names.refresh, "")
        self.hmac = cookies.get(names.hmac, "")


class _Tokens:
    """A token endpoint's answer, as the cookies will carry it."""

    def __init__(self, access: str, id_token: str, refresh: str, expires_in: int,
                 now: int) -> None:
        self.access = access
        self.id_token = id_token
        self.refresh = refresh
        self.expires_in = expires_in
        self.expires_at = str(now + expires_in)


class OAuth2Filter:
    """One oauth2 filter config, shared by the streams of its connection manager."""

    def __init__(self, typed: m.OAuth2, store: Store, hcm_prefix: str,
                 secrets: SecretManager | None) -> None:
        self.cfg = cfg = typed.config
        if cfg is None:
            return
        if secrets is None:
            raise ValueError("the oauth2 filter needs its secrets (token_secret, hmac_secret)")
        self.stats = OAuth2Stats(store, f"http.{hcm_prefix}.{cfg.stat_prefix}")
        creds = cfg.credentials
        self.client_id = creds.client_id
        self.token_secret: Subscription = secrets.subscribe(creds.token_secret)
        self.hmac_secret: Subscription = secrets.subscribe(creds.hmac_secret)
        self.names = Names(creds.cookie_names)
        self.domain = creds.cookie_domain
        self.redirect_uri = text_formatter(cfg.redirect_uri)
        self.callback = string_matcher(cfg.redirect_path_matcher.path)
        self.signout = string_matcher(cfg.signout_path.path)
        self.pass_through = [header_matcher(h) for h in cfg.pass_through_matcher]
        self.deny_redirect = [header_matcher(h) for h in cfg.deny_redirect_matcher]
        scopes = " ".join(cfg.auth_scopes or ["user"])
        endpoint = urllib.parse.urlsplit(cfg.authorization_endpoint)
        self.endpoint = endpoint
        self.auth_query = raw_query(endpoint.query)
        self.auth_query.update(client_id=self.client_id, response_type="code",
                               scope=url_encode(scopes))
        self.resources = "".join(f"&resource={url_encode(r)}" for r in cfg.resources)
        self.use_refresh = True if cfg.use_refresh_token is None else cfg.use_refresh_token
        self.default_expires_in = int(cfg.default_expires_in or 0)
        self.default_refresh_expires_in = int(
            604800 if cfg.default_refresh_token_expires_in is None
            else cfg.default_refresh_token_expires_in)
        self.csrf_expires_in = int(cfg.csrf_token_expires_in or 600)
        self.verifier_expires_in = int(cfg.code_verifier_token_expires_in or 600)
        cc = cfg.cookie_configs
        self.cookie_cfg = {
            self.names.bearer: cc.bearer_token_cookie_config,
            self.names.hmac: cc.oauth_hmac_cookie_config,
            self.names.expires: cc.oauth_expires_cookie_config,
            self.names.id_token: cc.id_token_cookie_config,
            self.names.refresh: cc.refresh_token_cookie_config,
            self.names.nonce: cc.oauth_nonce_cookie_config,
            self.names.verifier: cc.code_verifier_cookie_config}
        uri = urllib.parse.urlsplit(cfg.token_endpoint.uri)
        self.encrypt_tokens = not cfg.disable_token_encryption
        self.token_cluster = cfg.token_endpoint.cluster
        self.token_timeout = cfg.token_endpoint.timeout
        self.token_host = uri.netloc.encode("latin-1")
        self.token_path = ((uri.path or "/") + (f"?{uri.query}" if uri.query else "")
                           ).encode("latin-1")

    # --- secrets and cookies -------------------------------------------------------------

    @staticmethod
    def _secret(sub: Subscription) -> bytes | None:
        value = sub.value
        return value.value if isinstance(value, GenericMaterial) else None

    def _path(self, base: str) -> str:
        return self.cookie_cfg[base].path or "/"

    def _tail(self, base: str, max_age: int | str) -> str:
        cc = self.cookie_cfg[base]
        tail = f";path={cc.path or '/'};Max-Age={max_age};secure;HttpOnly{SAME_SITE[cc.same_site]}"
        return f";domain={self.domain}{tail}" if self.domain else tail

    def _set(self, out: Headers, name: str, value: str, base: str, max_age: int | str) -> None:
        out.append((b"set-cookie", f"{name}={value}{self._tail(base, max_age)}"
                    .encode("latin-1")))

    def _delete(self, out: Headers, name: str, base: str, mark_secure: bool = True) -> None:
        """A cookie deleted; ``mark_secure``: ``__Secure-``/``__Host-`` names get the Secure
        attribute browsers need to delete them (Envoy adds it everywhere but where a new
        session drops a token it no longer has)."""
        text = DELETED.format(name, self._path(base))
        if self.domain:
            text += f";domain={self.domain}"
        if mark_secure and (name.startswith("__Secure-") or name.startswith("__Host-")):
            text += "; Secure"
        out.append((b"set-cookie", text.encode("latin-1")))

    def _delete_flow(self, out: Headers, flow: str) -> None:
        for base in (self.names.nonce, self.names.verifier):
            if flow:
                self._delete(out, f"{base}.{flow}", base)
            self._delete(out, base, base)

    @staticmethod
    def _flow_cookie(cookies: dict[str, str], base: str, flow: str) -> str | None:
        return cookies.get(f"{base}.{flow}") or cookies.get(base) or None

    def _decrypt(self, token: str, secret: bytes) -> str:
        plain = decrypt(token, secret)
        if plain is None:
            _log.debug("a token cookie that cannot be decrypted (another secret's, or not "
                      "encrypted): the session will not validate")
            return token
        self.stats.oauth_legacy_cbc_decrypt.value += 1
        return plain

    # --- the request -----------------------------------------------------------------------

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        cfg = self.cfg
        if cfg is None:
            return True
        for match in self.pass_through:
            if match(cb.headers):
                self.stats.oauth_passthrough.value += 1
                return True
        token_secret, secret = self._secret(self.token_secret), self._secret(self.hmac_secret)
        if token_secret is None or secret is None:
            self.stats.oauth_failure.value += 1
            _log.warning("oauth2: responding 503, the secrets are not ready")
            cb.send_local_reply(503, b"Service Unavailable", "oauth2 secrets are not ready")
            return False
        cookies = parse_cookies(cb.headers)
        if self.encrypt_tokens:
            changed = False
            for name in (self.names.bearer, self.names.id_token, self.names.refresh):
                if cookies.get(name):
                    cookies[name] = self._decrypt(cookies[name], secret)
                    changed = True
            if changed:
                set_cookies(cb.headers, cookies)
        if not cfg.preserve_authorization_header:
            cb.headers[:] = [h for h in cb.headers if h[0] != b"authorization"]
        path = cb.path.decode("latin-1")
        at_callback = self.callback(path_only(path))
        if self.signout(path_only(path)):
            self._sign_out(cb, cookies)
            return False
        session = _Session(cookies, self.names)
        if self._valid(session, cb.authority, secret):
            self.stats.oauth_success.value += 1
            if cfg.forward_bearer_token and session.access:
                set_header(cb.headers, b"authorization", f"Bearer {session.access}".encode(
                    "latin-1"))
            if at_callback:
                self._callback_when_logged_in(cb, path, cookies, secret)
                return False
            self._strip_flow_cookies(cb, cookies)
            return True
        if not at_callback:
            if self.use_refresh and session.refresh:
                self._token_call(cb, self._refresh_body(session.refresh, token_secret),
                                 token_secret, refresh=True)
                return False
            if any(match(cb.headers) for match in self.deny_redirect):
                self._unauthorized(cb, "Unauthorized, and redirecting to OAuth server is not "
                                   f"allowed: {path}")
                return False
            self._redirect_to_provider(cb, secret)
            return False
        ok, detail, url, flow, code = self._check_callback(path, cookies, secret)
        if not ok:
            self._unauthorized(cb, detail, flow)
            return False
        verifier_cookie = self._flow_cookie(cookies, self.names.verifier, flow)
        if verifier_cookie is None:
            self._unauthorized(cb, "Code verifier cookie is missing in the request", flow)
            return False
        verifier = decrypt(verifier_cookie, secret)
        if verifier is None:
            self._unauthorized(cb, "Failed to decrypt code verifier", flow)
            return False
        self.stats.oauth_legacy_cbc_decrypt.value += 1
        callback_url = self.redirect_uri(cb.info)
        body = self._code_body(code, callback_url, verifier, token_secret)
        self._token_call(cb, body, token_secret, refresh=False, flow=flow, url=url)
        return False

    def _valid(self, s: _Session, host: str, secret: bytes) -> bool:
        domain = self.domain or host
        parts = (domain, s.expires, s.access, s.id_token, s.refresh)
        if not s.hmac or not (
                hmac.compare_digest(session_hmac(secret, *parts), s.hmac)
                or hmac.compare_digest(session_hmac(secret, *parts, hex_form=True), s.hmac)):
            return False
        return s.expires.isdigit() and int(s.expires) > time.time()

    def _strip_flow_cookies(self, cb: FilterCallbacks, cookies: dict[str, str]) -> None:
        """What only the filter reads never reaches the backend (Envoy's cookie cleanup);
        ``cookies``: the request's, as the filter last wrote them."""
        if not cookies:
            return
        n = self.names
        for name in list(cookies):
            if name in (n.hmac, n.expires, n.refresh) or any(
                    name == base or name.startswith(base + ".") for base in (n.nonce, n.verifier)):
                del cookies[name]
        set_cookies(cb.headers, cookies)

    def _unauthorized(self, cb: FilterCallbacks, detail: str, flow: str = "") -> None:
        _log.warning("oauth2: responding 401 Unauthorized: %s", detail)
        self.stats.oauth_failure.value += 1
        extra: Headers = []
        if flow:
            self._delete_flow(extra, flow)
        cb.send_local_reply(401, UNAUTHORIZED, detail, extra=extra)

    def _scheme(self, cb: FilterCallbacks) -> str:
        return "https" if cb.info.downstream.tls else "http"

    def _redirect_to_provider(self, cb: FilterCallbacks, secret: bytes) -> None:
        n = self.names
        original = f"{self._scheme(cb)}://{cb.authority}{cb.path.decode('latin-1')}"
        out: Headers = []
        flow = os.urandom(8).hex()
        csrf = f"{flow}.{hmac_b64(secret, flow)}"
        for name in (f"{n.nonce}.{flow}", n.nonce):
            self._set(out, name, csrf, n.nonce, self.csrf_expires_in)
        state = b64url(json.dumps({"url": original, "csrf_token": csrf, "flow_id": flow},
                                  separators=(",", ":"), ensure_ascii=False)
                       .encode("utf-8"))
        verifier = b64url(os.urandom(32))
        sealed = encrypt(verifier, secret)
        for name in (f"{n.verifier}.{flow}", n.verifier):
            self._set(out, name, sealed, n.verifier, self.verifier_expires_in)
        query = dict(self.auth_query)
        query.update(state=state, redirect_uri=url_encode(self.redirect_uri(cb.info)),
                     code_challenge=b64url(hashlib.sha256(verifier.encode("ascii")).digest()),
                     code_challenge_method="S256")
        e = self.endpoint
        location = urllib.parse.urlunsplit((e.scheme, e.netloc, e.path, "&".join(
            f"{k}={v}" for k, v in sorted(query.items())), e.fragment)) + self.resources
        out.append((b"location", location.encode("latin-1")))
        cb.send_local_reply(302, b"", "oauth.missing_credentials", extra=out)
        self.stats.oauth_unauthorized_rq.value += 1

    def _check_callback(self, path: str, cookies: dict[str, str], secret: bytes
                        ) -> tuple[bool, str, str, str, str]:
        """(valid, why not, original URL, flow id, code) of a callback request."""
        query = raw_query(path.partition("?")[2])
        state = query.get("state")
        if "error" in query:
            flow = self._check_state(state, cookies, secret)[3] if state is not None else ""
            return False, f"OAuth server returned an error: {path.partition('?')[2]}", "", \
                flow, ""
        code = query.get("code")
        if code is None or state is None:
            return False, "Code or state query param does not exist", "", "", ""
        ok, detail, url, flow = self._check_state(state, cookies, secret)
        return ok, detail, url, flow, code

    def _check_state(self, state: str, cookies: dict[str, str], secret: bytes
                     ) -> tuple[bool, str, str, str]:
        try:
            fields = json.loads(b64url_decode(state))
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            return False, "State query param is not a valid JSON", "", ""
        url, csrf = fields.get("url"), fields.get("csrf_token")
        if not isinstance(url, str) or not isinstance(csrf, str):
            return False, "State query param does not contain url or CSRF token", "", ""
        flow = fields.get("flow_id") if isinstance(fields.get("flow_id"), str) else ""
        assert isinstance(flow, str)
        cookie = self._flow_cookie(cookies, self.names.nonce, flow)
        token, dot, mac = csrf.partition(".")
        if cookie is None or not hmac.compare_digest(cookie, csrf) or not dot or \
                not hmac.compare_digest(hmac_b64(secret, token), mac):
            return False, "CSRF token validation failed", "", ""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or \
                any(c <= " " or c == "\x7f" for c in url):  # (it becomes a Location)
            return False, f"State url can not be initialized: {url!r}", "", flow
        return True, "", url, flow

    def _callback_when_logged_in(self, cb: FilterCallbacks, path: str,
                                 cookies: dict[str, str], secret: bytes) -> None:
        """A callback on a valid session (a second tab's login): back to its URL."""
        ok, detail, url, flow, _ = self._check_callback(path, cookies, secret)
        if not ok:
            self._unauthorized(cb, detail, flow)
            return
        target = urllib.parse.urlsplit(url)
        if self.callback(target.path or "/"):
            self._unauthorized(cb, "State url query params matches the redirect path "
                               f"matcher: {target.path}", flow)
            return
        out: Headers = [(b"location", url.encode("latin-1"))]
        self._delete_flow(out, flow)
        cb.send_local_reply(302, b"", "oauth.race_redirect", extra=out)

    # --- sign-out --------------------------------------------------------------------------

    def _sign_out(self, cb: FilterCallbacks, cookies: dict[str, str]) -> None:
        n = self.names
        out: Headers = []
        for name in (n.hmac, n.bearer, n.id_token, n.refresh, n.expires):
            self._delete(out, name, name)
        for name in parse_cookies(cb.headers):
            for base in (n.nonce, n.verifier):
                if name == base or name.startswith(base + "."):
                    self._delete(out, name, base)
        home = f"{self._scheme(cb)}://{cb.authority}/"
        assert self.cfg is not None
        if self.cfg.end_session_endpoint:
            location = (f"{self.cfg.end_session_endpoint}?id_token_hint="
                        f"{cookies.get(n.id_token, '')}&client_id={self.client_id}"
                        f"&post_logout_redirect_uri={url_encode(home)}")
        else:
            location = home
        out.append((b"location", location.encode("latin-1")))
        cb.send_local_reply(302, b"", "oauth.sign_out", extra=out)

    # --- the token endpoint ----------------------------------------------------------------

    def _code_body(self, code: str, callback: str, verifier: str, token_secret: bytes) -> str:
        assert self.cfg is not None
        cb_url = form_encode(callback)
        if self.cfg.auth_type == "BASIC_AUTH":
            return f"grant_type=authorization_code&code={code}&redirect_uri={cb_url}" \
                   f"&code_verifier={verifier}"
        return (f"grant_type=authorization_code&code={code}&client_id="
                f"{form_encode(self.client_id)}&client_secret="
                f"{form_encode(token_secret.decode('latin-1'))}&redirect_uri={cb_url}"
                f"&code_verifier={verifier}")

    def _refresh_body(self, refresh: str, token_secret: bytes) -> str:
        assert self.cfg is not None
        if self.cfg.auth_type == "BASIC_AUTH":
            return f"grant_type=refresh_token&refresh_token={form_encode(refresh, '')}"
        return (f"grant_type=refresh_token&refresh_token={form_encode(refresh)}&client_id="
                f"{form_encode(self.client_id)}&client_secret="
                f"{form_encode(token_secret.decode('latin-1'))}")

    def _token_call(self, cb: FilterCallbacks, body: str, token_secret: bytes, refresh: bool,
                    flow: str = "", url: str = "") -> None:
        assert self.cfg is not None
        data = body.encode("latin-1")
        headers: Headers = [(b"host", self.token_host),
                            (b"content-type", b"application/x-www-form-urlencoded"),
                            (b"accept", b"application/json"),
                            (b"content-length", b"%d" % len(data))]
        if self.cfg.auth_type == "BASIC_AUTH":
            pair = f"{self.client_id}:{token_secret.decode('latin-1')}".encode("latin-1")
            headers.append((b"authorization", b"Basic " + base64.b64encode(pair)))
        head = RequestHead(b"POST", self.token_path, headers, "HTTP/1.1")
        done: Callable[[ServiceCall], None] = (
            (lambda call: self._refreshed(cb, call)) if refresh else
            (lambda call: self._exchanged(cb, call, flow, url)))
        failed: Callable[[], None] = (
            (lambda: self._refresh_failed(cb)) if refresh else
            (lambda: self._exchange_failed(cb, flow, "Failed to get access token due to HTTP "
                                           "request failure")))
        ServiceCall(cb.conn.loop, self.token_timeout, head, data, done, failed).start(
            cb.clusters, self.token_cluster)

    def _tokens(self, call: ServiceCall) -> _Tokens | str:
        """The tokens of a 200 answer, or why there are none."""
        if call.status != 200:
            return f"Failed to get access token: response code: {call.status}"
        try:
            doc = json.loads(call.body)
        except ValueError:
            return "Failed to parse oauth response body"
        if not isinstance(doc, dict):
            return "Failed to parse oauth response body"
        access = doc.get("access_token")
        if not isinstance(access, str):
            return "No access token found in the token exchange response"
        id_token, refresh = doc.get("id_token", ""), doc.get("refresh_token", "")
        expires_in = doc.get("expires_in", self.default_expires_in)
        if not isinstance(id_token, str) or not isinstance(refresh, str) or \
                not isinstance(expires_in, int) or isinstance(expires_in, bool):
            return "Failed to parse oauth response body"
        if any(c in t for t in (access, id_token, refresh) for c in "\r\n\0"):
            return "a token holds a character no header can carry"
        if expires_in <= 0:
            return "No default or explicit access token expiration found in the token " \
                   "exchange response"
        assert self.cfg is not None
        cfg = self.cfg
        return _Tokens("" if cfg.disable_access_token_set_cookie else access,
                       "" if cfg.disable_id_token_set_cookie else id_token,
                       refresh if self.use_refresh and not cfg.disable_refresh_token_set_cookie
                       else "", expires_in, int(time.time()))

    def _session_cookies(self, cb: FilterCallbacks, t: _Tokens, secret: bytes,
                         request_cookies: dict[str, str]) -> Headers:
        n = self.names
        out: Headers = []
        mac = session_hmac(secret, self.domain or cb.authority, t.expires_at, t.access,
                           t.id_token, t.refresh)
        self._set(out, n.hmac, mac, n.hmac, t.expires_in)
        self._set(out, n.expires, t.expires_at, n.expires, t.expires_in)
        now = int(time.time())
        for name, value, max_age in (
                (n.bearer, t.access, t.expires_in),
                (n.id_token, t.id_token, self._lifetime(t.id_token, t.expires_in, now)),
                (n.refresh, t.refresh, self._refresh_lifetime(t.refresh, t.expires_in, now))):
            if value:
                sealed = encrypt(value, secret) if self.encrypt_tokens else value
                self._set(out, name, sealed, name, max_age)
            elif name in request_cookies:
                self._delete(out, name, name, mark_secure=False)
        return out

    @staticmethod
    def _lifetime(token: str, expires_in: int, now: int) -> int:
        exp = jwt_expiry(token) if token else None
        return expires_in if exp is None else max(exp - now, 0)

    def _refresh_lifetime(self, token: str, expires_in: int, now: int) -> int:
        if not self.use_refresh:
            return expires_in
        exp = jwt_expiry(token)
        return self.default_refresh_expires_in if exp is None else max(exp - now, 0)

    def _exchanged(self, cb: FilterCallbacks, call: ServiceCall, flow: str, url: str) -> None:
        if cb.response_done:
            return
        tokens = self._tokens(call)
        if isinstance(tokens, str):
            self._exchange_failed(cb, flow, tokens)
            return
        secret = self._secret(self.hmac_secret)
        if secret is None:
            self._exchange_failed(cb, flow, "the HMAC secret is gone")
            return
        out = self._session_cookies(cb, tokens, secret, parse_cookies(cb.headers))
        self._delete_flow(out, flow)
        out.append((b"location", url.encode("latin-1")))
        self.stats.oauth_success.value += 1
        cb.send_local_reply(302, b"", "oauth.logged_in", extra=out)

    def _exchange_failed(self, cb: FilterCallbacks, flow: str, why: str) -> None:
        if not cb.response_done:
            self._unauthorized(cb, why, flow)

    def _refreshed(self, cb: FilterCallbacks, call: ServiceCall) -> None:
        if cb.response_done:
            return
        tokens = self._tokens(call)
        secret = self._secret(self.hmac_secret)
        if isinstance(tokens, str) or secret is None:
            self._refresh_failed(cb)
            return
        cookies = parse_cookies(cb.headers)
        if not tokens.refresh and cookies.get(self.names.refresh):
            tokens.refresh = cookies[self.names.refresh]  # (kept when none came back)
        set_back = self._session_cookies(cb, tokens, secret, cookies)
        cookies[self.names.expires] = tokens.expires_at
        if tokens.access:
            cookies[self.names.bearer] = tokens.access
        if tokens.id_token:
            cookies[self.names.id_token] = tokens.id_token
        set_cookies(cb.headers, cookies)
        assert self.cfg is not None
        if self.cfg.forward_bearer_token and tokens.access:
            set_header(cb.headers, b"authorization",
                       f"Bearer {tokens.access}".encode("latin-1"))
        cb.add_response_hook(lambda headers: headers.extend(set_back))
        self.stats.oauth_refreshtoken_success.value += 1
        self.stats.oauth_success.value += 1
        self._strip_flow_cookies(cb, cookies)
        cb.continue_decoding()

    def _refresh_failed(self, cb: FilterCallbacks) -> None:
        if cb.response_done:
            return
        self.stats.oauth_refreshtoken_failure.value += 1
        if any(match(cb.headers) for match in self.deny_redirect):
            self._unauthorized(cb, "Failed to refresh the access token, and redirecting to "
                               "OAuth server is not allowed")
            return
        secret = self._secret(self.hmac_secret)
        if secret is None:
            self._unauthorized(cb, "the HMAC secret is gone")
            return
        self._redirect_to_provider(cb, secret)
