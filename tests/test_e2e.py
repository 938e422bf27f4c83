"""End to end over real sockets and real TLS, with real clients (curl, openssl, httpx)."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import Backends, curl, edge_config, free_port, wait_for


def split(out: str) -> tuple[int, dict[str, str], str]:
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    while head.startswith("HTTP/1.1 1"):  # skip interim responses such as 100 Continue
        head, _, body = body.partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


@pytest.fixture(scope="module")
def edge(module_gateway, certs: Path, backends: Backends):
    """One gateway for the module: each test reads the counters it changed."""
    port = free_port()
    g = module_gateway(edge_config(certs, backends, port))
    g.port = port
    return g


def served_cert_sans(port: int, sni: str | None) -> str:
    """The SAN list of the certificate the server presents (openssl s_client + x509)."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    args += ["-servername", sni] if sni else ["-noservername"]
    hello = subprocess.run(args, input="", capture_output=True, text=True, timeout=10)
    if "BEGIN CERTIFICATE" not in hello.stdout:
        return ""
    x = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"],
                       input=hello.stdout, capture_output=True, text=True, timeout=10)
    return x.stdout


def test_certificate_is_chosen_by_sni(edge) -> None:
    assert "DNS:a.example.com" in served_cert_sans(edge.port, "a.example.com")
    out_b = served_cert_sans(edge.port, "b.example.com")
    assert "DNS:b.example.com" in out_b and "a.example.com" not in out_b


def test_unknown_sni_is_closed_and_counted(edge) -> None:
    stat = f"listener.127.0.0.1_{edge.port}.no_filter_chain_match"
    before = edge.stats().get(stat, 0)
    assert served_cert_sans(edge.port, "c.example.com") == ""
    after = edge.stats()[stat]
    assert after == before + 1


def test_host_routing_and_upstream_sni(edge, certs: Path) -> None:
    r = curl(edge.port, certs, "a.example.com", "/headers")
    status, headers, body = split(r.stdout)
    assert status == 200 and headers["server"] == "edgegw"
    doc = json.loads(body)
    assert doc["backend"] == "a" and doc["tls_server_name"] is None
    assert doc["headers"]["x-forwarded-proto"] == "https"
    assert len(doc["headers"]["x-request-id"]) == 36
    assert doc["headers"]["x-envoy-expected-rq-timeout-ms"] == "15000"
    assert "x-envoy-upstream-service-time" in headers
    r = curl(edge.port, certs, "b.example.com", "/headers")
    doc = json.loads(split(r.stdout)[2])
    assert doc["backend"] == "b" and doc["tls_server_name"] == "b.internal"


def test_keep_alive_reuses_both_connections(edge, certs: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))
    before = edge.stats()
    with httpx.Client(verify=ctx) as client:
        for _ in range(5):
            r = client.get(f"https://127.0.0.1:{edge.port}/status/200",
                           headers={"Host": "a.example.com"},
                           extensions={"sni_hostname": "a.example.com"})
            assert r.status_code == 200 and r.text == "status 200 from a\n"
    after = edge.stats()
    assert after["http.ingress.downstream_cx_total"] - before["http.ingress.downstream_cx_total"] == 1
    assert after["cluster.a.upstream_rq_total"] - before["cluster.a.upstream_rq_total"] == 5
    assert after["cluster.a.upstream_cx_total"] - before["cluster.a.upstream_cx_total"] <= 1


def test_bodies_stream_both_ways(edge, certs: Path, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"z" * 3_000_000)
    r = curl(edge.port, certs, "a.example.com", "/anything", "--data-binary", f"@{blob}")
    assert json.loads(split(r.stdout)[2])["body_bytes"] == 3_000_000
    r = curl(edge.port, certs, "a.example.com", "/anything", "--data-binary", f"@{blob}",
             "-H", "Transfer-Encoding: chunked")
    assert json.loads(split(r.stdout)[2])["body_bytes"] == 3_000_000
    r = subprocess.run(
        ["curl", "-sS", "--cacert", str(certs / "dev-ca.pem"), "--resolve",
         f"a.example.com:{edge.port}:127.0.0.1", f"https://a.example.com:{edge.port}/bytes/1048576",
         "-o", str(tmp_path / "out")], capture_output=True, timeout=20)
    assert r.returncode == 0 and (tmp_path / "out").stat().st_size == 1048576


def test_chunked_upstream_response_is_rechunked(edge, certs: Path) -> None:
    r = curl(edge.port, certs, "a.example.com", "/stream/5")
    status, headers, body = split(r.stdout)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body.count("chunk ") == 5


def test_close_delimited_upstream_body_is_complete(edge, certs: Path) -> None:
    r = curl(edge.port, certs, "a.example.com", "/unframed")
    status, headers, body = split(r.stdout)
    assert r.returncode == 0 and status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert body == "body without length\n" * 100


def test_expect_100_continue(edge, certs: Path) -> None:
    r = curl(edge.port, certs, "a.example.com", "/anything", "-H", "Expect: 100-continue",
             "--data-binary", "x" * 2000)
    assert "100 Continue" in r.stdout
    assert '"body_bytes": 2000' in r.stdout


