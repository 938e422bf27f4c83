"""envoy.filters.http.jwt_authn: a JWT verified on each request, its claims handed on.

The first rule whose match takes the request names the provider that must verify it (no rule,
or one without ``requires``: no token needed). The token comes from ``from_headers`` or
``from_cookies`` (the OAuth2 filter's ``IdToken``), else from ``Authorization: Bearer``. It
must be ``header.payload.signature``, from the provider's ``issuer``, for one of its
``audiences``, not expired nor used before ``nbf`` (``clock_skew_seconds`` either way), and
signed by a key of the provider's JWKS: local, or fetched through a cluster and kept for
``cache_duration`` (requests wait for the first fetch; *edgegw-only*: a reloaded config
starts with the keys in hand, and they keep serving while a refetch fails). Then ``claim_to_headers`` sets
request headers (strings, numbers and booleans as they are; lists and objects as base64 of
their JSON, as Envoy writes them), and ``payload_in_metadata`` puts the payload where RBAC's
``metadata`` principals read it.

A request that fails gets Envoy's 401, its reason as the body and a ``WWW-Authenticate:
Bearer`` challenge. Stats ``http.<prefix>.jwt_authn.allowed|denied|jwks_fetch_success|
jwks_fetch_failed``, as Envoy's.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ...config import model as m
from ...config.datasource import read
from ...log import get as get_log
from ...stats import Counter, StatSet, Store
from ..codec import RequestHead
from ..filter import register
from ..headers import parse_cookies, set_header
from ..router.table import request_matcher
from ..service_call import ServiceCall

if TYPE_CHECKING:
    from ..filter import FilterCallbacks

_log = get_log("jwt_authn")
NAMESPACE = "envoy.filters.http.jwt_authn"
"""Where ``payload_in_metadata`` writes, as Envoy names it."""
DEFAULT_CACHE = 600.0
RETRY = 30.0
"""After a failed refetch, how long the keys in hand serve before the next attempt."""
UNSAFE = frozenset("\r\n\0")
"""What a header value never holds: a claim with one is not written."""
VERIFIED_KEPT = 100
"""How many verified tokens a provider remembers (Envoy's jwt_cache_size default)."""
HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


class JwtStats(StatSet):
    allowed: Counter
    denied: Counter
    jwks_fetch_success: Counter
    jwks_fetch_failed: Counter


class JwtError(Exception):
    """Why a token is refused, in Envoy's words (the reply's body); 401, or 403 for a token
    that is valid but not for this audience, as Envoy answers."""

    def __init__(self, why: str, status: int = 401) -> None:
        super().__init__(why)
        self.status = status


def _b64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise JwtError("Jwt is not in the form of Header.Payload.Signature with two dots "
                       "and 3 sections") from None


def _int(text: str) -> int:
    return int.from_bytes(_b64(text), "big")


def public_key(jwk: dict[str, Any]) -> Any:
    """A JWK's public key (RSA, EC P-256/P-384, Ed25519), or None for one not understood."""
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
        if kty == "EC":
            curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[jwk["crv"]]
            return ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]),
                                                 curve).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_b64(jwk["x"]))
    except (KeyError, ValueError, JwtError, TypeError):
        return None
    return None


def parse_jwks(text: bytes) -> list[tuple[str | None, Any]]:
    """(kid, key) of each usable key of a JWKS document; ValueError when it is none."""
    doc = json.loads(text)
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWKS (no \"keys\" list)")
    out = [(k.get("kid"), public_key(k)) for k in keys if isinstance(k, dict)]
    return [(kid, key) for kid, key in out if key is not None]


def _verify(key: Any, alg: str, signature: bytes, signed: bytes) -> bool:
    family, bits = alg[:2], alg[2:]
    try:
        if family == "RS" and isinstance(key, rsa.RSAPublicKey) and bits in HASHES:
            key.verify(signature, signed, padding.PKCS1v15(), HASHES[bits]())
        elif family == "PS" and isinstance(key, rsa.RSAPublicKey) and bits in HASHES:
            h = HASHES[bits]()
            key.verify(signature, signed, padding.PSS(padding.MGF1(h), h.digest_size), h)
        elif family == "ES" and isinstance(key, ec.EllipticCurvePublicKey) and bits in HASHES:
            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            key.verify(der, signed, ec.ECDSA(HASHES[bits]()))
        elif alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signed)
        else:
            return False
    except InvalidSignature:
        return False
    return True


class Jwt:
    """A token split and decoded, not yet verified."""

    def __init__(self, token: str) -> None:
        self.token = token
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise JwtError("Jwt is not in the form of Header.Payload.Signature with two dots "
                           "and 3 sections")
        try:
            self.header = json.loads(_b64(parts[0]))
            self.payload = json.loads(_b64(parts[1]))
        except ValueError:
            raise JwtError("Jwt header or payload is an invalid JSON") from None
        if not isinstance(self.header, dict) or not isinstance(self.payload, dict):
            raise JwtError("Jwt header or payload is an invalid JSON")
        self.signed = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
        self.signature = _b64(parts[2])
        alg = self.header.get("alg")
        if not isinstance(alg, str) or alg == "none":
            raise JwtError("Jwt header [alg] is not supported")
        self.alg = alg
        kid = self.header.get("kid")
        self.kid = kid if isinstance(kid, str) else None


