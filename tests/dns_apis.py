"""DNS provider APIs of the tests' own in front of pebble-challtestsrv, whose management API
holds the records pebble reads: lego's httpreq, joohoi's acme-dns and the part of
Cloudflare's v4 API a DNS-01 client uses. Each checks its credentials and records its
calls; what they write, pebble really reads."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .conftest import free_port

HTTPREQ_USER = ("lego", "s3cret")
CLOUDFLARE_TOKEN = "cf-token-123"
CLOUDFLARE_ZONES = {"home.test": "zone-home"}


class DnsApis:
    def __init__(self, management: str) -> None:
        self.management = management
        """pebble-challtestsrv's management API (``http://host:port``)."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.calls: list[tuple[str, str, Any]] = []
        self.acme_dns: dict[str, dict[str, Any]] = {}
        """acme-dns accounts by subdomain, with their last two values."""
        self.cf_records: dict[str, tuple[str, str]] = {}
        self._ids = itertools.count(1)
        apis = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET", None)

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length") or 0)
                self._answer("POST", json.loads(self.rfile.read(n) or b"null"))

            def do_DELETE(self) -> None:  # noqa: N802
                self._answer("DELETE", None)

            def _answer(self, method: str, body: Any) -> None:
                status, doc = apis.handle(method, self.path, self.headers, body)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def manage(self, action: str, doc: dict[str, str]) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"{self.management}/{action}", data=json.dumps(doc).encode()), timeout=5).read()

    def handle(self, method: str, path: str, headers: Any, body: Any
               ) -> tuple[int, Any]:
        self.calls.append((method, path, body))
        url = urllib.parse.urlsplit(path)
        if url.path.startswith("/httpreq/"):
            basic = base64.b64encode(":".join(HTTPREQ_USER).encode()).decode()
            if headers.get("authorization") != f"Basic {basic}":
                return 401, {"error": "unauthorized"}
            self.manage("set-txt" if url.path.endswith("/present") else "clear-txt",
                        {"host": body["fqdn"], "value": body["value"]})
            return 200, {}
        if url.path == "/acme-dns/register":
            sub = f"acct{next(self._ids)}"
            account = {"username": f"user-{sub}", "password": f"pw-{sub}",
                       "fulldomain": f"{sub}.auth.test", "subdomain": sub, "allowfrom": []}
            self.acme_dns[sub] = {**account, "values": []}
            return 201, account
        if url.path == "/acme-dns/update":
            account = self.acme_dns.get(body.get("subdomain", ""))
            if account is None or (headers.get("X-Api-User"), headers.get("X-Api-Key")) != (
                    account["username"], account["password"]):
                return 401, {"error": "forbidden"}
            account["values"] = [*account["values"], body["txt"]][-2:]  # (as acme-dns keeps)
            host = f"{account['fulldomain']}."
            self.manage("clear-txt", {"host": host})
            for value in account["values"]:
                self.manage("set-txt", {"host": host, "value": value})
            return 200, {"txt": body["txt"]}
        if url.path.startswith("/cf/"):
            if headers.get("authorization") != f"Bearer {CLOUDFLARE_TOKEN}":
                return 403, {"success": False, "errors": [{"code": 10000,
                                                           "message": "Authentication error"}]}
            return self._cloudflare(method, url.path[3:], url.query, body)
        return 404, {}

    def _cloudflare(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts == ["zones"] and method == "GET":
            name = urllib.parse.parse_qs(query).get("name", [""])[0]
            zone = CLOUDFLARE_ZONES.get(name)
            return 200, {"success": True, "errors": [],
                         "result": [{"id": zone, "name": name}] if zone else []}
        if len(parts) >= 3 and parts[0] == "zones" and parts[2] == "dns_records" \
                and parts[1] in CLOUDFLARE_ZONES.values():
            if method == "POST":
                rid = f"rec{next(self._ids)}"
                self.cf_records[rid] = (body["name"], body["content"])
                self.manage("set-txt", {"host": body["name"] + ".", "value": body["content"]})
                return 200, {"success": True, "errors": [], "result": {"id": rid, **body}}
            if method == "DELETE" and len(parts) == 4 and parts[3] in self.cf_records:
                name, _ = self.cf_records.pop(parts[3])
                self.manage("clear-txt", {"host": name + "."})
                for other, value in self.cf_records.values():  # (clear-txt drops them all)
                    if other == name:
                        self.manage("set-txt", {"host": name + ".", "value": value})
                return 200, {"success": True, "errors": [], "result": {"id": parts[3]}}
        return 404, {"success": False, "errors": [{"code": 7003, "message": "not found"}]}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
