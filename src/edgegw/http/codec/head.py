"""A request's head and the hop-by-hop rules, apart from the codec interfaces so that they
are compiled with the request path (a package ``__init__`` cannot be)."""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]
"""Header fields as (lower-case name, value) pairs in arrival order."""

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"te", b"trailer", b"http2-settings",
})
"""Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1)."""


class RequestHead:
    """What a codec knows of a request once its headers are in."""

    __slots__ = ("headers", "method", "path", "protocol", "upgrade")

    def __init__(self, method: bytes, path: bytes, headers: Headers, protocol: str,
                 upgrade: bytes = b"") -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.protocol = protocol
        """``HTTP/1.0``, ``HTTP/1.1`` or ``HTTP/2``, as access logs print it."""
        self.upgrade = upgrade
        """The Upgrade header of an HTTP/1.1 upgrade request (``websocket``), else empty."""


def connection_tokens(value: bytes | None) -> set[bytes]:
    """The header names a Connection header lists: they describe this hop only."""
    return {t.strip().lower() for t in value.split(b",")} if value else set()