def claim_value(value: object) -> str | None:
    """A claim as a header value, as Envoy's claim_to_headers writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, list | dict):
        return base64.b64encode(json.dumps(value, separators=(",", ":"))
                                .encode("utf-8")).decode("ascii")
    return None


Keys = list[tuple[str | None, Any]]
_fetched: dict[str, tuple[Keys, float]] = {}
"""The keys last fetched from each JWKS URL in this process, and when: a reloaded config
starts with them (edgegw-only; Envoy fetches again), and they stay in use while a refetch
fails, so that a provider down for a while does not log everyone out."""


class Provider:
    """One provider: its checks and its keys (fetched once per ``cache_duration``)."""

    def __init__(self, name: str, cfg: m.JwtProvider, stats: JwtStats) -> None:
        self.name = name
        self.cfg = cfg
        self.stats = stats
        self.keys: Keys | None = None
        self.fetched_at = 0.0
        self.waiting: list[Callable[[bool], None]] = []
        self.fetching = False
        self.verified: dict[str, Jwt] = {}
        """Tokens whose signature checked, the last VERIFIED_KEPT of them (Envoy's JWT
        cache): a session's requests verify its token once, not each time."""
        self.cache = DEFAULT_CACHE
        if cfg.local_jwks is not None:
            src = cfg.local_jwks
            text = (src.inline_string or "").encode() if src.filename is None else \
                read(m.DataSource(filename=src.filename))
            try:
                self.keys = parse_jwks(text)
            except ValueError as e:
                raise ValueError(f"provider '{name}': local_jwks: {e}") from None
            self.fetched_at = float("inf")
        elif cfg.remote_jwks is not None:
            if cfg.remote_jwks.cache_duration is not None:
                self.cache = cfg.remote_jwks.cache_duration
            self.keys, self.fetched_at = _fetched.get(cfg.remote_jwks.http_uri.uri,
                                                      (None, 0.0))

    def token(self, cb: FilterCallbacks) -> tuple[str, bytes | None] | None:
        """The token and the header it came in (None: a cookie), or None when absent."""
        cfg = self.cfg
        for h in cfg.from_headers:
            name = h.name.lower().encode("latin-1")
            for k, v in cb.headers:
                if k == name:
                    text = v.decode("latin-1")
                    if text.startswith(h.value_prefix):
                        return text[len(h.value_prefix):].strip(), name
        if cfg.from_cookies:
            cookies = parse_cookies(cb.headers)
            for c in cfg.from_cookies:
                if cookies.get(c):
                    return cookies[c], None
        if not cfg.from_headers and not cfg.from_cookies:
            for k, v in cb.headers:
                if k == b"authorization" and v[:7].lower() == b"bearer ":
                    return v[7:].decode("latin-1").strip(), b"authorization"
        return None

    def with_keys(self, cb: FilterCallbacks, then: Callable[[bool], None]) -> None:
        """Calls ``then(ok)`` once there are keys. Stale ones serve at once while a fetch
        renews them (edgegw-only); without any, the request waits for the first fetch."""
        if self.keys is not None:
            if time.monotonic() - self.fetched_at >= self.cache:
                self._fetch(cb)
            then(True)
            return
        self.waiting.append(then)
        self._fetch(cb)

    def _fetch(self, cb: FilterCallbacks) -> None:
        if self.fetching:
            return
        self.fetching = True
        remote = self.cfg.remote_jwks
        assert remote is not None
        uri = remote.http_uri
        url = urllib.parse.urlsplit(uri.uri)
        head = RequestHead(b"GET", ((url.path or "/") + (f"?{url.query}" if url.query else ""))
                           .encode("latin-1"), [(b"host", url.netloc.encode("latin-1"))],
                           "HTTP/1.1")
        ServiceCall(cb.conn.loop, uri.timeout, head, None, self._fetched,
                    lambda: self._done(False, "no answer"), max_body=1 << 20).start(
            cb.clusters, uri.cluster)

    def _fetched(self, call: ServiceCall) -> None:
        if call.status != 200:
            self._done(False, f"status {call.status}")
            return
        try:
            self.keys = parse_jwks(call.body)
        except ValueError as e:
            self._done(False, str(e))
            return
        self.fetched_at = time.monotonic()
        assert self.cfg.remote_jwks is not None
        _fetched[self.cfg.remote_jwks.http_uri.uri] = (self.keys, self.fetched_at)
        self._done(True, "")

    def _done(self, ok: bool, why: str) -> None:
        self.fetching = False
        if ok:
            self.stats.jwks_fetch_success.value += 1
        else:
            if self.keys is not None:  # (kept: asked again in RETRY seconds, not per request)
                self.fetched_at = time.monotonic() - self.cache + RETRY
            self.stats.jwks_fetch_failed.value += 1
            kept = " (the keys fetched before stay in use)" if self.keys is not None else ""
            _log.warning("jwt_authn provider '%s': fetching its JWKS failed: %s%s", self.name,
                         why, kept)
        usable = ok or self.keys is not None
        waiting, self.waiting = self.waiting, []
        for then in waiting:
            then(usable)

    def check(self, jwt: Jwt) -> None:
        """Everything but the signature; raises JwtError."""
        cfg, p = self.cfg, jwt.payload
        if cfg.issuer and p.get("iss") != cfg.issuer:
            raise JwtError("Jwt issuer is not configured")
        if cfg.audiences:
            aud = p.get("aud")
            auds = aud if isinstance(aud, list) else [aud]
            if not any(a in cfg.audiences for a in auds):
                raise JwtError("Audiences in Jwt are not allowed", 403)
        now, skew = time.time(), cfg.clock_skew_seconds
        exp, nbf = p.get("exp"), p.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + skew:
            raise JwtError("Jwt not yet valid")
        if isinstance(exp, int | float) and exp < now - skew:
            raise JwtError("Jwt is expired")

    def remember(self, jwt: Jwt) -> None:
        if len(self.verified) >= VERIFIED_KEPT:
            del self.verified[next(iter(self.verified))]
        self.verified[jwt.token] = jwt

    def signed_by_us(self, jwt: Jwt) -> None:
        keys = self.keys or []
        candidates = [k for kid, k in keys if jwt.kid is None or kid == jwt.kid]
        if not candidates:
            raise JwtError("Jwks doesn't have key to match kid or alg from Jwt")
        if not any(_verify(k, jwt.alg, jwt.signature, jwt.signed) for k in candidates):
            raise JwtError("Jwt verification fails")


