"""One gRPC bidirectional stream to a control plane over a cluster's HTTP/2 pool (Envoy's
``envoy_grpc``): the cluster's TLS, load balancing and connection limits apply to it as to any
request. Messages are length-prefixed (gRPC's 5-byte frame header, uncompressed); the stream
ends with the server's trailers (``grpc-status``) or a reset, and its owner hears why once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..http.codec import ClientConnection, Headers, RequestEncoder, RequestHead

if TYPE_CHECKING:
    from ..upstream.cluster import Cluster
    from ..upstream.host import Host

MAX_MESSAGE = 64 * 1024 * 1024
"""A longer message ends the stream (gRPC's own receive limit is 4 MB; control planes send
large snapshots, Envoy takes up to 2 GB)."""


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class GrpcStream:
    """Calls ``path`` on ``cluster``; ``on_message`` hears each message, ``on_close`` the end
    (once, with why). ``send`` queues messages until the stream is open."""

    def __init__(self, cluster: Cluster, path: str, authority: str, metadata: Headers,
                 on_message: Callable[[bytes], None], on_close: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.path = path.encode()
        self.authority = (authority or cluster.name).encode()
        self.metadata = metadata
        self.on_message, self.on_close = on_message, on_close
        self.host: Host | None = None
        self.encoder: RequestEncoder | None = None
        self.queued: list[bytes] = []
        self.buffer = bytearray()
        self.closed = False

    def start(self) -> None:
        host = self.cluster.choose()
        if host is None:
            self._close(f"no healthy host in cluster '{self.cluster.name}'")
            return
        self.host = host
        host.pool.request(self)

    def send(self, message: bytes) -> None:
        if self.closed:
            return
        if self.encoder is None:
            self.queued.append(message)
        else:
            self.encoder.encode_data(frame(message), False)

    def close(self) -> None:
        """Ends the call from this side (a reset); ``on_close`` is not called."""
        self.closed = True
        encoder, self.encoder = self.encoder, None
        if encoder is not None:
            encoder.reset()

    def _close(self, why: str) -> None:
        if not self.closed:
            self.close()
            self.on_close(why)

    # PoolClient
    def pool_ready(self, conn: ClientConnection, reused: bool) -> None:
        if self.closed:
            assert self.host is not None
            self.host.pool.release(conn)
            return
        headers: Headers = [(b"host", self.authority), (b"content-type", b"application/grpc"),
                            (b"te", b"trailers"), *self.metadata]
        self.encoder = conn.new_stream(self)
        self.encoder.encode_headers(RequestHead(b"POST", self.path, headers, "HTTP/2"), False)
        queued, self.queued = self.queued, []
        for message in queued:
            self.encoder.encode_data(frame(message), False)

    def pool_overflow(self) -> None:
        self._close(f"cluster '{self.cluster.name}': too many requests (circuit breaker)")

    def pool_failure(self, reason: str, detail: str) -> None:
        self._close(f"cannot connect to cluster '{self.cluster.name}': {detail or reason}")

    # ResponseReceiver
    def upstream_headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        if status != 200:
            self._close(f"the control plane answered HTTP {status}")
        elif end_stream:  # (trailers-only: the call failed at once)
            self.upstream_trailers(headers)

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 5 and not self.closed:
            if buf[0]:
                self._close("the control plane sent a compressed message")
                return
            size = int.from_bytes(buf[1:5], "big")
            if size > MAX_MESSAGE:
                self._close(f"the control plane sent a message of {size} bytes")
                return
            if len(buf) < 5 + size:
                break
            message = bytes(buf[5:5 + size])
            del buf[:5 + size]
            self.on_message(message)
        if end_stream:
            self._close("the control plane ended the stream without a status")

    def upstream_trailers(self, trailers: Headers) -> None:
        status = message = b""
        for k, v in trailers:
            if k == b"grpc-status":
                status = v
            elif k == b"grpc-message":
                message = v
        self._close(f"gRPC status {status.decode('latin-1') or '?'}"
                    + (f": {message.decode('latin-1')}" if message else ""))

    def upstream_reset(self, reason: str, stale: bool) -> None:
        self.encoder = None
        self._close(f"the stream was reset ({reason})")

    def flush(self) -> None:
        pass

    def upstream_write_blocked(self, blocked: bool) -> None:
        pass