def test_head_204_304(edge, certs: Path) -> None:
    r = curl(edge.port, certs, "a.example.com", "/bytes/10", "-I")
    status, headers, body = split(r.stdout)
    assert status == 200 and headers["content-length"] == "10" and body == ""
    for code in (204, 304):
        r = curl(edge.port, certs, "a.example.com", f"/status/{code}")
        assert split(r.stdout)[0] == code and r.returncode == 0


def test_error_replies(edge, certs: Path) -> None:
    st, h, body = split(curl(edge.port, certs, "a.example.com", "/dead").stdout)
    assert st == 503 and h["content-type"] == "text/plain"
    assert body == ("upstream connect error or disconnect/reset before headers. "
                    "reset reason: remote connection failure")
    st, _, body = split(curl(edge.port, certs, "a.example.com", "/empty").stdout)
    assert (st, body) == (503, "no healthy upstream")
    t = time.monotonic()
    st, _, body = split(curl(edge.port, certs, "a.example.com", "/slow/delay/3").stdout)
    assert (st, body) == (504, "upstream request timeout") and time.monotonic() - t < 2.5
    st, h, body = split(curl(edge.port, certs, "a.example.com", "/",
                             "-H", "Host: nowhere.example").stdout)
    assert (st, body, h["content-length"]) == (404, "", "0")
    stats = edge.stats()
    assert stats["http.ingress.no_route"] >= 1
    assert stats["cluster.dead.upstream_cx_connect_fail"] >= 1
    assert stats["cluster.a.upstream_rq_timeout"] >= 1


def test_upstream_dying_mid_response_resets_downstream(edge, certs: Path) -> None:
    r = curl(edge.port, certs, "a.example.com", "/close")
    assert r.returncode != 0  # curl sees the connection cut, not a short "complete" body


def _tls(port: int, certs: Path) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                           server_hostname="a.example.com")


def _read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ssl.SSLError, ConnectionError, TimeoutError):
        pass
    return out


def test_malformed_and_oversized_requests(edge, certs: Path) -> None:
    s = _tls(edge.port, certs)
    s.sendall(b"GARBAGE\r\n\r\n")
    out = _read_all(s)
    assert out.startswith(b"HTTP/1.1 400 Bad Request") and b"connection: close" in out
    s = _tls(edge.port, certs)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert _read_all(s).startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    s = _tls(edge.port, certs)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n"
              + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n")
    assert _read_all(s).startswith(b"HTTP/1.1 431")


def test_content_length_with_transfer_encoding_never_reaches_upstream(edge, certs: Path) -> None:
    before = edge.stats()["cluster.a.upstream_rq_total"]
    s = _tls(edge.port, certs)
    s.sendall(b"POST /anything HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n")
    out = _read_all(s)
    assert out.startswith(b"HTTP/1.1 400") and out.count(b"HTTP/1.1") == 1
    assert edge.stats()["cluster.a.upstream_rq_total"] == before


def test_garbage_instead_of_client_hello_keeps_serving(edge, certs: Path) -> None:
    before = edge.stats().get("tls_inspector.tls_not_found", 0)
    for junk in (b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 100):
        with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as s:
            try:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the gateway may already have reset the connection: that is the point
            assert _read_all(s) == b""
    assert edge.stats()["tls_inspector.tls_not_found"] - before >= 2
    r = curl(edge.port, certs, "a.example.com", "/status/200")
    assert split(r.stdout)[0] == 200
    log = edge.proc.output()
    assert "[error]" not in log and "[critical]" not in log and "Traceback" not in log


def test_http10_gets_426(edge, certs: Path) -> None:
    s = _tls(edge.port, certs)
    s.sendall(b"GET / HTTP/1.0\r\nHost: a.example.com\r\n\r\n")
    assert _read_all(s).startswith(b"HTTP/1.1 426 Upgrade Required")


