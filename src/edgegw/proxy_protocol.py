"""The PROXY protocol (HAProxy's, v1 text and v2 binary), all of it: reading the header a load
balancer puts before a connection's bytes, Envoy's proxy_protocol listener filter with its
stats (which headers a listener takes), and writing one for an upstream (Envoy's
ProxyProtocolUpstreamTransport).

``parse`` is a pure function over the bytes peeked so far, as the ClientHello inspector is:
it answers with the header and its length (to be consumed), None when the bytes are no
PROXY header at all, or raises NeedMore / ProxyProtocolError. The listener peeks and
consumes; ``ProxyProtocolFilter.decide`` says what the bytes mean for that listener.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import model as m
from .config.model.tls import ProxyProtocolConfig
from .stats import Counter, StatSet, Store

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
"""The longest v1 line the spec allows, CRLF included."""
V2_MAX = 16 + 65535


class NeedMore(Exception):
    """The bytes so far may be the start of a header: wait for more."""


class ProxyProtocolError(ValueError):
    """A header that is malformed or that Envoy refuses (e.g. a UDP or Unix address)."""


class Refused(Exception):
    """The listener drops the connection (a bad header, none where one is required, or a
    version it does not allow); counted already."""


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    length: int
    """How many bytes the header takes: they are consumed, the rest is the client's."""
    source: tuple[str, int] | None
    """The client's address; None for v2 LOCAL and v1 UNKNOWN (the connection's own is
    used)."""
    destination: tuple[str, int] | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()


def parse(data: bytes) -> ProxyHeader | None:
    if data[:12] == V2_SIGNATURE:
        return _v2(data)
    if data.startswith(V1_PREFIX):
        return _v1(data)
    if V2_SIGNATURE.startswith(data[:12]) or V1_PREFIX.startswith(data[:6]):
        raise NeedMore
    return None


def _v1(data: bytes) -> ProxyHeader:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("v1 header longer than 107 bytes")
        raise NeedMore
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, end + 2, None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed v1 header {data[:end]!r}")
    src, dst = _ip(parts[2], parts[1]), _ip(parts[3], parts[1])
    return ProxyHeader(1, end + 2, (src, _port(parts[4])), (dst, _port(parts[5])))


def _ip(text: str, family: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"malformed v1 address {text!r}") from None
    if (addr.version == 4) != (family == "TCP4"):
        raise ProxyProtocolError(f"{family} with address {text!r}")
    return str(addr)


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyProtocolError(f"malformed v1 port {text!r}")
    return int(text)


def _v2(data: bytes) -> ProxyHeader:
    if len(data) < 16:
        raise NeedMore
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command > 1:
        raise ProxyProtocolError(f"v2 version/command byte {data[12]:#04x}")
    family = data[13]
    length = 16 + int.from_bytes(data[14:16], "big")
    if len(data) < length:
        raise NeedMore
    body = data[16:length]
    if command == 0:  # LOCAL: a health check from the balancer itself
        return ProxyHeader(2, length, None)
    if family == 0x11:
        size, unpack = 12, _ipv4
    elif family == 0x21:
        size, unpack = 36, _ipv6
    elif family == 0x00:
        return ProxyHeader(2, length, None)
    else:
        raise ProxyProtocolError(f"v2 address family/protocol {family:#04x} is not TCP")
    if len(body) < size:
        raise ProxyProtocolError("v2 address block too short")
    src, dst, sport, dport = unpack(body)
    return ProxyHeader(2, length, (src, sport), (dst, dport), _tlvs(body[size:]))


def _ipv4(b: bytes) -> tuple[str, str, int, int]:
    return (str(ipaddress.IPv4Address(b[0:4])), str(ipaddress.IPv4Address(b[4:8])),
            int.from_bytes(b[8:10], "big"), int.from_bytes(b[10:12], "big"))


def _ipv6(b: bytes) -> tuple[str, str, int, int]:
    return (str(ipaddress.IPv6Address(b[0:16])), str(ipaddress.IPv6Address(b[16:32])),
            int.from_bytes(b[32:34], "big"), int.from_bytes(b[34:36], "big"))


