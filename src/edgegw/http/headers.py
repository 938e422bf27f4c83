"""The request headers Envoy's connection manager adds and removes before routing.

Mirrors ``conn_manager_utility.cc`` as observed on Envoy 1.40: x-forwarded-for is appended only
with ``use_remote_address``; an edge request (use_remote_address and a client outside
internal_address_config) has its x-request-id replaced, x-forwarded-proto overwritten unless
trusted hops say otherwise, Envoy's internal control headers stripped, and
x-envoy-external-address set.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

from ..config import model as m
from .codec import Headers

EXTERNAL_STRIPPED = frozenset({
    b"x-envoy-expected-rq-timeout-ms", b"x-envoy-force-trace", b"x-envoy-internal",
    b"x-envoy-ip-tags", b"x-envoy-max-retries", b"x-envoy-original-url",
    b"x-envoy-retriable-header-names", b"x-envoy-retriable-status-codes",
    b"x-envoy-retry-grpc-on", b"x-envoy-retry-on", b"x-envoy-upstream-alt-stat-name",
    b"x-envoy-upstream-rq-per-try-timeout-ms", b"x-envoy-upstream-rq-timeout-alt-response",
    b"x-envoy-upstream-rq-timeout-ms", b"x-envoy-hedge-on-per-try-timeout",
})
"""Envoy's control headers: a client outside ``internal_address_config`` may not set them."""

EDGE_STRIPPED = frozenset({
    b"x-envoy-decorator-operation", b"x-envoy-downstream-service-cluster",
    b"x-envoy-downstream-service-node", b"x-envoy-expected-rq-timeout-ms",
    b"x-envoy-force-trace", b"x-envoy-internal", b"x-envoy-ip-tags", b"x-envoy-max-retries",
    b"x-envoy-retry-grpc-on", b"x-envoy-retry-on", b"x-envoy-upstream-alt-stat-name",
    b"x-envoy-upstream-rq-per-try-timeout-ms", b"x-envoy-upstream-rq-timeout-alt-response",
    b"x-envoy-upstream-rq-timeout-ms", b"x-envoy-hedge-on-per-try-timeout",
    b"x-envoy-external-address",
})


