"""Opening one upstream connection: TCP, then the cluster's transport socket (TLS with its
SNI and peer checks, and the PROXY protocol header before it), within connect_timeout.
What the HTTP pools and the TCP proxy share."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .cluster_info import ClusterInfo


class Endpoint(Protocol):
    """Where a connection goes (a cluster's ``Host`` is one)."""

    address: str
    port: int


class ConnectError(Exception):
    """Opening a connection failed; ``reason`` is Envoy's reset reason text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def explain(self) -> str:
        """The failure as a home-lab user reads it: refused, no answer, or TLS (and whether
        the backend looks like plain HTTP behind an https:// upstream)."""
        if self.reason == "connection timeout":
            return "no answer within the connect timeout (is the host up?)"
        detail = self.detail
        if detail.startswith("delayed_connect_error: "):
            return detail.split(": ", 1)[1].lower()
        if detail.startswith("TLS_error:"):
            why = detail[len("TLS_error:"):]
            if any(s in why.upper() for s in _PLAIN_HTTP):
                return (f"the TLS handshake failed ({why}): the backend seems to speak plain "
                        "HTTP; write its upstream as http://")
            return f"the TLS handshake failed ({why})"
        return detail or self.reason


_PLAIN_HTTP = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
               "HTTP_REQUEST")
"""What OpenSSL says when the peer answers a ClientHello in plain HTTP."""


async def connect(cluster: ClusterInfo, host: Endpoint, protocol: Callable[[], asyncio.Protocol],
                  proxy_header: bytes = b"") -> asyncio.Transport:
    """The transport of a new connection to ``host``, or ConnectError."""
    tls = cluster.tls
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(cluster.connect_timeout):
            ctx = tls.ctx if tls else None
            sni = (tls.sni or "") if tls else None
            handshake = cluster.connect_timeout if tls else None
            if proxy_header:
                transport, _ = await loop.create_connection(
                    protocol, sock=await _sent_first(host, proxy_header), ssl=ctx,
                    server_hostname=sni, ssl_handshake_timeout=handshake)
            else:
                transport, _ = await loop.create_connection(
                    protocol, host.address, host.port, ssl=ctx, server_hostname=sni,
                    ssl_handshake_timeout=handshake)
    except TimeoutError:
        raise ConnectError("connection timeout") from None
    except ssl.SSLCertVerificationError as e:
        cluster.ssl.fail_verify_error.value += 1  # type: ignore[union-attr]
        raise ConnectError("remote connection failure",
                           f"TLS_error:{e.reason or e.strerror}") from None
    except ssl.SSLError as e:
        cluster.ssl.connection_error.value += 1  # type: ignore[union-attr]
        raise ConnectError("remote connection failure",
                           f"TLS_error:{e.reason or e.strerror}") from None
    except OSError as e:
        raise ConnectError("remote connection failure",
                           f"delayed_connect_error: {e.strerror or e}") from None
    if tls is not None and cluster.ssl is not None:
        why = tls.check_peer(transport.get_extra_info("ssl_object")) \
            if tls.san_matchers else None
        if why:
            cluster.ssl.fail_verify_san.value += 1
            transport.abort()
            raise ConnectError("remote connection failure", why)
        cluster.ssl.handshake.value += 1
    if transport.is_closing():
        # The backend closed (it may have answered something) before we got here.
        raise ConnectError("remote connection failure", "closed while connecting")
    transport.set_write_buffer_limits(high=cluster.buffer_limit)
    return transport


async def _sent_first(host: Endpoint, header: bytes) -> socket.socket:
    """A connected socket that has already carried ``header`` (the PROXY protocol line,
    which precedes everything, TLS included)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await loop.sock_connect(sock, (host.address, host.port))
        await loop.sock_sendall(sock, header)
    except BaseException:
        sock.close()
        raise
    return sock