def _tlvs(b: bytes) -> tuple[tuple[int, bytes], ...]:
    out, p = [], 0
    while p < len(b):
        if p + 3 > len(b):
            raise ProxyProtocolError("v2 TLV cut short")
        size = int.from_bytes(b[p + 1 : p + 3], "big")
        if p + 3 + size > len(b):
            raise ProxyProtocolError("v2 TLV longer than the header")
        out.append((b[p], b[p + 3 : p + 3 + size]))
        p += 3 + size
    return tuple(out)


class ProxyProtoStats(StatSet):
    """``proxy_proto.[<stat_prefix>.]*``, as Envoy's proxy_protocol filter counts."""

    not_found_disallowed: Counter
    not_found_allowed: Counter


class ProxyVersionStats(StatSet):
    """``proxy_proto.[<stat_prefix>.]versions.v1.*`` (and v2)."""

    found: Counter
    disallowed: Counter
    error: Counter


class ProxyProtocolFilter:
    """A listener's proxy_protocol settings and stats."""

    def __init__(self, cfg: m.ProxyProtocol, store: Store) -> None:
        self.cfg = cfg
        prefix = "proxy_proto." + (f"{cfg.stat_prefix}." if cfg.stat_prefix else "")
        self.stats = ProxyProtoStats(store, prefix)
        self.versions = {v: ProxyVersionStats(store, f"{prefix}versions.v{v}.") for v in (1, 2)}
        self.disallowed = {int(v[1]) for v in cfg.disallowed_versions}

    def decide(self, data: bytes) -> ProxyHeader | None:
        """What the bytes peeked so far mean here, counted as Envoy counts them: the header
        to consume, or None when there is none and that is allowed. Raises NeedMore, or
        Refused when the connection is to be dropped."""
        try:
            header = parse(data)
        except ProxyProtocolError as e:
            self.versions[2 if data.startswith(V2_SIGNATURE) else 1].error.value += 1
            raise Refused(f"bad PROXY protocol header: {e}") from None
        allow = self.cfg.allow_requests_without_proxy_protocol
        if header is not None and header.version in self.disallowed and allow:
            header = None  # as Envoy: a version not allowed is then no PROXY header at all
        if header is None:
            if not allow:
                self.stats.not_found_disallowed.value += 1
                raise Refused("no PROXY protocol header")
            self.stats.not_found_allowed.value += 1
            return None
        if header.version in self.disallowed:
            self.versions[header.version].disallowed.value += 1
            raise Refused(f"PROXY protocol v{header.version} is not allowed")
        self.versions[header.version].found.value += 1
        return header

    def passed_tlvs(self, header: ProxyHeader) -> tuple[tuple[int, bytes], ...]:
        """The header's TLVs that pass_through_tlvs keeps (for a PROXY header upstream)."""
        return _kept(self.cfg.pass_through_tlvs, header.tlvs)


def _kept(keep: m.PassThroughTlvs | None, tlvs: tuple[tuple[int, bytes], ...]
          ) -> tuple[tuple[int, bytes], ...]:
    return tuple(t for t in tlvs if keep is not None and keep.keeps(t[0]))


def upstream_header(cfg: ProxyProtocolConfig, source: tuple[str, int],
                    destination: tuple[str, int], tlvs: tuple[tuple[int, bytes], ...]) -> bytes:
    """The header a cluster's proxy_protocol transport socket sends first: the client's
    address and the one it reached; on v2, the incoming TLVs both ends pass through."""
    return encode(1 if cfg.version == "V1" else 2, source, destination,
                  _kept(cfg.pass_through_tlvs, tlvs))


def encode(version: int, source: tuple[str, int], destination: tuple[str, int],
           tlvs: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """A header for an upstream: the client's address and the address it reached."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:  # (an IPv4 client on an IPv6 listener, mapped)
        src = ipaddress.IPv6Address(f"::ffff:{src}") if src.version == 4 else src
        dst = ipaddress.IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst
    if version == 1:
        family = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode()
    body = (src.packed + dst.packed + source[1].to_bytes(2, "big")
            + destination[1].to_bytes(2, "big"))
    body += b"".join(bytes([t]) + len(v).to_bytes(2, "big") + v for t, v in tlvs)
    family_byte = 0x11 if src.version == 4 else 0x21
    return V2_SIGNATURE + bytes([0x21, family_byte]) + len(body).to_bytes(2, "big") + body
