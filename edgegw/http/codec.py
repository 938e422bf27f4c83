"""HTTP/1.1 wire details shared by both directions: heads, chunk framing, local replies.

Parsing is httptools' job (llhttp, strict by default: it already refuses Content-Length with
Transfer-Encoding, bad chunk sizes and bare LFs in chunk lines); this module only writes bytes.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]
"""Header fields as (lower-case name, value) pairs in arrival order."""

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"te", b"trailer", b"http2-settings",
})
"""Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1)."""

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}

_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}


def status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % code


class _DateCache:
    """The Date header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


http_date = _DateCache().get


def encode_headers(headers: Headers) -> bytes:
    out: list[bytes] = []
    for k, v in headers:  # measured: faster than formatting each line
        out += (k, b": ", v, b"\r\n")
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def local_reply(code: int, body: bytes, server: bytes, close: bool = False,
                extra: Headers | None = None, head: bool = False) -> bytes:
    """A response edgegw makes itself, in the shape of Envoy's local replies."""
    lines = []
    if body:
        lines.append((b"content-length", b"%d" % len(body)))
        lines.append((b"content-type", b"text/plain"))
    if extra:
        lines.extend(extra)
    lines.append((b"date", http_date()))
    lines.append((b"server", server))
    if close:
        lines.append((b"connection", b"close"))
    if not body:
        lines.append((b"content-length", b"0"))
    return status_line(code) + encode_headers(lines) + b"\r\n" + (b"" if head else body)
