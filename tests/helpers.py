"""What several test modules use: the user's directory a sites-file gateway runs in (``Lab``),
and a raw TCP backend whose connections a test's function serves (``RawBackend``)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trustme
from cryptography import x509

from .conftest import ENVOY, Backends, Proc, free_port, wait_port

EDGEGW = [sys.executable, "-m", "edgegw"]
PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")


def ws_client_tls(cafile: Path) -> ssl.SSLContext:
    """A TLS context for websockets' sync client, held to TLS 1.2.

    That client reads its socket on a thread of its own while the caller writes from another,
    so two threads use one OpenSSL object at once, which OpenSSL forbids. Under TLS 1.3 the
    server's session tickets arrive just after the handshake, while the reader thread's
    SSL_read waits and the caller's SSL_write sends the upgrade request. Seen in a CI run
    (about one connection in a few hundred): the client's write of the request returned, but
    the gateway had received the handshake alone (597 bytes, by ss); the client timed out
    waiting for the response, then joined its reader, which sat in SSL_read on a socket with
    no timeout until pytest-timeout ended the test 600 s later. TLS 1.2 sends nothing after
    the handshake. Browsers, and the gateway, use each TLS connection from one thread.
    """
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class RawBackend:
    """A TCP server on a loopback address of its own: each connection is served by
    ``serve`` on a thread of its own, then closed; ``peers`` lists who connected."""

    def __init__(self, ip: str, serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        self.sock = socket.create_server((ip, free_port(ip)))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.peers: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            self.serve(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class Lab:
    """A directory as a user has it: certs/ beside sites.yaml, the gateway run inside it."""

    def __init__(self, root: Path, backends: Backends, certs: Path) -> None:
        self.root = root
        self.backends = backends
        shutil.copytree(certs, root / "certs")
        self.https, self.http, self.admin = free_port(), free_port(), free_port()
        self.procs: list[Proc] = []

    def write(self, sites: str, **listen: int) -> Path:
        text = (f"listen:\n  https: 127.0.0.1:{self.https}\n  http: 127.0.0.1:{self.http}\n"
                f"admin: 127.0.0.1:{self.admin}\ncertificates: certs/\n" + sites)
        path = self.root / "sites.yaml"
        path.write_text(text)
        return path

    def run(self, *args: str, kind: str = "edgegw", https: bool = True,
            prefix: tuple[str, ...] = (), concurrency: int = 1) -> Proc:
        """Starts the gateway (``prefix``: a command it runs under, e.g. as another user)."""
        if kind == "envoy":
            assert ENVOY
            cmd = [ENVOY, *args, "--concurrency", "1", "-l", "warning", "--base-id",
                   str(self.admin)]
        else:
            cmd = [*prefix, *EDGEGW, *args, "--concurrency", str(concurrency)]
        proc = Proc(cmd, self.root / f"{kind}.log", cwd=self.root)
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while True:
            assert proc.p.poll() is None, proc.output()
            try:  # (without HTTPS, /ready says INITIALIZING: no certificate yet)
                r = httpx.get(f"http://127.0.0.1:{self.admin}/ready", timeout=0.5)
                if r.status_code == 200 or not https:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        wait_port("127.0.0.1", self.https if https else self.http)
        return proc

    def stop(self) -> None:
        while self.procs:
            self.procs.pop().stop()

    def expand(self) -> Path:
        r = subprocess.run([*EDGEGW, "expand", "sites.yaml"], cwd=self.root,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        out = self.root / "envoy.yaml"
        out.write_text(r.stdout)
        return out

    def get(self, host: str, path: str = "/headers", extra: str = "",
            method: str = "GET") -> tuple[int, dict, bytes]:
        """One HTTPS request with SNI and Host ``host``; (status, headers, body)."""
        ctx = ssl.create_default_context(cafile=str(self.root / "certs" / "dev-ca.pem"))
        with socket.create_connection(("127.0.0.1", self.https), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                      "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        head, _, body = out.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return int(lines[0].split()[1]), headers, body


class Pebble:
    """Debian's pebble, a real ACME server, on loopback. Its DNS is the challenge test
    server's (every name is 127.0.0.1), or ``dns`` (``host:port``, a real zone's server)."""

    def __init__(self, root: Path, http_port: int, dns: str | None = None) -> None:
        root.mkdir()
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        leaf.private_key_pem.write_to_path(str(root / "key.pem"))
        self.ca = root / "ca.pem"
        own_dns, dns_admin = free_port(), free_port()
        self.dns = dns or f"127.0.0.1:{own_dns}"
        """The DNS server pebble asks."""
        self.management = f"http://127.0.0.1:{dns_admin}"
        """The challenge test server's management API (set-txt, set-cname…), when it runs."""
        self.port, self.admin = free_port(), free_port()
        (root / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.admin}",
            "certificate": str(root / "cert.pem"), "privateKey": str(root / "key.pem"),
            "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}))
        assert CHALLTESTSRV and PEBBLE
        self.procs = [] if dns else [
            Proc([CHALLTESTSRV, "-dns01", f"127.0.0.1:{own_dns}", "-http01", "", "-https01",
                  "", "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_admin}",
                  "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""], root / "dns.log")]
        self.procs.append(
            Proc(["env", "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0",
                  "PEBBLE_AUTHZREUSE=0", PEBBLE, "-config", str(root / "pebble.json"),
                  "-dnsserver", dns or f"127.0.0.1:{own_dns}"], root / "pebble.log"))
        wait_port("127.0.0.1", self.port)
        wait_port("127.0.0.1", self.admin)
        self.directory = f"https://127.0.0.1:{self.port}/dir"

    def roots(self) -> str:
        """pebble's issuing root (a new one each run), PEM."""
        return httpx.get(f"https://127.0.0.1:{self.admin}/roots/0",
                         verify=ssl.create_default_context(cafile=str(self.ca))).text

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def served(lab: Lab, name: str, trust: Path) -> x509.Certificate | None:
    """The certificate the gateway serves for ``name``, if a client trusting ``trust`` takes
    it and gets an answer through it."""
    ctx = ssl.create_default_context(cafile=str(trust))
    try:
        with socket.create_connection(("127.0.0.1", lab.https), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(f"GET /headers HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
                      .encode())
            if not s.recv(12).startswith(b"HTTP/1.1 200"):
                return None
            der = s.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


class Resumer:
    """A client with a session cache, as a browser has: one TLS context, the last session
    of each name, offered again on the next connection."""

    def __init__(self, ca_file: Path) -> None:
        self.ctx = ssl.create_default_context(cafile=str(ca_file))
        self.sessions: dict[str, ssl.SSLSession] = {}

    def connect(self, port: int, name: str, offer: str | None = None) -> bool:
        """One request to ``name``, offering the session of ``offer`` (default: its own);
        whether it resumed."""
        session = self.sessions.get(offer or name)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                self.ctx.wrap_socket(raw, server_hostname=name, session=session) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):  # (TLS 1.3 tickets come after the handshake)
                pass
            self.sessions[name] = s.session  # type: ignore[assignment]
            return s.session_reused
