"""What the connection manager checks of a request head before routing it, as Envoy's does:
one Host (an absolute-form target gives it), an authority and a path that are well formed."""

from __future__ import annotations

import re

from .codec import RequestHead

_READ_AT_START = frozenset((b"host", b"content-type", b"expect"))
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:\[\]@%]+")
"""The bytes an authority may hold (RFC 3986 as nghttp2 checks them, which Envoy uses)."""


class Checked:
    """The headers the connection manager reads, or why the request is refused."""

    __slots__ = ("ctype", "expect", "host", "refusal")

    def __init__(self) -> None:
        self.host = b""
        self.ctype: bytes | None = None
        """Content-Type."""
        self.expect: bytes | None = None
        self.refusal: tuple[int, bytes, str] | None = None
        """Status, body and details of the local reply (the connection then closes)."""


def check_head(head: RequestHead) -> Checked:
    """Reads Host, Content-Type and Expect in one pass; an absolute-form target
    (``GET http://a.example/x``) becomes Host and path, in ``head`` itself."""
    out = Checked()
    host = ctype = expect = None
    hosts = 0
    for k, v in head.headers:
        if k in _READ_AT_START:
            if k == b"host":
                hosts += 1
                if host is None:
                    host = v
            elif k == b"content-type":
                if ctype is None:
                    ctype = v
            elif expect is None:
                expect = v
    path = head.path
    if path[:1] != b"/" and b"://" in path[:8]:
        rest = path.split(b"://", 1)[1]
        slash = rest.find(b"/")
        host, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        hosts = 1
        head.headers = [h for h in head.headers if h[0] != b"host"] + [(b"host", host)]
        head.path = path
    out.ctype, out.expect = ctype, expect
    if not host:
        out.refusal = (400, b"", "missing_host_header")
    elif not _AUTHORITY.fullmatch(host):
        out.refusal = (400, b"Bad Request", "http.invalid_authority")
    elif b"#" in path or (path == b"*" and head.method != b"OPTIONS"):
        out.refusal = (400, b"Bad Request", "http.invalid_path")
    elif hosts > 1:
        # One request, one authority: routing by one Host while the backend reads another
        # is how virtual-host checks are bypassed (edgegw-only: Envoy forwards it).
        out.refusal = (400, b"Bad Request", "multiple_host_headers")
    else:
        out.host = host
    return out
