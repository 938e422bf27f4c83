"""A small httpbin-like HTTP/1.1 server that stands in for a private backend.

It answers ``/headers`` (the request as JSON, with the SNI it was reached by), ``/status/N``,
``/delay/S``, ``/bytes/N``, ``/stream/N`` (chunked), ``/unframed`` (a body that ends at
close), ``/close`` (dies mid-response), ``/slowread`` (reads the body two seconds late),
``/drop-reused`` (closes a reused connection without answering), ``/flaky/TOKEN/N`` (503 for
the first N requests; ``?retry-after=S`` adds that header), ``/control/sick`` and ``/control/well`` (while sick, every other request
gets 503), ``/seen`` (the last requests' method, path, Host and user-agent) and echoes
anything else. The demo and the tests both use it, over plain HTTP or over TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import ssl
import sys
from http import HTTPStatus

import httptools

_FLAKY: dict[str, int] = {}
_SEEN: collections.deque[dict[str, str]] = collections.deque(maxlen=200)
_STATE = {"sick": False}


class _Backend(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[str, str]] = []
        self.url = b""
        self.body = bytearray()
        self.sni: str | None = None
        self.client_serial: str | None = None
        self.queue: list[tuple[str, bytes, list[tuple[str, str]], bytes, bool]] = []
        self.busy = False
        self.serving: asyncio.Task[None] | None = None
        self.served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.sni = getattr(sslobj, "server_hostname", None) or getattr(sslobj, "sni", None)
            peer = sslobj.getpeercert(binary_form=True)
            if peer:
                from cryptography import x509

                self.client_serial = format(x509.load_der_x509_certificate(peer).serial_number,
                                            "x")

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(400, b"bad request\n", [], close=True)

    def on_message_begin(self) -> None:
        self.headers, self.url, self.body = [], b"", bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.url.startswith(b"/slowread") and self.transport is not None:
            # Reads nothing for two seconds: the proxy in front must hold the upload back.
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(2.0, self.transport.resume_reading)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        item = (method, self.url, self.headers, bytes(self.body), self.parser.should_keep_alive())
        self.queue.append(item)
        if not self.busy:
            self.serving = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        self.busy = True
        try:
            while self.queue and self.transport and not self.transport.is_closing():
                await self._handle(*self.queue.pop(0))
        finally:
            self.busy = False

    async def _handle(self, method: str, url: bytes, headers: list[tuple[str, str]],
                      body: bytes, keep: bool) -> None:
        path = url.decode("latin-1")
        parts = path.split("?")[0].strip("/").split("/")
        self.served += 1
        if parts[0] == "control" and len(parts) > 1:
            _STATE["sick"] = parts[1] == "sick"
            self._write(200, f"{self.name} is {parts[1]}\n".encode(), [], not keep)
            return
        if parts[0] == "seen":
            self._write(200, json.dumps(list(_SEEN)).encode(),
                        [("content-type", "application/json")], not keep)
            return
        names = {k.lower(): v for k, v in headers}
        _SEEN.append({"method": method, "path": path, "host": names.get("host", ""),
                      "user-agent": names.get("user-agent", "")})
        if _STATE["sick"]:
            self._write(503, f"{self.name} is sick\n".encode(), [], not keep)
            return
        if parts[0] == "drop-reused" and self.served > 1:
            # A keep-alive connection the server gave up on just as a request arrived.
            assert self.transport is not None
            self.transport.abort()
            return
        if parts[0] == "status" and len(parts) > 1:
            code = int(parts[1])
            self._write(code, f"status {code} from {self.name}\n".encode(), [], not keep,
                        head=method == "HEAD")
            return
        if parts[0] == "delay" and len(parts) > 1:
            await asyncio.sleep(float(parts[1]))
        if parts[0] == "bytes" and len(parts) > 1:
            n = int(parts[1])
            self._write(200, b"x" * n, [("content-type", "application/octet-stream")], not keep,
                        head=method == "HEAD")
            return
        if parts[0] == "stream" and len(parts) > 1:
            await self._chunked(int(parts[1]), not keep)
            return
        if parts[0] == "flaky" and len(parts) > 2:
            # /flaky/TOKEN/N: the first N requests with this token get 503, then the echo.
            seen = _FLAKY[parts[1]] = _FLAKY.get(parts[1], 0) + 1
            if seen <= int(parts[2]):
                _, _, query = path.partition("?")
                extra = [("retry-after", query.removeprefix("retry-after="))] \
                    if query.startswith("retry-after=") else []
                self._write(503, b"flaky\n", extra, not keep)
                return
        if parts[0] == "unframed":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
                                 + b"body without length\n" * 100)
            await asyncio.sleep(0.05)
            self.transport.close()
            return
        if parts[0] == "close":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
            await asyncio.sleep(0.05)
            self.transport.abort()
            return
        doc = {
            "backend": self.name,
            "method": method,
            "path": path,
            "headers": {k.lower(): v for k, v in headers},
            "header_list": headers,
            "body_bytes": len(body),
            "tls_server_name": self.sni,
            "client_cert_serial": self.client_serial,
        }
        payload = (json.dumps(doc, indent=1) + "\n").encode()
        self._write(200, payload, [("content-type", "application/json")], not keep,
                    head=method == "HEAD")

    async def _chunked(self, n: int, close: bool) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                             + (b"connection: close\r\n" if close else b"") + b"\r\n")
        for i in range(n):
            line = f"chunk {i} from {self.name}\n".encode()
            self.transport.write(b"%x\r\n%s\r\n" % (len(line), line))
            await asyncio.sleep(0.01)
        self.transport.write(b"0\r\n\r\n")
        if close:
            self.transport.close()

    def _write(self, code: int, body: bytes, headers: list[tuple[str, str]], close: bool,
               head: bool = False) -> None:
        assert self.transport is not None
        reason = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Unknown"
        lines = [f"HTTP/1.1 {code} {reason}", f"content-length: {len(body)}",
                 f"x-backend: {self.name}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if close:
            lines.append("connection: close")
        no_body = head or code in (204, 304) or code < 200
        if code in (204, 304):
            lines = [x for x in lines if not x.startswith("content-length")]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode()
                             + (b"" if no_body else body))
        if close:
            self.transport.close()


def _sni_context(cert: str, key: str, expect_sni: str | None,
                 client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED

    def remember(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        sslobj.sni = name  # type: ignore[attr-defined]
        if expect_sni and name != expect_sni:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    ctx.sni_callback = remember
    return ctx


async def serve(host: str, port: int, name: str, cert: str | None = None,
                key: str | None = None, expect_sni: str | None = None,
                client_ca: str | None = None) -> asyncio.Server:
    ctx = _sni_context(cert, key, expect_sni, client_ca) if cert and key else None
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Backend(name), host, port, ssl=ctx,
                                    reuse_address=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edgegw.demo.backend", description=__doc__)
    ap.add_argument("--listen", default="127.0.0.20:8080", help="HOST:PORT")
    ap.add_argument("--name", default="backend")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--expect-sni", help="refuse TLS handshakes for any other SNI")
    ap.add_argument("--client-ca", help="require client certificates issued by this CA")
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")

    async def run() -> None:
        server = await serve(host, int(port), a.name, a.cert, a.key, a.expect_sni, a.client_ca)
        scheme = "https" if a.cert else "http"
        print(f"backend '{a.name}' on {scheme}://{a.listen} (pid {os.getpid()})", file=sys.stderr,
              flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
