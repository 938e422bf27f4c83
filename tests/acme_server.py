"""An ACME server of the tests' own, for what Debian's pebble lacks: renewal info (RFC 9773),
profiles and external account binding (RFC 8555 §7.3.4). It answers as the RFCs say and
records what clients asked. Orders are pre-authorized (their authorizations are valid), so
no challenge is needed: the tests look at accounts, orders and renewals."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import itertools
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import josepy as jose
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from .conftest import free_port


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1, written here again from the RFC (not from edgegw's code)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    n = cert.serial_number
    serial = n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)
    return f"{b64(aki.key_identifier or b'')}.{b64(serial)}"


class AcmeServer:
    """``directory``: its URL; ``ca``: the CA file of its HTTPS; ``issuer``: the CA that
    signs the certificates it issues. ``eab``: (kid, HMAC key) it requires, or None."""

    def __init__(self, root: Path, eab: tuple[str, bytes] | None = None,
                 ari: bool = True) -> None:
        root.mkdir()
        tls_ca, self.issuer = trustme.CA(), trustme.CA()
        tls_ca.cert_pem.write_to_path(str(root / "ca.pem"))
        self.issuer.cert_pem.write_to_path(str(root / "issuer.pem"))
        self.ca, self.issuer_file = root / "ca.pem", root / "issuer.pem"
        self.eab, self.ari = eab, ari
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self.directory = f"{self.base}/dir"
        self.accounts: list[dict[str, Any]] = []
        self.orders: list[dict[str, Any]] = []
        self.windows: dict[str, tuple[datetime.datetime, datetime.datetime]] = {}
        """Renewal windows by certificate id (others: the last third of the lifetime)."""
        self.issued: dict[str, x509.Certificate] = {}
        self._keys: dict[str, jose.JWK] = {}
        self._ids = itertools.count(1)
        self._state: dict[str, dict[str, Any]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._send(200, b"", "application/json")

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/dir":
                    self._json(200, server.directory_doc())
                elif self.path.startswith("/renewal-info/") and server.ari:
                    self._json(200, server.renewal_info(self.path.split("/")[-1]),
                               {"Retry-After": "3600"})
                elif self.path == "/nonce":
                    self._send(204, b"", "application/json")
                else:
                    self._json(404, {"type": "urn:ietf:params:acme:error:malformed"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, doc, headers = server.post(self.path, body)
                if isinstance(doc, bytes):
                    self._send(status, doc, "application/pem-certificate-chain", headers)
                else:
                    self._json(status, doc, headers)

            def _json(self, status: int, doc: dict, headers: dict | None = None) -> None:
                kind = "application/problem+json" if status >= 400 else "application/json"
                self._send(status, json.dumps(doc).encode(), kind, headers)

            def _send(self, status: int, data: bytes, kind: str,
                      headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("replay-nonce", b64(next(server._ids).to_bytes(8, "big")))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ca.issue_cert("127.0.0.1").configure_cert(ctx)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def directory_doc(self) -> dict[str, Any]:
        doc = {"newNonce": f"{self.base}/nonce", "newAccount": f"{self.base}/account",
               "newOrder": f"{self.base}/order",
               "meta": {"profiles": {"classic": "90 days", "shortlived": "6 days"},
                        "externalAccountRequired": self.eab is not None}}
        if self.ari:
            doc["renewalInfo"] = f"{self.base}/renewal-info"
        return doc

    def renewal_info(self, cid: str) -> dict[str, Any]:
        cert = self.issued.get(cid)
        if cid in self.windows:
            start, end = self.windows[cid]
        elif cert is not None:
            life = cert.not_valid_after_utc - cert.not_valid_before_utc
            start, end = cert.not_valid_before_utc + life * 2 / 3, cert.not_valid_after_utc
        else:
            now = datetime.datetime.now(datetime.UTC)
            start, end = now + datetime.timedelta(days=30), now + datetime.timedelta(days=31)
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        return {"suggestedWindow": {"start": start.strftime(stamp), "end": end.strftime(stamp)}}

    # --- POSTs: a JWS each --------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        protected = json.loads(unb64(body["protected"]))
        payload = json.loads(unb64(body["payload"])) if body["payload"] else None
        key = jose.JWK.from_json(protected["jwk"]) if "jwk" in protected else \
            self._keys.get(protected.get("kid", ""))
        jws = jose.JWS.from_json(body)
        if key is None or not jws.verify(key) or protected.get("url") != self.base + path:
            return 401, {"type": "urn:ietf:params:acme:error:unauthorized",
                         "detail": "bad signature or url"}, {}
        if path == "/account":
            return self._account(payload, protected, key)
        if path == "/order":
            return self._order(payload)
        kind, _, n = path.strip("/").partition("/")
        st = self._state.get(n)
        if st is None:
            return 404, {"type": "urn:ietf:params:acme:error:malformed"}, {}
        if kind == "authz":
            return 200, {"status": "valid", "identifier": st["identifier"],
                         "challenges": []}, {}
        if kind == "finalize":
            self._finalize(st, payload)
        if kind == "cert":
            return 200, st["pem"], {}
        return 200, self._order_doc(n), {"location": f"{self.base}/order/{n}"}

    def _account(self, payload: dict, protected: dict, key: jose.JWK
                 ) -> tuple[int, Any, dict[str, str]]:
        record = {"contact": payload.get("contact"), "eab_kid": None}
        if self.eab is not None:
            binding = payload.get("externalAccountBinding")
            if binding is None:
                return 400, {"type": "urn:ietf:params:acme:error:externalAccountRequired",
                             "detail": "this CA needs an external account binding"}, {}
            head = json.loads(unb64(binding["protected"]))
            mac = hmac.new(self.eab[1], f"{binding['protected']}.{binding['payload']}"
                           .encode(), hashlib.sha256).digest()
            inner = json.loads(unb64(binding["payload"]))
            if (head.get("alg"), head.get("kid"), head.get("url")) != (
                    "HS256", self.eab[0], f"{self.base}/account") \
                    or not hmac.compare_digest(mac, unb64(binding["signature"])) \
                    or inner != protected["jwk"]:
                return 401, {"type": "urn:ietf:params:acme:error:unauthorized",
                             "detail": "the external account binding does not verify"}, {}
            record["eab_kid"] = head["kid"]
        uri = f"{self.base}/acct/{len(self.accounts) + 1}"
        self._keys[uri] = key
        self.accounts.append(record)
        return 201, {"status": "valid", "contact": payload.get("contact", [])}, \
            {"location": uri}

    def _order(self, payload: dict) -> tuple[int, Any, dict[str, str]]:
        profiles = self.directory_doc()["meta"]["profiles"]
        if payload.get("profile") and payload["profile"] not in profiles:
            return 400, {"type": "urn:ietf:params:acme:error:invalidProfile",
                         "detail": f"no profile {payload['profile']}"}, {}
        n = str(next(self._ids))
        self.orders.append(dict(payload))
        self._state[n] = {"identifier": payload["identifiers"][0], "payload": payload,
                          "status": "ready"}
        return 201, self._order_doc(n), {"location": f"{self.base}/order/{n}"}

    def _order_doc(self, n: str) -> dict[str, Any]:
        st = self._state[n]
        doc = {"status": st["status"], "identifiers": st["payload"]["identifiers"],
               "authorizations": [f"{self.base}/authz/{n}"],
               "finalize": f"{self.base}/finalize/{n}"}
        if st["status"] == "valid":
            doc["certificate"] = f"{self.base}/cert/{n}"
        return doc

    def _finalize(self, st: dict, payload: dict) -> None:
        csr = x509.load_der_x509_csr(unb64(payload["csr"]))
        days = 6 if st["payload"].get("profile") == "shortlived" else 90
        issuer = x509.load_pem_x509_certificate(self.issuer.cert_pem.bytes())
        issuer_key = serialization.load_pem_private_key(
            self.issuer.private_key_pem.bytes(), None)
        now = datetime.datetime.now(datetime.UTC)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(
                    NameOID.COMMON_NAME, san.get_values_for_type(x509.DNSName)[0])]))
                .issuer_name(issuer.subject).public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=1))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(san, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_key.public_key()), critical=False)  # type: ignore[arg-type]
                .sign(issuer_key, hashes.SHA256()))  # type: ignore[arg-type]
        self.issued[cert_id(cert)] = cert
        st["pem"] = cert.public_bytes(serialization.Encoding.PEM) + self.issuer.cert_pem.bytes()
        st["status"] = "valid"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