@register(m.JwtAuthentication)
class JwtAuthnFilter:
    def __init__(self, cfg: m.JwtAuthentication, store: Store, hcm_prefix: str) -> None:
        self.stats = JwtStats(store, f"http.{hcm_prefix}.jwt_authn.")
        self.providers = {name: Provider(name, p, self.stats)
                          for name, p in cfg.providers.items()}
        self.rules = [(request_matcher(r.match), r.requires.provider_name if r.requires else None)
                      for r in cfg.rules]

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        path = cb.path.decode("latin-1")
        provider_name = next((name for match, name in self.rules if match(path, cb.headers)),
                             None)
        if provider_name is None:  # (no rule takes it, or the one that does needs no token)
            self.stats.allowed.value += 1  # (as Envoy counts it)
            return True
        provider = self.providers[provider_name]
        found = provider.token(cb)
        if found is None:
            self._deny(cb, "Jwt is missing", missing=True)
            return False
        token, header = found
        known = provider.verified.get(token)
        try:
            jwt = known or Jwt(token)
            provider.check(jwt)
        except JwtError as e:
            self._deny(cb, str(e), status=e.status)
            return False
        if known is not None:  # (its signature checked before: only the times again)
            self._accept(cb, provider, jwt, header)
            return True
        provider.with_keys(cb, lambda ok: self._keys_ready(cb, provider, jwt, header, ok))
        return False

    def _keys_ready(self, cb: FilterCallbacks, provider: Provider, jwt: Jwt,
                    header: bytes | None, ok: bool) -> None:
        if cb.response_done:
            return
        if not ok:
            self._deny(cb, "Jwks remote fetch is failed")
            return
        try:
            provider.signed_by_us(jwt)
        except JwtError as e:
            self._deny(cb, str(e))
            return
        provider.remember(jwt)
        self._accept(cb, provider, jwt, header)
        cb.continue_decoding()

    def _accept(self, cb: FilterCallbacks, provider: Provider, jwt: Jwt,
                header: bytes | None) -> None:
        cfg = provider.cfg
        for c in cfg.claim_to_headers:
            node: object = jwt.payload
            for part in c.claim_name.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            value = claim_value(node)
            if value is not None and not UNSAFE.intersection(value):  # (never a header split)
                set_header(cb.headers, c.header_name.lower().encode("latin-1"),
                           value.encode("utf-8"))
        if cfg.payload_in_metadata:
            cb.filter_state.setdefault("dynamic_metadata", {}).setdefault(
                NAMESPACE, {})[cfg.payload_in_metadata] = jwt.payload
        if not cfg.forward and header is not None:
            cb.headers[:] = [h for h in cb.headers if h[0] != header]
        self.stats.allowed.value += 1

    def _deny(self, cb: FilterCallbacks, why: str, missing: bool = False,
              status: int = 401) -> None:
        self.stats.denied.value += 1
        realm = f"http://{cb.authority}{cb.path.decode('latin-1').split('?', 1)[0]}"
        challenge = f'Bearer realm="{realm}"' + ("" if missing else ', error="invalid_token"')
        cb.send_local_reply(status, why.encode("latin-1"), "jwt_authn_access_denied{"
                            + why.replace(" ", "_") + "}",
                            extra=[(b"www-authenticate", challenge.encode("latin-1"))])
