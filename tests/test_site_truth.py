"""What a sites-file gateway tells of itself: a dead backend turns red and is logged with its
cause, a request log line per request, the status page's numbers (4xx apart, WebSockets apart
from latency, no catch-all chip), and host counters that a reload does not zero."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from edgegw.demo.certs import make_for

from .conftest import Backends, free_port, wait_for
from .helpers import Lab, ws_client_tls


@pytest.fixture
def lab(backends: Backends, certs: Path) -> Iterator[Lab]:
    root = Path(tempfile.mkdtemp(prefix="edgegw-lab-"))
    lab = Lab(root, backends, certs)
    make_for(str(root / "certs"), ("dead.example.com", "plain.example.com", "ws.example.com",
                                   "status.example.com"))
    yield lab
    lab.stop()
    shutil.rmtree(root)


def status(lab: Lab) -> dict:
    return httpx.get(f"http://127.0.0.1:{lab.admin}/status.json", timeout=5).json()


def closed_port(ip: str) -> int:
    """A port nothing listens on (connecting to it is refused)."""
    return free_port(ip)


def test_a_dead_backend_turns_red_and_is_logged_once_with_its_cause(lab: Lab) -> None:
    b = lab.backends
    dead = closed_port("127.0.0.30")
    lab.write(f"sites:\n  a.example.com: http://{b.a[0]}:{b.a[1]}\n"
              f"  dead.example.com: http://127.0.0.30:{dead}\n")
    proc = lab.run("-c", "sites.yaml")
    for _ in range(6):
        assert lab.get("dead.example.com")[0] == 503
    assert lab.get("a.example.com")[0] == 200
    hosts = {c["name"]: c["hosts"][0]["healthy"] for c in status(lab)["clusters"]}
    assert hosts == {"a_example_com": True, "dead_example_com": False}  # red, by passive health
    out = proc.output()
    warning = f"site dead.example.com: cannot connect to 127.0.0.30:{dead}: connection refused"
    assert out.count(warning) == 1, out  # rate-limited: once for six failures
    requests = [line for line in out.splitlines() if "] dead.example.com 127.0.0.1 " in line]
    assert len(requests) == 6, out
    assert all('"GET /headers HTTP/1.1" 503 ' in line and " UF " in line
               and "Connection refused" in line for line in requests), requests


def test_an_https_upstream_that_speaks_plain_http_is_named_so(lab: Lab) -> None:
    b = lab.backends
    lab.write(f"sites:\n  plain.example.com: https://{b.a[0]}:{b.a[1]}\n")
    proc = lab.run("-c", "sites.yaml")
    assert lab.get("plain.example.com")[0] == 503
    wait_for(lambda: "seems to speak plain HTTP" in proc.output())
    assert f"site plain.example.com: cannot connect to {b.a[0]}:{b.a[1]}: the TLS handshake " \
           "failed" in proc.output()


def test_each_request_is_one_log_line_and_access_log_says_how(lab: Lab) -> None:
    b = lab.backends
    site = f"sites:\n  a.example.com: http://{b.a[0]}:{b.a[1]}\n"
    lab.write(site)
    proc = lab.run("-c", "sites.yaml")

    def logged(marker: str) -> list[str]:
        return [x for x in proc.output().splitlines() if marker in x]

    assert lab.get("a.example.com", "/status/404")[0] == 404
    wait_for(lambda: bool(logged("] a.example.com ")))  # (written off the event loop)
    (line,) = logged("] a.example.com ")
    assert 'a.example.com 127.0.0.1 "GET /status/404 HTTP/1.1" 404 ' in line
    assert f" {b.a[0]}:{b.a[1]} - via_upstream " in line, line

    lab.write("access_log: json\n" + site)
    wait_for(lambda: bool(logged("now serving the new config")), timeout=10)
    lab.get("a.example.com", "/status/201")
    wait_for(lambda: bool(logged('"site"')))
    doc = json.loads(logged('"site"')[0])
    assert (doc["site"], doc["method"], doc["path"], doc["status"], doc["upstream"]) == (
        "a.example.com", "GET", "/status/201", 201, f"{b.a[0]}:{b.a[1]}")

    lab.write("access_log: off\n" + site)  # (YAML reads it as false: taken as off)
    wait_for(lambda: len(logged("now serving the new config")) == 2, timeout=10)
    lab.get("a.example.com", "/status/202")
    lab.write(site)  # logging again: a line for a later request comes after any for 202
    wait_for(lambda: len(logged("now serving the new config")) == 3, timeout=10)
    lab.get("a.example.com", "/status/203")
    wait_for(lambda: bool(logged("/status/203")))
    assert not logged("/status/202")


def _echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


def test_status_counts_4xx_keeps_websockets_out_of_latency_and_shows_no_catch_all(
        lab: Lab) -> None:
    b = lab.backends
    ws_port = free_port("127.0.0.22")
    server = serve(_echo, "127.0.0.22", ws_port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lab.write(f"sites:\n  a.example.com: http://{b.a[0]}:{b.a[1]}\n"
                  f"  ws.example.com: http://127.0.0.22:{ws_port}\n")
        lab.run("-c", "sites.yaml")
        for path in ("/status/404", "/status/401", "/headers"):
            lab.get("a.example.com", path)
        ctx = ws_client_tls(lab.root / "certs" / "dev-ca.pem")
        sock = socket.create_connection(("127.0.0.1", lab.https))
        with connect("wss://ws.example.com/", sock=sock, ssl=ctx,
                     server_hostname="ws.example.com") as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
            sites = {s["domains"][0]: s for s in status(lab)["sites"]}
            assert sites["ws.example.com"]["websockets"] == 1
        wait_for(lambda: {s["domains"][0]: s for s in status(lab)["sites"]}[
            "ws.example.com"]["websockets"] == 0)
        sites = {s["domains"][0]: s for s in status(lab)["sites"]}
        a, w = sites["a.example.com"], sites["ws.example.com"]
        assert a["domains"] == ["a.example.com"]  # the 421 catch-all is not a name of it
        assert (a["requests"], a["errors_4xx"], a["errors"], a["time_count"]) == (3, 2, 0, 3)
        assert (w["requests"], w["time_count"], w["time_sum_ms"]) == (1, 0, 0.0)
        # its bytes are counted apart: the upgrade request and the 101 are not in them, the
        # frames both ways are ("hi" is 8 bytes masked from the client, 4 back, then the
        # close frames)
        assert a["websocket_bytes"] == 0 and w["websocket_bytes"] >= 8 + 4 + 8 + 4
    finally:
        server.shutdown()


def test_host_counters_go_on_across_a_reload(lab: Lab) -> None:
    b = lab.backends
    site = (f"sites:\n  b.example.com:\n    upstream: https://{b.b[0]}:{b.b[1]}\n"
            f"    sni: b.internal\n    ca: certs/backend-ca.pem\n")
    lab.write(site)
    proc = lab.run("-c", "sites.yaml")
    for _ in range(3):
        assert lab.get("b.example.com")[0] == 200

    def b_host() -> dict:
        return next(c for c in status(lab)["clusters"] if c["name"] == "b_example_com")[
            "hosts"][0]

    assert b_host()["rq_total"] == 3
    lab.write(site + "    response_headers: {x-lab: one}\n")  # its cluster is built anew
    wait_for(lambda: "now serving the new config" in proc.output(), timeout=10)
    assert lab.get("b.example.com")[1]["x-lab"] == "one"
    assert b_host()["rq_total"] == 4


def test_the_status_page_opens_on_its_own_site_and_no_admin_command_does(lab: Lab) -> None:
    """``status:`` serves the page and its JSON behind the site's auth; every other admin
    path, /quitquitquit first, is a 404 there, and the gateway keeps running."""
    b = lab.backends
    hashed = "{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    lab.write(f"status:\n  name: status.example.com\n  auth: {{users: {{ops: '{hashed}'}}}}\n"
              f"sites:\n  a.example.com: http://{b.a[0]}:{b.a[1]}\n")
    proc = lab.run("-c", "sites.yaml")
    auth = "Authorization: Basic " + base64.b64encode(b"ops:pw").decode() + "\r\n"
    assert lab.get("status.example.com", "/status")[0] == 401
    code, headers, page = lab.get("status.example.com", "/status", auth)
    assert code == 200 and b"<title>edgegw status</title>" in page
    code, _, body = lab.get("status.example.com", "/status.json", auth)
    assert code == 200 and "a.example.com" in {d for s in json.loads(body)["sites"]
                                               for d in s["domains"]}
    assert lab.get("status.example.com", "/", auth)[1]["location"] == \
        "https://status.example.com/status"
    for method, path in (("POST", "/quitquitquit"), ("GET", "/quitquitquit"),
                         ("POST", "/healthcheck/fail"), ("GET", "/stats"),
                         ("GET", "/config_dump"), ("POST", "/status"),
                         ("GET", "/status/../quitquitquit"), ("GET", "//quitquitquit")):
        assert lab.get("status.example.com", path, auth, method)[0] in (400, 404), (method, path)
    assert proc.p.poll() is None
    assert httpx.get(f"http://127.0.0.1:{lab.admin}/ready").text == "LIVE\n"
    assert lab.get("a.example.com")[0] == 200


def test_a_site_s_idle_timeout_cuts_a_silent_websocket_and_is_envoy_s_setting(lab: Lab) -> None:
    ws_port = free_port("127.0.0.22")
    server = serve(_echo, "127.0.0.22", ws_port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lab.write(f"sites:\n  ws.example.com:\n    upstream: http://127.0.0.22:{ws_port}\n"
                  f"    idle_timeout: 1s\n"
                  f"  a.example.com: http://{lab.backends.a[0]}:{lab.backends.a[1]}\n")
        timeouts = {hcm["stat_prefix"]: hcm["stream_idle_timeout"] for hcm in (
            fc["filters"][0]["typed_config"] for fc in yaml.safe_load(
                lab.expand().read_text())["static_resources"]["listeners"][0]["filter_chains"])}
        assert timeouts == {"ws_example_com": "1s", "a_example_com": "300s"}
        lab.run("-c", "sites.yaml")
        ctx = ws_client_tls(lab.root / "certs" / "dev-ca.pem")
        sock = socket.create_connection(("127.0.0.1", lab.https))
        with connect("wss://ws.example.com/", sock=sock, ssl=ctx,
                     server_hostname="ws.example.com", ping_interval=None) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
            with pytest.raises(ConnectionClosed) as closed:  # silent both ways: the gateway
                ws.recv(timeout=30)                           # says so with a close frame
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "idle timeout")
    finally:
        server.shutdown()