def _machine_address() -> str:
    """The first non-loopback interface address of this machine: what Envoy appends to XFF for
    a loopback client (it never appends a loopback address). Read with SIOCGIFADDR, which
    sends nothing on the network."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])
            except OSError:
                continue
            if not addr.startswith("127."):
                return addr
    return "127.0.0.1"


def parse_cookies(headers: Headers) -> dict[str, str]:
    """Envoy's parseCookies: every Cookie header, ``;``-separated, the first of a name wins,
    surrounding double quotes dropped."""
    out: dict[str, str] = {}
    for k, v in headers:
        if k != b"cookie":
            continue
        for part in v.decode("latin-1").split(";"):
            name, eq, value = part.lstrip(" \t").partition("=")
            if not eq or not name:
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.setdefault(name, value)
    return out


def set_header(headers: Headers, name: bytes, value: bytes) -> None:
    """Sets ``name`` where it already stands (as Envoy's header map does), else appends it."""
    for i, (k, _) in enumerate(headers):
        if k == name:
            headers[i] = (name, value)
            headers[i + 1 :] = [h for h in headers[i + 1 :] if h[0] != name]
            return
    headers.append((name, value))


class _RequestIds:
    """UUID4 request ids from a pool of random bytes: one getrandom() call per 256 ids
    instead of one per request."""

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        if self._pos >= len(self._pool):
            self._pool = os.urandom(4096)
            self._pos = 0
        b = bytearray(self._pool[self._pos : self._pos + 16])
        self._pos += 16
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        h = b.hex().encode()
        return b"%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


_ids = _RequestIds()


def ip_or_none(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def xff_address(headers: Headers, skip: int) -> str | None:
    """The address ``skip`` entries from the end of x-forwarded-for (Envoy's
    getLastAddressFromXFF), or None."""
    xff = [a.strip() for a in b",".join(v for k, v in headers if k == b"x-forwarded-for")
           .decode("latin-1").split(",") if a.strip()]
    return ip_or_none(xff[-1 - skip]) if len(xff) > skip else None


@dataclass
class ForwardingPolicy:
    """The HCM settings that decide how a request's origin headers are rewritten."""

    use_remote_address: bool
    xff_num_trusted_hops: int
    skip_xff_append: bool
    generate_request_id: bool
    internal: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    local_address: str
    detectors: tuple[m.XffConfig | m.CustomHeaderConfig, ...] = ()
    """original_ip_detection_extensions, in order."""

    @classmethod
    def from_config(cls, cfg: m.HttpConnectionManager) -> ForwardingPolicy:
        iac = cfg.internal_address_config
        nets = tuple(
            ipaddress.ip_network(f"{c.address_prefix}/{c.prefix_len}", strict=False)
            for c in (iac.cidr_ranges if iac else [])
        )
        return cls(cfg.use_remote_address, cfg.xff_num_trusted_hops, cfg.skip_xff_append,
                   cfg.generate_request_id, nets,
                   _machine_address() if cfg.use_remote_address else "",
                   tuple(d.typed_config for d in cfg.original_ip_detection_extensions))

    def detect(self, headers: Headers) -> tuple[str | None, bool, int | None]:
        """original_ip_detection_extensions, tried in order: (the client's address or None,
        whether it may be trusted as internal, the status to refuse the request with)."""
        for d in self.detectors:
            if isinstance(d, m.XffConfig):
                ip = xff_address(headers, d.xff_num_trusted_hops)
                if ip is not None:
                    return ip, False, None
                continue
            name = d.header_name.lower().encode("latin-1")
            value = next((v for k, v in headers if k == name), None)
            ip = ip_or_none(value.decode("latin-1").strip()) if value is not None else None
            if ip is not None:
                return ip, d.allow_extension_to_set_address_as_trusted, None
            if d.reject_with_status is not None:
                return None, False, d.reject_with_status.code
        return None, False, None

    def is_internal(self, addr: str | None) -> bool:
        if not addr or not self.internal:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in self.internal)

    def apply(self, headers: Headers, remote_ip: str, tls: bool,
              internal: bool = False) -> str | None:
        """Rewrites ``headers`` in place; with use_remote_address, returns the trusted client
        address. Without it Envoy leaves x-forwarded-for alone, so it is not even parsed;
        ``internal``: original IP detection found a trusted internal client."""
        scheme = b"https" if tls else b"http"
        if self.use_remote_address:
            xff = [v for k, v in headers if k == b"x-forwarded-for"]
            xff_list = [a.strip() for a in b",".join(xff).decode("latin-1").split(",")
                        if a.strip()]
            client: str | None = None
            if self.xff_num_trusted_hops > 0 and len(xff_list) >= self.xff_num_trusted_hops:
                client = ip_or_none(xff_list[-self.xff_num_trusted_hops])
            client = client or remote_ip
            internal = not xff and self.is_internal(client)
            if not self.skip_xff_append:
                appended = self.local_address if remote_ip.startswith("127.") or remote_ip == "::1" \
                    else remote_ip
                # Envoy appends to the header as the client wrote it (spaces kept)
                value = b",".join([*xff, appended.encode("latin-1")])
                set_header(headers, b"x-forwarded-for", value)
            if internal:
                headers.append((b"x-envoy-internal", b"true"))
                self._request_id(headers, keep=True)
                if not any(k == b"x-forwarded-proto" for k, _ in headers):
                    headers.append((b"x-forwarded-proto", scheme))
                return client
            if not (self.xff_num_trusted_hops > 0
                    and any(k == b"x-forwarded-proto" for k, _ in headers)):
                set_header(headers, b"x-forwarded-proto", scheme)
            headers[:] = [h for h in headers if h[0] not in EDGE_STRIPPED]
            headers.append((b"x-envoy-external-address", client.encode("latin-1")))
            self._request_id(headers, keep=False)
            return client
        has_proto = has_id = control = False
        forwarded: list[bytes] = []
        for k, v in headers:
            if k == b"x-forwarded-proto":
                has_proto = True
            elif k == b"x-request-id":
                has_id = True
            elif k == b"x-forwarded-for":
                forwarded.append(v)
            elif k in EXTERNAL_STRIPPED:
                control = True
        if control and not internal and not (
                len(forwarded) == 1 and b"," not in forwarded[0]
                and self.is_internal(forwarded[0].strip().decode("latin-1"))):
            # Without use_remote_address Envoy takes a request as internal only when its one
            # x-forwarded-for address is internal; any other may not steer Envoy.
            headers[:] = [h for h in headers if h[0] not in EXTERNAL_STRIPPED]
        if not has_proto:
            headers.append((b"x-forwarded-proto", scheme))
        if self.generate_request_id and not has_id:
            headers.append((b"x-request-id", _ids.next()))
        return None

    def _request_id(self, headers: Headers, keep: bool) -> None:
        if not self.generate_request_id:
            return
        if keep and any(k == b"x-request-id" for k, _ in headers):
            return
        set_header(headers, b"x-request-id", _ids.next())
