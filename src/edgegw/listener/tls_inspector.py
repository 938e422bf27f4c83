"""Envoy's tls_inspector: read SNI and ALPN from a TLS ClientHello without consuming it.

A pure function over the bytes peeked from a new connection, so that the filter chain (and with
it the certificate) can be chosen before the handshake starts. A ClientHello may span several
TCP segments (post-quantum key shares make it ~1.8 KB), so an incomplete one asks for more.
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from ..stats import Counter, StatSet

MAX_HELLO = 64 * 1024
"""Envoy's tls_inspector gives up on hellos larger than this (it uses 64 KiB too)."""


class NeedMore(Exception):
    """The bytes so far are the start of a ClientHello; wait for more."""


class TooLarge(Exception):
    """No ClientHello within MAX_HELLO bytes: the connection is dropped (counted)."""


@dataclass(frozen=True)
class ClientHello:
    tls: bool
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    legacy_version: int = 0x0303
    versions: tuple[int, ...] = ()
    """The supported_versions extension (TLS 1.3 clients), GREASE left out."""

    def offers(self, lowest: int, highest: int) -> bool:
        """Whether the client can speak a version in [lowest, highest]. Without
        supported_versions, a client speaks every version up to its legacy_version."""
        if self.versions:
            return any(lowest <= v <= highest for v in self.versions)
        return self.legacy_version >= lowest


NOT_TLS = ClientHello(tls=False)


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class TlsInspectorStats(StatSet):
    """``tls_inspector.*``, shared by every listener, as in Envoy."""

    tls_found: Counter
    tls_not_found: Counter
    sni_found: Counter
    sni_not_found: Counter
    alpn_found: Counter
    alpn_not_found: Counter
    client_hello_too_large: Counter

    def inspect(self, data: bytes) -> ClientHello:
        """``inspect``, counted. Raises NeedMore, or TooLarge past MAX_HELLO."""
        try:
            hello = inspect(data)
        except NeedMore:
            if len(data) >= MAX_HELLO:
                self.client_hello_too_large.value += 1
                raise TooLarge from None
            raise
        if hello.tls:
            self.tls_found.value += 1
            (self.sni_found if hello.server_name else self.sni_not_found).value += 1
            (self.alpn_found if hello.alpn else self.alpn_not_found).value += 1
        else:
            self.tls_not_found.value += 1
        return hello


def inspect(data: bytes) -> ClientHello:
    """Parses the first TLS record(s) of a connection; raises NeedMore when incomplete."""
    if not data:
        raise NeedMore
    if data[0] != 0x16:
        return NOT_TLS
    if len(data) < 3:
        raise NeedMore
    if data[1] != 0x03:
        return NOT_TLS
    # The handshake message may be split across several records: join their payloads.
    payload = bytearray()
    pos = 0
    need = None
    while True:
        if len(data) < pos + 5:
            raise NeedMore
        if data[pos] != 0x16:
            return NOT_TLS
        length = _u16(data, pos + 3)
        if len(data) < pos + 5 + length:
            payload += data[pos + 5 :]
            if len(payload) >= 4 and payload[0] != 0x01:
                return NOT_TLS
            raise NeedMore
        payload += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(payload) >= 4:
            if payload[0] != 0x01:
                return NOT_TLS
            need = 4 + int.from_bytes(payload[1:4], "big")
            if need > MAX_HELLO:
                return NOT_TLS
            if len(payload) >= need:
                break
    return _parse_hello(bytes(payload[4:need]))


def _u16(b: bytes, p: int) -> int:
    """The big-endian 16-bit number at ``p``, as ``int.from_bytes(b[p : p + 2])`` reads it
    (a short tail gives what is there), without the slice and call, which cost most of a
    compiled parse."""
    if p + 2 <= len(b):
        return (b[p] << 8) | b[p + 1]
    return int.from_bytes(b[p : p + 2], "big")


def _parse_hello(body: bytes) -> ClientHello:
    try:
        legacy = _u16(body, 0)
        p = 2 + 32  # client_version, random
        p += 1 + body[p]  # session_id
        p += 2 + _u16(body, p)  # cipher_suites
        p += 1 + body[p]  # compression_methods
        if p + 2 > len(body):
            return ClientHello(tls=True, legacy_version=legacy)
        end = p + 2 + _u16(body, p)
        p += 2
        sni: str | None = None
        alpn: tuple[str, ...] = ()
        versions: tuple[int, ...] = ()
        while p + 4 <= end:
            kind = _u16(body, p)
            size = _u16(body, p + 2)
            ext = body[p + 4 : p + 4 + size]
            p += 4 + size
            if kind == 0:
                sni = _server_name(ext)
            elif kind == 16:
                alpn = _alpn(ext)
            elif kind == 43:
                versions = _versions(ext)
        return ClientHello(True, sni, alpn, legacy, versions)
    except IndexError:
        return ClientHello(tls=True)


def _server_name(ext: bytes) -> str | None:
    p = 2
    while p + 3 <= len(ext):
        kind = ext[p]
        size = _u16(ext, p + 1)
        name = ext[p + 3 : p + 3 + size]
        p += 3 + size
        if kind == 0:
            try:
                return name.decode("ascii").lower() or None
            except UnicodeDecodeError:
                return None
    return None


def _alpn(ext: bytes) -> tuple[str, ...]:
    out = []
    p = 2
    while p < len(ext):
        size = ext[p]
        out.append(ext[p + 1 : p + 1 + size].decode("latin-1"))
        p += 1 + size
    return tuple(out)


def _versions(ext: bytes) -> tuple[int, ...]:
    """supported_versions: a length byte, then two bytes per version; GREASE (0x?a?a) is
    dropped so it never counts as a version the client speaks."""
    body = ext[1 : 1 + ext[0]]
    out = []
    for i in range(0, len(body) - 1, 2):
        v = _u16(body, i)
        if v & 0x0F0F != 0x0A0A:
            out.append(v)
    return tuple(out)