def test_pipelined_requests_answer_in_order(edge, certs: Path) -> None:
    s = _tls(edge.port, certs)
    s.sendall(b"GET /delay/0.2 HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
              b"GET /status/201 HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
              b"GET /status/202 HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
    out = _read_all(s)
    codes = [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]
    assert codes == [200, 201, 202]


def test_ready_and_counters(edge, certs: Path) -> None:
    assert httpx.get(f"http://127.0.0.1:{edge.admin_port}/ready").text == "LIVE\n"
    before = edge.stats()
    for _ in range(3):
        curl(edge.port, certs, "a.example.com", "/status/200")
    curl(edge.port, certs, "a.example.com", "/status/503")
    after = edge.stats()
    d = {k: after[k] - before.get(k, 0) for k in after}
    assert d["http.ingress.downstream_rq_total"] == 4
    assert d["http.ingress.downstream_rq_2xx"] == 3
    assert d["http.ingress.downstream_rq_5xx"] == 1
    assert d["cluster.a.upstream_rq_2xx"] == 3 and d["cluster.a.upstream_rq_503"] == 1
    wait_for(lambda: edge.stats()["http.ingress.downstream_cx_active"] == 0)  # curl is gone


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_client_back_pressures_the_upstream(edge, certs: Path) -> None:
    """A client that does not read must not make the gateway buffer the whole response."""
    size = 96 * 1024 * 1024
    pid = edge.proc.p.pid
    base = _rss_kb(pid)
    s = _tls(edge.port, certs)
    s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n" % size)
    edge.wait_requests_active(1)
    held = 0
    for _ in range(15):  # watch the gateway's memory while the backend pushes and nobody reads
        held = max(held, _rss_kb(pid) - base)
        time.sleep(0.1)
    assert held < 32 * 1024, f"gateway holds {held} kB for a client that is not reading"
    total = 0
    s.settimeout(20)
    while chunk := s.recv(1 << 20):
        total += len(chunk)
    assert total > size  # the whole body (plus the head) arrives once the client reads


@pytest.mark.parametrize("flag,version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls_12_and_13_with_http11_alpn(edge, flag: str, version: str) -> None:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{edge.port}",
                        "-servername", "a.example.com", flag, "-alpn", "h2,http/1.1"],
                       input="", capture_output=True, text=True, timeout=10)
    out = r.stdout + r.stderr
    assert f"New, {version}, Cipher is" in out
    assert "ALPN protocol: http/1.1" in out


def test_upload_to_a_slow_upstream_is_held_back(edge, certs: Path) -> None:
    """An upstream that does not read must not make the gateway buffer the whole upload."""
    size = 96 * 1024 * 1024
    pid = edge.proc.p.pid
    base = _rss_kb(pid)
    s = _tls(edge.port, certs)
    s.sendall(b"POST /slowread HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n" % size)
    s.settimeout(0.5)
    block = b"u" * (1 << 20)
    sent = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and sent < size:
        try:
            sent += s.send(block)
        except (TimeoutError, ssl.SSLWantWriteError):
            pass
    held = _rss_kb(pid) - base
    assert sent < size, "the whole upload went through while the upstream read nothing"
    assert held < 32 * 1024, f"gateway holds {held} kB of an upload nobody reads"
    s.settimeout(20)
    while sent < size:
        sent += s.send(block[: size - sent])
    assert json.loads(_read_all(s).split(b"\r\n\r\n", 1)[1])["body_bytes"] == size


def test_reused_connection_dropped_by_backend_is_retried_once(edge, certs: Path) -> None:
    """edgegw-only: a pooled connection that dies before answering is retried for idempotent
    requests without a body (Envoy would answer 503)."""
    ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))
    before = 0
    with httpx.Client(verify=ctx) as client:
        for path in ("/status/200", "/drop-reused"):  # the second reuses the first's upstream
            before = edge.stats()["cluster.a.upstream_cx_total"]
            r = client.get(f"https://127.0.0.1:{edge.port}{path}",
                           headers={"Host": "a.example.com"},
                           extensions={"sni_hostname": "a.example.com"})
            assert r.status_code == 200, path
    # the backend dropped the reused connection: the retry took a new one
    assert edge.stats()["cluster.a.upstream_cx_total"] - before == 1


def test_drain_listeners_closes_the_door_and_lets_open_requests_finish(
        gateway, certs: Path, backends: Backends) -> None:
    port = free_port()
    edge = gateway(edge_config(certs, backends, port),  # (drained: a gateway of its own)
                   flags=("--drain-strategy", "immediate"))
    edge.port = port
    s = _tls(edge.port, certs)
    s.sendall(b"GET /delay/0.5 HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
    edge.wait_requests_active(1)
    r = httpx.post(f"http://127.0.0.1:{edge.admin_port}/drain_listeners")
    assert r.status_code == 200
    out = _read_all(s)
    assert out.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", edge.port), timeout=2).close()


def test_retries_replay_the_body_and_report_urx_when_exhausted(edge, certs: Path,
                                                               tmp_path: Path) -> None:
    before = edge.stats()
    blob = tmp_path / "body"
    blob.write_bytes(b"r" * 300_000)
    token = f"t{time.monotonic_ns()}"
    r = curl(edge.port, certs, "a.example.com", f"/retry/flaky/{token}/2", "--data-binary",
             f"@{blob}")
    status, _, body = split(r.stdout)
    assert status == 200 and json.loads(body)["body_bytes"] == 300_000
    r = curl(edge.port, certs, "a.example.com", f"/retry/flaky/{token}x/9")
    assert split(r.stdout)[0] == 503
    after = edge.stats()
    d = {k: after[k] - before.get(k, 0) for k in after}
    assert d["cluster.a.upstream_rq_retry"] == 5
    assert d["cluster.a.upstream_rq_retry_success"] == 1
    assert d["cluster.a.upstream_rq_retry_limit_exceeded"] == 1


def test_no_retry_once_the_response_has_started(edge, certs: Path) -> None:
    before = edge.stats().get("cluster.a.upstream_rq_retry", 0)
    r = curl(edge.port, certs, "a.example.com", "/retry/close")
    assert r.returncode != 0  # cut off mid-body: reset, not retried, not passed off as whole
    assert edge.stats()["cluster.a.upstream_rq_retry"] == before
